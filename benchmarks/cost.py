"""What a training step costs, and what a short run pays once, for every method: each in a fresh process.

One problem for every method: f_θ an MLP, one step over Δt = 0.1 of a stable
linear system (targets from its exact flow), MSE, Adam 1e-3,
`steps_per_execution=10`, each method at its defaults (the TL-NODE models in
`TLNODEModel`, the corrected one with `MidpointCorrection()` and the compile
defaults, so its correction phase runs inside the timed steps; two variants
of it separate the correction phase's share, "phase 1 only" (the phase never
due, but traced and compiled) and "RK4Teacher" (the fixed-step teacher instead
of DormandPrince)). Sizes:
*small* = 2→64→64→2 (tanh), batch 256; *larger* = 3→96→96→3 (softplus),
batch 1000. Settings: graph mode and XLA (`jit_compile=True`).

For each method, size and setting, a child process measures:
- *step*: the fastest of `segments` segments of `steps` training steps after
  the first fit, per step;
- *one-off*: the first fit of `steps` steps minus `steps` × step: everything
  a short run pays once. Its parts: *tracing* (the time spent in Python
  inside `train_step`, which runs only to be traced) and *compilation and
  first execution* (the rest: Grappler or XLA, the teacher's compile, the
  first runs);
- the traces of `train_step` over all fits (1 = traced once).

Ratios compare methods in the same size and setting; RK4 is the baseline.
Timings need a quiet machine: the children run one after another, nothing
else should run beside them. Quick: the small size, one run each; full: both
sizes, 3 runs each (medians).

    python benchmarks/cost.py [--quick | --full] [--methods ...] [--json PATH]   # committed: --full --json benchmarks/results/cost.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import common
import harness  # sets the Keras backend before keras is imported
import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

METHODS = (
    "floor",
    "euler",
    "heun",
    "rk4",
    "tl_node_uncorrected",
    "tl_node_phase1",
    "tl_node",
    "tl_node_rk4_teacher",
    "dormand_prince",
)
BASELINE = "rk4"
SETTINGS = ("graph", "xla")
SIZES = {
    "small": {"state": 2, "width": 64, "batch": 256, "activation": "tanh"},
    "larger": {"state": 3, "width": 96, "batch": 1000, "activation": "softplus"},
}
DT = 0.1
MODES = {
    "quick": {"sizes": ["small"], "repeats": 1, "steps": 200, "segments": 5},
    "full": {"sizes": list(SIZES), "repeats": 3, "steps": 200, "segments": 5},
}


def problem(size: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(A, x, y)`: a stable linear system x' = A x, states x and their exact images y after Δt."""
    from scipy.linalg import expm

    rng = np.random.default_rng(seed)
    n = size["state"]
    a = 0.5 * rng.normal(size=(n, n)) - np.eye(n)
    x = rng.normal(size=(20 * size["batch"], n)).astype("float32")
    return a, x, (x @ expm(DT * a).T).astype("float32")


def build(method: str, size: dict) -> keras.Model:
    """The method's model on a fresh MLP field (same seed, so the same initial weights for every method)."""
    keras.utils.set_random_seed(0)
    width, activation = size["width"], size["activation"]
    field = keras.Sequential(
        [
            keras.layers.Dense(width, activation=activation),
            keras.layers.Dense(width, activation=activation),
            keras.layers.Dense(size["state"]),
        ]
    )
    inputs = keras.Input((size["state"],))
    if method == "floor":  # one evaluation and nothing else: the least any method can cost
        return keras.Model(inputs, inputs + DT * field(inputs))
    if method in ("euler", "heun", "rk4"):
        return keras.Model(inputs, keras_tlnode.FixedStepODE(field, method=method, duration=DT)(inputs))
    if method == "dormand_prince":
        return keras.Model(inputs, keras_tlnode.DormandPrinceODE(field, duration=DT, rtol=1e-6, atol=1e-6)(inputs))
    correction = None if method == "tl_node_uncorrected" else keras_tlnode.MidpointCorrection()
    ode = keras_tlnode.TaylorLagrangeODE(field, duration=DT, correction=correction)
    return keras_tlnode.TLNODEModel(inputs, ode(inputs))


def correction_settings(method: str) -> dict:
    """The corrected variants' compile arguments: the defaults, a fixed-step teacher, or no correction phase at all."""
    if method == "tl_node_rk4_teacher":
        return {"teacher": keras_tlnode.RK4Teacher()}
    if method == "tl_node_phase1":  # phase 1 only: what the correction phase adds is the difference to "tl_node"
        return {"correction_every": 10**9}
    return {}


def evaluations(model: keras.Model, x: np.ndarray) -> float:
    """f-evaluations per forward pass: 1 for the floor, the adaptive layer's on the batch `x` after training."""
    for layer in model.layers:
        if isinstance(layer, keras_tlnode.DormandPrinceODE):
            return float(layer.solve(tf.constant(x)).nfe)
        if isinstance(layer, (keras_tlnode.TaylorLagrangeODE, keras_tlnode.FixedStepODE)):
            return float(layer.nfe)
    return 1.0


class _SegmentTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self.started)


class _TracingClock:
    """Counts and times the calls of `model.train_step`: outside eager mode Python runs it only to trace it."""

    def __init__(self, model: keras.Model) -> None:
        self.calls, self.seconds = 0, 0.0
        step = model.train_step

        def timed(data):
            started = time.perf_counter()
            try:
                return step(data)
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - started

        model.train_step = timed  # read by Keras when it builds the train function, at the first fit


def measure(method: str, size_name: str, setting: str, steps: int, segments: int) -> dict:
    """One method's step and one-off cost in this process (call it in a fresh one)."""
    size = SIZES[size_name]
    _, x, y = problem(size)
    started = time.perf_counter()
    model = build(method, size)
    model.compile(
        keras.optimizers.Adam(1e-3),
        "mse",
        steps_per_execution=10,
        jit_compile=setting == "xla",
        **correction_settings(method),
    )
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(size["batch"], drop_remainder=True).repeat()
    built = time.perf_counter()
    tracing = _TracingClock(model)
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    first_fit = time.perf_counter() - built
    timer = _SegmentTimer()
    model.fit(dataset, steps_per_epoch=steps, epochs=segments, verbose=0, callbacks=[timer], shuffle=False)
    step = min(timer.seconds) / steps
    return {
        "step_ms": 1e3 * step,
        "one_off_s": first_fit - steps * step,
        "tracing_s": tracing.seconds,
        "compilation_and_first_execution_s": first_fit - steps * step - tracing.seconds,
        "concrete_functions": tracing.calls,
        "evaluations_per_step": evaluations(model, x[: size["batch"]]),
        "jit_compile_after_fit": bool(model.jit_compile),
        "build_s": built - started,
    }


def run_child(method: str, size: str, setting: str, config: dict) -> dict:
    """`measure` in a fresh Python process."""
    command = [sys.executable, os.path.abspath(__file__), "--child", method, size, setting]
    command += [str(config["steps"]), str(config["segments"])]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def summarise(runs: dict) -> dict:
    """Medians over the repeats, and each method's ratio to the baseline's in the same size and setting."""
    summary: dict = {}
    for size, by_setting in runs.items():
        for setting, by_method in by_setting.items():
            rows = {}
            for method, repeats in by_method.items():
                rows[method] = {
                    key: statistics.median(r[key] for r in repeats)
                    for key in ("step_ms", "one_off_s", "tracing_s", "compilation_and_first_execution_s")
                }
                rows[method]["label"] = LABELS[method]
                rows[method]["evaluations_per_step"] = repeats[0]["evaluations_per_step"]
                rows[method]["concrete_functions"] = max(r["concrete_functions"] for r in repeats)
            if BASELINE in rows:
                for row in rows.values():
                    row["step_ratio"] = row["step_ms"] / rows[BASELINE]["step_ms"]
                    row["one_off_ratio"] = row["one_off_s"] / rows[BASELINE]["one_off_s"]
            summary.setdefault(size, {})[setting] = rows
    return summary


LABELS = {
    "floor": "x + Δt·f(x) (the floor)",
    "euler": "Euler",
    "heun": "Heun",
    "rk4": "RK4",
    "tl_node_uncorrected": "TL-NODE order 1, uncorrected",
    "tl_node_phase1": "TL-NODE order 1, corrected, phase 1 only",
    "tl_node": "TL-NODE order 1, corrected",
    "tl_node_rk4_teacher": "TL-NODE order 1, corrected, RK4Teacher",
    "dormand_prince": "DormandPrince 1e-6",
}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        method, size, setting, steps, segments = argv[1:6]
        print(json.dumps(measure(method, size, setting, int(steps), int(segments))))
        return {}
    parser = harness.benchmark_parser(
        __doc__.splitlines()[0],
        "the small size, graph and XLA, one run per method, about 5 minutes",
        "both sizes, graph and XLA, 3 runs per method (medians), about 30 minutes",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), help="default: by mode")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, help="fresh processes per method (default: by mode)")
    parser.add_argument("--steps", type=int, help="training steps per timed segment (default: 200)")
    args = parser.parse_args(argv)
    harness.check_flags(parser, args, ("repeats", "steps"))
    config = dict(MODES[args.mode])
    config.update({k: v for k, v in {"sizes": args.sizes, "repeats": args.repeats, "steps": args.steps}.items() if v})
    if config["steps"] % 10:
        parser.error(f"--steps must be a multiple of steps_per_execution (10), got {config['steps']}")
    started = time.perf_counter()
    runs: dict = {}
    for size in config["sizes"]:
        for setting in args.settings:
            for method in args.methods:
                for repeat in range(config["repeats"]):
                    result = run_child(method, size, setting, config)
                    runs.setdefault(size, {}).setdefault(setting, {}).setdefault(method, []).append(result)
                    print(
                        f"{size} {setting} {method} [{repeat + 1}/{config['repeats']}]: step {result['step_ms']:.2f} ms, "
                        f"one-off {result['one_off_s']:.1f} s",
                        flush=True,
                    )
    summary = summarise(runs)
    for size, by_setting in summary.items():
        for setting, rows in by_setting.items():
            print(f"\n{size}, {setting}:")
            print(harness.format_table(rows, common.COST_COLUMNS))
    config = {**config, "methods": args.methods, "settings": args.settings, "dt": DT, "sizes_spec": SIZES}
    return harness.child_runs_report(config, runs, summary, started, args.json)


if __name__ == "__main__":
    main()
