"""Per-sample time spans: a layer called on [x, duration] integrates each sample over its own interval."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_schemes import X0, A, LinearField, taylor_matrix

import keras_tlnode as kt

DURATIONS = np.array([0.05, 0.4, 1.3])  # a 26x range of spans


def per_sample_truth(degree: int, num_steps: int, trajectory: bool = False) -> np.ndarray:
    """Each sample's own propagator: the degree-p Taylor polynomial of expm(A Δt_i), to the power k."""
    rows = []
    for x0, duration in zip(X0, DURATIONS, strict=True):
        step = taylor_matrix(A, duration / num_steps, degree)
        states = [x0 @ np.linalg.matrix_power(step, k).T for k in range(num_steps + 1)]
        rows.append(np.stack(states) if trajectory else states[-1])
    return np.stack(rows)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_taylor_steps_over_per_sample_spans(order):
    layer = kt.TaylorLagrangeODE(LinearField(A, dtype="float64"), order=order, num_steps=3, dtype="float64")
    states = layer([tf.constant(X0), tf.constant(DURATIONS)]).numpy()
    np.testing.assert_allclose(states, per_sample_truth(order + 1, 3), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method, degree", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_classical_steps_over_per_sample_spans_with_a_trajectory(method, degree):
    layer = kt.FixedStepODE(
        LinearField(A, dtype="float64"), method=method, num_steps=4, return_trajectory=True, dtype="float64"
    )
    states = layer([tf.constant(X0), tf.constant(DURATIONS[:, None])]).numpy()
    np.testing.assert_allclose(states, per_sample_truth(degree, 4, trajectory=True), rtol=1e-12, atol=1e-14)


def test_time_dependent_field_sees_each_samples_own_times():
    # dx/dt = t: each sample's own grid t_initial + k Δt_i; RK4 is exact for a linear-in-t field.
    class Clock(keras.layers.Layer):
        def call(self, inputs):
            x, t = inputs
            return tf.ones_like(x) * t

    layer = kt.FixedStepODE(
        Clock(dtype="float64"), method="rk4", num_steps=2, time_dependent=True, t_initial=1.0, dtype="float64"
    )
    states = layer([tf.zeros((3, 1), tf.float64), tf.constant(DURATIONS)]).numpy()
    t1 = 1.0 + DURATIONS
    np.testing.assert_allclose(states[:, 0], (t1**2 - 1.0) / 2, rtol=1e-12)


def test_functional_model_with_two_inputs_and_a_correction():
    x = keras.Input((2,))
    duration = keras.Input(())
    ode = kt.TaylorLagrangeODE(LinearField(A), num_steps=2, correction=kt.MidpointCorrection(use_step_size=True))
    model = keras.Model([x, duration], ode([x, duration]))
    assert model.output_shape == (None, 2)
    out = model.predict([X0.astype("float32"), DURATIONS.astype("float32")], verbose=0)
    # γ₀ = 1/3 with a zero network: the order-1 corrected step on a linear field is the cubic Taylor polynomial.
    np.testing.assert_allclose(out, per_sample_truth(3, 2), rtol=1e-5, atol=1e-6)


OSCILLATOR = np.array([[0.0, 1.0], [-9.0, -0.6]])


def flow(x: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """The exact flow of dx/dt = OSCILLATOR x over each sample's duration (eigendecomposition)."""
    values, vectors = np.linalg.eig(OSCILLATOR)
    inverse = np.linalg.inv(vectors)
    return np.stack(
        [np.real(vectors @ np.diag(np.exp(values * d)) @ inverse) @ row for row, d in zip(x, durations, strict=True)]
    )


def test_a_duration_conditioned_correction_serves_unseen_durations():
    """f frozen to the true field; Γ_φ takes Δt as a feature, is fitted on 5 durations and tested between them."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    seen = np.array([0.1, 0.15, 0.2, 0.25, 0.3])
    x = rng.uniform(-1, 1, (2048, 2))
    d = rng.choice(seen, 2048)
    x_test = rng.uniform(-1, 1, (512, 2))
    d_test = rng.choice(seen[:-1], 512) + 0.025  # never seen in training

    def layer(correction):
        field = keras.layers.Dense(2, use_bias=False, trainable=False)
        field.build((None, 2))
        field.set_weights([OSCILLATOR.T.astype("float32")])
        return kt.TaylorLagrangeODE(field, order=1, correction=correction)

    state, duration = keras.Input((2,)), keras.Input(())
    ode = layer(kt.MidpointCorrection(hidden_units=(32,), use_step_size=True, trust=False))
    model = kt.TLNODEModel([state, duration], ode([state, duration]))
    model.compile(optimizer="sgd", loss="mse", correction_every=1, correction_steps=1, teacher_samples=None)
    model.fit(
        [x.astype("float32"), d.astype("float32")], flow(x, d).astype("float32"), batch_size=128, epochs=25, verbose=0
    )
    truth = flow(x_test, d_test)
    inputs = [tf.constant(x_test, tf.float32), tf.constant(d_test, tf.float32)]
    corrected = np.mean((ode(inputs).numpy() - truth) ** 2)
    uncorrected = np.mean((layer(None)(inputs).numpy() - truth) ** 2)
    assert corrected * 5 <= uncorrected, (corrected, uncorrected)


def test_dormand_prince_over_per_sample_spans_with_a_trajectory():
    ode = kt.DormandPrinceODE(
        LinearField(A, dtype="float64"), num_steps=2, return_trajectory=True, rtol=1e-10, atol=1e-10, dtype="float64"
    )
    states = ode([tf.constant(X0), tf.constant(DURATIONS)]).numpy()
    values, vectors = np.linalg.eig(A)
    for i, duration in enumerate(DURATIONS):
        for k in range(3):
            propagator = np.real(vectors @ np.diag(np.exp(values * duration * k / 2)) @ np.linalg.inv(vectors))
            np.testing.assert_allclose(states[i, k], propagator @ X0[i], rtol=1e-7, atol=1e-7)


def test_export_serves_state_and_duration(tmp_path):
    import subprocess

    import child_process

    state, duration = keras.Input((2,), name="state"), keras.Input((), name="duration")
    ode = kt.TaylorLagrangeODE(LinearField(A), num_steps=2, correction=kt.MidpointCorrection(use_step_size=True))
    model = keras.Model([state, duration], ode([state, duration]))
    kt.export_saved_model(model, tmp_path / "served", trajectory=True)
    model.export(tmp_path / "keras", verbose=False)  # Keras's own export takes the same two inputs
    x, d = X0.astype("float32"), DURATIONS.astype("float32")
    expected = model.predict([x, d], verbose=0)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "d.npy", d)
    command = child_process.command("serve_state_and_duration.py", str(tmp_path))
    env = child_process.environment()
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    served, shape = run.stdout.strip().rsplit(" (", 1)
    np.testing.assert_allclose(np.array(eval(served)), expected, atol=1e-6)
    assert shape.startswith("3, 3, 2")
