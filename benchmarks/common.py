"""What the benchmark scripts share besides harness.py: the known systems, how the suite learns one, the docs' tables.

Each benchmark is a script (`python benchmarks/<name>.py`) that imports harness.py
and this module as siblings and never another script: what two scripts, or a
script and docs_tables.py, need is defined here once. Nothing here is part of
the keras_tlnode package. Three parts:

- **The known systems**: each `System` is a vector field known in closed form
  (NumPy, float64), the region its training and test states are drawn from,
  the time between an observation and the next (Δt), the exact one-step flow
  (closed form, or float64 RK4 at substeps of at most 5e-4,
  `harness.rk4_flow`) and the learned f_θ's architecture. Nothing here is
  tuned for any solver: each Δt is the one stated with its system, and
  `stiffness` reports Δt·|λ_max| over the region (λ the eigenvalues of the
  field's Jacobian), the number that says how hard a fixed step is.
- **Learning a known system**: one run of the systems suite (data, model,
  training, measurements) and the summaries over seeds; correction_limits.py
  and benchmark.py part (e) train exactly as the suite does through them.
- **The docs' tables**: for each script whose committed results the docs
  show, the results files and the functions that render each generated block
  from them (`DOC_TABLES`, read by docs_tables.py), with the table columns the
  scripts also print.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import harness  # sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

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


# ---------------------------------------------------------------- the stiff linear system

# dx/dt = A x with A = P^-1 diag(-1000, -1) P (stiff_dynamics.py learns it; so do the suite and the benchmark).
STIFF_DT = 0.01
STIFF_EIGENVALUES = np.array([-1000.0, -1.0])
STIFF_P = np.array([[3.0, 1.0], [1.0, -2.0]])


def stiff_matrix() -> np.ndarray:
    """A = P^-1 diag(-1000, -1) P."""
    return np.linalg.inv(STIFF_P) @ np.diag(STIFF_EIGENVALUES) @ STIFF_P


def stiff_propagator(dt: float) -> np.ndarray:
    """expm(A dt) = P^-1 diag(exp(λ dt)) P, from A's eigendecomposition (float64)."""
    return np.linalg.inv(STIFF_P) @ np.diag(np.exp(STIFF_EIGENVALUES * dt)) @ STIFF_P


# ---------------------------------------------------------------- the nonlinear fields


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


# Van der Pol with μ = 8 at Δt = 0.05 from states in [-3, 3]² (van_der_pol.py learns it; so does the suite).
VAN_DER_POL_MU = 8.0
VAN_DER_POL_DT = 0.05
VAN_DER_POL_BOX = 3.0


def van_der_pol(states: np.ndarray, mu: float = VAN_DER_POL_MU) -> np.ndarray:
    """The Van der Pol field at `states` (..., 2): x' = y, y' = μ (1 - x²) y - x."""
    x, y = states[..., 0], states[..., 1]
    return np.stack([y, mu * (1.0 - x**2) * y - x], axis=-1)


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
    return np.linalg.inv(STIFF_P) @ np.diag(STIFF_EIGENVALUES * np.array([1.05, 0.95])) @ STIFF_P


def stiff_system(near: bool) -> System:
    matrix = stiff_matrix()
    propagator = stiff_propagator(STIFF_DT)
    return System(
        description="stiff linear, eigenvalues -1000, -1, f_θ "
        + ("started 5% off A" if near else "from a random start"),
        dt=STIFF_DT,
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
            VAN_DER_POL_DT,
            van_der_pol,
            box([-VAN_DER_POL_BOX] * 2, [VAN_DER_POL_BOX] * 2),
            mlp,
            rate,
        ),
        "limit_cycle": System("limit cycle, κ = 8, ω = 2, stiff region", 0.1, limit_cycle, annulus, mlp, rate),
    }


# ---------------------------------------------------------------- learning a known system (the suite's runs)

# The full suite's data and training length (systems_suite.py --full); correction_limits.py
# and benchmark.py part (e) train on the same.
FULL_PAIRS = 6000
FULL_STEPS = 1500
BATCH_SIZE = 256
TEST_PAIRS = 1000
ROLLOUT_STARTS, ROLLOUT_STEPS = 40, 30
OWN_FLOW_STATES = 256
STEPS_PER_EXECUTION = 10
EVAL_POINTS = 15  # evaluations of the test error per run, for time to accuracy
ACCURACY_FACTOR = 1.2  # time to accuracy: the first time the test error is within this factor of dopri's final one
REFERENCE = "dopri"

# The suite's methods; each one's layer is harness.ode_layer's of the same name (dopri_1e-3: "dopri" at 1e-3).
SUITE_METHODS = {
    "tl_node": "TL-NODE (defaults)",
    "uncorrected": "same layer, no correction",
    "euler": "Euler",
    "heun": "Heun",
    "rk4": "RK4",
    "dopri": "DormandPrince 1e-6",
    "dopri_1e-3": "DormandPrince 1e-3",
}
FIXED_STEP = ("tl_node", "uncorrected", "euler", "heun", "rk4")
STEPS_PER_INTERVAL = (1, 2)
TOLERANCES = {"dopri": 1e-6, "dopri_1e-3": 1e-3}


def run_keys(methods: list[str]) -> list[str]:
    """`method@k` for each fixed-step method and steps per interval, the adaptive methods as they are."""
    return [f"{m}@{k}" for m in methods if m in FIXED_STEP for k in STEPS_PER_INTERVAL] + [
        m for m in methods if m not in FIXED_STEP
    ]


def split_key(key: str) -> tuple[str, int]:
    """(method, steps per interval) of a run key."""
    method, _, steps = key.partition("@")
    return method, int(steps or 1)


def run_label(key: str) -> str:
    """A run's name in the suite's tables and plot."""
    method, steps = split_key(key)
    return SUITE_METHODS[method] + (f", {steps} steps" if method in FIXED_STEP and steps > 1 else "")


def make_data(system: System, pairs: int, seed: int) -> dict:
    """Training and test pairs and the rollout trajectories, float32."""
    rng = np.random.default_rng(seed)
    x, test_x, starts = system.sample(rng, pairs), system.sample(rng, TEST_PAIRS), system.sample(rng, ROLLOUT_STARTS)
    return {
        "x": x.astype("float32"),
        "y": system.flow(x).astype("float32"),
        "test_x": test_x.astype("float32"),
        "test_y": system.flow(test_x).astype("float32"),
        "trajectories": system.trajectories(starts, ROLLOUT_STEPS).astype("float32"),
    }


def build(system: System, key: str) -> tuple[keras.Model, keras.layers.Layer, keras.layers.Layer]:
    """(model, ODE layer, f_θ) of run `key`; the caller seeds the initial weights."""
    method, steps = split_key(key)
    field = system.make_field()
    if method in FIXED_STEP:
        ode = harness.ode_layer(method, field, system.dt, num_steps=steps)
    else:
        ode = harness.ode_layer("dopri", field, system.dt, tolerance=TOLERANCES[method])
    inputs = keras.Input((system.dimension,))
    return harness.model_class(method)(inputs, ode(inputs)), ode, field


def optimizer(system: System, steps: int) -> keras.optimizers.Optimizer:
    rate = system.learning_rate
    return harness.decaying_adam(*rate, steps) if isinstance(rate, tuple) else keras.optimizers.Adam(rate)


def rollout_errors(ode: keras.layers.Layer, trajectories: np.ndarray) -> tuple[float, float]:
    """(the paper's relative metric, the mean absolute error) of the rollout from the trajectories' starts."""
    # A fixed-step layer of k steps per interval rolls out k steps per interval;
    # every k-th state is at an observation time (DormandPrince's k is 1).
    per_interval = ode.num_steps
    layer = harness.rollout_layer(ode, (trajectories.shape[1] - 1) * per_interval)
    prediction = np.asarray(tf.function(layer)(tf.constant(trajectories[:, 0])))[:, ::per_interval]
    error = np.linalg.norm(prediction - trajectories, axis=-1)[:, 1:]
    scale = (np.linalg.norm(prediction, axis=-1) + np.linalg.norm(trajectories, axis=-1))[:, 1:]
    return float(np.mean(error / scale)), float(np.mean(error))


def exact_own_flow(field: keras.layers.Layer, states: np.ndarray, dt: float) -> np.ndarray:
    """The states `dt` later under f_θ itself: DormandPrince at 1e-10, float64."""
    teacher = keras_tlnode.DormandPrinceTeacher(rtol=1e-10, atol=1e-10, max_num_steps=100_000)
    return teacher.solve(field, tf.constant(states), dt).states.numpy()


def own_flow_errors(ode: keras.layers.Layer, field: keras.layers.Layer, states: np.ndarray, dt: float) -> dict:
    """MSE of the trained layer, and of RK4 at the same steps per interval, against the exact flow of f_θ itself."""
    exact = exact_own_flow(field, states, dt)
    rk4 = keras_tlnode.FixedStepODE(field, method="rk4", duration=dt, num_steps=ode.num_steps)
    return {
        "own_flow": float(np.mean((np.asarray(ode(states)) - exact) ** 2)),
        "rk4_own_flow": float(np.mean((rk4(states).numpy() - exact) ** 2)),
    }


class Trained(NamedTuple):
    """A trained run: its model, ODE layer, f_θ and training log (times and the test-error curve)."""

    model: keras.Model
    ode: keras.layers.Layer
    field: keras.layers.Layer
    log: harness.TrainingLog


def train(system: System, key: str, data: dict, config: dict, seed: int, label: str) -> Trained:
    """Trains run `key` (a method, with `@k` steps per interval for fixed-step ones) from `seed` for `config["steps"]` steps."""
    keras.utils.set_random_seed(seed)
    model, ode, field = build(system, key)
    model.compile(optimizer=optimizer(system, config["steps"]), loss="mse", steps_per_execution=STEPS_PER_EXECUTION)
    predict = tf.function(lambda x: model(x, training=False))
    log = harness.TrainingLog(
        label,
        evaluate=lambda: float(np.mean((np.asarray(predict(data["test_x"])) - data["test_y"]) ** 2)),
        every=max(STEPS_PER_EXECUTION, config["steps"] // EVAL_POINTS),
    )
    dataset = harness.training_pipeline(data["x"], data["y"], BATCH_SIZE, seed, drop_remainder=True)
    harness.fit_steps(model, dataset, config["steps"], STEPS_PER_EXECUTION, log)
    return Trained(model, ode, field, log)


def run(system: System, key: str, data: dict, config: dict, seed: int, label: str) -> dict:
    """Trains run `key` (see `train`) and measures it."""
    _, ode, field, log = train(system, key, data, config, seed, label)
    rollout, rollout_abs = rollout_errors(ode, data["trajectories"])
    result = {
        "train_s": log.train_seconds,
        "step_ms": log.step_ms,
        "one_step": log.errors[-1],
        "rollout": rollout,
        "rollout_abs": rollout_abs,
        "field": harness.relative_l2(field(data["test_x"]), system.field(data["test_x"].astype("float64"))),
        "nfe": harness.nfe_per_call(
            ode,
            [data["test_x"][i : i + BATCH_SIZE] for i in range(0, len(data["test_x"]) - BATCH_SIZE + 1, BATCH_SIZE)],
        ),
        **own_flow_errors(ode, field, data["test_x"][:OWN_FLOW_STATES], system.dt),
        "curve": {"steps": log.steps, "seconds": log.seconds, "one_step": log.errors},
    }
    if key.startswith("tl_node"):
        result["trust"] = float(ode.correction.trust_weight.numpy()) if ode.correction.trust else 1.0
    return result


# ---------------------------------------------------------------- summaries over seeds


def time_to_accuracy(curve: dict, target: float) -> float | None:
    """The training seconds at which `curve` first reaches `target`, or None."""
    for seconds, error in zip(curve["seconds"], curve["one_step"], strict=True):
        if error <= target:
            return seconds
    return None


def add_times_to_accuracy(runs: dict[str, list[dict]]) -> None:
    """Each run's `to_accuracy_s`, against the reference run of the same seed (in place)."""
    if REFERENCE not in runs:
        return
    for results in runs.values():
        for result, reference in zip(results, runs[REFERENCE], strict=True):
            result["to_accuracy_s"] = time_to_accuracy(result["curve"], ACCURACY_FACTOR * reference["one_step"])


SUMMARISED = (
    "accuracy",
    "one_step",
    "rollout",
    "rollout_abs",
    "field",
    "train_s",
    "nfe",
    "own_flow",
    "rk4_own_flow",
    "trust",
)


def summarise(results: list[dict]) -> dict:
    """Median, smallest and largest of each metric over the seeds (NaN if any seed diverged), and time to
    accuracy as the median with never-reached as ∞ (None) and the count that reached it."""
    summary: dict[str, dict] = {}
    for metric in SUMMARISED:
        values = np.array([r[metric] for r in results if metric in r], dtype=float)
        if values.size:
            summary[metric] = {
                "median": float(np.median(values)),
                "min": float(np.min(values)),
                "max": float(np.max(values)),
            }
    if any("to_accuracy_s" in r for r in results):
        times = [math.inf if r["to_accuracy_s"] is None else r["to_accuracy_s"] for r in results]
        middle = float(np.median(times))
        summary["to_accuracy_s"] = {
            "median": None if math.isinf(middle) else middle,
            "reached": sum(map(math.isfinite, times)),
        }
    return summary


def median(summary: dict, key: str, metric: str) -> float | None:
    """The median of `metric` over the seeds of run `key`, None where it was not measured."""
    entry = summary.get(key, {}).get(metric)
    return None if entry is None else entry["median"]


def speedup(summary: dict, key: str) -> float | None:
    """How many times sooner run `key` reached the reference's accuracy than the reference did
    (0 if it never did; None without a reference time)."""
    mine, reference = median(summary, key, "to_accuracy_s"), median(summary, REFERENCE, "to_accuracy_s")
    if reference is None:
        return None
    return 0.0 if mine is None else reference / mine


def number(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, "-" for None or NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


# ---------------------------------------------------------------- the docs' tables


class DocTables(NamedTuple):
    """A script's generated blocks in the docs (docs_tables.py).

    Attributes:
        results: its committed results under benchmarks/results/: a file, or {name: file} for several.
        blocks: by block name, what renders that block as Markdown from the results (loaded as `results` says).
    """

    results: str | dict[str, str]
    blocks: dict[str, Callable[[dict], str]]


# The methods tables that stiff_dynamics.py, classification.py and van_der_pol.py print and the docs show.
STIFF_COLUMNS = [
    ("field_rel_error", "f rel. error", ".2f"),
    ("rollout_rel_l2", "rollout rel. L2", ".3g"),
    ("one_step_mse", "one-step MSE", ".2e"),
    ("train_seconds", "train s", ".1f"),
    ("step_ms", "ms / step", ".2f"),
    ("nfe", "f-evals", ".0f"),
    ("predict_ms", "predict ms", ".2f"),
]
DIGITS_COLUMNS = [
    ("accuracy", "test accuracy", ".4f"),
    ("train_seconds", "train s", ".1f"),
    ("step_ms", "ms / step", ".2f"),
    ("eval_seconds", "eval s", ".4f"),
    ("nfe", "f-evals / solve", ".0f"),
]
VAN_DER_POL_COLUMNS = [
    ("train_seconds", "train s", ".1f"),
    ("nfe", "f-evals", ".0f"),
    ("predict_ms", "predict ms", ".2f"),
    ("one_step_mse", "one-step MSE", ".2e"),
    ("rollout_rel_l2", "rollout rel. L2", ".2f"),
    ("field_rel_l2", "f rel. error", ".3f"),
]


def irregular_columns(gap_bins: list[float]) -> list[tuple[str, str, str]]:
    """irregular_series.py's table: the one-step MSE overall and per bin of gap lengths (`gap_bins`, their edges)."""
    bins = [(f"bin{b}", f"gap {lo:.2f}-{hi:.2f}", ".2e") for b, (lo, hi) in enumerate(itertools.pairwise(gap_bins))]
    return [
        ("one_step_mse", "all gaps", ".2e"),
        *bins,
        ("field_rel_error", "f rel. error", ".3f"),
        ("nfe", "f-evals", ".0f"),
        ("train_seconds", "train s", ".1f"),
        ("predict_ms", "predict ms", ".2f"),
    ]


def irregular_block(report: dict) -> str:
    """irregular_series.py's methods table, its gap bins from the report."""
    return harness.markdown_table(report["methods"], irregular_columns(report["gap_bins"]))


# ---- systems_suite.py


def suite_summary_block(report: dict) -> str:
    """One row per system: TL-NODE against RK4 and DormandPrince 1e-6 (medians over the seeds), and its gates."""
    lines = [
        "| system | Δt (Δt·λmax median / max) | rollout: TL-NODE / RK4 / DP | field error: TL-NODE / RK4 / DP "
        "| train s: TL-NODE / RK4 / DP | TL-NODE step vs its own flow (RK4's) | gates missed (measured) |",
        "| --- | --- | --- | --- | --- | --- | ---: |",
    ]
    for name, entry in report["systems"].items():
        s = entry["summary"]
        metric = "rollout_abs" if entry["decays"] else "rollout"
        spec = ".1e" if entry["decays"] else ".3f"
        trio = [median(s, key, metric) for key in ("tl_node@1", "rk4@1", REFERENCE)]
        fields = [median(s, key, "field") for key in ("tl_node@1", "rk4@1", REFERENCE)]
        times = [median(s, key, "train_s") for key in ("tl_node@1", "rk4@1", REFERENCE)]
        missed = [f"{GATE_SHORT[g]} {number(o['value'], '.2f')}x" for g, o in entry["gates"].items() if not o["holds"]]
        stiffness = entry["stiffness"]
        lines.append(
            f"| {name} | {entry['dt']:g} ({stiffness['median']:.2f} / {stiffness['max']:.2f}) "
            f"| {' / '.join(number(v, spec) for v in trio)}{' (abs.)' if entry['decays'] else ''} "
            f"| {' / '.join(number(v, '.3f') for v in fields)} | {' / '.join(number(v, '.0f') for v in times)} "
            f"| {number(median(s, 'tl_node@1', 'own_flow'), '.1e')} ({number(median(s, 'tl_node@1', 'rk4_own_flow'), '.1e')}) "
            f"| {', '.join(missed) or 'none'} |"
        )
    return "\n".join(lines)


GATE_NAMES = {
    "rollout_vs_rk4": "rollout ≤ 0.8x RK4's",
    "rollout_vs_rk4_at_equal_cost": "rollout ≤ RK4's at equal training time",
    "field_vs_rk4": "field error ≤ 1.1x RK4's",
    "train_time_vs_rk4": "training ≤ 2x RK4's time",
    "time_to_accuracy_speedup_vs_dopri": "time to accuracy ≥ 5x faster than DP",
    "rollout_vs_dopri": "rollout (abs.) ≤ 1.2x DP's",
}


# The gates in a few words, for the summary's column of misses.
GATE_SHORT = {
    "rollout_vs_rk4": "rollout",
    "rollout_vs_rk4_at_equal_cost": "equal cost",
    "field_vs_rk4": "field",
    "train_time_vs_rk4": "time",
    "time_to_accuracy_speedup_vs_dopri": "to accuracy",
    "rollout_vs_dopri": "vs DP",
}


def gate_name(gate: str, outcome: dict) -> str:
    name = GATE_NAMES[gate]
    if "rk4_steps" in outcome:
        name += f" (RK4 at {outcome['rk4_steps']} step{'s' if outcome['rk4_steps'] > 1 else ''}"
        name += ", more would fit)" if outcome["capped"] else ")"
    return name


def suite_gates_block(report: dict) -> str:
    """Each system's gates: the measured ratio against its bound."""
    lines = ["| system | gate | measured | holds |", "| --- | --- | ---: | :---: |"]
    for name, entry in report["systems"].items():
        for gate, outcome in entry["gates"].items():
            lines.append(
                f"| {name} | {gate_name(gate, outcome)} | {number(outcome['value'], '.2f')} "
                f"| {'yes' if outcome['holds'] else '**no**'} |"
            )
    return "\n".join(lines)


DETAIL_COLUMNS = [
    ("one_step", ".2e"),
    ("rollout", ".4f"),
    ("rollout_abs", ".2e"),
    ("field", ".3f"),
    ("train_s", ".1f"),
    ("nfe", ".0f"),
    ("own_flow", ".1e"),
    ("rk4_own_flow", ".1e"),
]


def suite_details_block(report: dict) -> str:
    """Per system, every run's medians over the seeds (range in the JSON)."""
    parts = []
    header = (
        "| method | one-step MSE | rollout | rollout abs. | field error | train s | to accuracy s | nfe "
        "| step vs own flow | RK4 vs own flow |"
    )
    for name, entry in report["systems"].items():
        parts += [
            f"**{name}**: {entry['description']}; Δt = {entry['dt']:g}",
            "",
            header,
            "| --- " + "| ---: " * 9 + "|",
        ]
        summary = entry["summary"]
        for key in summary:
            reached = summary[key].get("to_accuracy_s")
            to_accuracy = (
                "-"
                if reached is None
                else f"{number(reached['median'], '.1f')} ({reached['reached']} of {len(entry['runs'][key])})"
            )
            cells = [number(median(summary, key, m), spec) for m, spec in DETAIL_COLUMNS]
            cells.insert(5, to_accuracy)
            parts.append(f"| {run_label(key)} | " + " | ".join(cells) + " |")
        if entry.get("bdf_probe"):
            probe = entry["bdf_probe"]
            parts.append(
                f"\nBDF 1e-6 (tfp, the batch as one implicit system): {probe['step_s']:.2f} s per training step, "
                f"{probe['step_s'] * report['config']['steps'] / 60:.0f} min for the run: not trained further."
            )
        parts.append("")
    return "\n".join(parts).rstrip()


def suite_applications_block(report: dict) -> str:
    """The two applications, each method's medians over the seeds."""
    lines = [
        "| application | method | accuracy | one-step MSE | field error | train s | nfe |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in report.get("applications", {}).items():
        for key in entry["summary"]:
            lines.append(
                f"| {name} | {entry['runs'][key][0]['label']} | {number(median(entry['summary'], key, 'accuracy'), '.4f')} "
                f"| {number(median(entry['summary'], key, 'one_step'), '.2e')} | {number(median(entry['summary'], key, 'field'), '.3f')} "
                f"| {number(median(entry['summary'], key, 'train_s'), '.1f')} | {number(median(entry['summary'], key, 'nfe'), '.0f')} |"
            )
    return "\n".join(lines)


# ---- correction_limits.py


def decomposition_block(limits: dict) -> str:
    """The decomposition per system (medians over the seeds): each part's one-step MSE against the exact own flow."""
    lines = [
        "| system | trust | trained step | fitted Γ at full strength | Γ fitted to convergence | same, order 2 | RK4 "
        "| model vs data | own flow vs data |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = ("trained", "full_strength", "converged", "converged_order2", "rk4", "model_vs_data", "flow_vs_data")
    for name, entry in limits["systems"].items():
        m = entry["median"]
        lines.append(f"| {name} | {m['trust']:.2f} | " + " | ".join(f"{m[k]:.1e}" for k in keys) + " |")
    return "\n".join(lines)


# ---- density_estimation.py

DENSITY_BASELINE = "ffjord"
DENSITY_GATED = "tl_node@8"  # the gates compare the package's defaults (8 steps) with the baseline
DENSITY_GATE_SPEEDUP = 5.0
DENSITY_COLUMNS = [
    ("test_nll", "test NLL (nats)", ".3f"),
    ("test_nll_per_dimension", "NLL / dim", ".4f"),
    ("tight_nll", "NLL, tight solve", ".3f"),
    ("likelihood_gap", "likelihood gap", "+.3f"),
    ("mass", "mass", ".4f"),
    ("folds", "folds", ".0f"),
    ("round_trip", "round trip", ".0e"),
    ("nfe_per_training_step", "f-evals / step", ".0f"),
    ("train_seconds", "train (s)", ".1f"),
    ("time_to_accuracy", "to accuracy (s)", ""),
]


def density_summary_block(report: dict) -> str:
    """The table per density: each method's medians over the seeds."""
    tables = []
    for density, rows in report["summary"].items():
        seeds = len(report["results"][density])
        tables.append(f"**{density}** (medians over {seeds} seeds)\n\n" + harness.markdown_table(rows, DENSITY_COLUMNS))
    return "\n\n".join(tables)


def tight_gap(seeds: list[dict]) -> float:
    """Median over the seeds of TL-NODE's tight-solve NLL minus the baseline's: the gap of the learned fields."""
    return float(np.median([s[DENSITY_GATED]["tight_nll"] - s[DENSITY_BASELINE]["tight_nll"] for s in seeds]))


def density_gates_block(report: dict) -> str:
    """The acceptance gates, with the gap of the tight-solve NLLs."""
    lines = [
        "| density | NLL gap to FFJORD | limit | speed-up to FFJORD's accuracy | needed | gate "
        "| gap of the tight-solve NLLs |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for density, gate in report["gates"].items():
        scale, unit = (64, " nats/dim") if density == "digits" else (1, " nats")
        verdict = "holds" if gate["passes"] else "fails"
        lines.append(
            f"| {density} | {gate['nll_gap']:+.3f}{unit} | {gate['nll_gap_limit']}{unit} "
            f"| {gate['speedup_to_accuracy']:.1f}x | {DENSITY_GATE_SPEEDUP:.0f}x | {verdict} "
            f"| {tight_gap(report['results'][density]) / scale:+.3f}{unit} |"
        )
    return "\n".join(lines)


def density_validity_block(report: dict) -> str:
    """The README's table: per flow run, its mass and likelihood gap on each 2-D density, folds and round trip."""
    densities = [d for d in report["summary"] if d != "digits"]
    names = " / ".join(densities)
    lines = [
        f"| run | mass ({names}) | likelihood gap, nats ({names}) | folds | round trip |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key in report["config"]["runs"]:
        if key == DENSITY_BASELINE:
            continue
        rows = [report["summary"][d][key] for d in densities]
        masses = " / ".join(f"{row['mass']:.3f}" for row in rows)
        gaps = " / ".join(f"{row['likelihood_gap']:+.3f}" for row in rows)
        folds = sum(int(row["folds"]) for row in rows)
        trip = max(row["round_trip"] for row in rows)
        lines.append(f"| {rows[0]['label']} | {masses} | {gaps} | {folds} | {trip:.0e} |")
    return "\n".join(lines)


# ---- cost.py

COST_COLUMNS = [
    ("evaluations_per_step", "f-evals", ".0f"),
    ("step_ms", "step ms", ".2f"),
    ("step_ratio", "step × RK4", ".2f"),
    ("one_off_s", "one-off s", ".1f"),
    ("one_off_ratio", "one-off × RK4", ".1f"),
    ("tracing_s", "tracing s", ".1f"),
    ("compilation_and_first_execution_s", "compile + 1st run s", ".1f"),
    ("concrete_functions", "traces", "d"),
]


def cost_summary_block(report: dict) -> str:
    """The summary, one Markdown table per size and setting (docs/benchmarks.md)."""
    config = report["config"]
    parts = [
        f"Each method in a fresh process; {config.get('repeats', 1)} run(s) each (medians); step = the fastest of "
        f"{config.get('segments', 5)} segments of {config.get('steps', 200)} steps; ratios to RK4 in the same size "
        "and setting."
    ]
    for size, by_setting in report["summary"].items():
        for setting, rows in by_setting.items():
            parts.append(f"**{size}, {setting}**\n\n" + harness.markdown_table(rows, COST_COLUMNS))
    return "\n\n".join(parts)


CHECKPOINTING_COLUMNS = [
    ("backprop_memory_mb", "backprop MB", ".0f"),
    ("checkpointed_memory_mb", "checkpointed MB", ".0f"),
    ("memory_ratio", "memory ratio", ".3f"),
    ("backprop_step_s", "backprop step s", ".3f"),
    ("checkpointed_step_s", "checkpointed step s", ".3f"),
    ("time_ratio", "time ratio", ".2f"),
]


def checkpointing_block(report: dict) -> str:
    """checkpointing.py's summary: per method and setting, memory above K = 8 and step time by K (docs/benchmarks.md)."""
    parts = []
    for name, by_steps in report["summary"].items():
        setting = name.split("/")[1]
        ordered = sorted(by_steps.items(), key=lambda item: int(item[0]))
        rows = {k: {**row, "label": f"K = {k}"} for k, row in ordered}
        title = f"**{ordered[0][1]['label']}, {setting}**"
        parts.append(title + "\n\n" + harness.markdown_table(rows, CHECKPOINTING_COLUMNS, first="steps"))
    return "\n\n".join(parts)


# ---- benchmark.py (its parts' results, one file each)


def taylor_cost_block(results: dict) -> str:
    """(a): the cost of taylor_coefficients per order, relative to one call of f."""
    cost = results["taylor_cost"]["taylor_cost"]
    lines = ["| order | graph (`tf.function`) | XLA (`jit_compile=True`) |", "| ---: | ---: | ---: |"]
    for order in cost["graph"]["orders"]:
        cells = [f"{cost[mode]['orders'][order]['ratio_to_f']:.1f}x" for mode in ("graph", "xla")]
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    lines.append(
        f"| one call of f | {1e3 * cost['graph']['f_seconds']:.2f} ms | {1e3 * cost['xla']['f_seconds']:.2f} ms |"
    )
    return "\n".join(lines)


def latency_block(results: dict) -> str:
    """(b): TL-NODE's prediction against DormandPrince at the loosest tolerance as accurate."""
    lines = [
        "| field, Δt | TL-NODE error | TL-NODE ms (f-evals) | DormandPrince as accurate | its ms (f-evals) "
        "| TL-NODE faster by |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, field in results["latency"]["inference"].items():
        tl, matched = field["tl_node"], field["matched"]
        if not matched["reached"]:
            lines.append(f"| {name} | {tl['error']:.1e} | {tl['ms']:.2f} ({tl['nfe']}) | none as accurate | - | - |")
            continue
        dopri = next(row for row in field["dopri5"] if row["tolerance"] == matched["tolerance"])
        lines.append(
            f"| {name} | {tl['error']:.1e} | {tl['ms']:.2f} ({tl['nfe']}) "
            f"| tol {dopri['tolerance']:.0e}: {dopri['error']:.1e} | {dopri['ms']:.2f} ({dopri['nfe']}) "
            f"| {matched['speedup']:.1f}x |"
        )
    return "\n".join(lines)


def quick_block(script: str, columns: list[tuple[str, str, str]]) -> Callable[[dict], str]:
    """(c): one script's quick run, as its own table."""
    return lambda results: harness.markdown_table(results["benchmark"]["examples"][script]["methods"], columns)


def teacher_block(results: dict) -> str:
    """(d): the teacher's targets against the exact flow, per solve of the default states."""
    rows: dict[tuple, dict] = {}
    for row in results["training_step"]["training_step"]["teacher"]:
        entry = rows.setdefault((row["tolerance"], row["dtype"]), {"nfe": row["nfe"], "mse": row["target_mse"]})
        entry["xla" if row["jit_compile"] else "graph"] = row["ms"]
    lines = [
        "| teacher rtol = atol, dtype | target MSE | f-evals | ms, graph | ms, XLA |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for (tolerance, dtype), entry in rows.items():
        lines.append(
            f"| {tolerance:.0e}, {dtype} | {entry['mse']:.1e} | {entry['nfe']} | {entry['graph']:.2f} "
            f"| {entry['xla']:.2f} |"
        )
    return "\n".join(lines)


def training_step_block(results: dict) -> str:
    """(d): one training step of TL-NODE, its parts, and DormandPrince's, per setting."""
    lines = [
        "| setting | TL-NODE ms | phase 1 | teacher | Γ updates | correction share | DormandPrince 1e-6 ms | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results["training_step"]["training_step"]["settings"].items():
        lines.append(
            f"| {name} | {row['tl_node']:.2f} | {row['phase1']:.2f} | {row['teacher_per_step']:.2f} "
            f"| {row['updates_per_step']:.2f} | {row['teacher_share']:.0%} | {row['dopri']:.1f} | {row['speedup']:.1f}x |"
        )
    return "\n".join(lines)


def against_baseline_block(results: dict) -> str:
    """(e): time to accuracy on the stiff system from a random start, and the step ratio at two sizes of f."""
    found = results["time_to_accuracy"]["against_baseline"]
    accuracy = found["time_to_accuracy"]
    lines = [
        "| run | TL-NODE | DormandPrince 1e-6 | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    tl, dopri = (accuracy["summary"][key] for key in ("tl_node@1", "dopri"))
    times = [
        "never" if e["to_accuracy_s"]["median"] is None else f"{e['to_accuracy_s']['median']:.1f}" for e in (tl, dopri)
    ]
    ratio = "-" if accuracy["speedup"] is None else f"{accuracy['speedup']:.1f}x"
    lines.append(
        f"| time to 1.2x DormandPrince's final one-step MSE, s ({accuracy['steps']} steps, "
        f"median of {len(accuracy['seeds'])} seeds) | {times[0]} | {times[1]} | {ratio} |"
    )
    lines.append(
        f"| final one-step MSE | {tl['one_step']['median']:.1e} | {dopri['one_step']['median']:.1e} "
        f"| {tl['one_step']['median'] / dopri['one_step']['median']:.2g}x |"
    )
    for name, row in found["step_by_field_size"].items():
        lines.append(
            f"| ms per training step, f_θ {name} | {row['tl_node']:.2f} | {row['dopri']:.2f} | {row['ratio']:.1f}x |"
        )
    return "\n".join(lines)


# ---- examples/export_and_serve.py (the serving tutorial's measured runs)

LATENCY_COLUMNS = [
    ("ms", "ms / batch", ".2f"),
    ("ratio", "ratio to TL-NODE", ".1f"),
    ("nfe", "f-evals", "d"),
    ("mse", "MSE vs the true pendulum", ".1e"),
    ("gap_to_tight", "max gap to DormandPrince 1e-8", ".1e"),
]


def export_times_block(results: dict) -> str:
    """Seconds to export a fresh model per order (median of the repeats), and the size of its graph."""
    lines = [
        "| order | `model.export` s | `export_saved_model` s | `saved_model.pb` MB |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in results["export_times"]["export_times"]:
        cells = [
            how if isinstance(row[how], str) else f"{np.median(row[how]):.2f}"
            for how in ("model.export", "export_saved_model")
        ]
        lines.append(f"| {row['order']} | {cells[0]} | {cells[1]} | {row['size_mb']:.1f} |")
    return "\n".join(lines)


# By the name in the docs' markers (`<!-- results:NAME.BLOCK -->`): the script that wrote the results.
DOC_TABLES = {
    "stiff_dynamics": DocTables("stiff_dynamics_full.json", {"methods": harness.methods_block(STIFF_COLUMNS)}),
    "stiff_dynamics_quick": DocTables("stiff_dynamics_quick.json", {"methods": harness.methods_block(STIFF_COLUMNS)}),
    "classification": DocTables("classification_full.json", {"methods": harness.methods_block(DIGITS_COLUMNS)}),
    "van_der_pol": DocTables("van_der_pol_full.json", {"methods": harness.methods_block(VAN_DER_POL_COLUMNS)}),
    "irregular_series": DocTables("irregular_series_full.json", {"methods": irregular_block}),
    "systems_suite": DocTables(
        "systems_suite_full.json",
        {
            "summary": suite_summary_block,
            "gates": suite_gates_block,
            "details": suite_details_block,
            "applications": suite_applications_block,
        },
    ),
    "correction_limits": DocTables("correction_limits_full.json", {"decomposition": decomposition_block}),
    "density_estimation": DocTables(
        "density_estimation_quick.json",
        {"summary": density_summary_block, "gates": density_gates_block, "validity": density_validity_block},
    ),
    "cost": DocTables("cost.json", {"summary": cost_summary_block}),
    "checkpointing": DocTables("checkpointing.json", {"summary": checkpointing_block}),
    "benchmark": DocTables(
        {
            "benchmark": "benchmark.json",
            "taylor_cost": "benchmark_taylor_cost.json",
            "latency": "benchmark_latency.json",
            "training_step": "benchmark_training_step.json",
            "time_to_accuracy": "benchmark_time_to_accuracy.json",
        },
        {
            "taylor_cost": taylor_cost_block,
            "latency": latency_block,
            "quick_stiff": quick_block("stiff_dynamics", STIFF_COLUMNS),
            "quick_digits": quick_block("classification", DIGITS_COLUMNS),
            "teacher": teacher_block,
            "training_step": training_step_block,
            "against_baseline": against_baseline_block,
        },
    ),
    "export_and_serve": DocTables(
        {"serving": "export_and_serve.json", "export_times": "export_times.json"},
        {
            "latency": lambda results: harness.markdown_table(results["serving"]["latency"], LATENCY_COLUMNS, "solver"),
            "export_times": export_times_block,
        },
    ),
}
