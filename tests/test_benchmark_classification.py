"""Smoke tests of benchmarks/classification.py: it runs end to end at tiny sizes."""

import json
import math

import numpy as np
import pytest
from script_loader import load_benchmark

TINY = ["--epochs", "2", "--batch-size", "20", "--eval-batch-size", "15", "--steps-per-execution", "1"]


@pytest.fixture(scope="module")
def classification():
    return load_benchmark("classification")


def fake_mnist(path, train=40, test=20, **overrides):
    """A Keras-format mnist.npz of random 28x28 uint8 images and labels 0..9."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, test).astype(np.uint8),
    }
    arrays.update(overrides)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def text_file(path):
    path.write_text("not an archive")
    return path


def test_digits_are_scaled_and_split(classification):
    data = classification.load_digits(0)
    assert (len(data.x_train), len(data.x_test)) == (1437, 360)
    assert data.x_train.shape[1] == 64 and data.x_train.dtype == np.float32
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0  # pixels 0..16, divided by 16
    # Stratified: every class has about a fifth of its images in the test set.
    counts = np.bincount(data.y_test, minlength=10) / np.bincount(np.concatenate([data.y_train, data.y_test]))
    np.testing.assert_allclose(counts, 0.2, atol=0.01)


def test_methods_start_from_identical_weights(classification):
    networks = [classification.build_network(method, 64, 3, 1e-7) for method in classification.METHODS]
    reference = networks[0].ode.vector_field.get_weights() + networks[0].head.get_weights()
    for network in networks[1:]:
        weights = network.ode.vector_field.get_weights() + network.head.get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(reference, weights, strict=True))


@pytest.mark.example_runs
def test_main_trains_on_an_mnist_npz_and_writes_json_and_chart(classification, tmp_path, capsys):
    """The whole script on a local MNIST file (the digits' loading is tested above; the data path after it is
    shared): TL-NODE and its reference; taylor2 and RK4 are the package's layers, tested there."""
    path = tmp_path / "results" / "cls.json"
    mnist = fake_mnist(tmp_path / "mnist.npz")
    argv = ["--mnist", str(mnist), *TINY, "--methods", "tl_node", "dopri"]
    returned = classification.main([*argv, "--json", str(path), "--out", str(tmp_path / "plots")])
    report = json.loads(path.read_text())
    assert set(report) == {"config", "environment", "methods", "comparisons"}
    config = report["config"]
    assert (config["train_examples"], config["test_examples"], config["pixels"]) == (40, 20, 784)
    assert "MNIST" in config["data"]
    assert config["total_steps"] == 4  # 40 images in batches of 20, 2 epochs
    assert config["correction_every"] is None  # the package's default schedule
    assert config["baseline_tolerance"] == 1e-7 and config["remainder_weight"] == 10.0
    methods = report["methods"]
    assert list(methods) == ["tl_node", "dopri"]
    for name, result in methods.items():
        for key in ("train_seconds", "step_ms", "eval_seconds", "final_train_loss"):
            assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (name, key)
        assert 0 <= result["accuracy"] <= 1 and round(result["accuracy"] * 20, 6).is_integer(), name
    # Two steps of order 1: 2 * 3 evaluations with the correction.
    assert methods["tl_node"]["nfe"] == 6
    assert methods["dopri"]["nfe"] > 6  # more than one DormandPrince step
    assert methods["tl_node"]["teacher_failures"] == 0
    assert report["comparisons"]["nfe_ratio_dopri_over_tl_node"] == pytest.approx(methods["dopri"]["nfe"] / 6)
    assert returned["methods"].keys() == methods.keys()
    assert (tmp_path / "plots" / "classification.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "test accuracy" in out and "f-evals / solve" in out and "DormandPrince" in out


def test_mnist_npz_is_loaded(classification, tmp_path):
    path = fake_mnist(tmp_path / "mnist.npz", y_train=np.arange(40).reshape(40, 1) % 10)
    data = classification.load_mnist(str(path))
    assert data.x_train.shape == (40, 784) and data.x_test.shape == (20, 784)
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    np.testing.assert_array_equal(data.y_train, np.arange(40) % 10)  # (n, 1) labels are flattened


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "missing.npz", "no such file"),
        (lambda tmp: fake_mnist(tmp / "partial.npz", y_test=None), "y_test"),
        (lambda tmp: fake_mnist(tmp / "labels.npz", y_train=np.arange(3)), "not one label per image"),
        (lambda tmp: fake_mnist(tmp / "classes.npz", y_test=np.full(20, 10)), "labels outside 0..9"),
        (lambda tmp: text_file(tmp / "text.npz"), "not a readable npz archive"),
    ],
)
def test_bad_mnist_file_is_named(classification, tmp_path, capsys, make, message):
    with pytest.raises(SystemExit):
        classification.main(["--mnist", str(make(tmp_path))])
    err = capsys.readouterr().err
    assert "--mnist" in err and message in err


@pytest.mark.parametrize(
    "flag, values",
    [("--epochs", ["0"]), ("--tolerance", ["0"]), ("--train-samples", ["-1"]), ("--methods", ["tl_node"])],
)
def test_bad_flags_are_named(classification, flag, values, capsys):
    with pytest.raises(SystemExit):
        classification.main([flag, *values])
    assert flag in capsys.readouterr().err
