"""One-step schemes and the rollout, against closed-form solutions."""

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt
from keras_tlnode.schemes import CLASSICAL, ButcherTableau, order_conditions, runge_kutta_step

A = np.array([[0.0, 1.0], [-2.0, -0.3]])


class LinearField(keras.layers.Layer):
    """f(x) = A x for a fixed matrix A (row-vector batches)."""

    def __init__(self, matrix, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix, dtype="float64")

    def call(self, x):
        return tf.matmul(x, tf.constant(self.matrix.T, x.dtype))

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix.tolist()}


class CubicDecay(keras.layers.Layer):
    """f(x) = -x³ elementwise; x(t) = x0 / sqrt(1 + 2 x0² t)."""

    def call(self, x):
        return -x * x * x


def cubic_solution(x0: np.ndarray, t: float) -> np.ndarray:
    return x0 / np.sqrt(1.0 + 2.0 * x0**2 * t)


def taylor_matrix(matrix: np.ndarray, dt: float, degree: int) -> np.ndarray:
    """Σ_{i=0..degree} (A Δt)^i / i!: the degree-`degree` Taylor polynomial of expm(A Δt)."""
    return sum(np.linalg.matrix_power(matrix * dt, i) / math.factorial(i) for i in range(degree + 1))


def solve(layer: kt.TaylorLagrangeODE, x0: np.ndarray) -> np.ndarray:
    return layer(tf.constant(x0)).numpy()


X0 = np.array([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.1]])


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_uncorrected_step_is_taylor_polynomial_of_expm(order):
    num_steps, duration = 7, 0.7
    layer = kt.TaylorLagrangeODE(
        LinearField(A, dtype="float64"), order=order, num_steps=num_steps, duration=duration, dtype="float64"
    )
    step = taylor_matrix(A, duration / num_steps, order + 1)
    expected = X0 @ np.linalg.matrix_power(step, num_steps).T
    np.testing.assert_allclose(solve(layer, X0), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method,degree", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_classical_schemes_on_linear_field_are_taylor_polynomials(method, degree):
    # On an autonomous linear field, an explicit RK method of order q with q stages
    # (q <= 4) is exactly the degree-q Taylor polynomial of expm(A Δt).
    layer = kt.FixedStepODE(LinearField(A, dtype="float64"), method=method, num_steps=5, dtype="float64")
    expected = X0 @ np.linalg.matrix_power(taylor_matrix(A, 0.2, degree), 5).T
    np.testing.assert_allclose(solve(layer, X0), expected, rtol=1e-12, atol=1e-14)


def convergence_slope(make_layer, x0: np.ndarray, steps: list[int]) -> float:
    """Slope of log(global error at t=1) against log(Δt) for the cubic-decay ODE."""
    errors = [np.abs(solve(make_layer(n), x0) - cubic_solution(x0, 1.0)).max() for n in steps]
    return float(np.polyfit(np.log([1.0 / n for n in steps]), np.log(errors), 1)[0])


@pytest.mark.parametrize("order", [1, 2])
def test_untrained_correction_gains_one_order(order):
    """Γ ≡ 1/(p+2) makes the step one order more accurate than Taylor of degree p+1."""
    x0 = np.array([[0.8, -1.2]])
    steps = [16, 32, 64, 128]

    def plain(n):
        return kt.TaylorLagrangeODE(CubicDecay(dtype="float64"), order=order, num_steps=n, dtype="float64")

    def corrected(n):
        return kt.TaylorLagrangeODE(
            CubicDecay(dtype="float64"),
            order=order,
            num_steps=n,
            correction=kt.MidpointCorrection(hidden_units=(4,), dtype="float64"),
            dtype="float64",
        )

    assert convergence_slope(plain, x0, steps) == pytest.approx(order + 1, abs=0.25)
    assert convergence_slope(corrected, x0, steps) == pytest.approx(order + 2, abs=0.25)


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_classical_convergence_orders(method, order):
    x0 = np.array([[0.8, -1.2]])

    def make(n):
        return kt.FixedStepODE(CubicDecay(dtype="float64"), method=method, num_steps=n, dtype="float64")

    assert convergence_slope(make, x0, [32, 64, 128, 256]) == pytest.approx(order, abs=0.25)


def test_hundred_steps_match_closed_form():
    layer = kt.TaylorLagrangeODE(CubicDecay(dtype="float64"), order=3, num_steps=100, duration=2.0, dtype="float64")
    np.testing.assert_allclose(solve(layer, X0), cubic_solution(X0, 2.0), rtol=1e-7)


def test_trajectory_holds_every_state():
    layer = kt.TaylorLagrangeODE(
        CubicDecay(dtype="float64"), order=3, num_steps=10, return_trajectory=True, dtype="float64"
    )
    states = solve(layer, X0)
    assert states.shape == (3, 11, 2)
    times = np.linspace(0.0, 1.0, 11)
    expected = np.stack([cubic_solution(X0, t) for t in times], axis=1)
    np.testing.assert_allclose(states, expected, rtol=2e-4)
    np.testing.assert_array_equal(states[:, 0], X0)
    final = kt.TaylorLagrangeODE(CubicDecay(dtype="float64"), order=3, num_steps=10, dtype="float64")
    np.testing.assert_allclose(states[:, -1], solve(final, X0), rtol=1e-14)


class TimeScaled(keras.layers.Layer):
    """f(x, t) = t x, whose solution from t0 is x0 exp((t² - t0²) / 2)."""

    def call(self, inputs):
        x, t = inputs
        return t * x


@pytest.mark.parametrize("correction", [False, True])
def test_time_dependent_field_matches_closed_form(correction):
    t0, duration = 0.5, 1.0
    layer = kt.TaylorLagrangeODE(
        TimeScaled(dtype="float64"),
        order=2,
        num_steps=40,
        duration=duration,
        t_initial=t0,
        time_dependent=True,
        correction=kt.MidpointCorrection(hidden_units=(4,), dtype="float64") if correction else None,
        dtype="float64",
    )
    t1 = t0 + duration
    expected = X0 * np.exp((t1**2 - t0**2) / 2)
    np.testing.assert_allclose(solve(layer, X0), expected, rtol=1e-4)


def test_time_dependent_convergence_gains_one_order_with_correction():
    """The time of ξ moves with Γ, so the gain in order holds for f(x, t) too."""
    x0 = np.array([[0.4, -0.9]])
    expected = x0 * np.exp(0.5)

    def error(n, correction):
        layer = kt.TaylorLagrangeODE(
            TimeScaled(dtype="float64"),
            order=1,
            num_steps=n,
            time_dependent=True,
            correction=kt.MidpointCorrection(hidden_units=(4,), dtype="float64") if correction else None,
            dtype="float64",
        )
        return np.abs(solve(layer, x0) - expected).max()

    steps = [16, 32, 64, 128]
    for corrected, slope in [(False, 2), (True, 3)]:
        errors = [error(n, corrected) for n in steps]
        fitted = np.polyfit(np.log([1.0 / n for n in steps]), np.log(errors), 1)[0]
        assert fitted == pytest.approx(slope, abs=0.25)


def test_classical_tableaus_satisfy_their_order_conditions_and_no_higher():
    """Butcher's conditions: each scheme meets those of its order; Euler and Heun miss the next order's."""
    for name, tableau in CLASSICAL.items():
        conditions = order_conditions(tableau)
        for order, (value, exact) in conditions.items():
            met = value == pytest.approx(exact, abs=1e-12)
            assert met == (order <= tableau.order), (name, order)
    assert [t.stages for t in CLASSICAL.values()] == [1, 2, 4]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"a": ((), (0.5,)), "b": (0.5, 0.5), "c": (0.0, 1.0), "order": 2}, "row 1 of `a` sums to 0.5, not c_1 = 1.0"),
        ({"a": ((), (1.0,)), "b": (0.25, 0.75), "c": (0.0, 1.0), "order": 2}, "order-2 condition"),
        ({"a": ((),), "b": (1.0, 0.0), "c": (0.0,), "order": 1}, "row i of `a` with i entries"),
    ],
)
def test_an_inconsistent_tableau_is_rejected(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ButcherTableau(**arguments)


def test_a_tableau_of_a_new_scheme_steps_as_its_closed_form():
    """Ralston's second-order method, given as data only, on dx/dt = A x: the degree-2 Taylor polynomial of e^{AΔt}."""
    ralston = ButcherTableau(a=((), (2 / 3,)), b=(1 / 4, 3 / 4), c=(0.0, 2 / 3), order=2)
    field = LinearField(A, dtype="float64")
    stepped, remainder = runge_kutta_step(ralston, lambda x, t: field(x), tf.constant(X0), None, 0.1)
    np.testing.assert_allclose(stepped, X0 @ taylor_matrix(A, 0.1, 2).T, rtol=1e-13)
    np.testing.assert_array_equal(remainder, 0.0)
