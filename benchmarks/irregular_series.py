"""Irregularly sampled series: one model for every gap length. TL-NODE vs the same layer uncorrected vs RK4 vs DormandPrince.

Many short series of a limit-cycle oscillator (common.py's
`limit_cycle`, dx/dt = κ (1 - |x|²) x + ω R x, here with κ = 2 and ω = 2π: one
turn per time unit) are observed at random times, as clinical records or sensor
logs are: each series starts at a state uniform in area on 0.3 ≤ |x| ≤ 1.6 and
is observed OBSERVATIONS times, the gaps between observations GAPS[0] plus an
exponential time, with mean GAP_MEAN and at most GAPS[1] (a 20x range of gap
lengths). Every method
learns from the pairs (x_t, gap) → x_{t+gap}: its ODE layer is called on
`[state, gap]` and integrates each sample over its own gap in NUM_STEPS steps
of Δt_i = gap_i / NUM_STEPS (the adaptive baseline solves each sample over its
own span). At the longest gaps a step turns the state by a fifth of a turn
(ωΔt = 1.26), where the Taylor step of degree 2 on the true field grows the
radius by 27% per step and RK4 shrinks it by 2%; and one f_θ has to serve every
gap, so a fixed-step model cannot hide its scheme's error in a distorted field
as it can when Δt is fixed. The four methods share the data, f_θ =
MLP(64, 64, tanh)'s initial weights, the optimiser schedule and the number of
steps:

    tl_node   TaylorLagrangeODE(order=1, correction=MidpointCorrection(use_step_size=True)),
              trained by TLNODEModel with the package's defaults: one Γ_φ, fed each sample's
              Δt, serves every gap, fitted to a DormandPrince teacher over each state's own Δt
    taylor2   the same layer without correction (the Taylor method of degree 2)
    rk4       FixedStepODE(method="rk4")
    dopri     DormandPrinceODE at rtol = atol = 1e-6 (the classic neural ODE)

The truth is float64 RK4 at substeps of at most 5e-4 (`harness.rk4_flow`, one
substep count per batch, each sample's own substep). Reported per method: the
one-step test MSE overall and per gap-length bin (GAP_BINS, equal widths in
log scale), the relative error of the learned f_θ against the true field on the
test states, training seconds, the median time of one prediction batch and the
f-evaluations per prediction. The plot (into --out) is the one-step MSE
against gap length, one line per method.

Usage:
    python benchmarks/irregular_series.py            # --quick (default): about a minute and a half on 2 cores
    python benchmarks/irregular_series.py --full --json benchmarks/results/irregular_series_full.json --out benchmarks/results
"""

from __future__ import annotations

import functools
import math
import os

import common
import harness  # sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

KAPPA, OMEGA = 2.0, 2.0 * math.pi  # a period of 1: the longest gaps span 0.4 of a turn
GAPS = (0.02, 0.4)  # shortest and longest gap between two observations
GAP_MEAN = 0.1
GAP_BINS = np.geomspace(*GAPS, 5)
OBSERVATIONS = 8  # per series: short series, so that the data holds transients as well as the cycle
NUM_STEPS = 2  # steps per gap, for every fixed-step method
BATCH_SIZE = 256
STEPS_PER_EXECUTION = 10
LEARNING_RATE = (1e-2, 1e-4)  # exponential decay from the first to the second over training
BASELINE_TOLERANCE = 1e-6
TEST_SERIES = 256
PREDICT_BATCHES = 12

MODES = {"quick": {"series": 512, "steps": 1000}, "full": {"series": 2048, "steps": 6000}}

METHODS = {
    "tl_node": "TL-NODE (Δt-aware corr.)",
    "taylor2": "same layer, no correction",
    "rk4": "RK4",
    "dopri": "DormandPrince 1e-6",
}


# ---------------------------------------------------------------- data

true_field = functools.partial(common.limit_cycle, kappa=KAPPA, omega=OMEGA)


def observe(rng: np.random.Generator, series: int) -> dict[str, np.ndarray]:
    """Pairs (x_t, gap, x_{t+gap}) from `series` series of OBSERVATIONS irregular observations each."""
    states = [common.annulus(rng, series)]
    # Exponential beyond the shortest gap; about 1% reach the longest and stop there.
    gaps = np.minimum(GAPS[0] + rng.exponential(GAP_MEAN - GAPS[0], (OBSERVATIONS - 1, series)), GAPS[1])
    for gap in gaps:
        states.append(harness.rk4_flow(true_field, states[-1], gap))
    return {
        "x": np.concatenate(states[:-1]).astype("float32"),
        "gap": gaps.reshape(-1).astype("float32"),
        "y": np.concatenate(states[1:]).astype("float32"),
    }


# ---------------------------------------------------------------- train and evaluate


def build_model(method: str, field: keras.layers.Layer, steps: int) -> tuple[keras.Model, keras.layers.Layer]:
    """The two-input model `[state, gap] → state` of `method`, compiled with the shared schedule."""
    ode = harness.ode_layer(
        method,
        field,
        duration=GAP_MEAN,  # used only when the layer is called on a state alone
        correction=keras_tlnode.MidpointCorrection(use_step_size=True),
        tolerance=BASELINE_TOLERANCE,
        num_steps=NUM_STEPS,
    )
    state, gap = keras.Input((2,), name="state"), keras.Input((), name="gap")
    model = harness.model_class(method)([state, gap], ode([state, gap]))
    model.compile(
        optimizer=harness.decaying_adam(*LEARNING_RATE, steps), loss="mse", steps_per_execution=STEPS_PER_EXECUTION
    )
    return model, ode


def mse_per_bin(prediction: np.ndarray, data: dict[str, np.ndarray]) -> list[float]:
    """The one-step MSE of the test pairs whose gap falls in each bin of GAP_BINS."""
    errors = np.mean((prediction - data["y"]) ** 2, axis=-1)
    bins = np.clip(np.digitize(data["gap"], GAP_BINS) - 1, 0, len(GAP_BINS) - 2)
    return [float(np.mean(errors[bins == b])) for b in range(len(GAP_BINS) - 1)]


def run(method: str, data: dict, test: dict, config: dict, label: str) -> dict:
    keras.utils.set_random_seed(config["seed"])
    field = common.mlp()
    model, ode = build_model(method, field, config["steps"])
    pairs = tf.data.Dataset.from_tensor_slices(((data["x"], data["gap"]), data["y"]))
    dataset = pairs.shuffle(len(data["x"]), seed=config["seed"]).batch(BATCH_SIZE, drop_remainder=True)
    log = harness.TrainingLog(label)
    harness.fit_steps(model, dataset, config["steps"], STEPS_PER_EXECUTION, log)
    predict = tf.function(lambda inputs: model(inputs, training=False))
    prediction = np.asarray(predict([test["x"], test["gap"]]))
    rng = np.random.default_rng(config["seed"])
    batches = [
        [test[key][rows] for key in ("x", "gap")]
        for rows in (rng.choice(len(test["x"]), BATCH_SIZE) for _ in range(PREDICT_BATCHES))
    ]
    return {
        "label": METHODS[method],
        "train_seconds": log.train_seconds,
        "predict_ms": 1e3 * harness.median_seconds(predict, batches),
        "nfe": harness.nfe_per_call(ode, batches[2:]),
        "one_step_mse": float(np.mean((prediction - test["y"]) ** 2)),
        "mse_per_gap_bin": mse_per_bin(prediction, test),
        "field_rel_error": harness.relative_l2(field(test["x"]), true_field(test["x"].astype("float64"))),
    }


# ---------------------------------------------------------------- report


def plot(path: str, results: dict) -> None:
    """One-step test MSE against gap length (bin centres, log-log), one line per method."""
    plt = harness.pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=90)
    centres = np.sqrt(GAP_BINS[:-1] * GAP_BINS[1:])
    for result in results.values():
        axes.plot(centres, result["mse_per_gap_bin"], marker="o", label=result["label"], linewidth=1.5)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(GAP_BINS, [f"{edge:.2f}" for edge in GAP_BINS], minor=False)
    axes.minorticks_off()
    axes.set_xlabel(f"gap between observations (bins; {NUM_STEPS} steps per gap)")
    axes.set_ylabel("one-step test MSE")
    axes.set_title("Irregularly sampled limit cycle: error against gap length", fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    harness.save_figure(figure, path)


def parse_args(argv: list[str] | None):
    parser = harness.benchmark_parser(__doc__.splitlines()[0], "512 series, 1000 steps", "2048 series, 6000 steps")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--steps", type=int, help="training steps per method (default: per mode)")
    args = parser.parse_args(argv)
    harness.check_flags(parser, args, ("steps",))
    if args.steps is not None and args.steps % STEPS_PER_EXECUTION:
        parser.error(f"--steps must be a multiple of {STEPS_PER_EXECUTION} (steps per execution), got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = {"mode": args.mode, "seed": args.seed, **MODES[args.mode]}
    config["steps"] = args.steps or config["steps"]
    rng = np.random.default_rng(config["seed"])
    data, test = observe(rng, config["series"]), observe(rng, TEST_SERIES)
    print(
        f"{len(data['x'])} training pairs, gaps in [{GAPS[0]}, {GAPS[1]}] (mean {data['gap'].mean():.3f}), "
        f"{NUM_STEPS} steps per gap, {config['steps']} training steps of batch {BATCH_SIZE}",
        flush=True,
    )
    results = harness.run_methods(
        args.methods, lambda method, position: run(method, data, test, config, f"{position} {method}")
    )
    for result in results.values():
        result.update({f"bin{b}": mse for b, mse in enumerate(result["mse_per_gap_bin"])})
    print(harness.format_table(results, common.irregular_columns(GAP_BINS.tolist())), flush=True)
    plot(os.path.join(args.out, "irregular_error_vs_gap.png"), results)
    report = {"config": config, "gap_bins": GAP_BINS.tolist(), "environment": harness.environment(), "methods": results}
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
