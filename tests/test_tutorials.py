"""The tutorials of examples/ run end to end (with fewer epochs) and show what they say they show.

The serving tutorial runs in test_export.py, the multi-worker one in
test_example_multi_worker.py.
"""

import numpy as np
import pytest
from script_loader import load_example


def test_rk4_truth_matches_the_pendulum_flow_to_high_accuracy():
    quickstart = load_example("quickstart")
    x = np.array([[1.0, 0.5], [-2.0, 1.5]])
    # Halving the substeps of a fourth-order method changes the result by ~15/16 of its error.
    np.testing.assert_allclose(quickstart.next_states(x, 20), quickstart.next_states(x, 40), atol=1e-9)
    assert not np.allclose(quickstart.next_states(x), x)


def test_quickstart_runs(monkeypatch, capsys):
    quickstart = load_example("quickstart")
    monkeypatch.setattr(quickstart, "EPOCHS", 2)
    result = quickstart.main()
    # Two epochs already learn the pendulum's step far better than "nothing moves", both ways,
    # TL-NODE at its fixed 3 calls of f and the adaptive baseline at more.
    assert result["tl_mse"] < result["still_mse"] / 10 and result["dp_mse"] < result["still_mse"] / 10
    assert result["tl_nfe"] == 3 and result["dp_nfe"] > 3
    assert result["trajectory_shape"] == (3, 2, 2)  # 1 step: the state before and after, for 3 samples
    assert "same predictions" in capsys.readouterr().out


def test_spans_truth_is_the_flow_of_its_matrix():
    spans = load_example("spans")
    a, w = spans.DAMPING, spans.FREQUENCY
    matrix = np.array([[-a, -w], [w, -a]])
    x = np.array([[1.0, 0.5], [-2.0, 1.5]])
    gaps = np.array([1e-6, 0.3])
    # d/dΔ at Δ = 0 is A x; and a flow over Δ1 + Δ2 is the flow over Δ1, then over Δ2.
    np.testing.assert_allclose((spans.exact_flow(x, gaps)[0] - x[0]) / 1e-6, matrix @ x[0], rtol=1e-4)
    twice = spans.exact_flow(spans.exact_flow(x, gaps / 2), gaps / 2)
    np.testing.assert_allclose(twice, spans.exact_flow(x, gaps), atol=1e-12)


def test_spans_learns_every_gap_with_one_model(capsys):
    spans = load_example("spans")
    result = spans.main(epochs=8, series=128)
    assert result["trained"] < result["untrained"] / 10
    # The durations are used: the same model told one mean gap for every pair is far off.
    assert result["one_span"] > 5 * result["trained"]
    assert np.isfinite(result["forecast_error"])
    assert "gaps in [0.3, inf)" in capsys.readouterr().out


# End to end (22 s): in CI's example runs; test_flow.py trains a flow to a normalised density in the default suite.
@pytest.mark.example_runs
def test_density_flow_learns_a_normalised_density():
    density = load_example("density")
    result = density.main(epochs=4, samples=2048)
    assert result["nll_after"] < result["nll_before"] - 0.5
    assert result["nll_after"] > result["nll_true"] - 0.1  # no model beats the true density by more than noise
    assert result["mass"] == pytest.approx(1.0, abs=0.02)  # log_prob integrates to 1
    assert np.all(np.isfinite(result["radii"])) and result["radii"].shape == (2000,)
    assert np.isfinite(result["gap"])


def test_trajectory_recording_loses_its_energy_to_friction():
    trajectory = load_example("trajectory")
    times, truth, observed = trajectory.record(np.random.default_rng(0))
    np.testing.assert_array_equal(truth[0], trajectory.START[0])
    # E = θ'²/2 − cos θ, dE/dt = −FRICTION θ'²: the solve's energy loss is the integral of the friction's power.
    energy = truth[:, 1] ** 2 / 2 - np.cos(truth[:, 0])
    power = trajectory.FRICTION * truth[:, 1] ** 2
    dissipated = np.sum((power[1:] + power[:-1]) / 2 * np.diff(times))
    assert energy[0] - energy[-1] == pytest.approx(dissipated, rel=1e-3)
    assert np.std(observed - truth) == pytest.approx(trajectory.NOISE, rel=0.1)


def test_trajectory_fits_the_recording_with_both_methods(tmp_path, capsys):
    trajectory = load_example("trajectory")
    result = trajectory.main(epochs=3, whole_steps=2, windows_per_epoch=512, path=str(tmp_path / "fit.png"))
    for method, outcome in result["methods"].items():
        assert outcome["rollout_rmse"] < result["still_rmse"] / 4, method
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    assert "rollout over the recording" in capsys.readouterr().out
