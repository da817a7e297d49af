"""Smoke test of the benchmark: parts (a) and (b) at tiny sizes."""

import math

import pytest
from example_loader import load_example


@pytest.fixture(scope="module")
def benchmark():
    return load_example("benchmark")


def test_taylor_cost_part_reports_ratios(benchmark, tmp_path):
    report = benchmark.main(["--parts", "a", "--repeats", "1", "--max-order", "1", "--json", str(tmp_path / "b.json")])
    for mode in ("graph", "xla"):
        orders = report["taylor_cost"][mode]["orders"]
        assert sorted(orders) == [0, 1]
        assert all(math.isfinite(row["ratio_to_f"]) and row["ratio_to_f"] > 0 for row in orders.values())
    assert (tmp_path / "b.json").exists()


def test_matched_latency_on_the_stiff_system(benchmark):
    result = benchmark.matched_latency("stiff linear, dt=0.002", batch=64, repeats=1, epochs=1)
    assert result["tl_node"]["nfe"] == 3
    # Γ starts at 1/(p+2), which makes the step one order more accurate than the plain Taylor step.
    assert result["tl_node"]["error"] < result["taylor2_error"]
    assert [row["tolerance"] for row in result["dopri"]] == list(benchmark.TOLERANCES)
    # Every solve takes at least one DormandPrince step (6 evaluations).
    assert all(row["nfe"] >= 6 and math.isfinite(row["error"]) for row in result["dopri"])
    matched = result["matched"]
    chosen = next(row for row in result["dopri"] if row["tolerance"] == matched["tolerance"])
    if matched["reached"]:
        assert chosen["error"] <= result["tl_node"]["error"]
    else:
        assert chosen["error"] == min(row["error"] for row in result["dopri"])
    assert matched["speedup"] == pytest.approx(chosen["ms"] / result["tl_node"]["ms"])


def test_training_step_part_splits_the_tl_step(benchmark):
    report = benchmark.training_step_cost(
        steps=2, settings=("graph",), teacher_repeats=1, warmup=1, teacher_settings=[(1e-8, "float64")]
    )
    assert list(report["settings"]) == ["graph"]
    assert all(math.isfinite(row["target_mse"]) and row["nfe"] >= 6 for row in report["teacher"])
    tight = [row["target_mse"] for row in report["teacher"] if row["tolerance"] == 1e-8]
    assert max(tight) < 1e-12  # against the exact flow
    for row in report["settings"].values():
        for key in ("tl_node", "phase1", "dopri", "teacher_per_step", "updates_per_step"):
            assert math.isfinite(row[key]) and row[key] >= 0, key
        assert row["speedup"] == pytest.approx(row["dopri"] / row["tl_node"])
    best = min(r["dopri"] for r in report["settings"].values()) / min(r["tl_node"] for r in report["settings"].values())
    assert report["best_speedup"] == pytest.approx(best)


def test_against_baseline_part_reports_time_to_accuracy_and_sizes(benchmark):
    accuracy = benchmark.time_to_accuracy(seeds=[0], steps=20)
    assert set(accuracy["summary"]) == {"tl_node@1", "dopri"}
    # The baseline reaches 1.2x its own final error at its last evaluation at the latest.
    assert accuracy["summary"]["dopri"]["to_accuracy_s"]["reached"] == 1
    # The small field in graph mode only: the large one's DormandPrince steps take a second each, XLA's
    # compilation of DormandPrince half a minute (the same loop, other widths and settings).
    sizes = benchmark.step_ratio_by_size(steps=1, warmup=1, sizes={"2-64-2": (64,)}, settings=("graph, 10/exec",))
    assert list(sizes) == ["2-64-2, graph, 10/exec"]
    for row in sizes.values():
        assert row["tl_node"] > 0 and row["ratio"] == pytest.approx(row["dopri"] / row["tl_node"])
