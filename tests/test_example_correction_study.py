"""Smoke test of the correction study: every system and method at a tiny size, with truths checked."""

import json
import math

import numpy as np
import pytest
from example_loader import load_example


@pytest.fixture(scope="module")
def study():
    return load_example("correction_study")


@pytest.mark.parametrize("name", ["limit_cycle", "van_der_pol"])
def test_rk4_truth_matches_a_tight_adaptive_solve(study, name):
    import tensorflow as tf

    import keras_tlnode as kt

    system = study.systems()[name]
    x = system.sample(np.random.default_rng(0), 16)
    field = lambda s: tf.numpy_function(system.field, [s], tf.float64, stateful=False)  # noqa: E731
    teacher = kt.DormandPrinceTeacher(rtol=1e-11, atol=1e-11, max_num_steps=100_000, jit_compile=False)
    solution = teacher.solve(lambda s: tf.reshape(field(s), tf.shape(s)), tf.constant(x), system.dt)
    np.testing.assert_allclose(system.flow(x), solution.states.numpy(), rtol=1e-7, atol=1e-8)


def test_stiff_near_start_is_near_the_true_field(study):
    system = study.systems()["stiff_near"]
    x = system.sample(np.random.default_rng(0), 64).astype("float32")
    field = system.make_field()
    near = x.astype("float64") @ study.stiff_near_matrix().T
    np.testing.assert_allclose(field(x).numpy(), near, rtol=1e-3, atol=1e-3)
    assert 0.03 < np.linalg.norm(near - system.field(x)) / np.linalg.norm(system.field(x)) < 0.06


def test_systems_run_with_options(study, tmp_path):
    """One system with the options here (every method runs below; the systems' data and truths are
    checked above, and three train in test_correction_earns_its_cost.py): each run costs its tracing."""
    path = tmp_path / "study.json"
    systems = ["stiff_near"]
    argv = ["--steps", "2", "--methods", "tl_node", "--systems", *systems, "--teacher-samples", "8"]
    returned = study.main([*argv, "--json", str(path)])
    report = json.loads(path.read_text())
    assert list(report["systems"]) == systems
    assert report["config"]["tl_options"] == {"teacher_samples": 8}
    for results in report["systems"].values():
        assert math.isfinite(results["tl_node"]["one_step_mse"]) and math.isfinite(
            results["tl_node"]["field_rel_error"]
        )
        assert 0.0 <= results["tl_node"]["trust"] <= 1.0
    assert returned["systems"].keys() == report["systems"].keys()


def test_every_method_runs(study, capsys):
    report = study.main(["--steps", "2", "--systems", "stiff_random"])
    results = report["systems"]["stiff_random"]
    assert list(results) == list(study.METHODS)
    assert all(math.isfinite(r["one_step_mse"]) and r["train_seconds"] > 0 for r in results.values())
    assert "DormandPrince 1e-6" in capsys.readouterr().out
