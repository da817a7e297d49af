"""The systems suite: its systems' truths (common.py), its summaries and gates, and every method at a tiny size."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from script_loader import load_benchmark

import keras_tlnode as kt


@pytest.fixture(scope="module")
def suite():
    return load_benchmark("systems_suite")


@pytest.fixture(scope="module")
def common():
    """The systems and the runs of the suite (benchmarks/common.py)."""
    return load_benchmark("common")


@pytest.mark.parametrize("name", ["brusselator", "lotka_volterra", "fitzhugh_nagumo", "lorenz", "pendulum"])
def test_flow_matches_a_tight_adaptive_solve(common, name):
    system = common.systems()[name]
    x = system.sample(np.random.default_rng(0), 16)

    def field(s):
        return tf.reshape(tf.numpy_function(system.field, [s], tf.float64, stateful=False), tf.shape(s))

    teacher = kt.DormandPrinceTeacher(rtol=1e-11, atol=1e-11, max_num_steps=100_000, jit_compile=False)
    solution = teacher.solve(field, tf.constant(x), system.dt)
    np.testing.assert_allclose(system.flow(x), solution.states.numpy(), rtol=1e-7, atol=1e-8)


def test_stiffness_of_a_linear_field_is_its_eigenvalue_times_dt(common):
    system = common.systems()["stiff_random"]
    stiffness = system.stiffness(samples=8)
    assert stiffness["median"] == pytest.approx(1000 * system.dt, rel=1e-4)


def test_stiff_near_start_is_near_the_true_field(common):
    system = common.systems()["stiff_near"]
    x = system.sample(np.random.default_rng(0), 64).astype("float32")
    near = x.astype("float64") @ common.stiff_near_matrix().T
    np.testing.assert_allclose(system.make_field()(x).numpy(), near, rtol=1e-3, atol=1e-3)
    assert 0.03 < np.linalg.norm(near - system.field(x)) / np.linalg.norm(system.field(x)) < 0.06


def test_time_to_accuracy_is_the_first_point_within_the_target(common):
    curve = {"seconds": [0.0, 1.0, 2.0, 3.0], "one_step": [1.0, 0.5, 0.05, 0.01]}
    assert common.time_to_accuracy(curve, 0.06) == 2.0
    assert common.time_to_accuracy(curve, 1e-3) is None


def summary_of(**medians):
    return {key: {m: {"median": v, "min": v, "max": v} for m, v in metrics.items()} for key, metrics in medians.items()}


def test_gates_of_a_nonlinear_system(suite):
    summary = summary_of(
        **{
            "tl_node@1": {"rollout": 0.07, "field": 0.1, "train_s": 5.0},
            "rk4@1": {"rollout": 0.1, "field": 0.1, "train_s": 2.0},
            "rk4@2": {"rollout": 0.05, "field": 0.1, "train_s": 4.0},
        }
    )
    gates = suite.gates(summary, "nonlinear", decays=False)
    assert gates["rollout_vs_rk4"] == {"value": pytest.approx(0.7), "bound": 0.8, "holds": True}
    assert gates["field_vs_rk4"]["holds"]
    assert not gates["train_time_vs_rk4"]["holds"]  # 2.5x
    # RK4 at 2 steps fits in TL-NODE's 5 s and has the lower rollout error; 3 would not fit (6 s).
    equal_cost = gates["rollout_vs_rk4_at_equal_cost"]
    assert equal_cost == {"value": pytest.approx(1.4), "bound": 1.0, "holds": False, "rk4_steps": 2, "capped": False}
    summary["tl_node@1"]["train_s"]["median"] = 7.0  # now 3 steps of RK4 would fit: more than were run
    assert suite.gates(summary, "nonlinear", decays=False)["rollout_vs_rk4_at_equal_cost"]["capped"]
    summary["rk4@1"]["train_s"]["median"] = summary["rk4@2"]["train_s"]["median"] = 9.0  # no RK4 fits: RK4 at 1
    assert suite.gates(summary, "nonlinear", decays=False)["rollout_vs_rk4_at_equal_cost"]["rk4_steps"] == 1


def test_gates_use_the_absolute_rollout_where_trajectories_settle(suite):
    summary = summary_of(
        **{
            "tl_node@1": {"rollout": 0.5, "rollout_abs": 1e-3, "field": 0.1, "train_s": 1.0},
            "rk4@1": {"rollout": 0.5, "rollout_abs": 2e-3, "field": 0.1, "train_s": 1.0},
        }
    )
    assert suite.gates(summary, "nonlinear", decays=True)["rollout_vs_rk4"]["value"] == pytest.approx(0.5)
    assert suite.gates(summary, "nonlinear", decays=False)["rollout_vs_rk4"]["value"] == pytest.approx(1.0)
    assert suite.gates(summary, None, decays=True) == {}  # stiff_near: no gate applies


def test_gates_of_the_stiff_system(suite):
    summary = summary_of(
        **{
            "tl_node@1": {"rollout_abs": 1e-3, "to_accuracy_s": 2.0},
            "dopri": {"rollout_abs": 1e-3, "to_accuracy_s": 20.0},
        }
    )
    gates = suite.gates(summary, "stiff", decays=True)
    assert gates["time_to_accuracy_speedup_vs_dopri"] == {"value": 10.0, "bound": 5.0, "holds": True}
    assert gates["rollout_vs_dopri"]["holds"]
    summary["tl_node@1"]["to_accuracy_s"]["median"] = None  # never reached the reference's accuracy
    assert suite.gates(summary, "stiff", decays=True)["time_to_accuracy_speedup_vs_dopri"]["value"] == 0.0
    summary["dopri"]["to_accuracy_s"]["median"] = None  # no reference time: unmeasured, not held
    assert suite.gates(summary, "stiff", decays=True)["time_to_accuracy_speedup_vs_dopri"] == {
        "value": None,
        "bound": 5.0,
        "holds": False,
    }


def test_rollout_at_two_steps_per_interval_is_read_at_the_observation_times(common):
    import keras

    matrix = np.array([[-0.5, 2.0], [-2.0, -0.5]])
    field = keras.layers.Dense(2, use_bias=False)
    field.build((None, 2))
    field.set_weights([matrix.T.astype("float32")])
    ode = kt.FixedStepODE(field, method="rk4", duration=0.1, num_steps=2)
    eigenvalues, vectors = np.linalg.eig(matrix * 0.1)
    exact = np.real(vectors @ np.diag(np.exp(eigenvalues)) @ np.linalg.inv(vectors))
    half = 0.05 * matrix
    rk4_half = np.eye(2) + half + half @ half / 2 + half @ half @ half / 6 + half @ half @ half @ half / 24
    starts = np.random.default_rng(0).uniform(-1, 1, (5, 2))
    truth, predicted = [starts], [starts]
    for _ in range(6):
        truth.append(truth[-1] @ exact.T)
        predicted.append(predicted[-1] @ (rk4_half @ rk4_half).T)
    truth, predicted = np.stack(truth, 1), np.stack(predicted, 1)
    relative, absolute = common.rollout_errors(ode, truth.astype("float32"))
    error = np.linalg.norm(predicted - truth, axis=-1)[:, 1:]
    scale = (np.linalg.norm(predicted, axis=-1) + np.linalg.norm(truth, axis=-1))[:, 1:]
    assert absolute == pytest.approx(np.mean(error), rel=1e-3, abs=1e-7)
    assert relative == pytest.approx(np.mean(error / scale), rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("key", ["uncorrected@2", "euler@1", "heun@2", "dopri_1e-3"])
def test_the_other_methods_build_and_step(common, key):
    """The kinds of run `test_every_method_runs_and_reports` leaves out (it trains 5 of the 12), built as the
    suite builds them: one step of the untrained model is the exact flow of its own f_θ to the scheme's order."""
    system = common.systems()["pendulum"]
    keras.utils.set_random_seed(0)  # `build` leaves seeding to its caller: the same weights in any test order
    model, _, field = common.build(system, key)
    x = np.random.default_rng(0).uniform(-1.0, 1.0, (8, system.dimension)).astype(np.float32)
    exact = common.exact_own_flow(field, x, system.dt)
    # About 5x each scheme's error here (untrained f_θ moves x by ~0.08 in Δt = 0.2): Euler's O(Δt²) 2.5e-3,
    # second-order Taylor and Heun at 2 steps 1e-5 and 2e-5, DormandPrince 1e-3 at float32 round-off.
    tolerance = {"uncorrected": 1e-4, "euler": 1e-2, "heun": 1e-4, "dopri_1e-3": 1e-5}[common.split_key(key)[0]]
    np.testing.assert_allclose(model(x).numpy(), exact, atol=tolerance)


@pytest.mark.example_runs
def test_every_method_runs_and_reports(suite, common, tmp_path):
    path = tmp_path / "suite.json"
    # TL-NODE, the scheme its gates compare it with and the reference: every kind of run (fixed step at 1 and
    # 2 steps per interval, corrected, adaptive) at 5 of the suite's 12 runs' cost.
    methods = ["tl_node", "rk4", "dopri"]
    argv = ["--systems", "pendulum", "--steps", "20", "--pairs", "512", "--seeds", "0", "--applications"]
    argv += ["--methods", *methods]
    report = suite.main([*argv, "--json", str(path), "--out", str(tmp_path)])
    saved = json.loads(path.read_text())
    entry = saved["systems"]["pendulum"]
    assert list(entry["runs"]) == common.run_keys(methods) == ["tl_node@1", "tl_node@2", "rk4@1", "rk4@2", "dopri"]
    for key, results in entry["runs"].items():
        (result,) = results
        assert result["train_s"] > 0 and math.isfinite(result["one_step"]), key
        assert len(result["curve"]["seconds"]) == len(result["curve"]["one_step"]) >= 2
        assert result["curve"]["steps"][-1] == 20, key  # a run trains exactly its steps
        assert result["own_flow"] >= 0.0 and result["rk4_own_flow"] >= 0.0
    # The reference reaches its own accuracy at its last point at the latest.
    assert entry["runs"]["dopri"][0]["to_accuracy_s"] is not None
    assert entry["summary"]["tl_node@2"]["nfe"]["median"] == 2 * entry["summary"]["tl_node@1"]["nfe"]["median"]
    assert (tmp_path / "systems_suite_pareto.png").stat().st_size > 0
    assert set(entry["gates"]) == set(common.GATE_NAMES) - {"time_to_accuracy_speedup_vs_dopri", "rollout_vs_dopri"}
    assert report["systems"].keys() == saved["systems"].keys()
    blocks = common.DOC_TABLES["systems_suite"].blocks
    summary = blocks["summary"](saved)
    assert summary.count("\n") == 2 and "| pendulum |" in summary
    assert blocks["gates"](saved).count("| pendulum |") == len(entry["gates"])
    assert blocks["details"](saved).count("\n| ") == 2 + len(entry["runs"])  # header, rule, one row per run


@pytest.mark.parametrize("widths", [(64,), (512, 512)])
def test_linear_field_started_near_a_matrix_computes_it(common, widths):
    near = common.stiff_near_matrix()
    field = common.linear_mlp(near, widths)()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (32, 2)).astype("float32")
    np.testing.assert_allclose(field(x).numpy(), x @ near.T, rtol=2e-3, atol=2e-3)
