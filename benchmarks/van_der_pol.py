"""Learning the Van der Pol oscillator (μ = 8) from trajectory pairs: TL-NODE vs Taylor vs RK4 vs DormandPrince.

The system is dx/dt = y, dy/dt = μ (1 - x²) y - x with μ = 8: a limit cycle of
slow drifts along the branches |x| > 1 joined by fast jumps in which |y| grows
to about 12, and strong contraction onto the slow branches (the Jacobian has
the eigenvalue μ (1 - x²) ≈ -24 at x = 2, -64 at x = 3). The learned field is
f_θ = MLP(64, 64, GELU) → Dense(2), with identical initial weights, data,
optimizer schedule and epochs for every method:

    tl_node   TaylorLagrangeODE(order=1, correction=MidpointCorrection(mode="matrix", hidden_units=(16, 16)))
              trained with keras_tlnode.TLNODEModel (correction fitted to a DormandPrince teacher)
    taylor2   TaylorLagrangeODE(order=1, correction=None)  (Taylor method of degree 2)
    rk4       FixedStepODE(method="rk4")
    dopri     keras_tlnode.DormandPrinceODE (adaptive, tfp's adjoint), the classic neural ODE

Data choices:
- The truth is integrated in float64 with numpy RK4 at substeps of at most
  5e-4 (λh ≥ -0.035 on the data; halving the substep changes the states by
  < 1e-8, far below float32's resolution; the smoke test also checks them
  against tfp's DormandPrince).
- Initial states are uniform in [-3, 3]², so the data holds both the transients
  onto the limit cycle and the cycle itself; test trajectories are separate
  draws from the same box. The state is not normalised: both components have a
  standard deviation of about 1.6 over the data, and the large |y| of the fast
  jumps, which dominates the errors, is exactly where the schemes differ.
- Δt = 0.05: a jump moves y by up to 5 in one step, and RK4 applied to the
  true field is unstable at this step from the corners of the box
  (λΔt = -3.2 < -2.79), so a fixed-step model has to learn a field that makes
  its scheme reproduce the flow map, while the adaptive baseline can learn the
  true field.

Model choices:
- DormandPrince at rtol = atol = 1e-5 (float32, the inputs' dtype): its
  solve's error is orders of magnitude below the models' own (docs/results.md,
  "How the examples' settings were chosen").
- TL-NODE trains with the remainder penalty λ = 1e-2 (as in stiff_dynamics.py;
  λ = 0 gave the same errors, 1e-1 larger ones) and a matrix correction
  fitted every 10 steps (Adam 1e-2, the package's default teacher); the
  vector correction with every default is in systems_suite.py.
- Every method trains under XLA (`jit_compile`, see JIT_COMPILE) with
  `steps_per_execution`, on full batches only.

Reported per method: wall-clock training time (with compilation, without the
test-error curve's evaluations), f-evaluations per one-step prediction (`nfe`;
DormandPrince's varies with the batch: the mean over the timed batches), the
time of one prediction batch, the one-step test MSE, the relative L2 error of
an autoregressive rollout from the test trajectories' initial states over
--rollout-seconds, and the relative L2 distance of the learned f_θ from the
true field on the test states (a scheme can fit the flow map with an f_θ that
is not the physics). Plots (into --out): test error versus training step, bar
charts, and phase portraits of three test trajectories against each method's
rollout over --test-seconds.

Usage:
    python benchmarks/van_der_pol.py            # --quick (default)
    python benchmarks/van_der_pol.py --full --json benchmarks/results/van_der_pol_full.json --out benchmarks/results
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import common
import harness  # sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

# The system (its μ, Δt, box of initial states [-BOX, BOX]² and field) is defined in common.py.
MU, DT, BOX = common.VAN_DER_POL_MU, common.VAN_DER_POL_DT, common.VAN_DER_POL_BOX
MAX_SUBSTEP = 5e-4  # of the float64 RK4 that makes the data

MODES = {
    "quick": {"trajectories": 64, "seconds": 10.0, "epochs": 40, "batch_size": 512},
    "full": {"trajectories": 256, "seconds": 10.0, "epochs": 60, "batch_size": 1024},
}
TEST_TRAJECTORIES = 16
TEST_SECONDS = 10.0
ROLLOUT_SECONDS = 2.0
STEPS_PER_EXECUTION = 25
LEARNING_RATE = (1e-2, 1e-4)  # exponential decay from the first to the second over training
REMAINDER_WEIGHT = 1e-2  # as in stiff_dynamics.py; 1e-2 and 0 gave the same errors here, 1e-1 worse
CORRECTION_EVERY = 10
DP_TOLERANCE = 1e-5
CURVE_POINTS = 20
PORTRAITS = 3  # test trajectories in the phase-portrait plot

METHODS = {
    "tl_node": "TL-NODE (order 1 + matrix corr.)",
    "taylor2": "Taylor degree 2 (no corr.)",
    "rk4": "RK4",
    "dopri": "DormandPrince (adaptive)",
}
# XLA is the fastest setting of every method here (docs/results.md, "How the
# examples' settings were chosen").
JIT_COMPILE = {"tl_node": True, "taylor2": True, "rk4": True, "dopri": True}


# ---------------------------------------------------------------- true system


def simulate(x0: np.ndarray, num_steps: int, dt: float, max_substep: float = MAX_SUBSTEP) -> np.ndarray:
    """States at t = 0, dt, ..., num_steps·dt from `x0` (batch, 2): shape (batch, num_steps + 1, 2), float64."""
    states = [np.asarray(x0, dtype=np.float64)]
    for _ in range(num_steps):
        states.append(harness.rk4_flow(common.van_der_pol, states[-1], dt, max_substep))
    return np.stack(states, axis=1)


def make_data(config: dict) -> dict:
    """Training pairs (x_t, x_{t+Δt}) and test trajectories, float32."""
    rng = np.random.default_rng(config["seed"])
    train_x0 = rng.uniform(-BOX, BOX, (config["trajectories"], 2))
    test_x0 = rng.uniform(-BOX, BOX, (config["test_trajectories"], 2))
    dt = config["dt"]
    train = simulate(train_x0, steps_of(config["seconds"], dt), dt)
    test = simulate(test_x0, steps_of(config["test_seconds"], dt), dt)
    return {
        "x": train[:, :-1].reshape(-1, 2).astype(np.float32),
        "y": train[:, 1:].reshape(-1, 2).astype(np.float32),
        "test": test.astype(np.float32),
    }


def steps_of(seconds: float, dt: float) -> int:
    return max(1, round(seconds / dt))


# ---------------------------------------------------------------- models


def build_ode(method: str, config: dict) -> keras.layers.Layer:
    """The one-step layer of `method`; f_θ's initial weights depend only on the seed."""
    keras.utils.set_random_seed(config["seed"])
    field = keras.Sequential(
        [keras.layers.Dense(64, activation="gelu"), keras.layers.Dense(64, activation="gelu"), keras.layers.Dense(2)],
        name="vector_field",
    )
    field.build((None, 2))
    return harness.ode_layer(
        method,
        field,
        config["dt"],
        correction=keras_tlnode.MidpointCorrection(mode="matrix", hidden_units=(16, 16)),
        remainder_weight=config["remainder_weight"],
        tolerance=config["dp_tolerance"],
    )


def compile_model(method: str, ode: keras.layers.Layer, config: dict) -> keras.Model:
    """The one-step model of `ode`, compiled with the shared schedule and `method`'s XLA setting."""
    inputs = keras.Input((2,))
    model_class = harness.model_class(method)
    model = model_class(inputs, ode(inputs))
    options = {"jit_compile": config["jit_compile"][method], "steps_per_execution": config["steps_per_execution"]}
    if method == "tl_node":
        options["correction_every"] = config["correction_every"]
    optimizer = harness.decaying_adam(*config["learning_rate"], config["training_steps"])
    model.compile(optimizer=optimizer, loss="mse", **options)
    return model


def predictor(model: keras.Model, jit_compile: bool):
    """The model's forward pass as one compiled function (no Keras predict loop)."""
    return tf.function(lambda x: model(x, training=False), jit_compile=jit_compile)


# ---------------------------------------------------------------- train and evaluate


def one_step_mse(predict, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(predict(x)) - y) ** 2))


def test_pairs(test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return test[:, :-1].reshape(-1, 2), test[:, 1:].reshape(-1, 2)


def rollout(ode: keras.layers.Layer, x0: np.ndarray, num_steps: int) -> tuple[np.ndarray, int]:
    """The autoregressive rollout from `x0` over `num_steps` steps, and its f-evaluations."""
    layer = harness.rollout_layer(ode, num_steps)
    if isinstance(layer, keras_tlnode.DormandPrinceODE):
        states, nfe, _ = tf.function(layer.solve)(tf.constant(x0))
        return np.asarray(states), int(nfe)
    return np.asarray(layer(tf.constant(x0))), layer.nfe


def field_error(field: keras.layers.Layer, states: np.ndarray) -> float:
    """‖f_θ - f‖ / ‖f‖ over `states`: how close the learned field is to the true one, whatever the scheme."""
    return harness.relative_l2(field(states.astype(np.float32)), common.van_der_pol(states.astype(np.float64)))


def prediction_cost(ode: keras.layers.Layer, predict, x: np.ndarray, config: dict) -> tuple[float, float]:
    """(median seconds of one prediction batch, f-evaluations per prediction) on random test batches.

    Each timed call gets a batch of its own (see `harness.median_seconds`).
    """
    rng = np.random.default_rng(config["seed"])
    batches = [x[rng.choice(len(x), config["batch_size"])] for _ in range(12)]
    return harness.median_seconds(predict, batches), harness.nfe_per_call(ode, batches[2:])


def run_method(method: str, data: dict, config: dict) -> tuple[dict, np.ndarray]:
    """Trains `method` and measures it: (its report entry, its rollout from the test trajectories' starts)."""
    ode = build_ode(method, config)
    model = compile_model(method, ode, config)
    predict = predictor(model, config["jit_compile"][method])
    test_x, test_y = test_pairs(data["test"])
    log = harness.TrainingLog(
        METHODS[method], evaluate=lambda: one_step_mse(predict, test_x, test_y), every=config["eval_every"]
    )
    # The dataset reshuffles itself every epoch; full batches only: one input
    # shape, so that XLA compiles each model once.
    history = model.fit(
        harness.training_pipeline(data["x"], data["y"], config["batch_size"], config["seed"], drop_remainder=True),
        epochs=config["epochs"],
        shuffle=False,
        verbose=0,
        callbacks=[log],
    )
    seconds, nfe = prediction_cost(ode, predict, test_x, config)
    num_steps = data["test"].shape[1] - 1
    trajectory, rollout_nfe = rollout(ode, data["test"][:, 0], num_steps)
    horizon = config["rollout_steps"] + 1
    result = {
        "label": METHODS[method],
        "train_seconds": log.train_seconds,
        "nfe": nfe,
        "predict_ms": 1e3 * seconds,
        "final_train_loss": float(history.history["loss"][-1]),
        "one_step_mse": log.errors[-1],
        "rollout_rel_l2": harness.relative_l2(trajectory[:, 1:horizon], data["test"][:, 1:horizon]),
        "rollout_nfe_per_step": rollout_nfe / num_steps,
        "field_rel_l2": field_error(ode.vector_field, test_x),
        "curve": {"steps": log.steps, "one_step_mse": log.errors},
    }
    return result, trajectory


# ---------------------------------------------------------------- plots


def plot_portraits(path: str, truth: np.ndarray, results: dict, rollouts: dict[str, np.ndarray]) -> None:
    """One panel per method: the first test trajectories (grey) and the method's rollouts from their starts."""
    plt = harness.pyplot()
    figure, panels = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4), dpi=90, squeeze=False)
    for axes, (method, result) in zip(panels[0], results.items(), strict=True):
        for i, (true, guess) in enumerate(zip(truth, rollouts[method], strict=True)):
            axes.plot(true[:, 0], true[:, 1], color="0.6", linewidth=2.5)
            axes.plot(guess[:, 0], guess[:, 1], color=f"C{i}", linewidth=1.0, linestyle="--")
            axes.plot(true[0, 0], true[0, 1], "o", color=f"C{i}", markersize=4)
        axes.set_title(result["label"], fontsize=8)
        axes.set_xlabel("x", fontsize=8)
        axes.set_ylim(-16, 16)
        axes.set_xlim(-4, 4)
        axes.grid(alpha=0.3)
    panels[0][0].set_ylabel("y = dx/dt", fontsize=8)
    figure.suptitle("Van der Pol μ = 8: truth (grey) vs rollout (dashed)", fontsize=10)
    harness.save_figure(figure, path)


def write_plots(out: str, data: dict, results: dict, rollouts: dict[str, np.ndarray], config: dict) -> None:
    horizon = f"{config['rollout_seconds']:g} s"
    harness.plot_curves(
        os.path.join(out, "van_der_pol_curves.png"),
        {r["label"]: (r["curve"]["steps"], r["curve"]["one_step_mse"]) for r in results.values()},
        ylabel="one-step test MSE",
        title=f"Van der Pol μ = {MU:g}, Δt = {config['dt']:g}: test error during training",
    )
    harness.plot_bars(
        os.path.join(out, "van_der_pol_bars.png"),
        {
            "training time (s)": {r["label"]: r["train_seconds"] for r in results.values()},
            "one-step test MSE": {r["label"]: r["one_step_mse"] for r in results.values()},
            f"rollout rel. L2 ({horizon})": {r["label"]: r["rollout_rel_l2"] for r in results.values()},
        },
        title=f"Van der Pol μ = {MU:g}, Δt = {config['dt']:g}, {config['epochs']} epochs",
    )
    plot_portraits(os.path.join(out, "van_der_pol_portraits.png"), data["test"][:PORTRAITS], results, rollouts)


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.benchmark_parser(
        __doc__.splitlines()[0], "small run", "256 trajectories, 3000 steps of batch 1024"
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default: per mode)")
    parser.add_argument("--trajectories", type=int, help="training trajectories (default: per mode)")
    parser.add_argument("--seconds", type=float, help="length of each training trajectory in s (default: per mode)")
    parser.add_argument("--test-trajectories", type=int, default=TEST_TRAJECTORIES)
    parser.add_argument(
        "--test-seconds",
        type=float,
        default=TEST_SECONDS,
        help="length of each test trajectory and of the plotted rollouts, in s (default: %(default)g)",
    )
    parser.add_argument(
        "--rollout-seconds",
        type=float,
        default=ROLLOUT_SECONDS,
        help="horizon of the rollout error in s, capped by --test-seconds (default: %(default)g)",
    )
    parser.add_argument(
        "--dt", type=float, default=DT, help="time step of the data and the models (default: %(default)g)"
    )
    parser.add_argument("--batch-size", type=int, help="training batch size (default: per mode)")
    parser.add_argument("--steps-per-execution", type=int, default=STEPS_PER_EXECUTION)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--remainder-weight",
        type=float,
        default=REMAINDER_WEIGHT,
        help="TL-NODE's remainder penalty λ (default: %(default)g)",
    )
    parser.add_argument(
        "--dp-tolerance",
        type=float,
        default=DP_TOLERANCE,
        help="rtol = atol of the DormandPrince baseline (default: %(default)g)",
    )
    args = parser.parse_args(argv)
    harness.check_flags(
        parser, args, ("epochs", "trajectories", "test_trajectories", "batch_size", "steps_per_execution")
    )
    if not (math.isfinite(args.dt) and args.dt > 0):
        parser.error(f"--dt must be a finite number > 0, got {args.dt}")
    for name in ("seconds", "test_seconds", "rollout_seconds"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= args.dt):
            parser.error(f"--{name.replace('_', '-')} must be a finite number >= --dt ({args.dt}), got {value}")
    if not (math.isfinite(args.remainder_weight) and args.remainder_weight >= 0):
        parser.error(f"--remainder-weight must be a finite number >= 0, got {args.remainder_weight}")
    if not (math.isfinite(args.dp_tolerance) and args.dp_tolerance > 0):
        parser.error(f"--dp-tolerance must be a finite number > 0, got {args.dp_tolerance}")
    for name, default in MODES[args.mode].items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    pairs = args.trajectories * steps_of(args.seconds, args.dt)
    if args.batch_size > pairs:
        parser.error(f"--batch-size must be <= the {pairs} training pairs of --trajectories x --seconds")
    return args


def make_config(args: argparse.Namespace) -> dict:
    config = {
        "mode": args.mode,
        "mu": MU,
        "dt": args.dt,
        "box": BOX,
        "trajectories": args.trajectories,
        "seconds": args.seconds,
        "test_trajectories": args.test_trajectories,
        "test_seconds": args.test_seconds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps_per_execution": args.steps_per_execution,
        "learning_rate": list(LEARNING_RATE),
        "remainder_weight": args.remainder_weight,
        "correction_every": CORRECTION_EVERY,
        "dp_tolerance": args.dp_tolerance,
        "jit_compile": {method: JIT_COMPILE[method] for method in args.methods},
        "seed": args.seed,
    }
    pairs = config["trajectories"] * steps_of(config["seconds"], args.dt)
    config["training_steps"] = config["epochs"] * (pairs // config["batch_size"])
    config["eval_every"] = max(1, config["training_steps"] // CURVE_POINTS)
    config["rollout_steps"] = min(steps_of(args.rollout_seconds, args.dt), steps_of(args.test_seconds, args.dt))
    config["rollout_seconds"] = config["rollout_steps"] * args.dt
    return config


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = make_config(args)
    data = make_data(config)
    print(
        f"Van der Pol μ = {MU:g}, Δt = {config['dt']:g} ({config['mode']}): {config['trajectories']} trajectories x "
        f"{config['seconds']:g} s -> {len(data['x'])} pairs, {config['epochs']} epochs "
        f"({config['training_steps']} steps of batch {config['batch_size']}), seed {config['seed']}",
        flush=True,
    )
    results, rollouts = {}, {}
    for method in args.methods:
        results[method], rollouts[method] = run_method(method, data, config)
    print()
    print(harness.format_table(results, common.VAN_DER_POL_COLUMNS))
    print(f"(nfe and predict ms per batch of {config['batch_size']}; rollout over {config['rollout_seconds']:g} s)")
    write_plots(args.out, data, results, rollouts, config)
    report = {"config": config, "environment": harness.environment(), "methods": results}
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
