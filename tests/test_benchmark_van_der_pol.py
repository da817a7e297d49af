"""Smoke tests of benchmarks/van_der_pol.py: its data against an independent solver, and a tiny run end to end."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from script_loader import load_benchmark


@pytest.fixture(scope="module")
def vdp():
    return load_benchmark("van_der_pol")


def test_van_der_pol_simulation_matches_dormand_prince(vdp):
    x0 = np.array([[2.0, 0.0], [-3.0, 3.0], [0.5, -2.5]])
    num_steps = 20
    states = vdp.simulate(x0, num_steps, vdp.DT)
    assert states.shape == (3, num_steps + 1, 2) and states.dtype == np.float64
    np.testing.assert_array_equal(states[:, 0], x0)

    def field(t, y):
        return tf.stack([y[:, 1], vdp.MU * (1.0 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], axis=-1)

    times = vdp.DT * np.arange(1, num_steps + 1)
    # In a graph: eagerly, each of the solver's many steps at μ = 8 runs op by op.
    solution = tf.function(
        lambda: tfp.math.ode.DormandPrince(rtol=1e-10, atol=1e-10).solve(
            field, tf.constant(0.0, tf.float64), tf.constant(x0), solution_times=tf.constant(times)
        )
    )()
    reference = np.moveaxis(solution.states.numpy(), 0, 1)
    # tfp's float64 DormandPrince stalls near 1e-8 relative error per unit time
    # whatever the tolerance (measured on dx/dt = -x), hence the margin.
    np.testing.assert_allclose(states[:, 1:], reference, atol=2e-6)
    # The RK4 substeps have converged: a 5x smaller substep changes nothing visible in float32.
    finer = vdp.simulate(x0, num_steps, vdp.DT, max_substep=vdp.MAX_SUBSTEP / 5)
    np.testing.assert_allclose(states, finer, atol=1e-8)


def test_van_der_pol_data_pairs_follow_trajectories(vdp):
    config = {"seed": 3, "dt": vdp.DT, "trajectories": 2, "seconds": 0.5, "test_trajectories": 3, "test_seconds": 0.25}
    data = vdp.make_data(config)
    steps = round(0.5 / vdp.DT)
    assert data["x"].shape == data["y"].shape == (2 * steps, 2) and data["x"].dtype == np.float32
    assert data["test"].shape == (3, round(0.25 / vdp.DT) + 1, 2)
    # Within a trajectory each target is the next input.
    np.testing.assert_array_equal(data["y"][: steps - 1], data["x"][1:steps])
    assert np.all(np.abs(data["test"][:, 0]) <= vdp.BOX)
    np.testing.assert_array_equal(vdp.make_data(config)["x"], data["x"])


@pytest.mark.example_runs
def test_van_der_pol_main_writes_report_and_plots(vdp, tmp_path, capsys):
    path = tmp_path / "results" / "vdp.json"
    argv = [
        "--trajectories",
        "2",
        "--seconds",
        "0.4",
        "--test-trajectories",
        "3",
        "--test-seconds",
        "0.3",
        "--rollout-seconds",
        "0.2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--steps-per-execution",
        "2",
        # Two methods: the plumbing is shared, and every method's layer is checked in the package's tests
        # (DormandPrince, the costliest to trace, runs in the stiff and classification benchmarks' tests).
        "--methods",
        "tl_node",
        "rk4",
        "--json",
        str(path),
        "--out",
        str(tmp_path),
    ]
    returned = vdp.main(argv)
    report = json.loads(path.read_text())

    assert set(report) == {"config", "environment", "methods"}
    config = report["config"]
    assert (config["trajectories"], config["epochs"], config["rollout_steps"]) == (2, 2, 4)
    assert config["training_steps"] == 2 * (2 * 8 // 8)
    assert set(config["jit_compile"]) == {"tl_node", "rk4"}
    assert list(report["methods"]) == ["tl_node", "rk4"]
    for name, result in report["methods"].items():
        numbers = (
            "train_seconds",
            "nfe",
            "predict_ms",
            "final_train_loss",
            "one_step_mse",
            "rollout_rel_l2",
            "rollout_nfe_per_step",
            "field_rel_l2",
        )
        assert set(result) == {"label", "curve", *numbers}, name
        for key in numbers:
            assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] >= 0, (name, key)
        curve = result["curve"]
        assert curve["steps"][0] == 0 and curve["steps"][-1] == config["training_steps"], name
        assert len(curve["steps"]) == len(curve["one_step_mse"]) and all(map(math.isfinite, curve["one_step_mse"]))
    methods = report["methods"]
    assert methods["tl_node"]["nfe"] == 3
    assert methods["tl_node"]["rollout_nfe_per_step"] == 3
    assert methods["rk4"]["nfe"] == methods["rk4"]["rollout_nfe_per_step"] == 4
    assert returned["methods"].keys() == report["methods"].keys()

    for name in ("curves", "bars", "portraits"):
        assert (tmp_path / f"van_der_pol_{name}.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "one-step MSE" in out and "TL-NODE" in out and "RK4" in out


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--epochs", "0"], "--epochs"),
        (["--test-seconds", "0.01"], "--test-seconds"),
        (["--dp-tolerance", "0"], "--dp-tolerance"),
        (["--trajectories", "1", "--seconds", "0.1", "--batch-size", "8"], "--batch-size"),
    ],
)
def test_van_der_pol_rejects_bad_arguments(vdp, argv, flag, capsys):
    with pytest.raises(SystemExit):
        vdp.parse_args(argv)
    assert flag in capsys.readouterr().err
