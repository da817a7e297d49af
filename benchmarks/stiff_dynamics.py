"""Learning a stiff linear system from trajectories: TL-NODE vs fixed-step schemes vs adaptive DormandPrince.

The system is dx/dt = A x with A = P^-1 diag(-1000, -1) P, P = [[3, 1], [1, -2]],
solved exactly by the matrix exponential. Training pairs (x_t, x_{t+Δt}),
Δt = 0.01, come from trajectories started uniformly in [-0.5, 0.5]^2. At this
Δt the fast eigenvalue gives λΔt = -10: the exact one-step map damps the fast
mode by exp(-10) ≈ 4.5e-5, which no explicit fixed-step scheme applied to the
true A reproduces (its factor is -9 for Euler, 41 for the degree-2 Taylor
method, 291 for RK4). A learned f_θ fits each scheme's one-step map as well as
the scheme allows; this benchmark measures how well, on identical data, initial
weights, schedule and epochs:

    tl_node   TaylorLagrangeODE(order=1, correction=MidpointCorrection)  (TL-NODE), trained by TLNODEModel
    taylor2   TaylorLagrangeODE(order=1)                  (Taylor method of degree 2)
    rk4       FixedStepODE(method="rk4")
    euler     FixedStepODE(method="euler")
    dopri    DormandPrinceODE (adaptive; the classic neural ODE, the baseline)

Model: f_θ = Dense(64) → Dense(2), no activation. TL-NODE uses the package's
defaults throughout: `MidpointCorrection()` (vector Γ starting at 1/(p+2) = 1/3,
with a trust weight) and `TLNODEModel.compile`'s correction
schedule, optimizer and teacher. Batch 500, Adam with exponential decay 1e-2 →
1e-4 over the run, remainder weight λ = 1e-2. The baseline solves in float32 (tfp's adjoint
needs the weights' dtype) at rtol = atol = 1e-6, the tightest float32 makes
meaningful: on the true system, 1e-7 and 1e-8 cost 1.4x and 1.9x the
f-evaluations of 1e-6 and are no more accurate (max error 5e-7 at 1e-6,
1.5e-6 at 1e-7, 5e-7 at 1e-8: float32 round-off).

Reported per method, leading with what a dynamics learner needs: the relative
error of the learned f_θ against the true A x and the relative L2 error of an
autoregressive rollout over the whole test trajectories (a scheme can fit the
one-step map with a wrong f_θ: Euler does here); then the one-step MSE on the
test trajectories, training wall-clock time, f-evaluations per prediction
(`nfe`) and the time per prediction batch; as a table, JSON (--json) and two
PNGs in --out (test error versus training step, training time).

Usage:
    python benchmarks/stiff_dynamics.py            # --quick (default), under 3 minutes on 2 cores
    python benchmarks/stiff_dynamics.py --full --json benchmarks/results/stiff_dynamics_full.json --out benchmarks/results
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import common
import harness  # the benchmarks' shared reporting; sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import tensorflow as tf

DT = common.STIFF_DT  # the system (its matrix, its exact propagator) is defined in common.py
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
BASELINE_TOLERANCE = 1e-6
# Keras runs this many steps per call of its compiled train function, so
# per-step Python overhead does not swamp steps of a few milliseconds.
STEPS_PER_EXECUTION = 10
CURVE_POINTS = 40

METHODS = {
    "tl_node": "TL-NODE (order 1 + correction)",
    "taylor2": "Taylor degree 2",
    "rk4": "RK4",
    "euler": "Euler",
    "dopri": "DormandPrince (baseline)",
}
# Every method trains and predicts under XLA (order-1 Taylor steps compile
# once), the fastest setting of each (docs/results.md, "How the examples'
# settings were chosen").
JIT_COMPILE = True


# ---------------------------------------------------------------- exact system


def simulate(x0: np.ndarray, num_steps: int, dt: float = DT) -> np.ndarray:
    """Exact states at t = 0, dt, ..., num_steps·dt: shape (batch, num_steps + 1, 2), float64."""
    step = common.stiff_propagator(dt).T  # row vectors: x_{k+1} = x_k @ expm(A dt)^T
    states = [np.asarray(x0, dtype=np.float64)]
    for _ in range(num_steps):
        states.append(states[-1] @ step)
    return np.stack(states, axis=1)


def make_data(rng: np.random.Generator, trajectories: int, seconds: float, test_trajectories: int) -> dict:
    """Training pairs (x_t, x_{t+Δt}), the test trajectories and their pairs, float32."""
    num_steps = max(1, round(seconds / DT))
    train = simulate(rng.uniform(STATE_LOW, STATE_HIGH, (trajectories, 2)), num_steps).astype(np.float32)
    test = simulate(rng.uniform(STATE_LOW, STATE_HIGH, (test_trajectories, 2)), num_steps).astype(np.float32)
    return {
        "x": train[:, :-1].reshape(-1, 2),
        "y": train[:, 1:].reshape(-1, 2),
        "test": test,
        "test_x": test[:, :-1].reshape(-1, 2),
        "test_y": test[:, 1:].reshape(-1, 2),
    }


# ---------------------------------------------------------------- models


def vector_field(seed: int) -> keras.Sequential:
    """f_θ; its initial weights depend only on `seed`, so every method starts from the same f."""
    keras.utils.set_random_seed(seed)
    field = keras.Sequential([keras.layers.Dense(64), keras.layers.Dense(2)], name="vector_field")
    field.build((None, 2))
    return field


def build_model(method: str, config: dict) -> tuple[keras.Model, keras.layers.Layer]:
    """The compiled one-step model of `method` and its ODE layer."""
    ode = harness.ode_layer(
        method,
        vector_field(config["seed"]),
        DT,
        remainder_weight=config["remainder_weight"],
        tolerance=BASELINE_TOLERANCE,
    )
    inputs = keras.Input((2,))
    options = dict(
        optimizer=harness.decaying_adam(*LEARNING_RATE, config["total_steps"]),
        loss="mse",
        jit_compile=JIT_COMPILE,
        steps_per_execution=config["steps_per_execution"],
    )
    model = harness.model_class(method)(inputs, ode(inputs))
    model.compile(**options)  # TL-NODE: the package's correction schedule, optimizer and teacher
    return model, ode


# ---------------------------------------------------------------- train and evaluate


def one_step_mse(model: keras.Model, data: dict) -> float:
    """MSE of the predicted next state over every pair of the test trajectories."""
    prediction = model.predict(data["test_x"], batch_size=len(data["test_x"]), verbose=0)
    return float(np.mean((prediction - data["test_y"]) ** 2))


def rollout_error(ode: keras.layers.Layer, test: np.ndarray) -> float:
    """Relative L2 error of the rollout from each test x0 over the whole test trajectory (`harness.rollout_layer`)."""
    prediction = tf.function(harness.rollout_layer(ode, test.shape[1] - 1))(test[:, 0])
    return harness.relative_l2(np.asarray(prediction)[:, 1:], test[:, 1:])


def field_error(ode: keras.layers.Layer, test_x: np.ndarray) -> float:
    """Relative L2 error of the learned f_θ against the true A x on the test states.

    A small one-step error does not mean that f_θ is the true vector field:
    a scheme's learned map can be exact while its f is far from A.
    """
    return harness.relative_l2(ode.vector_field(test_x), test_x.astype(np.float64) @ common.stiff_matrix().T)


def prediction_seconds(model: keras.Model, data: dict, batch_size: int, repeats: int) -> float:
    """Median time of one compiled prediction of a batch of test states (a new batch per call)."""
    predict = tf.function(lambda x: model(x, training=False), jit_compile=JIT_COMPILE)
    rng = np.random.default_rng(0)
    batches = [data["test_x"][rng.integers(0, len(data["test_x"]), batch_size)] for _ in range(repeats + 2)]
    return harness.median_seconds(predict, [tf.constant(b) for b in batches])


def run_method(method: str, data: dict, config: dict, position: str) -> dict:
    model, ode = build_model(method, config)
    every = max(1, config["total_steps"] // CURVE_POINTS)
    log = harness.TrainingLog(f"{position} {METHODS[method]}", lambda: one_step_mse(model, data), every=every)
    dataset = harness.training_pipeline(data["x"], data["y"], config["batch_size"], config["seed"])
    # The dataset reshuffles itself every epoch; `shuffle` only applies to arrays.
    history = model.fit(dataset, epochs=config["epochs"], shuffle=False, verbose=0, callbacks=[log])
    result = {
        "label": METHODS[method],
        "train_seconds": log.train_seconds,
        "step_ms": log.step_ms,
        "nfe": harness.nfe_per_call(ode, [data["test_x"][: config["batch_size"]]]),
        "final_train_loss": float(history.history["loss"][-1]),
        "one_step_mse": log.errors[-1],
        "rollout_rel_l2": rollout_error(ode, data["test"]),
        "field_rel_error": field_error(ode, data["test_x"]),
        "predict_ms": 1e3 * prediction_seconds(model, data, config["batch_size"], config["repeats"]),
        "curve": {"steps": log.steps, "one_step_mse": log.errors},
    }
    if method == "tl_node":
        result["teacher_failures"] = float(history.history["teacher_failures"][-1])
        result["trust"] = float(ode.correction.trust_weight.numpy())
        # Per epoch: the fitted step's gap to the teacher against the model's own training loss.
        result["epoch_curve"] = {"correction_loss": history.history["correction_loss"], "loss": history.history["loss"]}
    return result


def comparisons(results: dict) -> dict:
    """TL-NODE's ratios against the other methods (only between methods that ran)."""
    ratios = {}
    tl, baseline = results.get("tl_node"), results.get("dopri")
    if tl and baseline:
        ratios["train_speedup_vs_dopri"] = baseline["train_seconds"] / tl["train_seconds"]
        ratios["step_speedup_vs_dopri"] = baseline["step_ms"] / tl["step_ms"]
        ratios["one_step_mse_tl_node_over_dopri"] = tl["one_step_mse"] / baseline["one_step_mse"]
        ratios["predict_speedup_vs_dopri"] = baseline["predict_ms"] / tl["predict_ms"]
    for other in ("rk4", "taylor2", "euler"):
        if tl and other in results:
            ratios[f"one_step_mse_{other}_over_tl_node"] = results[other]["one_step_mse"] / tl["one_step_mse"]
            ratios[f"rollout_{other}_over_tl_node"] = results[other]["rollout_rel_l2"] / tl["rollout_rel_l2"]
    return ratios


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.benchmark_parser(__doc__.splitlines()[0], "small run", "100 trajectories of 20 s")
    parser.add_argument("--epochs", type=int, help="training epochs (default: per mode)")
    parser.add_argument("--trajectories", type=int, help="training trajectories (default: per mode)")
    parser.add_argument("--seconds", type=float, help="length of each trajectory in s (default: per mode)")
    parser.add_argument("--test-trajectories", type=int, default=TEST_TRAJECTORIES)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--steps-per-execution", type=int, default=STEPS_PER_EXECUTION)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--remainder-weight",
        type=float,
        default=REMAINDER_WEIGHT,
        help="TL-NODE's remainder penalty λ (default: %(default)g)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed prediction batches per method")
    args = parser.parse_args(argv)
    harness.check_flags(
        parser, args, ("epochs", "trajectories", "test_trajectories", "batch_size", "steps_per_execution", "repeats")
    )
    if not (math.isfinite(args.remainder_weight) and args.remainder_weight >= 0):
        parser.error(f"--remainder-weight must be a finite number >= 0, got {args.remainder_weight}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds >= DT):
        parser.error(f"--seconds must be >= {DT}, got {args.seconds}")
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
        "steps_per_execution": args.steps_per_execution,
        "seed": args.seed,
        "dt": DT,
        "learning_rate": list(LEARNING_RATE),
        "remainder_weight": args.remainder_weight,
        "baseline": {"rtol": BASELINE_TOLERANCE, "atol": BASELINE_TOLERANCE, "dtype": "float32"},
        "jit_compile": JIT_COMPILE,
        "repeats": args.repeats,
    }
    pairs = config["trajectories"] * max(1, round(config["seconds"] / DT))
    config["total_steps"] = math.ceil(pairs / config["batch_size"]) * config["epochs"]
    return config


def report_plots(results: dict, out: str) -> None:
    curves = {r["label"]: (r["curve"]["steps"], r["curve"]["one_step_mse"]) for r in results.values()}
    harness.plot_curves(
        os.path.join(out, "stiff_error_vs_step.png"),
        curves,
        "one-step test MSE",
        "Stiff linear system: test error during training",
    )
    harness.plot_bars(
        os.path.join(out, "stiff_training_time.png"),
        {"training time (s)": {r["label"]: r["train_seconds"] for r in results.values()}},
        "Stiff linear system: wall-clock training time",
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = make_config(args)
    data = make_data(
        np.random.default_rng(config["seed"]), config["trajectories"], config["seconds"], config["test_trajectories"]
    )
    print(
        f"stiff dynamics ({config['mode']}): {config['trajectories']} trajectories x {config['seconds']:g} s "
        f"-> {len(data['x'])} pairs, {config['epochs']} epochs of batch {config['batch_size']} "
        f"({config['total_steps']} steps), seed {config['seed']}",
        flush=True,
    )
    results = harness.run_methods(args.methods, lambda method, position: run_method(method, data, config, position))
    print()
    print(harness.format_table(results, common.STIFF_COLUMNS))
    ratios = comparisons(results)
    for name, value in ratios.items():
        print(f"{name}: {value:.3g}")
    report_plots(results, args.out)
    report = {"config": config, "environment": harness.environment(), "methods": results, "comparisons": ratios}
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
