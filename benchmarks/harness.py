"""What the benchmarks share: the methods' models, the run environment, timing, progress lines, curves, tables, JSON, plots.

Each benchmark is a script (`python benchmarks/<name>.py`) that imports this module and common.py as
siblings, never another script; where one benchmark includes another's runs, it runs that script as a
command (`run_script`). Nothing here is part of the keras_tlnode package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

# Each evaluated model gets its own predict function; TensorFlow's "retracing"
# warning about that is expected in the benchmarks.
tf.get_logger().setLevel("ERROR")


def environment() -> dict:
    """The software and machine a result was measured on."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_tlnode": keras_tlnode.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def benchmark_parser(description: str, quick_help: str, full_help: str) -> argparse.ArgumentParser:
    """The command line every benchmark shares: --quick (default) or --full, --seed, --json PATH, --out DIR."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help=f"{quick_help} (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help=full_help)
    parser.set_defaults(mode="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--out", metavar="DIR", default=".", help="directory for the PNG plots (default: .)")
    return parser


# The methods the benchmarks compare, by one name each.
METHOD_LAYERS = {
    "tl_node": "TaylorLagrangeODE(correction=MidpointCorrection()) at the package's order, trained by TLNODEModel (TL-NODE)",
    "uncorrected": "TaylorLagrangeODE at the package's order, without correction",
    "taylor2": "TaylorLagrangeODE(order=1) without correction: the Taylor method of degree 2",
    "rk4": 'FixedStepODE(method="rk4")',
    "heun": 'FixedStepODE(method="heun")',
    "euler": 'FixedStepODE(method="euler")',
    "dopri": "DormandPrinceODE: adaptive, gradients by the adjoint (the classic neural ODE, the baseline)",
}


def ode_layer(
    method: str,
    field: keras.layers.Layer,
    duration: float,
    *,
    correction: keras_tlnode.MidpointCorrection | None = None,
    remainder_weight: float = 0.0,
    tolerance: float = 1e-6,
    **common,
) -> keras.layers.Layer:
    """The ODE layer of `method` (a key of METHOD_LAYERS) around `field`: the one way the benchmarks build it.

    `correction` (default `MidpointCorrection()`) and `remainder_weight` apply to
    "tl_node" only, `tolerance` (rtol = atol) to "dopri" only; `common` (e.g.
    `num_steps`, `time_dependent`) goes to every layer.
    """
    if method == "tl_node":
        correction = correction or keras_tlnode.MidpointCorrection()
        return keras_tlnode.TaylorLagrangeODE(
            field, duration=duration, correction=correction, remainder_weight=remainder_weight, **common
        )
    if method == "uncorrected":
        return keras_tlnode.TaylorLagrangeODE(field, duration=duration, **common)
    if method == "taylor2":
        return keras_tlnode.TaylorLagrangeODE(field, order=1, duration=duration, **common)
    if method in ("rk4", "heun", "euler"):
        return keras_tlnode.FixedStepODE(field, method=method, duration=duration, **common)
    if method == "dopri":
        return keras_tlnode.DormandPrinceODE(field, duration=duration, rtol=tolerance, atol=tolerance, **common)
    raise ValueError(f"unknown method {method!r}; choose from {sorted(METHOD_LAYERS)}")


def model_class(method: str) -> type[keras.Model]:
    """TLNODEModel for TL-NODE (its correction needs the teacher phase), keras.Model for the others."""
    return keras_tlnode.TLNODEModel if method == "tl_node" else keras.Model


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, at_least_one: tuple[str, ...]) -> None:
    """Rejects, naming the flag, counts below 1 and repeated `--methods`."""
    for name in at_least_one:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    methods = getattr(args, "methods", None)
    if methods is not None and len(set(methods)) != len(methods):
        parser.error(f"--methods must not repeat a method, got {methods}")


def run_methods(
    methods: list[str], run: Callable[[str, str], dict], summary: Callable[[dict], str] | None = None
) -> dict:
    """`run(method, position)` for each method in turn, with a line when each has trained; {method: result}.

    `summary(result)` adds to that line (nothing by default).
    """
    results = {}
    for index, method in enumerate(methods, 1):
        results[method] = run(method, f"[{index}/{len(methods)}]")
        extra = summary(results[method]) if summary else ""
        print(f"  -> trained in {results[method]['train_seconds']:.1f} s{extra}", flush=True)
    return results


def epochs_of(steps: int, steps_per_execution: int, largest_epoch: int = 100) -> tuple[int, int]:
    """(epochs, steps per epoch) for `steps` training steps on a repeated dataset, every epoch whole executions.

    On a dataset without end, Keras runs every execution in full, also past the
    end of an epoch: epochs of 23 steps at 10 steps per execution train 30. So
    an epoch here is a multiple of `steps_per_execution` that divides `steps`,
    at most `largest_epoch` steps.
    """
    if steps % steps_per_execution:
        raise ValueError(f"`steps` must be a multiple of steps_per_execution = {steps_per_execution}, got {steps}.")
    executions = steps // steps_per_execution
    per_epoch = steps_per_execution * math.gcd(executions, max(1, largest_epoch // steps_per_execution))
    return steps // per_epoch, per_epoch


def fit_steps(
    model: keras.Model, dataset: tf.data.Dataset, steps: int, steps_per_execution: int, log: keras.callbacks.Callback
) -> keras.callbacks.History:
    """Trains `model` for exactly `steps` steps on `dataset` repeated, in whole executions (`epochs_of`).

    `shuffle=False`: the dataset shuffles itself, in the same seeded order for every method.
    """
    epochs, per_epoch = epochs_of(steps, steps_per_execution)
    return model.fit(
        dataset.repeat(), epochs=epochs, steps_per_epoch=per_epoch, verbose=0, shuffle=False, callbacks=[log]
    )


def decaying_adam(initial: float, final: float, total_steps: int) -> keras.optimizers.Adam:
    """Adam whose learning rate decays exponentially from `initial` to `final` over `total_steps`."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        initial, decay_steps=max(total_steps, 1), decay_rate=final / initial
    )
    return keras.optimizers.Adam(schedule)


def rollout_layer(ode: keras.layers.Layer, num_steps: int) -> keras.layers.Layer:
    """The trained one-step `ode` over `num_steps` of its steps, returning the trajectory, sharing its weights.

    For the fixed-step layers this is the autoregressive rollout; DormandPrince
    solves the whole horizon adaptively and reports the states every Δt.
    """
    horizon = dict(num_steps=num_steps, duration=num_steps * ode.step_size, return_trajectory=True)
    if isinstance(ode, keras_tlnode.DormandPrinceODE):
        return keras_tlnode.DormandPrinceODE(ode.vector_field, rtol=ode.rtol, atol=ode.atol, **horizon)
    if isinstance(ode, keras_tlnode.FixedStepODE):
        return keras_tlnode.FixedStepODE(ode.vector_field, method=ode.method, **horizon)
    return keras_tlnode.TaylorLagrangeODE(ode.vector_field, order=ode.order, correction=ode.correction, **horizon)


def nfe_per_call(ode: keras.layers.Layer, batches: list) -> float:
    """f-evaluations per call: fixed for the fixed-step layers, the mean over `batches` for DormandPrince.

    A batch is the layer's input: `x`, or `[x, duration]` for per-sample spans.
    """
    if isinstance(ode, keras_tlnode.DormandPrinceODE):
        solve = tf.function(ode.solve)
        return float(np.mean([int(solve(tf.nest.map_structure(tf.constant, batch)).nfe) for batch in batches]))
    return float(ode.nfe)


def rk4_flow(
    field: Callable[[np.ndarray], np.ndarray],
    states: np.ndarray,
    dt: float | np.ndarray,
    max_substep: float = 5e-4,
) -> np.ndarray:
    """The states `dt` later under dx/dt = field(x): float64 RK4 in substeps of at most `max_substep` (the truth of the benchmarks).

    `dt` is one interval for every state or one per state, shape `(batch,)`;
    every state then takes the same number of substeps, each of its own size.
    """
    dt = np.asarray(dt, dtype=np.float64)
    substeps = max(1, math.ceil(float(np.max(dt)) / max_substep - 1e-9))
    h = (dt / substeps)[..., np.newaxis] if dt.ndim else dt / substeps
    x = np.asarray(states, dtype=np.float64)
    for _ in range(substeps):
        k1 = field(x)
        k2 = field(x + h / 2 * k1)
        k3 = field(x + h / 2 * k2)
        k4 = field(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def relative_l2(prediction: np.ndarray, truth: np.ndarray) -> float:
    """‖prediction - truth‖ / ‖truth‖, in float64."""
    prediction, truth = np.asarray(prediction, np.float64), np.asarray(truth, np.float64)
    return float(np.linalg.norm(prediction - truth) / np.linalg.norm(truth))


def block(result: object) -> None:
    """Waits for every tensor of `result`, so a timing covers the computation."""
    tf.nest.map_structure(lambda t: np.asarray(t), result)


def median_seconds(fn: Callable[[object], object], inputs: list, warmup: int = 2) -> float:
    """Median wall-clock of `fn(x)` over `inputs[warmup:]`, after `warmup` calls on the first inputs.

    Give every call a new input: XLA can fold inputs it treats as compile-time
    constants into the executable (Taylor steps from order 2 did before the
    Taylor engine's forward-mode rules), so timing one input again and again
    can measure a cached, constant-folded result instead of the computation.
    """
    if len(inputs) <= warmup:
        raise ValueError(f"`inputs` must hold more than {warmup} inputs (the warm-up ones), got {len(inputs)}.")
    for x in inputs[:warmup]:
        block(fn(x))
    times = []
    for x in inputs[warmup:]:
        start = time.perf_counter()
        block(fn(x))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def training_pipeline(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, drop_remainder: bool = False
) -> tf.data.Dataset:
    """Pairs (x, y) reshuffled every epoch, in the same seeded order for every method of a benchmark.

    A tf.data pipeline built once costs far less per epoch than Keras's NumPy
    adapter, which matters at a few steps per epoch. `drop_remainder` keeps
    every batch full: one input shape, so that a model under XLA compiles once.
    """
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return pairs.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


class TrainingLog(keras.callbacks.Callback):
    """One progress line per run, the test error every `every` training steps, and timings.

    `evaluate()` returns the test error of the model as it is; its time is
    measured and left out of `train_seconds`, so the curve costs the method
    nothing. `step_ms` is the steady-state time per training step: the mean over
    the second half of the epochs, after tracing and compilation (which can
    happen twice: a step that creates optimizer variables is traced again); a
    mean, not a median, because TL-NODE's correction phase runs in some epochs
    more often than in others, and a median epoch would leave its cost out. The line is rewritten in place on a terminal and printed once per
    tenth of the run otherwise (logs, CI).

    Args:
        label: the run's name in the progress line.
        evaluate: the test error of the current model, or None for no curve.
        every: training steps between two points of the curve.
    """

    def __init__(self, label: str, evaluate: Callable[[], float] | None = None, every: int = 100):
        super().__init__()
        self.label, self.evaluate, self.every = label, evaluate, max(1, every)
        self.steps: list[int] = []
        self.errors: list[float] = []
        self.seconds: list[float] = []  # training wall-clock at each point of the curve
        self.train_seconds = 0.0
        self.step_ms = float("nan")
        self._epoch_seconds: list[float] = []
        self._eval_seconds = 0.0
        self._step = 0
        self._epoch = 0
        self._interactive = sys.stdout.isatty()

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._record()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start, self._epoch_eval = time.perf_counter(), self._eval_seconds

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1 Keras calls this once per execution, with
        # `batch` the last step of it (past the epoch's end for a short last
        # execution of a finite dataset), so the step count comes from `batch`, clamped.
        per_epoch = self.params.get("steps") or batch + 1
        previous, self._step = self._step, self._epoch * per_epoch + min(batch + 1, per_epoch)
        if self._step // self.every > previous // self.every:
            self._record()

    def on_epoch_end(self, epoch, logs=None):
        evaluating = self._eval_seconds - self._epoch_eval
        self._epoch_seconds.append(time.perf_counter() - self._epoch_start - evaluating)
        epochs = self.params.get("epochs") or 1
        if self._interactive or (epoch + 1) % max(1, epochs // 10) == 0 or epoch + 1 == epochs:
            loss = (logs or {}).get("loss", float("nan"))
            error = f", test error {self.errors[-1]:.3e}" if self.errors else ""
            end = "" if self._interactive else "\n"
            print(f"\r  {self.label}: epoch {epoch + 1}/{epochs}, loss {loss:.3e}{error}   ", end=end, flush=True)

    def on_train_end(self, logs=None):
        if self.evaluate is not None and self.steps[-1] != self._step:
            self._record()
        self.train_seconds = time.perf_counter() - self._start - self._eval_seconds
        steady = self._epoch_seconds[len(self._epoch_seconds) // 2 :]
        if steady and self.params.get("steps"):
            self.step_ms = 1e3 * float(np.mean(steady)) / self.params["steps"]
        if self._interactive:
            print(flush=True)

    def _record(self) -> None:
        if self.evaluate is None:
            return
        start = time.perf_counter()
        self.seconds.append(start - self._start - self._eval_seconds)
        self.steps.append(self._step)
        self.errors.append(float(self.evaluate()))
        self._eval_seconds += time.perf_counter() - start


def format_table(rows: dict[str, dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: one row per entry of `rows`, columns as (key, header, format spec)."""
    widths = [max(len(header), 10) for _, header, _ in columns]
    label_width = max(len(row["label"]) for row in rows.values())
    lines = [
        f"{'method':<{label_width}}  " + "  ".join(f"{h:>{w}}" for (_, h, _), w in zip(columns, widths, strict=True))
    ]
    lines.append("-" * len(lines[0]))
    for row in rows.values():
        cells = table_cells(row, columns)
        lines.append(
            f"{row['label']:<{label_width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def table_cells(row: dict, columns: list[tuple[str, str, str]]) -> list[str]:
    """`row`'s value of each column, formatted by its spec; "-" where there is none."""
    return [f"{row[key]:{spec}}" if row.get(key) is not None else "-" for key, _, spec in columns]


def markdown_table(rows: dict[str, dict], columns: list[tuple[str, str, str]], first: str = "method") -> str:
    """The same table as `format_table`, in Markdown, for the docs (docs_tables.py)."""
    lines = [
        f"| {first} | " + " | ".join(header for _, header, _ in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for row in rows.values():
        lines.append(f"| {row['label']} | " + " | ".join(table_cells(row, columns)) + " |")
    return "\n".join(lines)


def methods_block(columns: list[tuple[str, str, str]]) -> Callable[[dict], str]:
    """A docs block (common.DOC_TABLES): its report's methods as a Markdown table."""
    return lambda report: markdown_table(report["methods"], columns)


def child_runs_report(config: dict, runs: dict, summary: dict, started: float, path: str | None) -> dict:
    """The report of a benchmark whose runs are child processes (cost.py, checkpointing.py), written to `path` if given.

    Its keys: config, environment, runs (each child's output), summary,
    seconds (since `started`, a `time.perf_counter()` reading).
    """
    report = {
        "config": config,
        "environment": environment(),
        "runs": runs,
        "summary": summary,
        "seconds": time.perf_counter() - started,
    }
    if path:
        write_json(report, path)
    return report


def write_json(report: dict, path: str) -> None:
    """Writes `report` as standard JSON: NaN and infinities (a diverged run) become null."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(finite_or_null(report), handle, indent=2, allow_nan=False)
    print(f"wrote {path}")


def finite_or_null(value: object) -> object:
    """`value` with every non-finite float, however deeply nested, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def run_script(name: str, argv: list[str]) -> dict:
    """Runs `benchmarks/<name>.py argv --json PATH` in a process of its own and returns the report it wrote.

    How a benchmark includes another's runs (the suite's applications,
    benchmark.py's part (c)): the script runs as its command line runs it, and
    nothing is imported from it. Its progress lines go to this process's output.
    """
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, f"{name}.json")
        subprocess.run([sys.executable, script, *argv, "--json", path], check=True)
        with open(path) as handle:
            return json.load(handle)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: str, curves: dict[str, tuple[Iterable[int], Iterable[float]]], ylabel: str, title: str) -> None:
    """Test error versus training step, one line per method, log scale."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=90)
    for label, (steps, errors) in curves.items():
        axes.plot(list(steps), list(errors), label=label, linewidth=1.5)
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def plot_bars(path: str, groups: dict[str, dict[str, float]], title: str, log: bool = False) -> None:
    """One panel per group (e.g. "training time (s)"), one horizontal bar per method, labelled in full and
    valued at its end: legible at a glance (rotated labels under narrow bars crowded each other)."""
    plt = pyplot()
    rows = max(len(values) for values in groups.values())
    figure, panels = plt.subplots(
        1, len(groups), figsize=(6.4 * len(groups), 1.2 + 0.45 * rows), dpi=100, squeeze=False
    )
    for axes, (name, values) in zip(panels[0], groups.items(), strict=True):
        labels = list(values)[::-1]  # the first method on top
        bars = axes.barh(labels, [values[label] for label in labels], color=[f"C{i}" for i in range(len(labels))][::-1])
        axes.bar_label(bars, fmt="%.3g", padding=3, fontsize=9)
        axes.set_title(name, fontsize=10)
        axes.tick_params(axis="y", labelsize=9)
        if log:
            axes.set_xscale("log")
        axes.margins(x=0.15)
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(title, fontsize=10)
    save_figure(figure, path)


def save_figure(figure, path: str, top: float = 1.0) -> None:
    """Writes `figure` to `path` (creating its directory) and closes it; the panels fill it up to `top`
    (a fraction of its height: room for a figure legend above them)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.tight_layout(rect=(0, 0, 1, top))
    figure.savefig(path)
    pyplot().close(figure)
    print(f"wrote {path}")
