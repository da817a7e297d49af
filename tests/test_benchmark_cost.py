"""benchmarks/cost.py: its problem, one measurement in this process, the medians and ratios, one end-to-end run.

The timings themselves are the script's output, never asserted here: these
check what the numbers are made of.
"""

import numpy as np
import pytest
import tensorflow as tf
from script_loader import load_benchmark

import keras_tlnode as kt


@pytest.fixture(scope="module")
def example():
    return load_benchmark("cost")


@pytest.mark.parametrize("size", ["small", "larger"])
def test_targets_are_the_exact_flow_of_a_stable_linear_system(example, size):
    a, x, y = example.problem(example.SIZES[size])
    assert np.all(np.linalg.eigvals(a).real < 0)
    assert x.shape == y.shape == (20 * example.SIZES[size]["batch"], example.SIZES[size]["state"])
    # An independent solve of x' = A x over Δt (tfp's DormandPrince, tight) from a few of the states.
    solution = kt.DormandPrinceTeacher(rtol=1e-10, atol=1e-10).solve(
        lambda z: tf.matmul(z, tf.constant(a.T, z.dtype)), tf.constant(x[:8], tf.float64), example.DT
    )
    np.testing.assert_allclose(y[:8], solution.states.numpy(), rtol=1e-5, atol=1e-6)


def test_every_method_starts_from_the_same_field(example):
    size = example.SIZES["small"]
    first = [model.get_weights()[0] for model in (example.build(m, size) for m in ("floor", "rk4", "tl_node"))]
    for kernel in first[1:]:
        np.testing.assert_array_equal(kernel, first[0])


def test_a_measurement_splits_the_one_off_cost_and_counts_the_traces(example):
    result = example.measure("tl_node", "small", "graph", steps=10, segments=1)
    assert result["step_ms"] > 0 and result["tracing_s"] > 0
    assert result["one_off_s"] == pytest.approx(result["tracing_s"] + result["compilation_and_first_execution_s"])
    # Two fits, one trace of the corrected model's train step (the correction phase inside it).
    assert result["concrete_functions"] == 1
    assert result["evaluations_per_step"] == 3 and result["jit_compile_after_fit"] is False


def test_medians_and_ratios_are_taken_within_one_size_and_setting(example):
    def run(step, one_off):
        return {
            "step_ms": step,
            "one_off_s": one_off,
            "tracing_s": 0.5,
            "compilation_and_first_execution_s": one_off - 0.5,
            "evaluations_per_step": 4,
            "concrete_functions": 1,
        }

    runs = {"small": {"graph": {"rk4": [run(1.0, 2.0), run(3.0, 4.0), run(2.0, 3.0)], "euler": [run(1.0, 1.5)]}}}
    rows = example.summarise(runs)["small"]["graph"]
    assert rows["rk4"]["step_ms"] == 2.0 and rows["rk4"]["one_off_s"] == 3.0
    assert rows["euler"]["step_ratio"] == 0.5 and rows["euler"]["one_off_ratio"] == 0.5
    assert "| Euler |" in example.common.DOC_TABLES["cost"].blocks["summary"](
        {"summary": {"small": {"graph": rows}}, "config": {}}
    )


@pytest.mark.example_runs
def test_main_runs_each_method_in_a_fresh_process(example, tmp_path):
    report = example.main(
        ["--methods", "euler", "rk4", "--settings", "graph", "--steps", "10", "--json", str(tmp_path / "c.json")]
    )
    rows = report["summary"]["small"]["graph"]
    assert set(rows) == {"euler", "rk4"} and rows["rk4"]["step_ratio"] == 1.0
    assert (tmp_path / "c.json").exists()
