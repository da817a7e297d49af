"""The benchmarks' shared harness: what its timings leave out, its step count, its flag checks."""

import argparse
import time

import keras
import numpy as np
import pytest
from script_loader import load_benchmark

harness = load_benchmark("harness")


def _fit(log, steps_per_execution: int, epochs: int = 4, samples: int = 40, batch: int = 8):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse", steps_per_execution=steps_per_execution)
    x = np.random.default_rng(0).normal(size=(samples, 2)).astype("float32")
    start = time.perf_counter()
    model.fit(x, x, batch_size=batch, epochs=epochs, verbose=0, callbacks=[log])
    return time.perf_counter() - start


def test_training_time_leaves_the_test_error_curve_out():
    log = harness.TrainingLog("sleepy", evaluate=lambda: time.sleep(0.05) or 1.0, every=5)
    wall = _fit(log, steps_per_execution=1)
    # 20 steps, a point every 5 plus the one before training: 5 evaluations of 50 ms.
    assert log.steps == [0, 5, 10, 15, 20]
    assert wall - log.train_seconds >= 5 * 0.05
    assert log.train_seconds < wall - 0.2


@pytest.mark.parametrize("steps_per_execution", [3, 10])
def test_step_count_follows_keras_executions(steps_per_execution):
    # 5 steps per epoch; Keras reports the last step of each execution, past
    # the epoch's end for a short last execution; the count must not overshoot.
    log = harness.TrainingLog("spe", evaluate=lambda: 0.0, every=1)
    _fit(log, steps_per_execution)
    assert log.steps[-1] == 20
    assert log.steps == sorted(set(log.steps))
    assert log.step_ms > 0


def test_check_flags_names_the_flag():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--methods", nargs="+")
    with pytest.raises(SystemExit):
        harness.check_flags(parser, parser.parse_args(["--epochs", "0"]), ("epochs",))
    with pytest.raises(SystemExit):
        harness.check_flags(parser, parser.parse_args(["--methods", "a", "a"]), ("epochs",))
    harness.check_flags(parser, parser.parse_args(["--epochs", "1", "--methods", "a", "b"]), ("epochs",))


def test_relative_l2_and_median_seconds_guard():
    assert harness.relative_l2(np.array([3.0, 4.0]) * 1.1, np.array([3.0, 4.0])) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="`inputs`"):
        harness.median_seconds(lambda x: x, [1, 2])


def test_rk4_flow_takes_one_interval_per_state():
    """dx/dt = ω R x (R: rotation by 90°) turns each state by ω·dt_i: the closed form, per state."""
    omega = 3.0
    field = lambda x: omega * np.stack([-x[..., 1], x[..., 0]], axis=-1)  # noqa: E731
    x = np.random.default_rng(0).normal(size=(4, 2))
    dt = np.array([0.01, 0.1, 0.3, 0.2])
    angle = omega * dt
    turned = np.stack(
        [np.cos(angle) * x[:, 0] - np.sin(angle) * x[:, 1], np.sin(angle) * x[:, 0] + np.cos(angle) * x[:, 1]], -1
    )
    np.testing.assert_allclose(harness.rk4_flow(field, x, dt, max_substep=1e-3), turned, rtol=0, atol=1e-12)
    np.testing.assert_allclose(harness.rk4_flow(field, x, 0.3), harness.rk4_flow(field, x, np.full(4, 0.3)), atol=0)


@pytest.mark.example_runs
def test_run_script_runs_a_benchmark_as_its_command_and_returns_its_report(tmp_path):
    """How the suite's applications and benchmark.py's part (c) include another script's runs."""
    report = harness.run_script("irregular_series", ["--steps", "10", "--methods", "rk4", "--out", str(tmp_path)])
    assert list(report["methods"]) == ["rk4"] and report["config"]["steps"] == 10
    assert (tmp_path / "irregular_error_vs_gap.png").exists()
