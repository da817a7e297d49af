"""Observation times: `layer(x, times=t)` returns the states at T given times, `num_steps` steps between each two."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_schemes import X0, A, LinearField, taylor_matrix

import keras_tlnode as kt

SHARED = np.array([0.0, 0.1, 0.35, 0.4, 1.2])  # irregular gaps, a 16x range
PER_SAMPLE = np.array([[0.0, 0.2, 0.5, 0.6], [1.0, 1.05, 1.6, 2.0], [-0.5, 0.0, 0.1, 0.9]])


def truth(times: np.ndarray, degree: int, num_steps: int) -> np.ndarray:
    """Each sample's states `(batch, T, 2)` under the degree-p Taylor polynomial of expm(A Δt_j), num_steps per gap."""
    times = np.broadcast_to(times, (len(X0), times.shape[-1]))
    rows = []
    for x, row in zip(X0, times, strict=True):
        states = [x]
        for gap in np.diff(row):
            step = np.linalg.matrix_power(taylor_matrix(A, gap / num_steps, degree), num_steps)
            states.append(step @ states[-1])
        rows.append(np.stack(states))
    return np.stack(rows)


def layer(method, num_steps: int = 3, **kwargs):
    field = LinearField(A, dtype="float64")
    if isinstance(method, int):
        return kt.TaylorLagrangeODE(field, order=method, num_steps=num_steps, dtype="float64", **kwargs)
    return kt.FixedStepODE(field, method=method, num_steps=num_steps, dtype="float64", **kwargs)


def _exact(x: np.ndarray, times: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eig(A)
    inverse = np.linalg.inv(vectors)
    return np.stack([np.real(vectors @ np.diag(np.exp(values * (t - times[0]))) @ inverse) @ x for t in times])


class Clock(keras.layers.Layer):
    """dx/dt = t: RK4 integrates it exactly, x(t) = x(t_0) + (t² − t_0²)/2."""

    def call(self, inputs):
        x, t = inputs
        return tf.ones_like(x) * t


DEGREE = {0: 1, 1: 2, 2: 3, 3: 4, "euler": 1, "heun": 2, "rk4": 4}


@pytest.mark.parametrize("times", [SHARED, PER_SAMPLE], ids=["shared", "per_sample"])
@pytest.mark.parametrize("method", [0, 1, 3, "euler", "rk4"])
def test_states_at_observation_times(method, times):
    states = layer(method)(tf.constant(X0), times=tf.constant(times)).numpy()
    assert states.shape == (3, times.shape[-1], 2)
    np.testing.assert_allclose(states, truth(times, DEGREE[method], 3), rtol=1e-12, atol=1e-14)


def test_dormand_prince_at_times_shared_by_the_batch():
    ode = kt.DormandPrinceODE(LinearField(A, dtype="float64"), rtol=1e-10, atol=1e-10, dtype="float64")
    states = ode(tf.constant(X0), times=tf.constant(SHARED)).numpy()
    exact = np.stack([_exact(x, SHARED) for x in X0])
    np.testing.assert_allclose(states, exact, rtol=1e-7, atol=1e-7)  # as test_spans: the solver's interpolation
    clock = kt.DormandPrinceODE(Clock(dtype="float64"), time_dependent=True, rtol=1e-10, atol=1e-10, dtype="float64")
    states = clock(tf.zeros((1, 1), tf.float64), times=tf.constant(PER_SAMPLE[1])).numpy()[0, :, 0]
    np.testing.assert_allclose(states, (PER_SAMPLE[1] ** 2 - PER_SAMPLE[1, 0] ** 2) / 2, rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError, match=r"shared by the batch, shape \(T,\)"):
        ode(tf.constant(X0), times=tf.constant(PER_SAMPLE))


def test_times_on_the_layers_grid_give_its_trajectory():
    on_grid = layer(2, num_steps=8, duration=0.8, t_initial=0.1, return_trajectory=True)(tf.constant(X0)).numpy()
    at_times = layer(2, num_steps=2)(tf.constant(X0), times=tf.constant(0.1 + 0.1 * np.arange(0, 9, 2))).numpy()
    np.testing.assert_allclose(at_times, on_grid[:, ::2], rtol=1e-12, atol=1e-14)


def test_a_time_dependent_field_sees_each_samples_own_times():
    ode = kt.FixedStepODE(Clock(dtype="float64"), method="rk4", num_steps=2, time_dependent=True, dtype="float64")
    states = ode(tf.zeros((3, 1), tf.float64), times=tf.constant(PER_SAMPLE)).numpy()[..., 0]
    np.testing.assert_allclose(states, (PER_SAMPLE**2 - PER_SAMPLE[:, :1] ** 2) / 2, rtol=1e-12, atol=1e-14)
    starts = ode.step_times(tf.zeros((3, 1), tf.float64), times=tf.constant(PER_SAMPLE)).numpy()[:, 0]
    expected = [
        t + i * gap / 2 for row in PER_SAMPLE for t, gap in zip(row[:-1], np.diff(row), strict=True) for i in range(2)
    ]
    np.testing.assert_allclose(starts, expected, rtol=1e-14)


def test_the_correction_phase_sees_every_step_start_and_size():
    ode = layer(1, num_steps=2)
    x, times = tf.constant(X0), tf.constant(PER_SAMPLE)
    starts = ode.step_starts(x, times=times).numpy().reshape(3, 6, 2)
    # Every step start: the states at the observation times and the midpoints of the gaps.
    fine = np.stack([np.sort(np.concatenate([row, (row[1:] + row[:-1]) / 2])) for row in PER_SAMPLE])
    at_fine = np.stack([truth(row, 2, 1)[i] for i, row in enumerate(fine)])
    np.testing.assert_allclose(starts, at_fine[:, :-1], rtol=1e-12, atol=1e-14)
    sizes = ode.step_sizes(x, times=times).numpy().reshape(3, 6)
    np.testing.assert_allclose(sizes, np.repeat(np.diff(PER_SAMPLE) / 2, 2, axis=1), rtol=1e-14)


def test_fit_on_whole_trajectories_with_the_correction_phase(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(64, 2))
    times = np.sort(rng.uniform(0.0, 1.5, (64, 6)), axis=1)
    targets = np.stack([_exact(x, row) for x, row in zip(x0, times, strict=True)])
    state, observed = keras.Input((2,)), keras.Input((6,))
    field = keras.Sequential([keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(2)])
    ode = kt.TaylorLagrangeODE(
        field, num_steps=2, correction=kt.MidpointCorrection(hidden_units=(8,)), gradient_checkpointing=True
    )
    model = kt.TLNODEModel([state, observed], ode(state, times=observed))
    assert model.output_shape == (None, 6, 2)
    model.compile(keras.optimizers.Adam(1e-2), "mse", correction_every=2)
    inputs = [x0.astype("float32"), times.astype("float32")]
    history = model.fit(inputs, targets.astype("float32"), batch_size=32, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0], history["loss"]
    assert history["nfe"][-1] == ode.nfe * 5  # T − 1 = 5 gaps of num_steps steps each
    assert min(history["teacher_nfe"]) > 0  # the teacher solved every step start of the trajectories
    predictions = model.predict(inputs, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), predictions, rtol=1e-6)
    kt.export_saved_model(model, tmp_path / "served")  # serves [state, times]
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.serve(inputs).numpy(), predictions, rtol=1e-5, atol=1e-6)


def test_a_number_of_times_known_only_at_run_time_and_xla():
    ode = layer(2)
    expected = ode(tf.constant(X0), times=tf.constant(PER_SAMPLE)).numpy()
    dynamic = tf.function(
        lambda x, t: ode(x, times=t),
        input_signature=[tf.TensorSpec((None, 2), tf.float64), tf.TensorSpec((None, None), tf.float64)],
    )
    np.testing.assert_allclose(dynamic(tf.constant(X0), tf.constant(PER_SAMPLE)), expected, rtol=1e-14)
    compiled = tf.function(lambda x, t: ode(x, times=t), jit_compile=True)
    np.testing.assert_allclose(compiled(tf.constant(X0), tf.constant(PER_SAMPLE)), expected, rtol=1e-12)


def test_mixed_precision_steps_in_float16_at_times_relative_to_the_start():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        ode = kt.FixedStepODE(LinearField(A), method="rk4", num_steps=3)
        states = ode(tf.constant(X0, tf.float32), times=tf.constant(PER_SAMPLE - PER_SAMPLE[:, :1], tf.float32))
    finally:
        keras.config.set_dtype_policy("float32")
    assert states.dtype == tf.float16
    np.testing.assert_allclose(states.numpy(), truth(PER_SAMPLE, 4, 3), rtol=1e-2, atol=2e-3)
