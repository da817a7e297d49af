"""Learning a stiff linear system from trajectory pairs: TL-NODE vs Taylor vs RK4.

The system is dx/dt = A x with A = P^-1 diag(-1000, -1) P, P = [[3, 1], [1, -2]].
At the data's step Δt = 0.01 the fast eigenvalue gives λΔt = -10: the exact
one-step map damps the fast mode by exp(-10) ≈ 4.5e-5, which no explicit
fixed-step scheme applied to the true A reproduces (the factor is -9 for Euler,
41 for the degree-2 Taylor method, 291 for RK4). A learned model instead fits a discrete map whose one-step error can be
small even though its f is not A; this example measures how well each scheme's
map can be fitted, on identical data, initialisation, schedule and epochs:

    tl_node   TaylorLagrangeODE(order=1, correction=MidpointCorrection)   (TL-NODE)
    taylor2   TaylorLagrangeODE(order=1, correction=None)  (Taylor method of degree 2)
    rk4       TaylorLagrangeODE(method="rk4")

TL-NODE also trains with the remainder penalty (--remainder-weight, default 1e-2,
included in its printed training loss); the baselines train on the plain MSE.
Reported per method: training wall-clock time, f-evaluations per prediction
(`nfe`), one-step MSE on the test trajectories, and the relative L2 error of an
autoregressive rollout from their initial states over the first second.

Usage:
    python examples/stiff_dynamics.py            # --quick (default)
    python examples/stiff_dynamics.py --full --json results/stiff.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_tlnode  # noqa: E402

# Each evaluated model gets its own predict function; TensorFlow's "retracing"
# warning about that is expected here.
tf.get_logger().setLevel("ERROR")

DT = 0.01
EIGENVALUES = np.array([-1000.0, -1.0])
P = np.array([[3.0, 1.0], [1.0, -2.0]])
STATE_LOW, STATE_HIGH = -0.5, 0.5

# Training set size and epochs per mode (each overridable on the command line).
MODES = {
    "quick": {"trajectories": 20, "seconds": 2.0, "epochs": 150},
    "full": {"trajectories": 100, "seconds": 20.0, "epochs": 100},
}
TEST_TRAJECTORIES = 10
BATCH_SIZE = 500
LEARNING_RATE = (1e-2, 1e-4)  # exponential decay from the first to the second over training
REMAINDER_WEIGHT = 1e-2
ROLLOUT_SECONDS = 1.0

METHODS = {
    "tl_node": "TL-NODE (order 1 + correction)",
    "taylor2": "Taylor degree 2 (no correction)",
    "rk4": "RK4",
}


# ---------------------------------------------------------------- exact system


def system_matrix() -> np.ndarray:
    """A = P^-1 diag(-1000, -1) P."""
    return np.linalg.inv(P) @ np.diag(EIGENVALUES) @ P


def exact_propagator(dt: float) -> np.ndarray:
    """expm(A dt) = P^-1 diag(exp(λ dt)) P, from A's eigendecomposition (float64)."""
    return np.linalg.inv(P) @ np.diag(np.exp(EIGENVALUES * dt)) @ P


def simulate(x0: np.ndarray, num_steps: int, dt: float = DT) -> np.ndarray:
    """Exact states at t = 0, dt, ..., num_steps·dt: shape (batch, num_steps + 1, 2), float64."""
    step = exact_propagator(dt).T  # row vectors: x_{k+1} = x_k @ expm(A dt)^T
    states = [np.asarray(x0, dtype=np.float64)]
    for _ in range(num_steps):
        states.append(states[-1] @ step)
    return np.stack(states, axis=1)


def make_data(rng: np.random.Generator, trajectories: int, seconds: float, test_trajectories: int) -> dict:
    """Training pairs (x_t, x_{t+Δt}) and test trajectories, float32."""
    num_steps = max(1, round(seconds / DT))
    train = simulate(rng.uniform(STATE_LOW, STATE_HIGH, (trajectories, 2)), num_steps)
    test = simulate(rng.uniform(STATE_LOW, STATE_HIGH, (test_trajectories, 2)), num_steps)
    return {
        "x": train[:, :-1].reshape(-1, 2).astype(np.float32),
        "y": train[:, 1:].reshape(-1, 2).astype(np.float32),
        "test": test.astype(np.float32),
    }


# ---------------------------------------------------------------- models


def build_ode(method: str, seed: int, remainder_weight: float = REMAINDER_WEIGHT) -> keras_tlnode.TaylorLagrangeODE:
    """The one-step layer of `method`; the vector field's initial weights depend only on `seed`.

    `remainder_weight` (λ of the Lagrange-remainder penalty) applies to TL-NODE only;
    the baselines are trained on the plain MSE.
    """
    keras.utils.set_random_seed(seed)
    vector_field = keras.Sequential([keras.layers.Dense(64), keras.layers.Dense(2)], name="vector_field")
    vector_field.build((None, 2))
    if method == "tl_node":
        correction = keras_tlnode.MidpointCorrection(hidden_units=(16,))
        return keras_tlnode.TaylorLagrangeODE(
            vector_field, order=1, num_steps=1, t_final=DT, correction=correction, remainder_weight=remainder_weight
        )
    if method == "taylor2":
        return keras_tlnode.TaylorLagrangeODE(vector_field, order=1, num_steps=1, t_final=DT, correction=None)
    if method == "rk4":
        return keras_tlnode.TaylorLagrangeODE(vector_field, num_steps=1, t_final=DT, method="rk4")
    raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")


def one_step_model(ode: keras_tlnode.TaylorLagrangeODE) -> keras.Model:
    inputs = keras.Input((2,))
    return keras.Model(inputs, ode(inputs))


def rollout_model(ode: keras_tlnode.TaylorLagrangeODE, num_steps: int) -> keras.Model:
    """`num_steps` autoregressive steps of the trained `ode`, sharing its layers (return_trajectory)."""
    rollout = keras_tlnode.TaylorLagrangeODE(
        ode.vector_field,
        order=ode.order,
        num_steps=num_steps,
        t_final=num_steps * ode.step_size,
        correction=ode.correction,
        method=ode.method,
        return_trajectory=True,
    )
    inputs = keras.Input((2,))
    return keras.Model(inputs, rollout(inputs))


def compile_model(model: keras.Model, total_steps: int) -> None:
    initial, final = LEARNING_RATE
    schedule = keras.optimizers.schedules.ExponentialDecay(
        initial, decay_steps=max(total_steps, 1), decay_rate=final / initial
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")


# ---------------------------------------------------------------- train and evaluate


def train(model: keras.Model, data: dict, epochs: int, batch_size: int) -> tuple[float, float]:
    """Fits the one-step model; returns (wall-clock seconds, final training loss)."""
    steps_per_epoch = math.ceil(len(data["x"]) / batch_size)
    compile_model(model, steps_per_epoch * epochs)
    start = time.perf_counter()
    history = model.fit(data["x"], data["y"], batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    return time.perf_counter() - start, float(history.history["loss"][-1])


def one_step_mse(model: keras.Model, test: np.ndarray) -> float:
    """MSE of the predicted next state over every pair of the test trajectories."""
    x, y = test[:, :-1].reshape(-1, 2), test[:, 1:].reshape(-1, 2)
    prediction = model.predict(x, batch_size=len(x), verbose=0)
    return float(np.mean((prediction - y) ** 2))


def rollout_error(ode: keras_tlnode.TaylorLagrangeODE, test: np.ndarray, num_steps: int) -> float:
    """Relative L2 error of the autoregressive rollout from each test x0 over `num_steps` steps."""
    model = rollout_model(ode, num_steps)
    prediction = model.predict(test[:, 0], batch_size=len(test), verbose=0)
    truth = test[:, : num_steps + 1]
    return float(np.linalg.norm(prediction[:, 1:] - truth[:, 1:]) / np.linalg.norm(truth[:, 1:]))


def run_method(method: str, data: dict, config: dict) -> dict:
    ode = build_ode(method, config["seed"], config["remainder_weight"])
    model = one_step_model(ode)
    seconds, loss = train(model, data, config["epochs"], config["batch_size"])
    rollout_steps = config["rollout_steps"]
    return {
        "label": METHODS[method],
        "train_seconds": seconds,
        "nfe": ode.nfe,
        "final_train_loss": loss,
        "one_step_mse": one_step_mse(model, data["test"]),
        "rollout_rel_l2": rollout_error(ode, data["test"], rollout_steps),
    }


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="small run (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="100 trajectories of 20 s")
    parser.set_defaults(mode="quick")
    parser.add_argument("--epochs", type=int, help="training epochs (default: per mode)")
    parser.add_argument("--trajectories", type=int, help="training trajectories (default: per mode)")
    parser.add_argument("--seconds", type=float, help="length of each trajectory in s (default: per mode)")
    parser.add_argument("--test-trajectories", type=int, default=TEST_TRAJECTORIES)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--rollout-seconds", type=float, default=ROLLOUT_SECONDS,
                        help="horizon of the autoregressive rollout error (capped by --seconds)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--remainder-weight", type=float, default=REMAINDER_WEIGHT,
                        help="TL-NODE's remainder penalty λ (default: %(default)g)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    for name in ("epochs", "trajectories", "test_trajectories", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not (math.isfinite(args.remainder_weight) and args.remainder_weight >= 0):
        parser.error("--remainder-weight must be a finite number >= 0")
    for name in ("seconds", "rollout_seconds"):
        value = getattr(args, name)
        if value is not None and not value >= DT:
            parser.error(f"--{name.replace('_', '-')} must be >= {DT}")
    return args


def make_config(args: argparse.Namespace) -> dict:
    defaults = MODES[args.mode]
    config = {
        "mode": args.mode,
        "trajectories": args.trajectories or defaults["trajectories"],
        "seconds": args.seconds or defaults["seconds"],
        "epochs": args.epochs or defaults["epochs"],
        "test_trajectories": args.test_trajectories,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "dt": DT,
        "learning_rate": list(LEARNING_RATE),
        "remainder_weight": args.remainder_weight,
    }
    num_steps = max(1, round(config["seconds"] / DT))
    config["rollout_steps"] = min(num_steps, max(1, round(args.rollout_seconds / DT)))
    config["rollout_seconds"] = config["rollout_steps"] * DT
    return config


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_tlnode": keras_tlnode.__version__,
        "cpu_count": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def format_table(results: dict, rollout_seconds: float) -> str:
    header = f"{'method':<34} {'train s':>8} {'nfe':>4} {'one-step MSE':>13} {f'rollout relL2 ({rollout_seconds:g} s)':>22}"
    lines = [header, "-" * len(header)]
    for result in results.values():
        lines.append(
            f"{result['label']:<34} {result['train_seconds']:>8.1f} {result['nfe']:>4d} "
            f"{result['one_step_mse']:>13.3e} {result['rollout_rel_l2']:>22.3e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = make_config(args)
    data = make_data(np.random.default_rng(config["seed"]), config["trajectories"], config["seconds"],
                     config["test_trajectories"])
    print(
        f"stiff dynamics ({config['mode']}): {config['trajectories']} trajectories x {config['seconds']:g} s "
        f"-> {len(data['x'])} pairs, {config['epochs']} epochs, batch {config['batch_size']}, seed {config['seed']}",
        flush=True,
    )
    results = {}
    for index, method in enumerate(args.methods, 1):
        results[method] = run_method(method, data, config)
        r = results[method]
        print(
            f"[{index}/{len(args.methods)}] {method}: trained in {r['train_seconds']:.1f} s, "
            f"final loss {r['final_train_loss']:.3e}",
            flush=True,
        )
    print()
    print(format_table(results, config["rollout_seconds"]))
    report = {"config": config, "environment": environment(), "methods": results}
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
