"""Smoke test of the irregular-series benchmark: its data against a tight adaptive solve, its report and plot."""

import json
import math

import numpy as np
import pytest
from script_loader import load_benchmark


@pytest.fixture(scope="module")
def example():
    return load_benchmark("irregular_series")


def test_observations_follow_the_true_flow_over_each_gap(example):
    import tensorflow as tf

    import keras_tlnode as kt

    data = example.observe(np.random.default_rng(0), 8)
    assert data["gap"].min() >= example.GAPS[0] and data["gap"].max() <= example.GAPS[1]
    x = tf.constant(data["x"], tf.float64)
    field = lambda s: tf.reshape(tf.numpy_function(example.true_field, [s], tf.float64, stateful=False), tf.shape(s))  # noqa: E731
    teacher = kt.DormandPrinceTeacher(rtol=1e-11, atol=1e-11, max_num_steps=100_000, jit_compile=False)
    solution = teacher.solve(field, x, tf.constant(data["gap"][:, None], tf.float64))
    # The data is float32; the teacher solves over each state's own gap.
    np.testing.assert_allclose(solution.states.numpy(), data["y"], rtol=0, atol=1e-6)


def test_bins_split_the_error_without_losing_a_pair(example):
    data = example.observe(np.random.default_rng(1), 64)
    prediction = data["y"] + np.random.default_rng(2).normal(scale=1e-2, size=data["y"].shape)
    per_bin = example.mse_per_bin(prediction, data)
    edges = example.GAP_BINS * np.array([0.999] + [1.0] * (len(example.GAP_BINS) - 2) + [1.001])  # float32 gaps
    counts = np.histogram(data["gap"], edges)[0]
    assert counts.sum() == len(data["gap"]) and (counts > 0).all()
    total = np.mean((prediction - data["y"]) ** 2)
    np.testing.assert_allclose(np.dot(per_bin, counts) / counts.sum(), total, rtol=1e-6)


@pytest.mark.example_runs
def test_main_writes_table_json_and_plot(example, tmp_path, capsys):
    path = tmp_path / "irregular.json"
    # Two methods: every layer's per-sample spans are tested in tests/test_spans.py.
    returned = example.main(
        ["--steps", "10", "--methods", "tl_node", "dopri", "--json", str(path), "--out", str(tmp_path)]
    )
    report = json.loads(path.read_text())
    assert list(report["methods"]) == ["tl_node", "dopri"]
    for result in report["methods"].values():
        assert len(result["mse_per_gap_bin"]) == len(report["gap_bins"]) - 1
        assert all(
            math.isfinite(v) for v in [*result["mse_per_gap_bin"], result["one_step_mse"], result["field_rel_error"]]
        )
        assert result["predict_ms"] > 0
    assert report["methods"]["tl_node"]["nfe"] == 3 * example.NUM_STEPS  # order 1 + correction: 3 f-calls a step
    assert report["methods"]["dopri"]["nfe"] > example.NUM_STEPS
    assert (tmp_path / "irregular_error_vs_gap.png").stat().st_size > 0
    assert "gap 0.02-0.04" in capsys.readouterr().out
    assert returned["methods"].keys() == report["methods"].keys()
