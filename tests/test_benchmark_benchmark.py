"""Smoke test of the benchmark: parts (a) and (b) at tiny sizes."""

import math

import pytest
from script_loader import load_benchmark


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark("benchmark")


def test_taylor_cost_part_reports_ratios(benchmark, tmp_path):
    report = benchmark.main(["--parts", "a", "--repeats", "1", "--max-order", "1", "--json", str(tmp_path / "b.json")])
    for mode in ("graph", "xla"):
        orders = report["taylor_cost"][mode]["orders"]
        assert sorted(orders) == [0, 1]
        assert all(math.isfinite(row["ratio_to_f"]) and row["ratio_to_f"] > 0 for row in orders.values())
    assert (tmp_path / "b.json").exists()


@pytest.mark.example_runs
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


def test_training_step_part_splits_the_tl_step(benchmark, monkeypatch):
    """Part (d)'s arithmetic on known step times (the timing itself, `ms_per_step`, runs for real in part (e)'s
    test below), with every model built as the part builds it, and its teacher's accuracy for real."""

    def known_ms(model, dataset, steps, warmup):
        if not hasattr(model, "correction_every"):
            return 30.0  # DormandPrince
        if model.correction_every == 10**9:
            return 2.0  # phase 1 alone
        if model.correction_every == 1:
            return 4.0 + 0.5 * (model.correction_steps - 1)  # + teacher 1.5 + 0.5 per update
        return 3.0  # the defaults

    monkeypatch.setattr(benchmark, "ms_per_step", known_ms)
    report = benchmark.training_step_cost(
        steps=2, settings=("graph", "XLA"), teacher_repeats=1, warmup=1, teacher_settings=[(1e-8, "float64")]
    )
    assert list(report["settings"]) == ["graph", "XLA"]
    assert all(math.isfinite(row["target_mse"]) and row["nfe"] >= 6 for row in report["teacher"])
    tight = [row["target_mse"] for row in report["teacher"] if row["tolerance"] == 1e-8]
    assert max(tight) < 1e-12  # against the exact flow
    every, updates = report["correction_every"], report["correction_steps"]
    for row in report["settings"].values():
        assert row["teacher_per_step"] == pytest.approx(1.5 / every)
        assert row["updates_per_step"] == pytest.approx(0.5 * updates / every)
        assert row["teacher_share"] == pytest.approx((1.5 + 0.5 * updates) / every / 3.0)
        assert row["speedup"] == pytest.approx(10.0)
    assert report["best_speedup"] == pytest.approx(10.0)


@pytest.mark.example_runs
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
