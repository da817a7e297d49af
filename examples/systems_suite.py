"""Which solver should a neural ODE use? TL-NODE at the package defaults against every other method, on known systems, over seeds.

Each system of `systems.py` is learned from one-step pairs (x, x(t + Δt)) of
states drawn from its region, with its true field and exact flow known, so
that what a user of the learned model cares about can be measured against the
truth. Within a system every method gets the same data, the same initial f_θ
(per seed), the same optimiser and the same number of steps; only the ODE layer
differs:

    tl_node       TaylorLagrangeODE(correction=MidpointCorrection()) in TLNODEModel:
                  every TL-NODE setting at the package default
    uncorrected   the same layer without correction
    euler, heun, rk4
                  FixedStepODE(method=...)
    dopri         DormandPrinceODE at rtol = atol = 1e-6 (the classic neural ODE, the reference)
    dopri_1e-3    DormandPrinceODE at rtol = atol = 1e-3 (the cheap adaptive setting)

The fixed-step methods run at 1 and 2 steps per interval (`rk4@2` is RK4 with
two steps of Δt/2). Every model trains in graph mode (Keras's default on a
CPU), `steps_per_execution=10`, batch 256.

Reported per system and method, median and range over the seeds:

    one_step       test MSE of the predicted next state
    rollout        the paper's metric: mean over 30 steps of |x̂ - x| / (|x| + |x̂|), the
                   model applied to its own output from 40 held-out starts
    rollout_abs    mean |x̂ - x| over the same rollouts (the relative metric degenerates
                   on systems that settle to a point)
    field          relative L2 error of the learned f_θ against the true field on test states
    train_s        training wall-clock, tracing included, periodic evaluation excluded
    nfe            f-evaluations per prediction (the mean over test batches for dopri)
    own_flow       MSE between the trained layer's output and the exact flow of its own f_θ
                   (a tight adaptive solve), and `rk4_own_flow`, RK4's at the same steps per
                   interval on that same f_θ: whether the step integrates the field it learned
    to_accuracy_s  time to accuracy: the training wall-clock at which the method's test
                   one-step MSE (evaluated every `eval_every` steps, untimed) first reaches
                   1.2x the final one of dopri with the same seed; None if never

`gates` checks issue 19's acceptance per system (README, "Choosing a solver"):
on nonlinear systems TL-NODE's rollout ≤ 0.8x RK4's, ≤ the rollout of RK4 at
the most steps per interval that fit in TL-NODE's training time, field ≤ 1.1x
RK4's, training ≤ 2x RK4's time; on stiff systems time to accuracy ≥ 5x faster
than dopri's and final rollout within 1.2x of it.

Usage:
    python examples/systems_suite.py               # --quick: 2 systems, 1 seed, short runs; a few minutes on 2 cores
    python examples/systems_suite.py --full --json examples/results/systems_suite_full.json --out examples/results
    python examples/systems_suite.py --systems brusselator --methods tl_node rk4 dopri --seeds 0 1 2
    python examples/systems_suite.py --markdown examples/results/systems_suite_full.json   # the docs' tables
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import classification
import harness  # sets KERAS_BACKEND before keras is imported
import irregular_series
import keras
import numpy as np
import systems as known
import tensorflow as tf
import tensorflow_probability as tfp

import keras_tlnode

MODES = {
    "quick": {
        "systems": ["brusselator", "stiff_near"],
        "applications": [],
        "seeds": [0],
        "steps": 200,
        "pairs": 2048,
        "bdf_probe_steps": 0,
    },
    "full": {
        "systems": list(known.systems()),
        "applications": ["irregular_series", "digits"],
        "seeds": [0, 1, 2],
        "steps": 1500,
        "pairs": 6000,
        "bdf_probe_steps": 10,
    },
}
# The applications at their examples' quick sizes: 512 series and 1000 steps; 20 epochs of the digits.
IRREGULAR_SIZE = {"series": 512, "steps": 1000}
DIGITS_EPOCHS = 20
BATCH_SIZE = 256
TEST_PAIRS = 1000
ROLLOUT_STARTS, ROLLOUT_STEPS = 40, 30
OWN_FLOW_STATES = 256
STEPS_PER_EXECUTION = 10
EVAL_POINTS = 15  # evaluations of the test error per run, for time to accuracy
ACCURACY_FACTOR = 1.2  # time to accuracy: the first time the test error is within this factor of dopri's final one
REFERENCE = "dopri"

METHODS = {
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
    method, _, steps = key.partition("@")
    return method, int(steps or 1)


# ---------------------------------------------------------------- data


def make_data(system: known.System, pairs: int, seed: int) -> dict:
    """Training and test pairs, rollout trajectories and the states the own-flow check uses, float32."""
    rng = np.random.default_rng(seed)
    x, test_x, starts = system.sample(rng, pairs), system.sample(rng, TEST_PAIRS), system.sample(rng, ROLLOUT_STARTS)
    return {
        "x": x.astype("float32"),
        "y": system.flow(x).astype("float32"),
        "test_x": test_x.astype("float32"),
        "test_y": system.flow(test_x).astype("float32"),
        "trajectories": system.trajectories(starts, ROLLOUT_STEPS).astype("float32"),
    }


# ---------------------------------------------------------------- one run


def build(system: known.System, key: str) -> tuple[keras.Model, keras.layers.Layer, keras.layers.Layer]:
    """(model, ODE layer, f_θ) of run `key`; the caller seeds the initial weights."""
    method, steps = split_key(key)
    field = system.make_field()
    if method == "tl_node":
        ode = keras_tlnode.TaylorLagrangeODE(
            field, duration=system.dt, num_steps=steps, correction=keras_tlnode.MidpointCorrection()
        )
    elif method == "uncorrected":
        ode = keras_tlnode.TaylorLagrangeODE(field, duration=system.dt, num_steps=steps)
    elif method in FIXED_STEP:
        ode = keras_tlnode.FixedStepODE(field, method=method, duration=system.dt, num_steps=steps)
    else:
        tolerance = TOLERANCES[method]
        ode = keras_tlnode.DormandPrinceODE(field, duration=system.dt, rtol=tolerance, atol=tolerance)
    inputs = keras.Input((system.dimension,))
    model = (keras_tlnode.TLNODEModel if method == "tl_node" else keras.Model)(inputs, ode(inputs))
    return model, ode, field


def optimizer(system: known.System, steps: int) -> keras.optimizers.Optimizer:
    rate = system.learning_rate
    return harness.decaying_adam(*rate, steps) if isinstance(rate, tuple) else keras.optimizers.Adam(rate)


def rollout_errors(ode: keras.layers.Layer, trajectories: np.ndarray) -> tuple[float, float]:
    """(the paper's relative metric, the mean absolute error) of the rollout from the trajectories' starts."""
    steps = trajectories.shape[1] - 1
    per_interval = getattr(ode, "num_steps", 1) if not isinstance(ode, keras_tlnode.DormandPrinceODE) else 1
    layer = harness.rollout_layer(ode, steps * per_interval)
    prediction = np.asarray(tf.function(layer)(tf.constant(trajectories[:, 0])))[:, ::per_interval]
    error = np.linalg.norm(prediction - trajectories, axis=-1)[:, 1:]
    scale = (np.linalg.norm(prediction, axis=-1) + np.linalg.norm(trajectories, axis=-1))[:, 1:]
    return float(np.mean(error / scale)), float(np.mean(error))


def own_flow_errors(ode: keras.layers.Layer, field: keras.layers.Layer, states: np.ndarray, dt: float) -> dict:
    """MSE of the trained layer, and of RK4 at the same steps per interval, against the exact flow of f_θ itself."""
    teacher = keras_tlnode.DormandPrinceTeacher(rtol=1e-10, atol=1e-10, max_num_steps=100_000)
    x = tf.constant(states)
    exact = teacher.solve(field, x, dt).states.numpy()
    steps = getattr(ode, "num_steps", 1) if not isinstance(ode, keras_tlnode.DormandPrinceODE) else 1
    rk4 = keras_tlnode.FixedStepODE(field, method="rk4", duration=dt, num_steps=steps)
    layer = 0.0 if isinstance(ode, keras_tlnode.DormandPrinceODE) else float(np.mean((ode(x).numpy() - exact) ** 2))
    return {"own_flow": layer, "rk4_own_flow": float(np.mean((rk4(x).numpy() - exact) ** 2))}


def run(system: known.System, key: str, data: dict, config: dict, seed: int, label: str) -> dict:
    """Trains run `key` (a method, with `@k` steps per interval for fixed-step ones) from `seed`; its measurements."""
    keras.utils.set_random_seed(seed)
    model, ode, field = build(system, key)
    model.compile(optimizer=optimizer(system, config["steps"]), loss="mse", steps_per_execution=STEPS_PER_EXECUTION)
    predict = tf.function(lambda x: model(x, training=False))
    log = harness.TrainingLog(
        label,
        evaluate=lambda: float(np.mean((np.asarray(predict(data["test_x"])) - data["test_y"]) ** 2)),
        every=max(1, config["steps"] // EVAL_POINTS),
    )
    per_epoch = min(config["steps"], len(data["x"]) // BATCH_SIZE)
    dataset = harness.training_pipeline(data["x"], data["y"], BATCH_SIZE, seed, drop_remainder=True)
    model.fit(
        dataset.repeat(),
        epochs=math.ceil(config["steps"] / per_epoch),
        steps_per_epoch=per_epoch,
        verbose=0,
        shuffle=False,  # the dataset reshuffles itself, in the same order for every method
        callbacks=[log],
    )
    rollout, rollout_abs = rollout_errors(ode, data["trajectories"])
    result = {
        "train_s": log.train_seconds,
        "step_ms": log.step_ms,
        "one_step": log.errors[-1],
        "rollout": rollout,
        "rollout_abs": rollout_abs,
        "field": harness.relative_l2(field(data["test_x"]), system.field(data["test_x"].astype("float64"))),
        "nfe": harness.nfe_per_call(
            ode, [data["test_x"][i : i + BATCH_SIZE] for i in range(0, 4 * BATCH_SIZE, BATCH_SIZE)]
        ),
        **own_flow_errors(ode, field, data["test_x"][:OWN_FLOW_STATES], system.dt),
        "curve": {"steps": log.steps, "seconds": log.seconds, "one_step": log.errors},
    }
    if key.startswith("tl_node"):
        result["trust"] = float(ode.correction.trust_weight.numpy()) if ode.correction.trust else 1.0
    return result


# ---------------------------------------------------------------- the implicit solver, probed


class BDFODE(keras.layers.Layer):
    """x(Δt) by tfp's BDF (implicit, for stiff systems), gradients by tfp's adjoint; autonomous fields only.

    tfp solves the whole batch as one system, so each Newton iteration factors a
    (batch · d)² Jacobian: the suite only probes its cost per training step.
    """

    def __init__(self, vector_field: keras.layers.Layer, duration: float, tolerance: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.vector_field, self.duration, self.tolerance = vector_field, duration, tolerance

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        solver = tfp.math.ode.BDF(rtol=self.tolerance, atol=self.tolerance)
        solution = solver.solve(lambda s, y: self.duration * self.vector_field(y), 0.0, x, solution_times=[1.0])
        return solution.states[-1]


def probe_bdf(system: known.System, data: dict, seed: int, steps: int) -> dict:
    """BDF at 1e-6 trained for `steps` steps: seconds per step after the first, and the suite's run at that rate."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((system.dimension,))
    model = keras.Model(inputs, BDFODE(system.make_field(), system.dt)(inputs))
    model.compile(optimizer=optimizer(system, steps), loss="mse")
    batches = harness.training_pipeline(data["x"], data["y"], BATCH_SIZE, seed, drop_remainder=True).repeat()
    model.fit(batches, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)  # tracing
    start = time.perf_counter()
    history = model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return {"step_s": (time.perf_counter() - start) / steps, "steps": steps, "loss": history.history["loss"][-1]}


# ---------------------------------------------------------------- the two applications


# The applications run with their examples' own settings (irregular_series.py: a Δt-aware
# correction; classification.py: the paper's model, λ = 10); the suite's method names map
# to theirs. Both examples compare TL-NODE, the uncorrected layer, RK4 and the baseline.
APPLICATION_METHODS = {"tl_node": "tl_node", "uncorrected": "taylor2", "rk4": "rk4", "dopri": "dopri"}


def run_irregular_series(methods: list[str], seeds: list[int], steps: int, series: int) -> dict[str, list[dict]]:
    """irregular_series.py's runs per seed (data drawn from the seed, as the example does)."""
    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        data, test = irregular_series.observe(rng, series), irregular_series.observe(rng, irregular_series.TEST_SERIES)
        config = {"seed": seed, "steps": steps}
        for method in methods:
            result = irregular_series.run(
                APPLICATION_METHODS[method], data, test, config, f"  irregular {method} seed {seed}"
            )
            runs.setdefault(method, []).append(
                {
                    "one_step": result["one_step_mse"],
                    "field": result["field_rel_error"],
                    "train_s": result["train_seconds"],
                    "nfe": result["nfe"],
                }
            )
    return runs


def run_digits(methods: list[str], seeds: list[int], epochs: int) -> dict[str, list[dict]]:
    """classification.py's runs on the 8x8 digits per seed (split and initial weights drawn from the seed)."""
    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        data = classification.load_digits(seed)
        parser = classification.build_parser()
        args = classification.parse_args(parser, ["--epochs", str(epochs), "--seed", str(seed)])
        config = classification.make_config(args, data)
        for method in methods:
            result = classification.run_method(
                APPLICATION_METHODS[method], data, config, f"  digits {method} seed {seed}"
            )
            runs.setdefault(method, []).append(
                {"accuracy": result["accuracy"], "train_s": result["train_seconds"], "nfe": result["nfe"]}
            )
    return runs


# ---------------------------------------------------------------- summaries and gates


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
    """Median, smallest and largest of each metric over the seeds; time to accuracy as the median with None as ∞."""
    summary = {}
    for metric in SUMMARISED:
        values = [r[metric] for r in results if metric in r]
        if values:
            summary[metric] = {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}
    if any("to_accuracy_s" in r for r in results):
        times = sorted(math.inf if r["to_accuracy_s"] is None else r["to_accuracy_s"] for r in results)
        median = float(np.median(times))
        summary["to_accuracy_s"] = {
            "median": None if math.isinf(median) else median,
            "reached": sum(map(math.isfinite, times)),
        }
    return summary


def gates(summary: dict[str, dict], stiff: bool) -> dict[str, dict]:
    """Issue 19's acceptance for one system, each as {value, bound, holds}; only those whose runs exist."""

    def median(key: str, metric: str) -> float | None:
        entry = summary.get(key, {}).get(metric)
        return None if entry is None else entry["median"]

    def check(value: float | None, bound: float, below: bool = True) -> dict | None:
        if value is None:
            return None
        return {"value": value, "bound": bound, "holds": bool(value <= bound if below else value >= bound)}

    tl, rk4 = "tl_node@1", "rk4@1"
    found = {}
    if stiff:
        tl_time, reference_time = median(tl, "to_accuracy_s"), median(REFERENCE, "to_accuracy_s")
        if REFERENCE in summary and tl in summary:
            speedup = None if tl_time is None or reference_time is None else reference_time / tl_time
            found["time_to_accuracy_speedup_vs_dopri"] = check(
                speedup if speedup is not None else 0.0, 5.0, below=False
            )
            ratio = median(tl, "rollout_abs") / median(REFERENCE, "rollout_abs")
            found["rollout_vs_dopri"] = check(ratio, 1.2)
        return {name: gate for name, gate in found.items() if gate is not None}
    if tl not in summary or rk4 not in summary:
        return {}
    found["rollout_vs_rk4"] = check(median(tl, "rollout") / median(rk4, "rollout"), 0.8)
    found["field_vs_rk4"] = check(median(tl, "field") / median(rk4, "field"), 1.1)
    found["train_time_vs_rk4"] = check(median(tl, "train_s") / median(rk4, "train_s"), 2.0)
    # Pareto: RK4 at the most steps per interval whose training fits in TL-NODE's time.
    affordable = [
        k
        for k in STEPS_PER_INTERVAL
        if f"rk4@{k}" in summary and median(f"rk4@{k}", "train_s") <= median(tl, "train_s")
    ]
    if affordable:
        found["rollout_vs_rk4_at_equal_cost"] = check(
            median(tl, "rollout") / median(f"rk4@{max(affordable)}", "rollout"), 1.0
        )
    return {name: gate for name, gate in found.items() if gate is not None}


# ---------------------------------------------------------------- report


COLUMNS = [
    ("accuracy", "accuracy", ".4f"),
    ("one_step", "one-step", ".2e"),
    ("rollout", "rollout", ".4f"),
    ("rollout_abs", "rollout abs", ".2e"),
    ("field", "f relErr", ".3f"),
    ("train_s", "train s", ".1f"),
    ("to_accuracy_s", "to acc. s", ".1f"),
    ("nfe", "nfe", ".0f"),
    ("own_flow", "own flow", ".1e"),
    ("rk4_own_flow", "RK4 own", ".1e"),
]


def label(key: str) -> str:
    method, steps = split_key(key)
    return METHODS[method] + (f", {steps} steps" if method in FIXED_STEP and steps > 1 else "")


def table(summary: dict[str, dict]) -> str:
    rows = {
        key: {"label": label(key), **{m: v.get("median") for m, v in entry.items()}} for key, entry in summary.items()
    }
    return harness.format_table(rows, COLUMNS)


def ratio(summary: dict, a: str, b: str, metric: str) -> str:
    """The median of `metric` of run `a` over run `b`'s, as text ("-" where either is missing)."""
    if a not in summary or b not in summary or not summary[b][metric]["median"]:
        return "-"
    return f"{summary[a][metric]['median'] / summary[b][metric]['median']:.2f}x"


def markdown(report: dict) -> str:
    """The docs' tables from a report: one line per system for TL-NODE against RK4 and dopri, then the gates."""
    lines = [
        "| system (Δt; Δt·|λ| median / max) | TL-NODE rollout / RK4's | field / RK4's | train time / RK4's | own flow: TL-NODE / RK4 | dopri rollout / RK4's | dopri time / TL-NODE's |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in report["systems"].items():
        s = entry["summary"]
        if "tl_node@1" not in s or "rk4@1" not in s:
            continue

        metric = "rollout_abs" if entry["decays"] else "rollout"
        stiffness = entry["stiffness"]
        lines.append(
            f"| {name} ({entry['dt']:g}; {stiffness['median']:.2f} / {stiffness['max']:.2f}) "
            f"| {ratio(s, 'tl_node@1', 'rk4@1', metric)} | {ratio(s, 'tl_node@1', 'rk4@1', 'field')} "
            f"| {ratio(s, 'tl_node@1', 'rk4@1', 'train_s')} "
            f"| {s['tl_node@1']['own_flow']['median']:.1e} / {s['tl_node@1']['rk4_own_flow']['median']:.1e} "
            f"| {ratio(s, REFERENCE, 'rk4@1', metric)} | {ratio(s, REFERENCE, 'tl_node@1', 'train_s')} |"
        )
    return "\n".join(lines)


def pareto_plot(path: str, report: dict) -> None:
    """Per system: rollout error against training time, median over seeds with the range as bars."""
    plt = harness.pyplot()
    names = list(report["systems"])
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, panels = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), dpi=90, squeeze=False)
    markers = {1: "o", 2: "s"}
    for axes, name in zip(panels.flat, names, strict=False):
        entry = report["systems"][name]
        metric = "rollout_abs" if entry["decays"] else "rollout"
        for index, method in enumerate(METHODS):
            for key, summary in entry["summary"].items():
                if split_key(key)[0] != method:
                    continue
                x, y = summary["train_s"], summary[metric]
                axes.errorbar(
                    x["median"],
                    y["median"],
                    xerr=[[x["median"] - x["min"]], [x["max"] - x["median"]]],
                    yerr=[[y["median"] - y["min"]], [y["max"] - y["median"]]],
                    fmt=markers.get(split_key(key)[1], "D"),
                    color=f"C{index}",
                    label=label(key),
                    markersize=5,
                    capsize=2,
                )
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_title(f"{name} (Δt = {entry['dt']:g})", fontsize=9)
        axes.set_xlabel("training s", fontsize=8)
        axes.set_ylabel("rollout error" + (" (absolute)" if entry["decays"] else ""), fontsize=8)
        axes.grid(alpha=0.3, which="both")
    for axes in list(panels.flat)[len(names) :]:
        axes.axis("off")
    handles, labels = panels.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    figure.subplots_adjust(bottom=0.18)
    harness.save_figure(figure, path)


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None):
    parser = harness.example_parser(
        __doc__.splitlines()[0], "2 systems, 1 seed, 200 steps", "every system, 3 seeds, 1500 steps"
    )
    parser.add_argument("--systems", nargs="+", choices=list(known.systems()), help="default: per mode")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--applications",
        nargs="*",
        choices=["irregular_series", "digits"],
        help="default: per mode (none: --applications)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="seeds of the initial weights and batches (default: per mode)"
    )
    parser.add_argument("--steps", type=int, help="training steps per run (default: per mode)")
    parser.add_argument("--pairs", type=int, help="training pairs per system (default: per mode)")
    parser.add_argument("--markdown", metavar="JSON", help="print the docs' tables from a report and exit")
    args = parser.parse_args(argv)
    harness.check_flags(parser, args, ("steps", "pairs"))
    for name in ("systems", "seeds"):
        values = getattr(args, name)
        if values is not None and len(set(values)) != len(values):
            parser.error(f"--{name} must not repeat a value, got {values}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.markdown:
        with open(args.markdown) as handle:
            print(markdown(json.load(handle)))
        return {}
    mode = MODES[args.mode]
    config = {
        "mode": args.mode,
        "systems": args.systems if args.systems is not None else mode["systems"],
        "applications": args.applications if args.applications is not None else mode["applications"],
        "seeds": args.seeds or mode["seeds"],
        "steps": args.steps or mode["steps"],
        "pairs": args.pairs or mode["pairs"],
        "data_seed": args.seed,
        "batch_size": BATCH_SIZE,
        "methods": run_keys(args.methods),
        "bdf_probe_steps": mode["bdf_probe_steps"],
    }
    report = {"config": config, "environment": harness.environment(), "systems": {}}
    for name in config["systems"]:
        system = known.systems()[name]
        data = make_data(system, config["pairs"], args.seed)
        stiffness = system.stiffness()
        print(
            f"{name}: {system.description}; Δt = {system.dt:g} (Δt·|λ| median {stiffness['median']:.2f}, "
            f"max {stiffness['max']:.2f}); {config['steps']} steps, seeds {config['seeds']}",
            flush=True,
        )
        runs = {
            key: [run(system, key, data, config, seed, f"  {name} {key} seed {seed}") for seed in config["seeds"]]
            for key in config["methods"]
        }
        add_times_to_accuracy(runs)
        summary = {key: summarise(results) for key, results in runs.items()}
        probe = (
            probe_bdf(system, data, config["seeds"][0], config["bdf_probe_steps"])
            if system.stiff and config["bdf_probe_steps"]
            else None
        )
        if probe:
            print(
                f"  BDF 1e-6: {probe['step_s']:.2f} s per training step ({config['steps']} steps: {probe['step_s'] * config['steps'] / 60:.0f} min), not run further",
                flush=True,
            )
        report["systems"][name] = {
            "bdf_probe": probe,
            "description": system.description,
            "dt": system.dt,
            "stiff": system.stiff,
            "decays": system.decays,
            "stiffness": stiffness,
            "summary": summary,
            "gates": gates(summary, system.stiff),
            "runs": runs,
        }
        print(table(summary), flush=True)
        for gate, outcome in report["systems"][name]["gates"].items():
            print(
                f"  gate {gate}: {outcome['value']:.3g} (bound {outcome['bound']:g}): {'holds' if outcome['holds'] else 'MISSES'}"
            )
    applied = [m for m in args.methods if m in APPLICATION_METHODS]
    report["applications"] = {}
    for name in config["applications"]:
        print(f"{name}: the example's own settings, methods {applied}, seeds {config['seeds']}", flush=True)
        if name == "irregular_series":
            runs = run_irregular_series(applied, config["seeds"], IRREGULAR_SIZE["steps"], IRREGULAR_SIZE["series"])
        else:
            runs = run_digits(applied, config["seeds"], DIGITS_EPOCHS)
        summary = {key: summarise(results) for key, results in runs.items()}
        report["applications"][name] = {"summary": summary, "runs": runs}
        print(table(summary), flush=True)
    if report["systems"]:
        pareto_plot(os.path.join(args.out, "systems_suite_pareto.png"), report)
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
