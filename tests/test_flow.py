"""ContinuousNormalizingFlow against closed forms: a linear and a quadratic field, normalisation, inversion,
Hutchinson's estimator, gradients, training with the correction phase on the augmented system."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt
from keras_tlnode.flow import AugmentedField

A = np.array([[-0.5, 1.0], [-1.0, -0.3]])  # tr A = -0.8


def _expm(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eig(matrix)
    return np.real(vectors @ np.diag(np.exp(values)) @ np.linalg.inv(vectors))


def _log_normal(z: np.ndarray) -> np.ndarray:
    return -0.5 * np.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * np.log(2 * np.pi)


@keras.saving.register_keras_serializable(package="tests")
class LinearField(keras.layers.Layer):
    """dz/dt = A z, with A a trainable weight."""

    def __init__(self, matrix, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix, dtype="float64")

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=self.matrix.shape, initializer=keras.initializers.Constant(self.matrix.T), name="kernel"
        )

    def call(self, inputs):
        z, _ = inputs
        return keras.ops.matmul(z, self.kernel)

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix.tolist()}


class SquareField(keras.layers.Layer):
    """dz/dt = z², elementwise: z(T) = x / (1 - T x)."""

    def call(self, inputs):
        z, _ = inputs
        return z * z


class MLPField(keras.layers.Layer):
    """f(z, t) = MLP([z, t])."""

    def __init__(self, dimension: int = 2, width: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(width, activation="tanh")
        self.out = keras.layers.Dense(dimension)

    def build(self, input_shape):
        z_shape, _ = input_shape
        self.hidden.build((None, z_shape[-1] + 1))
        self.out.build((None, self.hidden.units))

    def call(self, inputs):
        z, t = inputs
        return self.out(self.hidden(keras.ops.concatenate([z, t], axis=-1)))


def _points(n: int, low: float, high: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, (n, 2)).astype("float32")


# --- closed forms ----------------------------------------------------------------------------


@pytest.mark.parametrize(("order", "tolerance"), [(3, 2e-5), (1, 5e-3)])
def test_linear_field_log_prob_and_base_points_match_the_matrix_exponential(order, tolerance):
    """log p(x) = log N(e^{TA} x) + T tr A. At 8 steps of Δt = 1/8, order 3's local error is
    |ΔtA|⁵/5! ≈ 1e-6 per step, order 1's (the default) |ΔtA|³/3! ≈ 5e-4."""
    flow = kt.ContinuousNormalizingFlow(LinearField(A), order=order)
    x = _points(16, -1.5, 1.5)
    z, log_det = flow.encode(x)
    exact = x.astype("float64") @ _expm(A).T
    np.testing.assert_allclose(z, exact, atol=tolerance)
    np.testing.assert_allclose(log_det, np.trace(A), atol=1e-6)  # the trace is constant: exact at any order
    np.testing.assert_allclose(flow.log_prob(x), _log_normal(exact) + np.trace(A), atol=3 * tolerance)


def test_rk4_baseline_integrates_the_same_augmented_system():
    """method="rk4": 8 RK4 steps of the augmented field, local error |ΔtA|⁵/5! as order 3's."""
    flow = kt.ContinuousNormalizingFlow(LinearField(A), method="rk4")
    x = _points(16, -1.5, 1.5)
    exact = x.astype("float64") @ _expm(A).T
    np.testing.assert_allclose(flow.log_prob(x), _log_normal(exact) + np.trace(A), atol=6e-5)
    assert flow.flow.nfe == 32
    with pytest.raises(ValueError, match="correction"):
        kt.ContinuousNormalizingFlow(LinearField(A), method="rk4", correction=kt.MidpointCorrection())


def test_saved_and_reloaded_flow_gives_the_same_log_prob(tmp_path):
    flow = kt.ContinuousNormalizingFlow(LinearField(A), trace="hutchinson", correction=kt.MidpointCorrection())
    x = _points(8, -1, 1)
    expected = flow.log_prob(x)
    flow.save(tmp_path / "flow.keras")
    reloaded = keras.saving.load_model(tmp_path / "flow.keras")
    assert isinstance(reloaded, kt.ContinuousNormalizingFlow) and reloaded.trace == "hutchinson"
    assert reloaded.correction.features == 2
    np.testing.assert_allclose(reloaded.log_prob(x), expected, atol=1e-6)


def test_quadratic_field_log_prob_matches_its_closed_form():
    """dz/dt = z²: z(T) = x/(1 - Tx), ∫ tr = -2 Σ log|1 - T xᵢ|; 16 steps of order 3."""
    flow = kt.ContinuousNormalizingFlow(SquareField(), order=3, num_steps=16)
    x = _points(16, -0.4, 0.4)
    z, log_det = flow.encode(x)
    x64 = x.astype("float64")
    exact = x64 / (1 - x64)
    np.testing.assert_allclose(z, exact, atol=1e-5)
    np.testing.assert_allclose(log_det, -2 * np.sum(np.log(np.abs(1 - x64)), axis=-1), atol=1e-5)
    np.testing.assert_allclose(flow.log_prob(x), _log_normal(exact) - 2 * np.sum(np.log(1 - x64), axis=-1), atol=1e-4)


@pytest.mark.parametrize(("order", "tolerance"), [(3, 1e-5), (1, 5e-3)])
def test_decode_inverts_encode_to_the_steps_integration_error(order, tolerance):
    """Base points decoded and encoded again come back to the sum of both directions' errors,
    each relative to the state: 8 steps of |ΔtA|^(p+2)/(p+2)!, about 4e-3 at p = 1, 1e-6 at p = 3."""
    flow = kt.ContinuousNormalizingFlow(LinearField(A), order=order)
    flow.encode(_points(1, 0, 1))  # builds
    base = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    again, _ = flow.encode(flow.decode(base))
    np.testing.assert_allclose(again, base, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(flow.decode(base), base @ _expm(-A).T, rtol=tolerance, atol=tolerance)


# --- Hutchinson's estimator ------------------------------------------------------------------


def test_hutchinsons_estimate_averages_to_the_exact_trace():
    keras.utils.set_random_seed(0)
    field = MLPField()
    states = _points(4, -1, 1)
    t = np.full((4, 1), 0.3, "float32")
    exact_field = AugmentedField(field, "exact")
    exact = exact_field([np.concatenate([states, np.zeros((4, 1), "float32")], axis=1), t]).numpy()[:, 2]
    draws = 20000
    noise = np.where(np.random.default_rng(0).random((4 * draws, 2)) < 0.5, -1.0, 1.0).astype("float32")
    state = np.concatenate([np.repeat(states, draws, axis=0), np.zeros((4 * draws, 1), "float32"), noise], axis=1)
    estimates = AugmentedField(field, "hutchinson", probes=True)([state, np.repeat(t, draws, axis=0)]).numpy()
    estimates = estimates[:, 2].reshape(4, draws)
    standard_error = estimates.std(axis=1) / np.sqrt(draws)
    assert np.all(np.abs(estimates.mean(axis=1) - exact) < 4 * standard_error + 1e-6)
    # The exact trace against the Jacobian by reverse mode.
    with tf.GradientTape() as tape:
        z = tf.constant(states)
        tape.watch(z)
        f = field([z, tf.constant(t)])
    np.testing.assert_allclose(exact, np.trace(tape.batch_jacobian(f, z).numpy(), axis1=1, axis2=2), rtol=1e-5)


# --- gradients, normalisation, training ------------------------------------------------------


def test_gradients_match_finite_differences():
    keras.config.set_dtype_policy("float64")
    try:
        keras.utils.set_random_seed(0)
        flow = kt.ContinuousNormalizingFlow(MLPField(width=8))
        x = tf.constant(_points(8, -1, 1), tf.float64)
        flow.log_prob(x)

        def loss() -> tf.Tensor:
            return -tf.reduce_mean(flow(x, training=False))

        with tf.GradientTape() as tape:
            value = loss()
        gradients = tape.gradient(value, flow.trainable_variables)
        rng = np.random.default_rng(0)
        for variable, gradient in zip(flow.trainable_variables, gradients, strict=True):
            index = tuple(rng.integers(0, s) for s in variable.shape)
            original = variable.numpy()
            step = 1e-6
            shifted = []
            for sign in (1, -1):
                moved = original.copy()
                moved[index] += sign * step
                variable.assign(moved)
                shifted.append(float(loss()))
            variable.assign(original)
            numeric = (shifted[0] - shifted[1]) / (2 * step)
            np.testing.assert_allclose(gradient.numpy()[index], numeric, rtol=1e-5, atol=1e-8, err_msg=variable.path)
    finally:
        keras.config.set_dtype_policy("float32")


def _two_blobs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[-1.0, 0.5], [1.0, -0.5]])
    return (centres[rng.integers(0, 2, n)] + 0.4 * rng.normal(size=(n, 2))).astype("float32")


@pytest.fixture(scope="module")
def trained() -> kt.ContinuousNormalizingFlow:
    """A 2-D flow at the default step count and order, exact trace, with a correction, fitted to two blobs."""
    keras.utils.set_random_seed(0)
    flow = kt.ContinuousNormalizingFlow(MLPField(), correction=kt.MidpointCorrection(hidden_units=(16,)))
    flow.compile(optimizer=keras.optimizers.Adam(1e-2), correction_every=5)
    x = _two_blobs(512)
    history = flow.fit(x, batch_size=128, epochs=10, verbose=0)
    return flow, history.history


def test_training_lowers_the_nll_and_runs_the_correction_phase(trained):
    flow, history = trained
    assert history["loss"][-1] < history["loss"][0] - 0.3
    assert np.isfinite(history["correction_loss"][-1]) and history["correction_loss"][-1] > 0
    test = _two_blobs(512, seed=1)
    nll = -float(np.mean(flow.log_prob(test)))
    assert nll == pytest.approx(flow.evaluate(test, verbose=0, return_dict=True)["loss"], rel=1e-5)


def test_the_trained_density_integrates_to_one(trained):
    flow, _ = trained
    edges = np.linspace(-6.0, 6.0, 241)
    cell = (edges[1] - edges[0]) ** 2
    grid = np.stack(np.meshgrid(edges, edges), axis=-1).reshape(-1, 2).astype("float32")
    density = np.concatenate([np.exp(flow.log_prob(chunk)) for chunk in np.array_split(grid, 8)])
    assert float(density.sum() * cell) == pytest.approx(1.0, abs=0.01)


def test_hutchinson_training_evaluates_with_the_exact_trace():
    keras.utils.set_random_seed(0)
    flow = kt.ContinuousNormalizingFlow(MLPField(), trace="hutchinson", correction=kt.MidpointCorrection(), seed=3)
    flow.compile(optimizer="adam", correction_every=2)
    x = _two_blobs(64)
    history = flow.fit(x, batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(history["correction_loss"][-1])
    # Training draws new probes per call; evaluation takes the exact trace, the same on every call.
    training = [flow(x[:8], training=True).numpy() for _ in range(2)]
    assert not np.allclose(training[0], training[1])
    np.testing.assert_array_equal(flow.log_prob(x[:8]), flow.log_prob(x[:8]))
    np.testing.assert_allclose(np.mean(training), np.mean(flow.log_prob(x[:8])), atol=0.5)


def test_export_serves_log_prob_and_a_seeded_sample(trained, tmp_path):
    """The SavedModel's endpoints against the model (served without Keras: tests/test_export.py, "helper_flow")."""
    flow, _ = trained
    kt.export_saved_model(flow, str(tmp_path / "flow"))
    served = tf.saved_model.load(str(tmp_path / "flow"))
    x = _two_blobs(16, seed=2)
    np.testing.assert_allclose(served.log_prob(tf.constant(x)), flow.log_prob(x), atol=1e-5)
    np.testing.assert_allclose(served.serve(tf.constant(x)), flow.log_prob(x), atol=1e-5)
    seed = tf.constant([4, 2], tf.int32)
    points = served.sample(tf.constant(5), seed)
    base = tf.random.stateless_normal((5, 2), seed=seed)
    np.testing.assert_allclose(points, flow.decode(base), atol=1e-5)
    np.testing.assert_array_equal(points, served.sample(tf.constant(5), seed))


def test_bijector_view_composes_with_a_tfp_transformed_distribution(trained):
    import tensorflow_probability as tfp

    flow, _ = trained
    distribution = tfp.distributions.TransformedDistribution(
        tfp.distributions.MultivariateNormalDiag(tf.zeros(2)), flow.bijector()
    )
    x = _two_blobs(8, seed=3)
    np.testing.assert_allclose(distribution.log_prob(x), flow.log_prob(x), atol=1e-5)
    assert distribution.sample(4, seed=1).shape == (4, 2)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: kt.ContinuousNormalizingFlow(SquareField(), trace="probes"), ValueError, "trace"),
        (lambda: kt.ContinuousNormalizingFlow(SquareField(), seed="one"), TypeError, "seed"),
        (lambda: kt.ContinuousNormalizingFlow(SquareField(), num_steps=0), ValueError, "num_steps"),
        (
            lambda: kt.ContinuousNormalizingFlow(SquareField()).log_prob(np.zeros((2, 2), "int32")),
            TypeError,
            "floating",
        ),
        (
            lambda: kt.ContinuousNormalizingFlow(SquareField()).log_prob(np.zeros((2, 2, 2), "float32")),
            ValueError,
            "shape",
        ),
        (lambda: kt.ContinuousNormalizingFlow(SquareField()).sample(3), ValueError, "built"),
    ],
)
def test_bad_arguments_and_data_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
