"""One-step schemes, pure functions of (field, x, t, Δt) returning (x_next, remainder).

`field(x, t=None)` returns dx/dt; `t` is `None` for autonomous fields, else a
`(batch, 1)` tensor. Δt is a float, or a `(batch, 1)` tensor of one step size
per sample. `remainder` is the Lagrange term of the Taylor-Lagrange step
and zero for the classical schemes, which have none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias

import tensorflow as tf

from keras_tlnode.taylor import taylor_coefficients

Field = Callable[..., tf.Tensor]
StepSize: TypeAlias = "float | tf.Tensor"
# midpoint(x, f(x), Δt) -> (ξ, θ̄): the mean-value point and the mean fraction of the step it takes.
Midpoint = Callable[[tf.Tensor, tf.Tensor, float], tuple[tf.Tensor, tf.Tensor]]
Step = Callable[[Field, tf.Tensor, "tf.Tensor | None", float], tuple[tf.Tensor, tf.Tensor]]


def taylor_lagrange_step(
    field: Field,
    x: tf.Tensor,
    t: tf.Tensor | None,
    dt: StepSize,
    order: int,
    midpoint: Midpoint | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """x + Σ_{i=1..p} Δt^i/i! · x^(i)(x) + Δt^(p+1)/(p+1)! · x^(p+1)(ξ).

    With `midpoint=None`, ξ = x (the Taylor method of degree p+1); otherwise
    ξ and θ̄ come from `midpoint(x, f(x), Δt)` (e.g. `MidpointCorrection.midpoint`,
    ξ = x + Δt · Γ_φ(x) ⊙ f(x)), and a time-dependent field is evaluated at
    t + θ̄ Δt there.
    """
    if midpoint is None:
        coefficients = taylor_coefficients(field, x, order, t)
        lower, top = coefficients[:order], coefficients[order]
    else:
        # Orders 0..p-1 at x; entry 0 is f(x), which also places ξ.
        lower = taylor_coefficients(field, x, max(order - 1, 0), t)
        xi, fraction = midpoint(x, lower[0], dt)
        t_xi = None if t is None else t + fraction * dt
        top = taylor_coefficients(field, xi, order, t_xi)[order]
        lower = lower[:order]
    h = per_state(dt, x)
    increment = tf.zeros_like(x)
    for i in range(order):
        increment += h ** (i + 1) / math.factorial(i + 1) * lower[i]
    remainder = h ** (order + 1) / math.factorial(order + 1) * top
    return x + increment + remainder, remainder


def euler_step(field: Field, x: tf.Tensor, t: tf.Tensor | None, dt: StepSize) -> tuple[tf.Tensor, tf.Tensor]:
    """x + Δt f(x, t)."""
    return x + per_state(dt, x) * field(x, t), tf.zeros_like(x)


def heun_step(field: Field, x: tf.Tensor, t: tf.Tensor | None, dt: StepSize) -> tuple[tf.Tensor, tf.Tensor]:
    """The explicit trapezoidal rule (second order, two evaluations)."""
    h = per_state(dt, x)
    k1 = field(x, t)
    k2 = field(x + h * k1, _later(t, dt))
    return x + h / 2 * (k1 + k2), tf.zeros_like(x)


def rk4_step(field: Field, x: tf.Tensor, t: tf.Tensor | None, dt: StepSize) -> tuple[tf.Tensor, tf.Tensor]:
    """The classical fourth-order Runge-Kutta step (four evaluations)."""
    h = per_state(dt, x)
    k1 = field(x, t)
    k2 = field(x + h / 2 * k1, _later(t, dt / 2))
    k3 = field(x + h / 2 * k2, _later(t, dt / 2))
    k4 = field(x + h * k3, _later(t, dt))
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), tf.zeros_like(x)


def per_state(dt: StepSize, x: tf.Tensor) -> StepSize:
    """Δt shaped to scale the states `x`: a float as is, a `(batch, 1)` tensor with one axis per state axis."""
    if isinstance(dt, (int, float)):
        return dt
    return tf.reshape(tf.cast(dt, x.dtype), [-1] + [1] * (x.shape.rank - 1))


def _later(t: tf.Tensor | None, delta: StepSize) -> tf.Tensor | None:
    return None if t is None else t + delta


CLASSICAL = {"euler": (euler_step, 1), "heun": (heun_step, 2), "rk4": (rk4_step, 4)}
"""Classical schemes by name, with their f-evaluations per step."""


def taylor_lagrange_evaluations(order: int, corrected: bool) -> int:
    """Calls of f per Taylor-Lagrange step.

    One nested pass of order k calls f k+1 times (each call deeper in forward
    mode, so costlier than a plain call): p+1 calls without correction;
    max(p, 1) at x plus p+1 at ξ with one.
    """
    return max(order, 1) + order + 1 if corrected else order + 1
