"""examples/density_estimation.py: its data, the baseline's direction convention, the tight re-evaluation.

The full comparison (four methods trained per density) takes minutes; these
check the pieces it is built from against closed forms and against the package.
"""

import keras
import numpy as np
import pytest
from example_loader import load_example

import keras_tlnode as kt


@pytest.fixture(scope="module")
def example():
    return load_example("density_estimation")


@pytest.mark.parametrize("name", ["two_moons", "eight_gaussians", "checkerboard"])
def test_two_dimensional_densities_are_reproducible_and_bounded(example, name):
    config = {"train": 500, "test": 100}
    train, test = example.make_data(name, config, seed=0)
    assert train.shape == (500, 2) and test.shape == (100, 2) and train.dtype == np.float32
    np.testing.assert_array_equal(example.make_data(name, config, seed=0)[0], train)
    assert np.all(np.abs(train) < 4)


def test_checkerboard_lies_on_the_black_squares(example):
    x = example.checkerboard(np.random.default_rng(0), 2000)
    assert np.all((np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0)


def test_digits_are_dequantised_and_standardised(example):
    train, test = example.make_data("digits", {}, seed=0)
    assert train.shape[1] == test.shape[1] == 64 and len(train) + len(test) == 1797
    both = np.concatenate([train, test])
    np.testing.assert_allclose(both.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(both.std(axis=0), 1, atol=1e-4)
    assert len(np.unique(both[:, 10])) > 1000  # continuous: noise within each of the 17 levels


class Linear(keras.layers.Layer):
    """dz/dt = A z."""

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(2, 2), initializer=keras.initializers.Constant(np.array([[-0.5, -1.0], [1.0, -0.3]]))
        )

    def call(self, inputs):
        z, _ = inputs
        return keras.ops.matmul(z, self.kernel)


def test_the_baseline_and_the_package_flow_agree_on_the_same_field(example):
    """tfp's FFJORD, given -f(z, 1 - t), integrates +f from the data as the package does: same log p(x)."""
    field = Linear()
    x = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    baseline = example.ffjord_distribution(field, 2, 1e-8, "exact").log_prob(x).numpy()
    flow = kt.ContinuousNormalizingFlow(field, method="rk4", num_steps=32)
    np.testing.assert_allclose(baseline, flow.log_prob(x), atol=1e-4)
    assert example.tight_nll(field, x, 2) == pytest.approx(-np.mean(baseline), abs=1e-5)


def test_time_to_accuracy_is_the_first_time_the_curve_reaches_the_target(example):
    curve = {"seconds": [0.0, 1.0, 2.0, 3.0], "test_nll": [3.0, 2.0, 1.5, 1.6]}
    assert example.time_to(curve, 1.55) == 2.0
    assert example.time_to(curve, 1.0) is None
