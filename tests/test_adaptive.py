"""DormandPrinceODE (the adaptive baseline layer) and DormandPrinceTeacher, against closed-form solutions."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from layer_checks import check_layer

import keras_tlnode as kt

# dx/dt = x K (Dense without bias, row-vector states): x(t) = x0 expm(K t), with
# expm(K t) = e^{-t} [[cos 2t, sin 2t], [-sin 2t, cos 2t]] for this K.
K = np.array([[-1.0, 2.0], [-2.0, -1.0]])


def rotation_decay(t: float) -> np.ndarray:
    return math.exp(-t) * np.array([[math.cos(2 * t), math.sin(2 * t)], [-math.sin(2 * t), math.cos(2 * t)]])


def linear_field(kernel: np.ndarray) -> keras.layers.Dense:
    field = keras.layers.Dense(kernel.shape[1], use_bias=False)
    field.build((None, kernel.shape[0]))
    field.set_weights([kernel.astype("float32")])
    return field


X0 = np.array([[0.3, -0.4], [1.0, 0.5], [-0.2, 0.0]], dtype="float32")


@pytest.mark.parametrize("graph", [False, True])
def test_final_state_matches_the_matrix_exponential(graph):
    ode = kt.DormandPrinceODE(linear_field(K), duration=1.5, rtol=1e-7, atol=1e-7)
    run = tf.function(ode.solve) if graph else ode.solve
    states, nfe, _ = run(X0)
    np.testing.assert_allclose(states, X0 @ rotation_decay(1.5), atol=2e-6)
    assert 6 < int(nfe) < 1000


def test_trajectory_at_equal_intervals_and_tighter_tolerance_costs_more():
    field = linear_field(K)
    ode = kt.DormandPrinceODE(field, num_steps=4, duration=2.0, return_trajectory=True, rtol=1e-7, atol=1e-7)
    states = ode(X0)
    assert states.shape == (3, 5, 2)
    for k in range(5):
        np.testing.assert_allclose(states[:, k], X0 @ rotation_decay(0.5 * k), atol=2e-6)
    loose = kt.DormandPrinceODE(field, duration=2.0, rtol=1e-3, atol=1e-3)
    assert int(loose.solve(X0).nfe) < int(ode.solve(X0).nfe)


def test_time_dependent_field_starts_at_t_initial():
    # dx/dt = t x: x(t) = x0 exp((t^2 - t0^2) / 2).
    field = keras.layers.Lambda(lambda inputs: inputs[0] * inputs[1])
    ode = kt.DormandPrinceODE(field, duration=1.0, t_initial=0.5, time_dependent=True)
    np.testing.assert_allclose(ode(X0), X0 * math.exp((1.5**2 - 0.5**2) / 2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("graph", [False, True])
def test_adjoint_gradient_matches_the_closed_form(graph):
    # dx/dt = a x: x(T) = x0 e^{aT}, d x(T) / da = T x0 e^{aT}, d x(T) / d x0 = e^{aT}.
    a, duration = -0.7, 1.3
    field = linear_field(np.array([[a]]))
    ode = kt.DormandPrinceODE(field, duration=duration)
    x0 = tf.constant([[0.5], [-1.5]])

    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(ode(x))
        return tape.gradient(total, [field.kernel, x])

    run = tf.function(gradients) if graph else gradients
    d_kernel, d_x0 = run(x0)
    np.testing.assert_allclose(d_kernel, [[duration * math.exp(a * duration) * (0.5 - 1.5)]], rtol=1e-5)
    np.testing.assert_allclose(d_x0, np.full((2, 1), math.exp(a * duration)), rtol=1e-5)


def test_non_finite_field_gives_nan_instead_of_hanging():
    field = keras.layers.Lambda(lambda x: x / 0.0)
    solution = kt.DormandPrinceODE(field).solve(X0)
    assert np.isnan(solution.states).all()
    assert not bool(solution.ok)
    assert int(solution.nfe) < 1000


def test_layer_contract(tmp_path):
    before, after = check_layer(
        lambda: kt.DormandPrinceODE(
            keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]), rtol=1e-5, atol=1e-5
        ),
        (3,),
        (3,),
        tmp_path,
        rtol=1e-5,  # the solver's own tolerance (a reload once differed by 2e-6 under load)
    )
    assert after < 0.5 * before


def test_teacher_solves_one_interval_without_gradients():
    field = linear_field(K)
    x = tf.constant(X0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        solution = kt.DormandPrinceTeacher().solve(field, x, 0.25)
    assert bool(solution.ok)
    np.testing.assert_allclose(solution.states, X0 @ rotation_decay(0.25), atol=1e-6)
    assert tape.gradient(solution.states, x) is None


def test_teacher_shifts_time_by_each_sample_start():
    # dx/dt = t x from per-sample start times t0: x(t0 + h) = x0 exp(((t0 + h)^2 - t0^2) / 2).
    t0 = np.array([[0.0], [1.0], [2.0]], dtype="float32")
    solution = kt.DormandPrinceTeacher().solve(lambda x, t: x * t, tf.constant(X0), 0.5, tf.constant(t0))
    np.testing.assert_allclose(solution.states, X0 * np.exp(((t0 + 0.5) ** 2 - t0**2) / 2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("field, reason", [(lambda x: x / 0.0, "non-finite"), (lambda x: -1e4 * x, "step cap")])
def test_teacher_flags_failed_solves(field, reason):
    # |λ| Δt = 100 needs more than 5 DormandPrince steps for stability alone.
    solution = kt.DormandPrinceTeacher(max_num_steps=5).solve(field, tf.constant(X0), 0.01)
    assert not bool(solution.ok), reason


@pytest.mark.parametrize("jit_compile", [True, False])
def test_teacher_step_cap_stops_the_solve(jit_compile):
    # λ = -1000 over Δt = 50 needs about 10^4 stable DormandPrince steps; the cap of 50 must stop it
    # (plus the few steps, growing 10x each, that finish the interval once the cap is spent).
    def field(x):
        return x * tf.constant([-1000.0, -1.0])

    teacher = kt.DormandPrinceTeacher(max_num_steps=50, jit_compile=jit_compile)
    solution = teacher.solve(field, tf.constant(X0), 50.0)
    assert not bool(solution.ok)
    steps = tfp.math.ode.DormandPrince.ODE_FN_EVALS_PER_STEP
    assert int(solution.nfe) <= (50 + 15) * steps
    # The same teacher solves a feasible problem afterwards: the count restarts per solve.
    again = teacher.solve(lambda x: -x, tf.constant(X0), 0.5)
    assert bool(again.ok)
    np.testing.assert_allclose(again.states, X0 * np.exp(-0.5), rtol=1e-5)
