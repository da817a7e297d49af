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

Usage:
    python examples/systems_suite.py               # --quick: 2 systems, 1 seed, short runs; a few minutes on 2 cores
    python examples/systems_suite.py --full --json examples/results/systems_suite_full.json --out examples/results
    python examples/systems_suite.py --systems brusselator --methods tl_node rk4 dopri --seeds 0 1 2
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import NamedTuple

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

# Each method's layer is harness.ode_layer's of the same name (dopri_1e-3: "dopri" at 1e-3).
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
    """(method, steps per interval) of a run key."""
    method, _, steps = key.partition("@")
    return method, int(steps or 1)


# ---------------------------------------------------------------- data


def make_data(system: known.System, pairs: int, seed: int) -> dict:
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


# ---------------------------------------------------------------- one run


def build(system: known.System, key: str) -> tuple[keras.Model, keras.layers.Layer, keras.layers.Layer]:
    """(model, ODE layer, f_θ) of run `key`; the caller seeds the initial weights."""
    method, steps = split_key(key)
    field = system.make_field()
    if method in FIXED_STEP:
        ode = harness.ode_layer(method, field, system.dt, num_steps=steps)
    else:
        ode = harness.ode_layer("dopri", field, system.dt, tolerance=TOLERANCES[method])
    inputs = keras.Input((system.dimension,))
    return harness.model_class(method)(inputs, ode(inputs)), ode, field


def optimizer(system: known.System, steps: int) -> keras.optimizers.Optimizer:
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


def train(system: known.System, key: str, data: dict, config: dict, seed: int, label: str) -> Trained:
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
    epochs, per_epoch = harness.epochs_of(config["steps"], STEPS_PER_EXECUTION)
    dataset = harness.training_pipeline(data["x"], data["y"], BATCH_SIZE, seed, drop_remainder=True)
    model.fit(
        dataset.repeat(),
        epochs=epochs,
        steps_per_epoch=per_epoch,
        verbose=0,
        shuffle=False,  # the dataset reshuffles itself, in the same order for every method
        callbacks=[log],
    )
    return Trained(model, ode, field, log)


def run(system: known.System, key: str, data: dict, config: dict, seed: int, label: str) -> dict:
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
    """BDF at 1e-6 trained for `steps` steps after one that traces: seconds per step, steps and the last loss."""
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
                    "label": irregular_series.METHODS[APPLICATION_METHODS[method]],
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
                {
                    "label": result["label"],
                    "accuracy": result["accuracy"],
                    "train_s": result["train_seconds"],
                    "nfe": result["nfe"],
                }
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


def check(value: float | None, bound: float, below: bool = True, **details) -> dict:
    """A gate: the measured value, its bound, whether it holds (not when unmeasured or NaN), and `details`."""
    holds = value is not None and not math.isnan(value) and (value <= bound if below else value >= bound)
    return {"value": value, "bound": bound, "holds": bool(holds), **details}


def gates(summary: dict[str, dict], kind: str | None, decays: bool) -> dict[str, dict]:
    """Issue 19's acceptance for one system (`kind`: "nonlinear", "stiff" or None), for the runs that exist."""
    tl, rk4 = "tl_node@1", "rk4@1"
    metric = "rollout_abs" if decays else "rollout"

    def ratio(a: str, b: str, name: str) -> float | None:
        top, bottom = median(summary, a, name), median(summary, b, name)
        return None if top is None or not bottom else top / bottom

    if kind == "stiff" and tl in summary and REFERENCE in summary:
        return {
            "time_to_accuracy_speedup_vs_dopri": check(speedup(summary, tl), 5.0, below=False),
            "rollout_vs_dopri": check(ratio(tl, REFERENCE, metric), 1.2),
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
    ran = [k for k in STEPS_PER_INTERVAL if f"rk4@{k}" in summary]
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


def label(key: str) -> str:
    method, steps = split_key(key)
    return METHODS[method] + (f", {steps} steps" if method in FIXED_STEP and steps > 1 else "")


def table(summary: dict[str, dict], labels: dict[str, str] | None = None) -> str:
    """The medians of every run as a plain-text table; `labels` overrides the runs' names."""
    rows = {
        key: {"label": (labels or {}).get(key, label(key)), **{m: v.get("median") for m, v in entry.items()}}
        for key, entry in summary.items()
    }
    return harness.format_table(rows, COLUMNS)


def number(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`, "-" for None or NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


def summary_block(report: dict) -> str:
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


def gates_block(report: dict) -> str:
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


def details_block(report: dict) -> str:
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
            parts.append(f"| {label(key)} | " + " | ".join(cells) + " |")
        if entry.get("bdf_probe"):
            probe = entry["bdf_probe"]
            parts.append(
                f"\nBDF 1e-6 (tfp, the batch as one implicit system): {probe['step_s']:.2f} s per training step, "
                f"{probe['step_s'] * report['config']['steps'] / 60:.0f} min for the run: not trained further."
            )
        parts.append("")
    return "\n".join(parts).rstrip()


def applications_block(report: dict) -> str:
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


# The docs' tables from this script's committed results (examples/docs_tables.py).
RESULTS = "systems_suite_full.json"
DOC_BLOCKS = {
    "summary": summary_block,
    "gates": gates_block,
    "details": details_block,
    "applications": applications_block,
}


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
        # Times span decades: label those only (the minor labels overlapped).
        axes.xaxis.set_minor_formatter(plt.NullFormatter())
    for axes in list(panels.flat)[len(names) :]:
        axes.axis("off")
    handles, labels = panels.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=6, fontsize=7)
    harness.save_figure(figure, path, top=1 - 0.8 / (3.4 * rows))


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
    args = parser.parse_args(argv)
    harness.check_flags(parser, args, ("steps", "pairs"))
    if args.steps is not None and args.steps % STEPS_PER_EXECUTION:
        parser.error(f"--steps must be a multiple of {STEPS_PER_EXECUTION} (steps per execution), got {args.steps}")
    if args.pairs is not None and args.pairs < BATCH_SIZE:
        parser.error(f"--pairs must be at least the batch size, {BATCH_SIZE}, got {args.pairs}")
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
            "gates": gates(summary, system.gates, system.decays),
            "runs": runs,
        }
        print(table(summary), flush=True)
        for gate, outcome in report["systems"][name]["gates"].items():
            print(
                f"  {gate_name(gate, outcome)}: {number(outcome['value'], '.3g')}: {'holds' if outcome['holds'] else 'MISSES'}"
            )
    applied = [m for m in args.methods if m in APPLICATION_METHODS]
    report["applications"] = {}
    for name in config["applications"] if applied else []:
        print(f"{name}: the example's own settings, methods {applied}, seeds {config['seeds']}", flush=True)
        if name == "irregular_series":
            runs = run_irregular_series(applied, config["seeds"], IRREGULAR_SIZE["steps"], IRREGULAR_SIZE["series"])
        else:
            runs = run_digits(applied, config["seeds"], DIGITS_EPOCHS)
        summary = {key: summarise(results) for key, results in runs.items()}
        report["applications"][name] = {"summary": summary, "runs": runs}
        print(table(summary, {key: results[0]["label"] for key, results in runs.items()}), flush=True)
    if report["systems"]:
        pareto_plot(os.path.join(args.out, "systems_suite_pareto.png"), report)
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
