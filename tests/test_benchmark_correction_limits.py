"""Smoke test of the correction-limits study: one system, tiny sizes, every quantity measured."""

import math

import pytest
from script_loader import load_benchmark


@pytest.mark.example_runs
def test_decomposition_reports_every_part():
    study = load_benchmark("correction_limits")
    config = {"steps": 20, "fit_updates": 5, "data_seed": 0}
    result = study.decompose("brusselator", 0, config)
    assert set(result) == {key for key, _, _ in study.COLUMNS}
    assert all(math.isfinite(value) and value >= 0 for value in result.values())
    assert 0.0 <= result["trust"] <= 1.0
