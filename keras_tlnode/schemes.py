"""One-step schemes, pure functions of (field, x, t, Δt) returning (x_next, remainder): the Taylor-Lagrange
step, and the classical Runge-Kutta schemes from their Butcher tableaus.

`field(x, t=None)` returns dx/dt; `t` is `None` for autonomous fields, else a
`(batch, 1)` tensor. Δt is a float, or a `(batch, 1)` tensor of one step size
per sample. `remainder` is the Lagrange term of the Taylor-Lagrange step
and zero for the classical schemes, which have none.
"""

from __future__ import annotations

import dataclasses
import functools
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


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta scheme as data: stages k_i = f(x + Δt Σ_j a_ij k_j, t + c_i Δt), x + Δt Σ_i b_i k_i.

    `a` holds the strictly lower-triangular rows (row i has i entries), as
    diffrax and tfp keep their schemes; `order` is the order the coefficients
    claim, checked at construction against the order conditions (Butcher's, up
    to order 4) and the row sums c_i = Σ_j a_ij.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        if [len(row) for row in self.a] != list(range(len(self.b))) or len(self.c) != len(self.b):
            raise ValueError(f"a Butcher tableau needs row i of `a` with i entries and one c per stage, got {self}.")
        for i, row in enumerate(self.a):
            if not math.isclose(sum(row), self.c[i], abs_tol=1e-12):
                raise ValueError(f"row {i} of `a` sums to {sum(row)}, not c_{i} = {self.c[i]}.")
        for condition, (value, exact) in order_conditions(self).items():
            if condition <= self.order and not math.isclose(value, exact, abs_tol=1e-12):
                raise ValueError(f"the tableau fails an order-{condition} condition: {value} against {exact}.")

    @property
    def stages(self) -> int:
        """Evaluations of f per step."""
        return len(self.b)


def order_conditions(tableau: ButcherTableau) -> dict[int, tuple[float, float]]:
    """Butcher's conditions up to order 4, as `{order: (worst value, its exact one)}` over that order's trees."""
    b, c, stages = tableau.b, tableau.c, range(len(tableau.b))
    a = [[tableau.a[i][j] if j < i else 0.0 for j in stages] for i in stages]
    ac = [sum(a[i][j] * c[j] for j in stages) for i in stages]  # Σ_j a_ij c_j
    trees = {
        1: [(sum(b), 1.0)],
        2: [(sum(b[i] * c[i] for i in stages), 1 / 2)],
        3: [(sum(b[i] * c[i] ** 2 for i in stages), 1 / 3), (sum(b[i] * ac[i] for i in stages), 1 / 6)],
        4: [
            (sum(b[i] * c[i] ** 3 for i in stages), 1 / 4),
            (sum(b[i] * c[i] * ac[i] for i in stages), 1 / 8),
            (sum(b[i] * a[i][j] * c[j] ** 2 for i in stages for j in stages), 1 / 12),
            (sum(b[i] * a[i][j] * ac[j] for i in stages for j in stages), 1 / 24),
        ],
    }
    return {k: max(conditions, key=lambda pair: abs(pair[0] - pair[1])) for k, conditions in trees.items()}


EULER = ButcherTableau(a=((),), b=(1.0,), c=(0.0,), order=1)
HEUN = ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)  # the explicit trapezoidal rule
RK4 = ButcherTableau(
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 0.5, 0.5, 1.0), order=4
)
CLASSICAL = {"euler": EULER, "heun": HEUN, "rk4": RK4}
"""The classical schemes by name."""


def runge_kutta_step(
    tableau: ButcherTableau, field: Field, x: tf.Tensor, t: tf.Tensor | None, dt: StepSize
) -> tuple[tf.Tensor, tf.Tensor]:
    """One explicit Runge-Kutta step of `tableau`: `(x_next, 0)`, the classical schemes having no remainder."""
    h = per_state(dt, x)
    stages: list[tf.Tensor] = []
    for row, fraction in zip(tableau.a, tableau.c, strict=True):
        state = x + _weighted(h, row, stages) if any(row) else x
        stages.append(field(state, None if t is None else t + fraction * dt if fraction else t))
    return x + _weighted(h, tableau.b, stages), tf.zeros_like(x)


def _weighted(h: StepSize, weights: tuple[float, ...], stages: list[tf.Tensor]) -> tf.Tensor:
    """Σ_j (Δt w_j) k_j over the nonzero weights: one product per stage taken (Δt w_j is a number for a float Δt)."""
    return functools.reduce(
        lambda total, term: total + term, [(h * w) * k for w, k in zip(weights, stages, strict=True) if w]
    )


def per_state(dt: StepSize, x: tf.Tensor) -> StepSize:
    """Δt shaped to scale the states `x`: a float as is, a `(batch, 1)` tensor with one axis per state axis."""
    if isinstance(dt, (int, float)):
        return dt
    return tf.reshape(tf.cast(dt, x.dtype), [-1] + [1] * (x.shape.rank - 1))


def taylor_lagrange_evaluations(order: int, corrected: bool) -> int:
    """Calls of f per Taylor-Lagrange step.

    One nested pass of order k calls f k+1 times (each call deeper in forward
    mode, so costlier than a plain call): p+1 calls without correction;
    max(p, 1) at x plus p+1 at ξ with one.
    """
    return max(order, 1) + order + 1 if corrected else order + 1
