"""Does the learned correction Γ_φ earn its cost? The same layer with and without it, RK4 and DormandPrince, on five systems.

Every system is learned from one-step pairs (x, x(t + Δt)) of states drawn from a
region, with its true field known, so that both the one-step error and the
learned field's error can be measured. The four methods share the data, f_θ's
initial weights, the optimiser schedule (Adam, exponential decay over the run)
and the number of steps:

    tl_node   TaylorLagrangeODE(order=1, correction=MidpointCorrection()), trained by
              TLNODEModel with the package's default schedule and teacher
    taylor2   the same layer without correction (Taylor method of degree 2)
    rk4       FixedStepODE(method="rk4")
    dopri     DormandPrinceODE at rtol = atol = 1e-6 (the classic neural ODE)

Systems (f_θ = MLP(64, 64, tanh) unless said):

    stiff_random   dx/dt = A x, A = P^-1 diag(-1000, -1) P (stiff_dynamics.py), Δt = 0.01,
                   states in [-0.5, 0.5]², f_θ = Dense(64) → Dense(2) from a random start
    stiff_near     the same, f_θ started near A (eigenvalues 5% off: -1050, -0.95)
    limit_cycle    dx/dt = κ (1 - |x|²) x + ω R x (R: rotation by 90°), κ = 8, ω = 2,
                   states with 0.3 ≤ |x| ≤ 1.6, where the field is stiff (κ·|x|² up to 20), Δt = 0.1
    limit_cycle_0.25  the same at Δt = 0.25
    van_der_pol    μ = 8 (van_der_pol.py), states in [-3, 3]², Δt = 0.05

The truth comes from the closed form (stiff) or float64 RK4 at substeps of at
most 5e-4 (`harness.rk4_flow`). Reported per system and method: one-step test
MSE, relative error of the learned field against the true one on the test
states, training seconds; for TL-NODE also the final trust (the share of its
fitted correction the layer applies), and `keeps_up`: the share of the logged
epochs in which the correction loss (the fitted step's gap to the teacher)
stayed below the training loss (the model's own one-step error).

Usage:
    python examples/correction_study.py                    # --quick: small, a few minutes on 2 cores
    python examples/correction_study.py --full --json results/correction_study.json
    python examples/correction_study.py --systems stiff_near --methods tl_node taylor2
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

MODES = {"quick": {"steps": 300, "pairs": 2048}, "full": {"steps": 4000, "pairs": 16384}}
BATCH_SIZE = 256
TEST_PAIRS = 2048
BASELINE_TOLERANCE = 1e-6
STEPS_PER_EXECUTION = 10
KAPPA, OMEGA = 8.0, 2.0

METHODS = {
    "tl_node": "TL-NODE (defaults)",
    "taylor2": "same layer, no correction",
    "rk4": "RK4",
    "dopri": "DormandPrince 1e-6",
}


class System(NamedTuple):
    """A known system: its true field (numpy, float64), the region its states come from, and the learned model."""

    dt: float
    field: Callable[[np.ndarray], np.ndarray]
    sample: Callable[[np.random.Generator, int], np.ndarray]
    flow: Callable[[np.ndarray], np.ndarray]
    make_field: Callable[[], keras.layers.Layer]
    learning_rate: tuple[float, float]


def limit_cycle(states: np.ndarray, kappa: float = KAPPA, omega: float = OMEGA) -> np.ndarray:
    """κ (1 - |x|²) x + ω R x: attraction onto the unit circle at rate κ, rotation at ω."""
    radius2 = np.sum(states**2, axis=-1, keepdims=True)
    rotation = np.stack([-states[..., 1], states[..., 0]], axis=-1)
    return kappa * (1.0 - radius2) * states + omega * rotation


def annulus(rng: np.random.Generator, n: int, low: float = 0.3, high: float = 1.6) -> np.ndarray:
    """States uniform in area on low ≤ |x| ≤ high."""
    radius = np.sqrt(rng.uniform(low**2, high**2, n))
    angle = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)


def box(half_width: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: rng.uniform(-half_width, half_width, (n, 2))


def mlp() -> keras.Sequential:
    return keras.Sequential(
        [keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(2)]
    )


def linear_mlp(near: np.ndarray | None) -> Callable[[], keras.Sequential]:
    """Dense(64) → Dense(2) without activation; `near` sets the product of its kernels to that matrix."""

    def make() -> keras.Sequential:
        field = keras.Sequential([keras.layers.Dense(64), keras.layers.Dense(2)])
        field.build((None, 2))
        if near is not None:
            first = field.layers[0].kernel.numpy()
            # x W1 W2 = x near^T with W2 = pinv(W1) near^T; biases zero.
            field.layers[0].bias.assign(np.zeros(64, "float32"))
            field.layers[1].kernel.assign((np.linalg.pinv(first) @ near.T).astype("float32"))
        return field

    return make


def stiff_near_matrix() -> np.ndarray:
    p = stiff_dynamics.P
    return np.linalg.inv(p) @ np.diag(stiff_dynamics.EIGENVALUES * np.array([1.05, 0.95])) @ p


def systems() -> dict[str, System]:
    stiff = stiff_dynamics.system_matrix()
    stiff_flow = stiff_dynamics.exact_propagator(stiff_dynamics.DT)
    stiff_system = dict(
        dt=stiff_dynamics.DT, field=lambda x: x @ stiff.T, sample=box(0.5), flow=lambda x: x @ stiff_flow.T
    )
    return {
        "stiff_random": System(**stiff_system, make_field=linear_mlp(None), learning_rate=(1e-2, 1e-4)),
        "stiff_near": System(**stiff_system, make_field=linear_mlp(stiff_near_matrix()), learning_rate=(1e-3, 1e-3)),
        "limit_cycle": System(
            0.1, limit_cycle, annulus, lambda x: harness.rk4_flow(limit_cycle, x, 0.1), mlp, (1e-2, 1e-4)
        ),
        "limit_cycle_0.25": System(
            0.25, limit_cycle, annulus, lambda x: harness.rk4_flow(limit_cycle, x, 0.25), mlp, (1e-2, 1e-4)
        ),
        "van_der_pol": System(
            van_der_pol.DT,
            van_der_pol.vector_field,
            box(van_der_pol.BOX),
            lambda x: harness.rk4_flow(van_der_pol.vector_field, x, van_der_pol.DT),
            mlp,
            (1e-2, 1e-4),
        ),
    }


def make_data(system: System, pairs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x, test_x = system.sample(rng, pairs), system.sample(rng, TEST_PAIRS)
    return {
        "x": x.astype("float32"),
        "y": system.flow(x).astype("float32"),
        "test_x": test_x.astype("float32"),
        "test_y": system.flow(test_x).astype("float32"),
    }


def run(system: System, method: str, data: dict, config: dict, label: str) -> dict:
    keras.utils.set_random_seed(config["seed"])
    field = system.make_field()
    ode = harness.ode_layer(method, field, system.dt, tolerance=BASELINE_TOLERANCE)
    inputs = keras.Input((2,))
    model = harness.model_class(method)(inputs, ode(inputs))
    # Package defaults for everything TL-NODE-specific unless overridden on the
    # command line; only f_θ's optimiser is the study's.
    options = config["tl_options"] if method == "tl_node" else {}
    model.compile(
        optimizer=harness.decaying_adam(*system.learning_rate, config["steps"]),
        loss="mse",
        steps_per_execution=STEPS_PER_EXECUTION,
        **options,
    )
    per_epoch = min(config["steps"], config["pairs"] // BATCH_SIZE)
    log = harness.TrainingLog(label)
    dataset = harness.training_pipeline(data["x"], data["y"], BATCH_SIZE, config["seed"], drop_remainder=True)
    history = model.fit(
        dataset.repeat(),
        epochs=math.ceil(config["steps"] / per_epoch),
        steps_per_epoch=per_epoch,
        verbose=0,
        shuffle=False,
        callbacks=[log],
    ).history
    prediction = model.predict(data["test_x"], batch_size=TEST_PAIRS, verbose=0)
    result = {
        "label": METHODS[method],
        "train_seconds": log.train_seconds,
        "one_step_mse": float(np.mean((prediction - data["test_y"]) ** 2)),
        "field_rel_error": harness.relative_l2(field(data["test_x"]), system.field(data["test_x"].astype("float64"))),
    }
    if method == "tl_node":
        result["trust"] = float(ode.correction.trust_weight.numpy())
        logged = [(c, loss) for c, loss in zip(history["correction_loss"], history["loss"], strict=True) if c > 0]
        result["keeps_up"] = float(np.mean([c < loss for c, loss in logged])) if logged else float("nan")
        result["correction_loss"] = history["correction_loss"][-1]
    return result


COLUMNS = [
    ("one_step_mse", "one-step MSE", ".2e"),
    ("field_rel_error", "f relErr", ".3f"),
    ("train_seconds", "train s", ".1f"),
    ("trust", "trust", ".2f"),
    ("keeps_up", "keeps up", ".2f"),
]


def parse_args(argv: list[str] | None):
    parser = harness.example_parser(__doc__.splitlines()[0], "300 steps per run", "4000 steps per run")
    parser.add_argument("--systems", nargs="+", choices=list(systems()), default=list(systems()))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--steps", type=int, help="training steps per run (default: per mode)")
    for flag in ("correction-every", "correction-steps", "teacher-samples"):
        parser.add_argument(f"--{flag}", type=int, help="TLNODEModel.compile's argument (default: the package's)")
    args = parser.parse_args(argv)
    harness.check_flags(parser, args, ("steps", "correction_every", "correction_steps", "teacher_samples"))
    if len(set(args.systems)) != len(args.systems):
        parser.error(f"--systems must not repeat a system, got {args.systems}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = {"mode": args.mode, "seed": args.seed, "batch_size": BATCH_SIZE, **MODES[args.mode]}
    config["steps"] = args.steps or config["steps"]
    config["tl_options"] = {
        name: getattr(args, name)
        for name in ("correction_every", "correction_steps", "teacher_samples")
        if getattr(args, name) is not None
    }
    report = {"config": config, "environment": harness.environment(), "systems": {}}
    for name in args.systems:
        system = systems()[name]
        data = make_data(system, config["pairs"], config["seed"])
        print(f"{name}: Δt = {system.dt:g}, {config['steps']} steps of batch {BATCH_SIZE}", flush=True)
        results = harness.run_methods(
            args.methods,
            lambda method, position, system=system, data=data, name=name: run(
                system, method, data, config, f"{position} {name} {method}"
            ),
        )
        print(harness.format_table(results, COLUMNS), flush=True)
        report["systems"][name] = results
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
