"""benchmarks/checkpointing.py: its problem, the runs it makes, how memory and ratios are taken, one end-to-end run.

The memory and time themselves are the script's output, never asserted here.
"""

import numpy as np
import pytest
import tensorflow as tf
from script_loader import load_benchmark

import keras_tlnode as kt


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("checkpointing")


def test_targets_are_the_exact_flow_of_a_rotation(bench):
    x, y = bench.data()
    assert x.shape == y.shape == (bench.SIZE["batch"], bench.SIZE["state"])
    solution = kt.DormandPrinceTeacher(rtol=1e-10, atol=1e-10).solve(
        lambda z: tf.stack([-z[:, 1], z[:, 0]], axis=1), tf.constant(x[:8], tf.float64), 1.0
    )
    np.testing.assert_allclose(y[:8], solution.states.numpy(), rtol=1e-5, atol=1e-6)


def test_the_longest_rollout_runs_with_checkpointing_only_and_xla_at_one_length(bench):
    runs = bench.runs_to_make({**bench.MODES["full"], "methods": ["rk4"]})
    assert ("rk4", 4096, False, "graph") not in runs and ("rk4", 4096, True, "graph") in runs
    assert {(k, c) for _, k, c, s in runs if s == "xla"} == {(8, False), (8, True), (1024, False), (1024, True)}
    assert all(("rk4", 8, c, "graph") in runs for c in (False, True))  # the memory references


def test_memory_is_taken_above_the_reference_and_ratios_within_one_length(bench):
    def run(mb, seconds):
        return {"peak_rss_mb": mb, "step_s": seconds, "first_step_s": 1.0}

    results = {
        "rk4/graph/8/False": run(700.0, 0.1),
        "rk4/graph/8/True": run(690.0, 0.1),
        "rk4/graph/64/False": run(900.0, 1.0),
        "rk4/graph/64/True": run(710.0, 1.5),
        "rk4/graph/4096/True": run(750.0, 60.0),
    }
    rows = bench.summarise(results)["rk4/graph"]
    assert rows["64"]["backprop_memory_mb"] == 200.0 and rows["64"]["checkpointed_memory_mb"] == 20.0
    assert rows["64"]["memory_ratio"] == pytest.approx(0.1) and rows["64"]["time_ratio"] == pytest.approx(1.5)
    assert "memory_ratio" not in rows["4096"] and rows["4096"]["checkpointed_memory_mb"] == 60.0
    block = bench.common.DOC_TABLES["checkpointing"].blocks["summary"]({"summary": {"rk4/graph": rows}})
    assert "| K = 64 |" in block and "**RK4, graph**" in block


@pytest.mark.example_runs
def test_main_measures_each_run_in_a_fresh_process(bench, tmp_path):
    report = bench.main(["--methods", "rk4", "--num-steps", "16", "--json", str(tmp_path / "c.json")])
    row = report["summary"]["rk4/graph"]["16"]
    assert row["backprop_step_s"] > 0 and row["checkpointed_step_s"] > 0 and "time_ratio" in row
    # Each child's own peak (VmHWM), not the pytest worker's size that ru_maxrss would carry over.
    assert all(run["peak_rss_mb"] < 1500 for run in report["runs"].values())
    assert (tmp_path / "c.json").exists()
