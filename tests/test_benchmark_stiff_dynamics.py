"""benchmarks/stiff_dynamics.py: its exact solution, its field error, its flags, and a tiny run end to end."""

import json
import math

import numpy as np
import pytest
from script_loader import load_benchmark


@pytest.fixture(scope="module")
def stiff():
    return load_benchmark("stiff_dynamics")


@pytest.fixture(scope="module")
def common():
    return load_benchmark("common")


def test_stiff_exact_solution(stiff, common):
    A = common.stiff_matrix()
    np.testing.assert_allclose(sorted(np.linalg.eigvals(A).real), [-1000.0, -1.0], rtol=1e-12)
    # expm(A h) = I + A h + O(h^2), and the propagator is a semigroup.
    h = 1e-7
    np.testing.assert_allclose((common.stiff_propagator(h) - np.eye(2)) / h, A, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        common.stiff_propagator(0.01) @ common.stiff_propagator(0.01), common.stiff_propagator(0.02), atol=1e-12
    )
    states = stiff.simulate(np.array([[0.3, -0.2]]), 3)
    assert states.shape == (1, 4, 2)
    np.testing.assert_allclose(states[0, 3], common.stiff_propagator(0.03) @ states[0, 0], atol=1e-12)


@pytest.mark.example_runs
def test_stiff_main_writes_json_and_plots(stiff, tmp_path, capsys):
    path = tmp_path / "results" / "stiff.json"
    argv = [
        "--trajectories",
        "2",
        "--seconds",
        "0.2",
        "--test-trajectories",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "20",
        "--repeats",
        "2",
        # TL-NODE and its reference: the plumbing is shared by every method, and every method's layer is
        # checked in the package's tests (Euler's in the systems suite's).
        "--methods",
        "tl_node",
        "dopri",
        "--json",
        str(path),
        "--out",
        str(tmp_path / "plots"),
    ]
    returned = stiff.main(argv)
    report = json.loads(path.read_text())

    assert set(report) == {"config", "environment", "methods", "comparisons"}
    assert report["config"]["trajectories"] == 2
    assert report["config"]["total_steps"] == 4  # 40 pairs in batches of 20, 2 epochs
    methods = report["methods"]
    assert list(methods) == ["tl_node", "dopri"]
    for name, result in methods.items():
        for key in (
            "train_seconds",
            "step_ms",
            "final_train_loss",
            "one_step_mse",
            "rollout_rel_l2",
            "field_rel_error",
            "predict_ms",
        ):
            assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] >= 0, (name, key)
        # The test-error curve starts before the first step and ends at the last one.
        assert result["curve"]["steps"][0] == 0 and result["curve"]["steps"][-1] == 4, name
        assert result["curve"]["one_step_mse"][-1] == result["one_step_mse"]
    assert methods["tl_node"]["nfe"] == 3
    assert methods["dopri"]["nfe"] >= 6  # at least one DormandPrince step
    assert methods["tl_node"]["teacher_failures"] == 0
    assert 0.0 <= methods["tl_node"]["trust"] <= 1.0
    assert report["comparisons"]["train_speedup_vs_dopri"] == pytest.approx(
        methods["dopri"]["train_seconds"] / methods["tl_node"]["train_seconds"]
    )
    assert returned["methods"].keys() == methods.keys()
    for name in ("stiff_error_vs_step.png", "stiff_training_time.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"

    out = capsys.readouterr().out
    assert "one-step MSE" in out and "TL-NODE" in out and "DormandPrince" in out


def test_field_error_is_zero_for_the_true_field(stiff, common):
    # An f_θ whose weights realise x A^T exactly has no field error.
    ode = stiff.harness.ode_layer("euler", stiff.vector_field(0), stiff.DT)
    W1 = np.zeros((2, 64), "float32")
    W1[:, :2] = np.eye(2)
    W2 = np.zeros((64, 2), "float32")
    W2[:2] = common.stiff_matrix().T
    ode.vector_field.set_weights([W1, np.zeros(64, "float32"), W2, np.zeros(2, "float32")])
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 2)).astype("float32")
    assert stiff.field_error(ode, x) < 1e-6


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--remainder-weight", "-1"), ("--seconds", "0.001")])
def test_bad_flags_are_named(stiff, flag, value, capsys):
    with pytest.raises(SystemExit):
        stiff.main([flag, value])
    assert flag in capsys.readouterr().err
