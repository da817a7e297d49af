"""Smoke test of the quickstart tutorial: every step runs (with 2 epochs), its truth is right."""

import numpy as np
from example_loader import load_example


def test_rk4_truth_matches_the_pendulum_flow_to_high_accuracy():
    quickstart = load_example("quickstart")
    x = np.array([[1.0, 0.5], [-2.0, 1.5]])
    # Halving the substeps of a fourth-order method changes the result by ~15/16 of its error.
    np.testing.assert_allclose(quickstart.next_states(x, 20), quickstart.next_states(x, 40), atol=1e-9)
    assert not np.allclose(quickstart.next_states(x), x)


def test_quickstart_runs(monkeypatch, capsys):
    quickstart = load_example("quickstart")
    monkeypatch.setattr(quickstart, "EPOCHS", 2)
    quickstart.main()
    output = capsys.readouterr().out
    assert "TL-NODE" in output and "DormandPrince" in output
    assert "same predictions" in output
