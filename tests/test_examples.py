"""Smoke tests of the examples: they run end to end at tiny sizes."""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stiff():
    return _load("stiff_dynamics")


def test_stiff_exact_solution(stiff):
    A = stiff.system_matrix()
    np.testing.assert_allclose(sorted(np.linalg.eigvals(A).real), [-1000.0, -1.0], rtol=1e-12)
    # expm(A h) = I + A h + O(h^2), and the propagator is a semigroup.
    h = 1e-7
    np.testing.assert_allclose((stiff.exact_propagator(h) - np.eye(2)) / h, A, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        stiff.exact_propagator(0.01) @ stiff.exact_propagator(0.01), stiff.exact_propagator(0.02), atol=1e-12
    )
    states = stiff.simulate(np.array([[0.3, -0.2]]), 3)
    assert states.shape == (1, 4, 2)
    np.testing.assert_allclose(states[0, 3], stiff.exact_propagator(0.03) @ states[0, 0], atol=1e-12)


def test_stiff_main_writes_json(stiff, tmp_path, capsys):
    path = tmp_path / "results" / "stiff.json"
    argv = ["--trajectories", "2", "--seconds", "0.2", "--test-trajectories", "2", "--epochs", "2",
            "--rollout-seconds", "0.1", "--json", str(path)]
    returned = stiff.main(argv)
    report = json.loads(path.read_text())

    assert set(report) == {"config", "environment", "methods"}
    assert report["config"]["trajectories"] == 2
    assert report["config"]["epochs"] == 2
    assert report["config"]["rollout_steps"] == 10
    assert set(report["methods"]) == {"tl_node", "taylor2", "rk4"}
    for name, result in report["methods"].items():
        assert set(result) == {"label", "train_seconds", "nfe", "final_train_loss", "one_step_mse", "rollout_rel_l2"}
        for key in ("train_seconds", "final_train_loss", "one_step_mse", "rollout_rel_l2"):
            assert isinstance(result[key], float) and math.isfinite(result[key]), (name, key, result[key])
            assert result[key] >= 0, (name, key)
    assert [report["methods"][m]["nfe"] for m in ("tl_node", "taylor2", "rk4")] == [3, 2, 4]
    assert returned["methods"].keys() == report["methods"].keys()

    out = capsys.readouterr().out
    assert "one-step MSE" in out and "RK4" in out
