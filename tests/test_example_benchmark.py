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
    assert [row["tolerance"] for row in result["dopri5"]] == list(benchmark.TOLERANCES)
    # Every solve takes at least one DormandPrince step (6 evaluations).
    assert all(row["nfe"] >= 6 and math.isfinite(row["error"]) for row in result["dopri5"])
    matched = result["matched"]
    chosen = next(row for row in result["dopri5"] if row["tolerance"] == matched["tolerance"])
    if matched["reached"]:
        assert chosen["error"] <= result["tl_node"]["error"]
    else:
        assert chosen["error"] == min(row["error"] for row in result["dopri5"])
    assert matched["speedup"] == pytest.approx(chosen["ms"] / result["tl_node"]["ms"])
