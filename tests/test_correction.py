"""MidpointCorrection: Γ at initialisation, the point ξ, user networks, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_checks import check_layer

import keras_tlnode as kt

X = np.array([[0.3, -0.2, 0.9], [1.0, 0.5, -0.4]], dtype="float32")
FX = np.array([[1.0, 2.0, -1.0], [0.5, -0.5, 3.0]], dtype="float32")


@pytest.mark.parametrize("order", [0, 1, 3])
def test_default_gamma_starts_at_one_over_p_plus_two(order):
    ode = kt.TaylorLagrangeODE(keras.layers.Dense(3), order=order, correction=kt.MidpointCorrection())
    ode.build((None, 3))
    np.testing.assert_array_equal(ode.correction(X), np.full(X.shape, 1 / (order + 2), "float32"))


def test_matrix_gamma_starts_at_scaled_identity():
    ode = kt.TaylorLagrangeODE(keras.layers.Dense(3), order=2, correction=kt.MidpointCorrection(mode="matrix"))
    ode.build((None, 3))
    expected = np.broadcast_to(np.eye(3, dtype="float32") / 4, (2, 3, 3))
    np.testing.assert_allclose(ode.correction(X), expected, atol=1e-7)


def _linear_network(n_in: int, n_out: int, seed: int) -> tuple[keras.layers.Dense, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(n_in, n_out)).astype("float32")
    bias = rng.normal(size=(n_out,)).astype("float32")
    dense = keras.layers.Dense(n_out)
    dense.build((None, n_in))
    dense.set_weights([kernel, bias])
    return dense, kernel, bias


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("trust", [1.0, 0.4, 0.0])
def test_bounded_vector_midpoint_formula(trust):
    network, kernel, bias = _linear_network(3, 3, 0)
    correction = kt.MidpointCorrection(network=network, base_value=0.25, bounded=True)
    correction.build((None, 3))
    correction.trust_weight.assign(trust)
    xi, fraction = correction.midpoint(tf.constant(X), tf.constant(FX), 0.1)
    fitted = _sigmoid(np.log(0.25 / 0.75) + X @ kernel + bias)
    gamma = 0.25 + trust * (fitted - 0.25)
    np.testing.assert_allclose(xi, X + 0.1 * gamma * FX, rtol=1e-6)
    np.testing.assert_allclose(fraction, gamma.mean(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(correction(tf.constant(X), apply_trust=False), fitted, rtol=1e-6)


def test_bounded_gamma_stays_inside_the_step():
    """The mean-value point lies between x_k and x_{k+1}: each component of Γ in (0, 1)."""
    network = keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(50.0), bias_initializer="ones")
    correction = kt.MidpointCorrection(network=network, base_value=0.5, bounded=True)
    gamma = correction(tf.constant(np.concatenate([X, -X]))).numpy()
    assert gamma.max() <= 1.0 and gamma.min() >= 0.0
    assert gamma.max() > 0.99 and gamma.min() < 0.01


def test_default_vector_midpoint_formula_without_trust():
    network, kernel, bias = _linear_network(3, 3, 0)
    correction = kt.MidpointCorrection(network=network, base_value=0.25, trust=False)
    correction.build((None, 3))
    xi, fraction = correction.midpoint(tf.constant(X), tf.constant(FX), 0.1)
    gamma = 0.25 + X @ kernel + bias
    np.testing.assert_allclose(xi, X + 0.1 * gamma * FX, rtol=1e-6)
    np.testing.assert_allclose(fraction, gamma.mean(axis=1, keepdims=True), rtol=1e-6)
    assert not hasattr(correction, "trust_weight")


def test_trust_is_a_weight_in_the_unit_interval_and_not_fitted_by_the_teacher():
    correction = kt.MidpointCorrection(hidden_units=(4,), base_value=0.3)
    correction.build((None, 3))
    assert correction.trust_weight in correction.trainable_variables
    assert all(v is not correction.trust_weight for v in correction.fitted_variables)
    assert len(correction.fitted_variables) == 4
    keras.optimizers.SGD(10.0).apply_gradients([(tf.constant(1.0), correction.trust_weight)])
    assert float(correction.trust_weight) == 0.0


def test_version_0_1_config_loads_without_trust():
    config = kt.MidpointCorrection(hidden_units=(4,), base_value=0.3).get_config()
    del config["bounded"], config["trust"]
    clone = kt.MidpointCorrection.from_config(config)
    assert clone.bounded is False and clone.trust is False


def test_base_value_is_fixed_once_built():
    correction = kt.MidpointCorrection(base_value=0.3)
    correction.build((None, 3))
    with pytest.raises(RuntimeError, match="base_value"):
        correction.set_base_value(0.2)


def test_matrix_midpoint_formula_with_step_size_feature():
    network, kernel, bias = _linear_network(4, 9, 1)
    correction = kt.MidpointCorrection(mode="matrix", network=network, base_value=0.5, use_step_size=True)
    correction.build((None, 3))
    xi, fraction = correction.midpoint(tf.constant(X), tf.constant(FX), 0.1)
    features = np.concatenate([X, np.full((2, 1), 0.1, "float32")], axis=1)
    gamma = 0.5 * np.eye(3) + (features @ kernel + bias).reshape(2, 3, 3)
    np.testing.assert_allclose(xi, X + 0.1 * np.einsum("bij,bj->bi", gamma, FX), rtol=1e-5)
    np.testing.assert_allclose(fraction, gamma.sum(axis=2).mean(axis=1, keepdims=True), rtol=1e-5)


def test_features_limit_what_the_network_sees_to_the_leading_components():
    """A state whose trailing components do not drive the dynamics (a flow's log-density): Γ ignores them,
    places ξ for the leading ones only (the others keep γ₀), and θ̄ averages the leading ones."""
    correction = kt.MidpointCorrection(hidden_units=(4,), base_value=0.3, features=2)
    correction.build((None, 3))
    correction.network.layers[-1].kernel.assign(np.ones((4, 2), "float32"))
    x = np.array([[0.1, -0.4, 0.0], [0.1, -0.4, 7.0]], "float32")
    gamma = correction(tf.constant(x)).numpy()
    np.testing.assert_array_equal(gamma[0], gamma[1])
    assert not np.allclose(gamma[:, :2], 0.3)
    np.testing.assert_allclose(gamma[:, 2], 0.3)
    _, fraction = correction.midpoint(tf.constant(x), tf.ones((2, 3)), 0.1)
    np.testing.assert_allclose(fraction[:, 0], gamma[:, :2].mean(axis=1), rtol=1e-6)
    assert kt.MidpointCorrection.from_config(correction.get_config()).features == 2
    with pytest.raises(RuntimeError, match="features"):
        correction.set_features(1)
    with pytest.raises(ValueError, match="features"):
        kt.MidpointCorrection(base_value=0.3, features=4).build((None, 3))


@pytest.mark.parametrize("mode,n_out", [("vector", 4), ("matrix", 3)])
def test_network_of_wrong_size_is_rejected(mode, n_out):
    correction = kt.MidpointCorrection(mode=mode, network=keras.layers.Dense(n_out), base_value=0.3)
    with pytest.raises(ValueError, match="n·n = 9" if mode == "matrix" else "n = 3"):
        correction.build((None, 3))


def test_matrix_mode_needs_flat_states():
    with pytest.raises(ValueError, match="flat states"):
        kt.TaylorLagrangeODE(
            keras.layers.Conv2D(2, 3, padding="same"), correction=kt.MidpointCorrection(mode="matrix")
        )(keras.Input((4, 4, 2)))


def test_standalone_correction_needs_base_value():
    with pytest.raises(ValueError, match="base_value"):
        kt.MidpointCorrection().build((None, 3))


def test_correction_layer_contract(tmp_path):
    loss_before, loss_after = check_layer(
        lambda: kt.MidpointCorrection(hidden_units=(4,), base_value=0.3), (3,), (3,), tmp_path
    )
    assert loss_after < 0.9 * loss_before
