"""RK4Teacher, the fixed-step reference solver: against closed forms, against DormandPrince, and in training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt

X0 = np.array([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.7]], dtype="float64")
T0 = np.array([[0.0], [1.0], [2.0]], dtype="float64")


def time_dependent_error(num_steps: int) -> float:
    """Max error for dx/dt = t x from per-sample starts and steps: x(t0 + h) = x0 exp(((t0 + h)^2 - t0^2) / 2)."""
    h = np.array([[0.5], [0.25], [0.4]])
    teacher = kt.RK4Teacher(num_steps=num_steps)
    solution = teacher.solve(lambda x, t: x * t, tf.constant(X0), tf.constant(h), tf.constant(T0))
    assert bool(solution.ok) and int(solution.nfe) == 4 * num_steps
    return float(np.max(np.abs(solution.states.numpy() - X0 * np.exp(((T0 + h) ** 2 - T0**2) / 2))))


def test_converges_at_fourth_order_to_the_closed_form():
    coarse, fine = time_dependent_error(4), time_dependent_error(8)
    assert fine < 1e-5
    assert 12 < coarse / fine < 20  # 2^4 = 16: halving the step divides the error by 16


def test_matches_a_tight_dormand_prince_solve_of_a_network_field():
    """At the default 8 steps over Δt = 0.1, a tanh MLP's flow to 1e-8: far below any TL-NODE step's error."""
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(32, "tanh", dtype="float64"), keras.layers.Dense(3, dtype="float64")]
    field = keras.Sequential([keras.Input((3,), dtype="float64"), *layers])
    x = tf.random.normal((64, 3), dtype=tf.float64)
    reference = kt.DormandPrinceTeacher(rtol=1e-12, atol=1e-12).solve(field, x, 0.1)
    ours = kt.RK4Teacher().solve(field, x, 0.1)
    assert bool(reference.ok) and bool(ours.ok)
    assert np.max(np.abs(ours.states - reference.states)) < 1e-8 * np.max(np.abs(x))


def test_solves_without_gradients_in_float64_for_float32_states():
    x = tf.constant(X0, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        solution = kt.RK4Teacher().solve(lambda z: -z, x, 0.5)
    assert solution.states.dtype == tf.float32
    assert tape.gradient(solution.states, x) is None
    np.testing.assert_allclose(solution.states, X0 * np.exp(-0.5), rtol=1e-6)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_flags_a_non_finite_solve(jit_compile):
    solution = kt.RK4Teacher(jit_compile=jit_compile).solve(lambda z: z / 0.0, tf.constant(X0), 0.1)
    assert not bool(solution.ok)


def test_teaches_the_correction_and_reloads_as_itself():
    """The known-dynamics experiment (f frozen to a stiff A, Δt·λ = -2) with RK4Teacher: Γ still beats plain Taylor 5x."""
    keras.utils.set_random_seed(0)
    p = np.array([[3.0, 1.0], [1.0, -2.0]])
    stiff = np.linalg.inv(p) @ np.diag([-1000.0, -1.0]) @ p
    values, vectors = np.linalg.eig(stiff)
    dt = 0.002
    step = (vectors @ np.diag(np.exp(values * dt)) @ np.linalg.inv(vectors)).real
    rng = np.random.default_rng(0)
    x, x_test = (rng.uniform(-0.5, 0.5, (n, 2)).astype("float32") for n in (2000, 500))
    field = keras.layers.Dense(2, use_bias=False, trainable=False)
    field.build((None, 2))
    field.set_weights([stiff.T.astype("float32")])
    inputs = keras.Input((2,))
    ode = kt.TaylorLagrangeODE(field, order=1, duration=dt, correction=kt.MidpointCorrection(hidden_units=(16,)))
    model = kt.TLNODEModel(inputs, ode(inputs))
    model.compile(
        "adam",
        "mse",
        correction_optimizer=keras.optimizers.Adam(1e-2),
        correction_every=1,
        correction_steps=1,
        teacher=kt.RK4Teacher(num_steps=8),
    )
    history = model.fit(x, (x @ step.T).astype("float32"), batch_size=200, epochs=10, verbose=0)
    corrected = np.mean((model.predict(x_test, verbose=0) - x_test @ step.T) ** 2)
    plain = np.mean((kt.TaylorLagrangeODE(field, order=1, duration=dt)(x_test).numpy() - x_test @ step.T) ** 2)
    assert corrected * 5 < plain
    assert history.history["teacher_failures"][-1] == 0 and history.history["teacher_nfe"][-1] == 32
    clone = kt.TLNODEModel(inputs, ode(inputs))
    clone.compile_from_config(model.get_compile_config())
    assert type(clone.teacher) is kt.RK4Teacher and clone.teacher.num_steps == 8
