"""ContinuousNormalizingFlow against closed forms: a linear and a quadratic field, the change of variables of
the steps, normalisation, inversion, folds, the continuous-time check, Hutchinson's estimator, gradients,
training with the correction phase."""

from __future__ import annotations

import math

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


def _step_matrix(degree: int, steps: int = 8) -> np.ndarray:
    """A step of a degree-`degree` scheme on dz/dt = Az: the Taylor polynomial of e^{ΔtA}, Δt = 1/steps."""
    h = A / steps
    return sum(np.linalg.matrix_power(h, i) / math.factorial(i) for i in range(degree + 1))


# Each setting's step on a linear field is the Taylor polynomial of e^{ΔtA} of a known degree: order p
# uncorrected, degree p + 1; RK4, 4; order 1 with the untrained correction (ξ = z + Δt/3 · Az), 3.
LINEAR_STEPS = {
    "order 1": ({"order": 1}, 2),
    "order 3": ({"order": 3}, 4),
    "rk4": ({"method": "rk4"}, 4),
    "order 1 corrected": ({"order": 1, "correction": kt.MidpointCorrection()}, 3),
}


@pytest.mark.parametrize("setting", LINEAR_STEPS)
def test_linear_field_log_prob_is_the_change_of_variables_of_the_steps(setting):
    """Φ = P⁸ for the step matrix P, so log p(x) = log N(P⁸x) + 8 log det P exactly, at any step error;
    the continuous-time check gives the matrix exponential's log N(e^{TA}x) + T tr A."""
    kwargs, degree = LINEAR_STEPS[setting]
    flow = kt.ContinuousNormalizingFlow(LinearField(A), **kwargs)
    x = _points(16, -1.5, 1.5)
    step = _step_matrix(degree)
    mapped = x.astype("float64") @ np.linalg.matrix_power(step, 8).T
    log_det = 8 * np.log(np.linalg.det(step))
    z, flow_log_det = flow.encode(x)
    np.testing.assert_allclose(z, mapped, atol=2e-6)
    np.testing.assert_allclose(flow_log_det, log_det, atol=2e-6)
    np.testing.assert_allclose(flow.log_prob(x), _log_normal(mapped) + log_det, atol=1e-5)
    exact = x.astype("float64") @ _expm(A).T
    np.testing.assert_allclose(flow.continuous_log_prob(x), _log_normal(exact) + np.trace(A), atol=2e-6)
    gap = np.mean(_log_normal(mapped) + log_det - _log_normal(exact) - np.trace(A))
    assert flow.likelihood_gap(x) == pytest.approx(gap, abs=2e-6)
    if kwargs.get("method") == "rk4":
        assert flow.flow.nfe == 32


def test_config_keeps_the_name_dtype_policy_and_trainable():
    flow = kt.ContinuousNormalizingFlow(LinearField(A), dtype="float64", trainable=False, name="density")
    restored = kt.ContinuousNormalizingFlow.from_config(flow.get_config())
    assert (restored.name, restored.dtype_policy.name, restored.trainable) == ("density", "float64", False)


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


@pytest.mark.parametrize("setting", LINEAR_STEPS)
def test_decode_inverts_the_steps_exactly(setting):
    """decode = Φ⁻¹ = P⁻⁸ to rounding, whatever the steps' error against e^{TA}."""
    kwargs, degree = LINEAR_STEPS[setting]
    flow = kt.ContinuousNormalizingFlow(LinearField(A), num_steps=2, **kwargs)
    flow.encode(_points(1, 0, 1))  # builds
    base = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    decoded = flow.decode(base)
    inverse = np.linalg.inv(np.linalg.matrix_power(_step_matrix(degree, steps=2), 2))
    np.testing.assert_allclose(decoded, base @ inverse.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flow.encode(decoded)[0], base, rtol=1e-5, atol=1e-5)


class SteepField(keras.layers.Layer):
    """dz/dt = 3 tanh(10 z): an Euler step over Δt = 1, z ↦ z + 3 tanh(10 z), is one-to-one (slope ≥ 1), but
    plain Newton from z = y cycles for y near 0.5 (0.5 → -2.49 → 3.5 → 0.5 ...)."""

    def call(self, inputs):
        z, _ = inputs
        return 3.0 * keras.ops.tanh(10.0 * z)


def test_decode_damps_newton_where_the_plain_iteration_cycles():
    flow = kt.ContinuousNormalizingFlow(SteepField(), order=0, num_steps=1)
    x = np.linspace(-1.0, 1.0, 41, dtype="float32")[:, None]
    z, log_det = flow.encode(x)
    np.testing.assert_allclose(z, x + 3 * np.tanh(10 * x), rtol=1e-6, atol=1e-6)
    # float32: tanh's forward-mode rule 1 - tanh² loses the derivative to cancellation where it is below ~1e-5
    np.testing.assert_allclose(log_det, np.log(1 + 30 / np.cosh(10 * x[:, 0]) ** 2), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(flow.decode(z), x, atol=1e-5)


def test_a_folding_step_gives_nan_not_a_likelihood():
    """An Euler step over Δt = 1 of dz/dt = diag(-3, 1) z is z ↦ diag(-2, 2) z, det -4: not orientation-preserving,
    so the steps of a field that does this somewhere fold there; the flow reports NaN, not a number."""
    flow = kt.ContinuousNormalizingFlow(LinearField(np.diag([-3.0, 1.0])), order=0, num_steps=1)
    log_p = flow.log_prob(_points(4, -1, 1))
    assert np.all(np.isnan(log_p))
    safe = kt.ContinuousNormalizingFlow(LinearField(np.diag([-3.0, 1.0])), order=0, num_steps=4)
    assert np.all(np.isfinite(safe.log_prob(_points(4, -1, 1))))  # det (1/4)·(5/4) > 0 per step


def test_training_keeps_a_folded_points_likelihood_and_penalises_the_fold():
    """In training a fold's log-determinant is log|det| (a NaN would drop the point, and its gradient, from the
    likelihood, which rewarded folding), and the barrier is on its linear tail at det = -4: log 1000 + 1 + 4 / 1e-4."""
    ode = kt.TaylorLagrangeODE(LinearField(np.diag([-3.0, 1.0])), order=0, num_steps=1, time_dependent=True)
    x = _points(4, -1, 1)
    _, log_det, fold = ode.change_of_variables(x, training=True)
    np.testing.assert_allclose(log_det, np.full(4, np.log(4.0)), rtol=1e-6)
    np.testing.assert_allclose(fold, np.full(4, np.log(1000.0) + 1.0 + 4.0 / 1e-4), rtol=1e-6)
    _, log_det, fold = ode.change_of_variables(x, training=False)
    assert np.all(np.isnan(log_det)) and np.all(fold == 0.0)


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


def test_the_trained_density_integrates_to_one_and_decodes_what_it_encodes(trained):
    flow, _ = trained
    test = _two_blobs(128, seed=1)
    np.testing.assert_allclose(flow.decode(flow.encode(test)[0]), test, atol=1e-3)
    edges = np.linspace(-6.0, 6.0, 241)
    cell = (edges[1] - edges[0]) ** 2
    grid = np.stack(np.meshgrid(edges, edges), axis=-1).reshape(-1, 2).astype("float32")
    density = np.concatenate([np.exp(flow.log_prob(chunk)) for chunk in np.array_split(grid, 8)])
    assert float(density.sum() * cell) == pytest.approx(1.0, abs=0.01)


def _ring(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angle, radius = rng.uniform(0, 2 * np.pi, n), 2 + 0.25 * rng.normal(size=n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype("float32")


def _four_blobs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = 1.5 * np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    return (centres[rng.integers(0, 4, n)] + 0.3 * rng.normal(size=(n, 2))).astype("float32")


# Densities with empty space between their data (the ring's hole, the gaps between blobs), where
# maximising the likelihood squeezes the steps' volume: at 2 steps, with the fold penalty's earlier
# linear form, the ring's flow folded in its hole (17 of 81² grid points NaN). Every method at 2, 4
# and the default 8 steps, on three densities.
COARSE = {
    "ring, 2 steps": (_ring, 2),
    "four blobs, 4 steps": (_four_blobs, 4),
    "two blobs, 8 steps": (_two_blobs, 8),
}
COARSE_METHODS = {
    "uncorrected": lambda: {},
    "corrected": lambda: {"correction": kt.MidpointCorrection(hidden_units=(16,))},
    "rk4": lambda: {"method": "rk4"},
}


@pytest.fixture(scope="module", params=list(COARSE))
def coarse(request) -> tuple[dict, np.ndarray]:
    """Flows of every method fitted briefly at the density's step count (order 1, width 32, Adam 1e-2)."""
    sampler, steps = COARSE[request.param]
    flows = {}
    for name, arguments in COARSE_METHODS.items():
        keras.utils.set_random_seed(0)
        flow = kt.ContinuousNormalizingFlow(MLPField(), num_steps=steps, **arguments())
        flow.compile(optimizer=keras.optimizers.Adam(1e-2))
        flow.fit(sampler(2048), batch_size=256, epochs=15 if steps == 2 else 4, verbose=0)
        flows[name] = flow
    return flows, sampler(128, seed=1)


def test_coarse_flows_are_densities_without_folds(coarse):
    """Mass Σ exp(log_prob) · cell on an 81² grid over [-4, 4]² within 1 ± 0.02, and no fold (NaN) on it."""
    flows, _ = coarse
    edges = np.linspace(-4.0, 4.0, 81)
    grid = np.stack(np.meshgrid(edges, edges), axis=-1).reshape(-1, 2).astype("float32")
    for name, flow in flows.items():
        log_p = flow.log_prob(grid).numpy()
        assert not np.isnan(log_p).any(), f"{name}: {np.isnan(log_p).sum()} grid points fold"
        assert float(np.exp(log_p).sum() * (edges[1] - edges[0]) ** 2) == pytest.approx(1.0, abs=0.02), name


def test_coarse_flows_decode_what_they_encode(coarse):
    flows, test = coarse
    for name, flow in flows.items():
        z, _ = flow.encode(test)
        np.testing.assert_allclose(flow.decode(z), test, atol=1e-3, err_msg=name)


def _ffjord_log_prob(field: keras.layers.Layer, x: np.ndarray, tolerance: float) -> np.ndarray:
    """log p(x) of dz/dt = field([z, t]) from data (t = 0) to a standard normal (t = 1), by tfp's FFJORD (which
    maps base to data forward in time: its field is -f(z, 1 - t))."""
    import tensorflow_probability as tfp

    def base_to_data(t: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        return -field([z, tf.fill(tf.stack([tf.shape(z)[0], 1]), 1.0 - t)])

    bijector = tfp.bijectors.FFJORD(
        state_time_derivative_fn=base_to_data,
        ode_solve_fn=tfp.math.ode.DormandPrince(rtol=tolerance, atol=tolerance).solve,
        trace_augmentation_fn=tfp.bijectors.ffjord.trace_jacobian_exact,
    )
    base = tfp.distributions.MultivariateNormalDiag(tf.zeros(x.shape[1]))
    distribution = tfp.distributions.TransformedDistribution(base, bijector)
    return tf.function(distribution.log_prob)(tf.constant(x)).numpy()


def test_coarse_flows_likelihood_gap_is_their_log_prob_against_a_tight_solve(coarse):
    """The gap against the same field solved tightly by another solver (tfp's FFJORD at 1e-8)."""
    flows, test = coarse
    for name, flow in flows.items():
        tight = _ffjord_log_prob(flow.vector_field, test, 1e-8)
        np.testing.assert_allclose(flow.continuous_log_prob(test), tight, atol=2e-3, err_msg=name)
        gap = float(np.mean(flow.log_prob(test).numpy() - tight))
        assert flow.likelihood_gap(test) == pytest.approx(gap, abs=2e-3), name


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
