"""The known dynamical systems the examples learn: true fields, the regions their states come from, exact flows.

Each `System` is a vector field known in closed form (NumPy, float64), the
region its training and test states are drawn from, the time between an
observation and the next (Δt), the exact one-step flow (closed form, or
float64 RK4 at substeps of at most 5e-4, `harness.rk4_flow`) and the learned
f_θ's architecture. Nothing here is tuned for any solver: each Δt is the one
stated with its system, and `stiffness` reports Δt·|λ_max| over the region
(λ the eigenvalues of the field's Jacobian), the number that says how hard a
fixed step is.

Imported by the example scripts as a sibling module; not part of the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import harness  # sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import stiff_dynamics
import van_der_pol

Field = Callable[[np.ndarray], np.ndarray]
Sampler = Callable[[np.random.Generator, int], np.ndarray]


class System(NamedTuple):
    """A known system and the model that learns it.

    Attributes:
        description: one line for tables and docs.
        dt: time between an observation and the next.
        field: the true vector field, NumPy float64, `(n, d) -> (n, d)`.
        sample: draws `n` states of the region, `(rng, n) -> (n, d)`.
        make_field: a fresh f_θ (a Keras layer mapping `(batch, d)` to `(batch, d)`).
        learning_rate: Adam's rate, constant, or `(initial, final)` decaying exponentially over the run.
        stiff: whether the region holds time scales far shorter than Δt (the stiff linear systems).
        decays: whether trajectories settle to a point, where the relative rollout error degenerates.
        exact_flow: the closed-form one-step flow, `(n, d) -> (n, d)`, or None for `harness.rk4_flow`.
        gates: which acceptance gates of issue 19 apply (systems_suite.py): "nonlinear", "stiff"
            (the stiff system from a random start) or None.
    """

    description: str
    dt: float
    field: Field
    sample: Sampler
    make_field: Callable[[], keras.layers.Layer]
    learning_rate: float | tuple[float, float]
    stiff: bool = False
    decays: bool = False
    exact_flow: Callable[[np.ndarray], np.ndarray] | None = None
    gates: str | None = "nonlinear"

    @property
    def dimension(self) -> int:
        return int(self.sample(np.random.default_rng(0), 1).shape[-1])

    def flow(self, states: np.ndarray, dt: float | None = None) -> np.ndarray:
        """The exact states `dt` (default Δt) later, float64."""
        if self.exact_flow is not None and dt in (None, self.dt):
            return self.exact_flow(np.asarray(states, np.float64))
        return harness.rk4_flow(self.field, states, self.dt if dt is None else dt)

    def trajectories(self, starts: np.ndarray, num_steps: int) -> np.ndarray:
        """Exact states at 0, Δt, ..., num_steps·Δt from `starts`: `(n, num_steps + 1, d)`, float64."""
        states = [np.asarray(starts, np.float64)]
        for _ in range(num_steps):
            states.append(self.flow(states[-1]))
        return np.stack(states, axis=1)

    def stiffness(self, samples: int = 4096, seed: int = 0) -> dict[str, float]:
        """Δt·|λ_max| over the region: median, 90th percentile and largest, from `samples` states."""
        states = self.sample(np.random.default_rng(seed), samples)
        largest = np.max(np.abs(np.linalg.eigvals(jacobian(self.field, states))), axis=-1) * self.dt
        return {
            "median": float(np.median(largest)),
            "p90": float(np.percentile(largest, 90)),
            "max": float(largest.max()),
        }


def jacobian(field: Field, states: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """∂f/∂x at each state by central differences, `(n, d, d)`."""
    d = states.shape[-1]
    columns = []
    for i in range(d):
        step = np.zeros(d)
        step[i] = eps
        columns.append((field(states + step) - field(states - step)) / (2 * eps))
    return np.stack(columns, axis=-1)


# ---------------------------------------------------------------- the fields


def brusselator(states: np.ndarray, a: float = 1.0, b: float = 3.0) -> np.ndarray:
    """A chemical oscillator: x' = a + x²y - (b+1)x, y' = bx - x²y (a limit cycle for b > 1 + a²)."""
    x, y = states[..., 0], states[..., 1]
    return np.stack([a + x * x * y - (b + 1.0) * x, b * x - x * x * y], axis=-1)


def lotka_volterra(states: np.ndarray, a: float = 1.5, b: float = 1.0, c: float = 3.0, d: float = 1.0) -> np.ndarray:
    """Predator and prey: x' = ax - bxy, y' = -cy + dxy (closed orbits around (c/d, a/b))."""
    x, y = states[..., 0], states[..., 1]
    return np.stack([a * x - b * x * y, -c * y + d * x * y], axis=-1)


def fitzhugh_nagumo(
    states: np.ndarray, a: float = 0.7, b: float = 0.8, eps: float = 0.08, current: float = 0.5
) -> np.ndarray:
    """An excitable relaxation oscillator (a neuron): v' = v - v³/3 - w + I, w' = ε(v + a - bw)."""
    v, w = states[..., 0], states[..., 1]
    return np.stack([v - v**3 / 3.0 - w + current, eps * (v + a - b * w)], axis=-1)


LORENZ_SCALE = 10.0  # the states are the Lorenz variables divided by 10, so that f_θ's inputs are O(1)


def lorenz(states: np.ndarray, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0) -> np.ndarray:
    """The Lorenz system (chaotic, three states), in variables scaled by 1/LORENZ_SCALE."""
    x, y, z = (LORENZ_SCALE * states[..., i] for i in range(3))
    return np.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], axis=-1) / LORENZ_SCALE


def damped_pendulum(states: np.ndarray, gravity: float = 9.81, damping: float = 0.5) -> np.ndarray:
    """θ'' = -g sin θ - c θ': a pendulum of unit length that settles to rest."""
    angle, velocity = states[..., 0], states[..., 1]
    return np.stack([velocity, -gravity * np.sin(angle) - damping * velocity], axis=-1)


def limit_cycle(states: np.ndarray, kappa: float = 8.0, omega: float = 2.0) -> np.ndarray:
    """κ (1 - |x|²) x + ω R x: attraction onto the unit circle at rate κ, rotation at ω."""
    radius2 = np.sum(states**2, axis=-1, keepdims=True)
    rotation = np.stack([-states[..., 1], states[..., 0]], axis=-1)
    return kappa * (1.0 - radius2) * states + omega * rotation


# ---------------------------------------------------------------- regions and models


def box(low: list[float], high: list[float]) -> Sampler:
    """States uniform in the box [low, high]."""
    return lambda rng, n: rng.uniform(low, high, (n, len(low)))


def annulus(rng: np.random.Generator, n: int, low: float = 0.3, high: float = 1.6) -> np.ndarray:
    """States uniform in area on low ≤ |x| ≤ high."""
    radius = np.sqrt(rng.uniform(low**2, high**2, n))
    angle = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)


def mlp(dimension: int = 2, width: int = 64) -> keras.Sequential:
    """f_θ for the nonlinear systems: two tanh layers of `width`, a linear output."""
    return keras.Sequential(
        [
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(dimension),
        ]
    )


def linear_mlp(near: np.ndarray | None, widths: tuple[int, ...] = (64,)) -> Callable[[], keras.Sequential]:
    """Dense layers of `widths` → Dense(2), without activation; `near` sets the product of their kernels to that matrix."""

    def make() -> keras.Sequential:
        field = keras.Sequential([keras.layers.Dense(width) for width in widths] + [keras.layers.Dense(2)])
        field.build((None, 2))
        if near is not None:
            # x W1 ... Wk W = x near^T with W = pinv(W1 ... Wk) near^T; biases zero.
            product = np.eye(2)
            for layer in field.layers[:-1]:
                layer.bias.assign(np.zeros(layer.units, "float32"))
                product = product @ layer.kernel.numpy()
            field.layers[-1].kernel.assign((np.linalg.pinv(product) @ near.T).astype("float32"))
        return field

    return make


def stiff_near_matrix() -> np.ndarray:
    """The stiff system's matrix with its eigenvalues 5% off (-1050, -0.95): the near-true start."""
    p = stiff_dynamics.P
    return np.linalg.inv(p) @ np.diag(stiff_dynamics.EIGENVALUES * np.array([1.05, 0.95])) @ p


def stiff_system(near: bool) -> System:
    matrix = stiff_dynamics.system_matrix()
    propagator = stiff_dynamics.exact_propagator(stiff_dynamics.DT)
    return System(
        description="stiff linear, eigenvalues -1000, -1, f_θ "
        + ("started 5% off A" if near else "from a random start"),
        dt=stiff_dynamics.DT,
        field=lambda x: x @ matrix.T,
        sample=box([-0.5, -0.5], [0.5, 0.5]),
        make_field=linear_mlp(stiff_near_matrix() if near else None),
        learning_rate=1e-3 if near else (1e-2, 1e-4),
        stiff=True,
        decays=True,
        exact_flow=lambda x: x @ propagator.T,
        gates=None if near else "stiff",
    )


NONLINEAR_LEARNING_RATE = 3e-3


def systems() -> dict[str, System]:
    """Every known system, by name."""
    rate = NONLINEAR_LEARNING_RATE
    return {
        "stiff_random": stiff_system(near=False),
        "stiff_near": stiff_system(near=True),
        "brusselator": System(
            "Brusselator (chemical oscillator), a = 1, b = 3", 0.1, brusselator, box([0.5, 0.5], [3.5, 4.5]), mlp, rate
        ),
        "lotka_volterra": System(
            "Lotka-Volterra (predator-prey)", 0.25, lotka_volterra, box([1.0, 0.5], [5.0, 3.0]), mlp, rate
        ),
        "fitzhugh_nagumo": System(
            "FitzHugh-Nagumo (relaxation oscillator)", 0.3, fitzhugh_nagumo, box([-2.2, -0.6], [2.2, 1.8]), mlp, rate
        ),
        "lorenz": System(
            "Lorenz (chaotic, 3 states, scaled by 1/10)",
            0.03,
            lorenz,
            box([-2.0, -2.5, 0.5], [2.0, 2.5, 4.5]),
            lambda: mlp(3),
            rate,
        ),
        "pendulum": System(
            "damped pendulum (settles to rest)",
            0.2,
            damped_pendulum,
            box([-2.5, -4.0], [2.5, 4.0]),
            mlp,
            rate,
            decays=True,
        ),
        "van_der_pol": System(
            "Van der Pol, μ = 8 (stiff relaxation)",
            van_der_pol.DT,
            van_der_pol.vector_field,
            box([-van_der_pol.BOX] * 2, [van_der_pol.BOX] * 2),
            mlp,
            rate,
        ),
        "limit_cycle": System("limit cycle, κ = 8, ω = 2, stiff region", 0.1, limit_cycle, annulus, mlp, rate),
    }
