"""The systems suite: its systems' truths, its summaries and gates, and every method at a tiny size."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from example_loader import load_example

import keras_tlnode as kt


@pytest.fixture(scope="module")
def suite():
    return load_example("systems_suite")


@pytest.mark.parametrize("name", ["brusselator", "lotka_volterra", "fitzhugh_nagumo", "lorenz", "pendulum"])
def test_flow_matches_a_tight_adaptive_solve(suite, name):
    system = suite.known.systems()[name]
    x = system.sample(np.random.default_rng(0), 16)

    def field(s):
        return tf.reshape(tf.numpy_function(system.field, [s], tf.float64, stateful=False), tf.shape(s))

    teacher = kt.DormandPrinceTeacher(rtol=1e-11, atol=1e-11, max_num_steps=100_000, jit_compile=False)
    solution = teacher.solve(field, tf.constant(x), system.dt)
    np.testing.assert_allclose(system.flow(x), solution.states.numpy(), rtol=1e-7, atol=1e-8)


def test_stiffness_of_a_linear_field_is_its_eigenvalue_times_dt(suite):
    system = suite.known.systems()["stiff_random"]
    stiffness = system.stiffness(samples=8)
    assert stiffness["median"] == pytest.approx(1000 * system.dt, rel=1e-4)


def test_stiff_near_start_is_near_the_true_field(suite):
    system = suite.known.systems()["stiff_near"]
    x = system.sample(np.random.default_rng(0), 64).astype("float32")
    near = x.astype("float64") @ suite.known.stiff_near_matrix().T
    np.testing.assert_allclose(system.make_field()(x).numpy(), near, rtol=1e-3, atol=1e-3)
    assert 0.03 < np.linalg.norm(near - system.field(x)) / np.linalg.norm(system.field(x)) < 0.06


def test_time_to_accuracy_is_the_first_point_within_the_target(suite):
    curve = {"seconds": [0.0, 1.0, 2.0, 3.0], "one_step": [1.0, 0.5, 0.05, 0.01]}
    assert suite.time_to_accuracy(curve, 0.06) == 2.0
    assert suite.time_to_accuracy(curve, 1e-3) is None


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
    gates = suite.gates(summary, stiff=False)
    assert gates["rollout_vs_rk4"] == {"value": pytest.approx(0.7), "bound": 0.8, "holds": True}
    assert gates["field_vs_rk4"]["holds"]
    assert not gates["train_time_vs_rk4"]["holds"]  # 2.5x
    # RK4 at 2 steps fits in TL-NODE's 5 s and has the lower rollout error.
    assert gates["rollout_vs_rk4_at_equal_cost"] == {"value": pytest.approx(1.4), "bound": 1.0, "holds": False}


def test_gates_of_a_stiff_system(suite):
    summary = summary_of(
        **{
            "tl_node@1": {"rollout_abs": 1e-3, "to_accuracy_s": 2.0},
            "dopri": {"rollout_abs": 1e-3, "to_accuracy_s": 20.0},
        }
    )
    gates = suite.gates(summary, stiff=True)
    assert gates["time_to_accuracy_speedup_vs_dopri"] == {"value": 10.0, "bound": 5.0, "holds": True}
    assert gates["rollout_vs_dopri"]["holds"]
    summary["tl_node@1"]["to_accuracy_s"]["median"] = None  # never reached the reference's accuracy
    assert not suite.gates(summary, stiff=True)["time_to_accuracy_speedup_vs_dopri"]["holds"]


def test_every_method_runs_and_reports(suite, tmp_path):
    path = tmp_path / "suite.json"
    argv = ["--systems", "pendulum", "--steps", "20", "--pairs", "512", "--seeds", "0", "--applications"]
    report = suite.main([*argv, "--json", str(path), "--out", str(tmp_path)])
    saved = json.loads(path.read_text())
    entry = saved["systems"]["pendulum"]
    assert list(entry["runs"]) == suite.run_keys(list(suite.METHODS))
    for key, results in entry["runs"].items():
        (result,) = results
        assert result["train_s"] > 0 and math.isfinite(result["one_step"]), key
        assert len(result["curve"]["seconds"]) == len(result["curve"]["one_step"]) >= 2
    # The reference reaches its own accuracy at its last point at the latest.
    assert entry["runs"]["dopri"][0]["to_accuracy_s"] is not None
    assert entry["summary"]["tl_node@2"]["nfe"]["median"] == 2 * entry["summary"]["tl_node@1"]["nfe"]["median"]
    assert entry["runs"]["dopri"][0]["own_flow"] == 0.0
    assert (tmp_path / "systems_suite_pareto.png").stat().st_size > 0
    assert set(entry["gates"]) == {
        "rollout_vs_rk4",
        "field_vs_rk4",
        "train_time_vs_rk4",
        "rollout_vs_rk4_at_equal_cost",
    } or set(entry["gates"]) == {"rollout_vs_rk4", "field_vs_rk4", "train_time_vs_rk4"}
    assert report["systems"].keys() == saved["systems"].keys()
    assert "| pendulum" in suite.markdown(saved)
