"""Which solver should a neural ODE use? TL-NODE at the package defaults against every other method, on known systems, over seeds.

Each system of `common.systems()` is learned from one-step pairs (x, x(t + Δt)) of
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
    rollout        the paper's metric: mean over 30 intervals of |x̂ - x| / (|x| + |x̂|) from 40
                   held-out starts (a fixed-step model applied to its own output; DormandPrince
                   solves the whole horizon adaptively)
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

`gates` checks issue 19's acceptance per system (README, "Choosing a solver"),
with the absolute rollout error on systems that settle to a point: on the
nonlinear systems TL-NODE's rollout ≤ 0.8x RK4's, ≤ the rollout of RK4 at the
most steps per interval (of those run) that fit in TL-NODE's training time,
field ≤ 1.1x RK4's, training ≤ 2x RK4's time; on the stiff system from a
random start, time to accuracy ≥ 5x faster than dopri's and final rollout
within 1.2x of it.

The applications (`--applications`, both in --full) are the quick runs of
irregular_series.py and classification.py (the 8x8 digits), run as those
scripts per seed, each in a process of its own, with their own settings.

Usage:
    python benchmarks/systems_suite.py               # --quick: 2 systems, 1 seed, short runs; a few minutes on 2 cores
    python benchmarks/systems_suite.py --full --json benchmarks/results/systems_suite_full.json --out benchmarks/results
    python benchmarks/systems_suite.py --systems brusselator --methods tl_node rk4 dopri --seeds 0 1 2
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time

import common
import harness  # sets KERAS_BACKEND before keras is imported
import keras
import tensorflow as tf
import tensorflow_probability as tfp

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
        "systems": list(common.systems()),
        "applications": ["irregular_series", "digits"],
        "seeds": [0, 1, 2],
        "steps": common.FULL_STEPS,
        "pairs": common.FULL_PAIRS,
        "bdf_probe_steps": 10,
    },
}
METHODS = common.SUITE_METHODS  # each run's data, model, training and measurements: common.py


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


def probe_bdf(system: common.System, data: dict, seed: int, steps: int) -> dict:
    """BDF at 1e-6 trained for `steps` steps after one that traces: seconds per step, steps and the last loss."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((system.dimension,))
    model = keras.Model(inputs, BDFODE(system.make_field(), system.dt)(inputs))
    model.compile(optimizer=common.optimizer(system, steps), loss="mse")
    batches = harness.training_pipeline(data["x"], data["y"], common.BATCH_SIZE, seed, drop_remainder=True).repeat()
    model.fit(batches, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)  # tracing
    start = time.perf_counter()
    history = model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return {"step_s": (time.perf_counter() - start) / steps, "steps": steps, "loss": history.history["loss"][-1]}


# ---------------------------------------------------------------- the two applications


# The applications run as their scripts' quick runs (irregular_series.py: a Δt-aware correction;
# classification.py: the paper's model, λ = 10); the suite's method names map to theirs. Both
# scripts compare TL-NODE, the uncorrected layer, RK4 and the baseline.
APPLICATION_METHODS = {"tl_node": "tl_node", "uncorrected": "taylor2", "rk4": "rk4", "dopri": "dopri"}


def run_application(script: str, methods: list[str], seeds: list[int], keep: dict[str, str]) -> dict[str, list[dict]]:
    """`script --quick` per seed (its data and initial weights drawn from the seed), in a process of its own;
    of each method's result, the entries of `keep` ({the suite's name: the script's}) and its label."""
    names = [APPLICATION_METHODS[method] for method in methods]
    if script == "classification" and "dopri" not in names:
        names.append("dopri")  # classification.py scores every method against its baseline: it needs it
    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as plots:
            report = harness.run_script(script, ["--quick", "--seed", str(seed), "--methods", *names, "--out", plots])
        for method in methods:
            result = report["methods"][APPLICATION_METHODS[method]]
            runs.setdefault(method, []).append(
                {"label": result["label"], **{mine: result[theirs] for mine, theirs in keep.items()}}
            )
    return runs


def run_irregular_series(methods: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    """irregular_series.py --quick per seed: 512 series, 1000 training steps."""
    keep = {"one_step": "one_step_mse", "field": "field_rel_error", "train_s": "train_seconds", "nfe": "nfe"}
    return run_application("irregular_series", methods, seeds, keep)


def run_digits(methods: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    """classification.py --quick per seed: the 8x8 digits, 20 epochs."""
    keep = {"accuracy": "accuracy", "train_s": "train_seconds", "nfe": "nfe"}
    return run_application("classification", methods, seeds, keep)


# ---------------------------------------------------------------- gates


def check(value: float | None, bound: float, below: bool = True, **details) -> dict:
    """A gate: the measured value, its bound, whether it holds (not when unmeasured or NaN), and `details`."""
    holds = value is not None and not math.isnan(value) and (value <= bound if below else value >= bound)
    return {"value": value, "bound": bound, "holds": bool(holds), **details}


def gates(summary: dict[str, dict], kind: str | None, decays: bool) -> dict[str, dict]:
    """Issue 19's acceptance for one system (`kind`: "nonlinear", "stiff" or None), for the runs that exist."""
    tl, rk4 = "tl_node@1", "rk4@1"
    metric = "rollout_abs" if decays else "rollout"
    median = common.median

    def ratio(a: str, b: str, name: str) -> float | None:
        top, bottom = median(summary, a, name), median(summary, b, name)
        return None if top is None or not bottom else top / bottom

    if kind == "stiff" and tl in summary and common.REFERENCE in summary:
        return {
            "time_to_accuracy_speedup_vs_dopri": check(common.speedup(summary, tl), 5.0, below=False),
            "rollout_vs_dopri": check(ratio(tl, common.REFERENCE, metric), 1.2),
        }
    if kind != "nonlinear" or tl not in summary or rk4 not in summary:
        return {}
    found = {
        "rollout_vs_rk4": check(ratio(tl, rk4, metric), 0.8),
        "field_vs_rk4": check(ratio(tl, rk4, "field"), 1.1),
        "train_time_vs_rk4": check(ratio(tl, rk4, "train_s"), 2.0),
    }
    # Pareto: RK4 at the most steps per interval (of those run) whose training fits in
    # TL-NODE's time, else at 1; `capped` when more would have fitted than were run.
    ran = [k for k in common.STEPS_PER_INTERVAL if f"rk4@{k}" in summary]
    fitting = [k for k in ran if median(summary, f"rk4@{k}", "train_s") <= median(summary, tl, "train_s")]
    steps = max(fitting, default=min(ran))
    capped = steps == max(ran) and median(summary, tl, "train_s") >= (steps + 1) * median(summary, rk4, "train_s")
    found["rollout_vs_rk4_at_equal_cost"] = check(
        ratio(tl, f"rk4@{steps}", metric), 1.0, rk4_steps=steps, capped=capped
    )
    return found


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


def table(summary: dict[str, dict], labels: dict[str, str] | None = None) -> str:
    """The medians of every run as a plain-text table; `labels` overrides the runs' names."""
    rows = {
        key: {"label": (labels or {}).get(key, common.run_label(key)), **{m: v.get("median") for m, v in entry.items()}}
        for key, entry in summary.items()
    }
    return harness.format_table(rows, COLUMNS)


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
                if common.split_key(key)[0] != method:
                    continue
                x, y = summary["train_s"], summary[metric]
                axes.errorbar(
                    x["median"],
                    y["median"],
                    xerr=[[x["median"] - x["min"]], [x["max"] - x["median"]]],
                    yerr=[[y["median"] - y["min"]], [y["max"] - y["median"]]],
                    fmt=markers.get(common.split_key(key)[1], "D"),
                    color=f"C{index}",
                    label=common.run_label(key),
                    markersize=5,
                    capsize=2,
                )
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_title(f"{name} (Δt = {entry['dt']:g})", fontsize=9)
        axes.set_xlabel("training s", fontsize=8)
        axes.set_ylabel("rollout error" + (" (absolute)" if entry["decays"] else ""), fontsize=8)
        axes.grid(alpha=0.3, which="both")
        # Times span decades: label those only (the minor labels overlapped).
        axes.xaxis.set_minor_formatter(plt.NullFormatter())
    for axes in list(panels.flat)[len(names) :]:
        axes.axis("off")
    handles, labels = panels.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=6, fontsize=7)
    harness.save_figure(figure, path, top=1 - 0.8 / (3.4 * rows))


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None):
    parser = harness.benchmark_parser(
        __doc__.splitlines()[0], "2 systems, 1 seed, 200 steps", "every system, 3 seeds, 1500 steps"
    )
    parser.add_argument("--systems", nargs="+", choices=list(common.systems()), help="default: per mode")
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
    args = parser.parse_args(argv)
    harness.check_flags(parser, args, ("steps", "pairs"))
    if args.steps is not None and args.steps % common.STEPS_PER_EXECUTION:
        parser.error(
            f"--steps must be a multiple of {common.STEPS_PER_EXECUTION} (steps per execution), got {args.steps}"
        )
    if args.pairs is not None and args.pairs < common.BATCH_SIZE:
        parser.error(f"--pairs must be at least the batch size, {common.BATCH_SIZE}, got {args.pairs}")
    for name in ("systems", "seeds"):
        values = getattr(args, name)
        if values is not None and len(set(values)) != len(values):
            parser.error(f"--{name} must not repeat a value, got {values}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    mode = MODES[args.mode]
    config = {
        "mode": args.mode,
        "systems": args.systems if args.systems is not None else mode["systems"],
        "applications": args.applications if args.applications is not None else mode["applications"],
        "seeds": args.seeds or mode["seeds"],
        "steps": args.steps or mode["steps"],
        "pairs": args.pairs or mode["pairs"],
        "data_seed": args.seed,
        "batch_size": common.BATCH_SIZE,
        "methods": common.run_keys(args.methods),
        "bdf_probe_steps": mode["bdf_probe_steps"],
    }
    report = {"config": config, "environment": harness.environment(), "systems": {}}
    for name in config["systems"]:
        system = common.systems()[name]
        data = common.make_data(system, config["pairs"], args.seed)
        stiffness = system.stiffness()
        print(
            f"{name}: {system.description}; Δt = {system.dt:g} (Δt·|λ| median {stiffness['median']:.2f}, "
            f"max {stiffness['max']:.2f}); {config['steps']} steps, seeds {config['seeds']}",
            flush=True,
        )
        runs = {
            key: [
                common.run(system, key, data, config, seed, f"  {name} {key} seed {seed}") for seed in config["seeds"]
            ]
            for key in config["methods"]
        }
        common.add_times_to_accuracy(runs)
        summary = {key: common.summarise(results) for key, results in runs.items()}
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
            "gates": gates(summary, system.gates, system.decays),
            "runs": runs,
        }
        print(table(summary), flush=True)
        for gate, outcome in report["systems"][name]["gates"].items():
            print(
                f"  {common.gate_name(gate, outcome)}: {common.number(outcome['value'], '.3g')}: {'holds' if outcome['holds'] else 'MISSES'}"
            )
    applied = [m for m in args.methods if m in APPLICATION_METHODS]
    report["applications"] = {}
    for name in config["applications"] if applied else []:
        print(f"{name}: its script's quick run, methods {applied}, seeds {config['seeds']}", flush=True)
        if name == "irregular_series":
            runs = run_irregular_series(applied, config["seeds"])
        else:
            runs = run_digits(applied, config["seeds"])
        summary = {key: common.summarise(results) for key, results in runs.items()}
        report["applications"][name] = {"summary": summary, "runs": runs}
        print(table(summary, {key: results[0]["label"] for key, results in runs.items()}), flush=True)
    if report["systems"]:
        pareto_plot(os.path.join(args.out, "systems_suite_pareto.png"), report)
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
