"""What gradient checkpointing saves and costs on long rollouts: peak memory and time of a training step.

One problem: f_θ = 2→128→128→2 (tanh), batch 512, a rollout of K fixed steps
over [0, 1] (a rotation's exact flow as targets), MSE, Adam; for each method
(an order-1 `TaylorLagrangeODE` uncorrected in a `keras.Model`, the same
corrected in `TLNODEModel` at its compile defaults, `FixedStepODE` RK4), each K
and with or without `gradient_checkpointing=True`, a fresh process builds the
model, runs one training step (`train_on_batch`: tracing and the first run),
then times `timed_steps` more (2 quick, 3 full) and reads its peak resident memory (VmHWM). The
memory of a step is that peak minus the same method's at K = 8 (the process,
TensorFlow and the traced graphs, which do not grow with K: the rollout is a
while loop), so what remains is what the backward pass keeps. The step time is
the median of the timed steps. K = 4096 runs with checkpointing only (without
it, ~16 GB). Graph mode; under XLA (`jit_compile=True`) K = 1024 only, to check
that XLA does not undo the saving.

    python benchmarks/checkpointing.py [--quick | --full] [--methods ...] [--num-steps K ...] [--json PATH]   # committed: --full --json benchmarks/results/checkpointing.json
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

import keras_tlnode

METHODS = ("tl_node_uncorrected", "tl_node", "rk4")
LABELS = {
    "tl_node_uncorrected": "TL-NODE order 1, uncorrected",
    "tl_node": "TL-NODE order 1, corrected (TLNODEModel)",
    "rk4": "RK4",
}
REFERENCE_STEPS = 8  # the memory baseline: the same process at K = 8
WITHOUT_LIMIT = 1024  # the largest K run without checkpointing (4096 needs ~16 GB)
XLA_STEPS = 1024
SIZE = {"state": 2, "width": 128, "batch": 512}
MODES = {
    "quick": {"num_steps": [64, 256], "timed_steps": 2, "xla": False},
    "full": {"num_steps": [64, 256, 1024, 4096], "timed_steps": 3, "xla": True},
}
TARGETS = {"memory_ratio": 1 / 8, "time_ratio": 1.6}  # at K = 1024: the checkpointed step's share of backprop's


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """States and their images under the exact flow of x' = [[0, -1], [1, 0]] x over [0, 1] (a rotation by 1 rad)."""
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, (SIZE["batch"], SIZE["state"])).astype("float32")
    c, s = np.cos(1.0), np.sin(1.0)
    return x, (x @ np.array([[c, -s], [s, c]]).T).astype("float32")


def build(method: str, num_steps: int, checkpointing: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    width = SIZE["width"]
    field = keras.Sequential(
        [
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(SIZE["state"]),
        ]
    )
    inputs = keras.Input((SIZE["state"],))
    common_args = {"num_steps": num_steps, "duration": 1.0, "gradient_checkpointing": checkpointing}
    if method == "rk4":
        return keras.Model(inputs, keras_tlnode.FixedStepODE(field, method="rk4", **common_args)(inputs))
    correction = keras_tlnode.MidpointCorrection() if method == "tl_node" else None
    ode = keras_tlnode.TaylorLagrangeODE(field, correction=correction, **common_args)
    model_class = keras_tlnode.TLNODEModel if correction is not None else keras.Model
    return model_class(inputs, ode(inputs))


def measure(method: str, num_steps: int, checkpointing: bool, setting: str, timed_steps: int) -> dict:
    """One training step's peak memory and time in this process (call it in a fresh one)."""
    x, y = data()
    model = build(method, num_steps, checkpointing)
    model.compile(keras.optimizers.Adam(1e-3), "mse", jit_compile=setting == "xla")
    started = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - started
    seconds = []
    for _ in range(timed_steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)
        seconds.append(time.perf_counter() - started)
    return {
        "peak_rss_mb": peak_resident_mb(),
        "step_s": statistics.median(seconds),
        "first_step_s": first,
    }


def peak_resident_mb() -> float:
    """This process's peak resident memory in MB: Linux's VmHWM.

    Not `getrusage`'s ru_maxrss: Linux keeps it across fork and exec, so a child
    started from a larger process (a pytest worker) reports at least that
    process's size; VmHWM belongs to the address space, which exec replaces.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark measures memory on Linux only")


def run_child(method: str, num_steps: int, checkpointing: bool, setting: str, timed_steps: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", method, str(num_steps)]
    command += [str(int(checkpointing)), setting, str(timed_steps)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def runs_to_make(config: dict) -> list[tuple[str, int, bool, str]]:
    """(method, K, checkpointing, setting) of every child, the K = 8 references included."""
    runs = []
    for method in config["methods"]:
        for num_steps in [REFERENCE_STEPS, *config["num_steps"]]:
            for checkpointing in (False, True):
                if checkpointing or num_steps <= WITHOUT_LIMIT:
                    runs.append((method, num_steps, checkpointing, "graph"))
        if config["xla"]:
            for num_steps in (REFERENCE_STEPS, XLA_STEPS):
                runs += [(method, num_steps, checkpointing, "xla") for checkpointing in (False, True)]
    return runs


def summarise(results: dict) -> dict:
    """Per method and setting, per K: each memory above its K = 8 reference, and checkpointing's ratios to backprop's."""
    summary: dict = {}
    for key, result in results.items():
        method, setting, num_steps, checkpointing = key.split("/")
        if int(num_steps) == REFERENCE_STEPS:
            continue
        reference = results[f"{method}/{setting}/{REFERENCE_STEPS}/{checkpointing}"]
        row = summary.setdefault(f"{method}/{setting}", {}).setdefault(num_steps, {"label": LABELS[method]})
        kind = "checkpointed" if checkpointing == "True" else "backprop"
        row[f"{kind}_memory_mb"] = result["peak_rss_mb"] - reference["peak_rss_mb"]
        row[f"{kind}_step_s"] = result["step_s"]
    for rows in summary.values():
        for row in rows.values():
            if "backprop_step_s" in row and "checkpointed_step_s" in row:
                row["time_ratio"] = row["checkpointed_step_s"] / row["backprop_step_s"]
                # A ratio of memories only where backprop's is measurably above the reference (not at a tiny K).
                if row["backprop_memory_mb"] > 1.0:
                    row["memory_ratio"] = row["checkpointed_memory_mb"] / row["backprop_memory_mb"]
    return summary


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        method, num_steps, checkpointing, setting, timed_steps = argv[1:6]
        print(json.dumps(measure(method, int(num_steps), checkpointing == "1", setting, int(timed_steps))))
        return {}
    parser = harness.benchmark_parser(
        __doc__.splitlines()[0],
        "K = 64 and 256, graph mode, about 3 minutes",
        "K = 64 to 4096, graph mode, and K = 1024 under XLA, about 12 minutes",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--num-steps", nargs="+", type=int, help="rollout lengths K (default: by mode)")
    args = parser.parse_args(argv)
    config = {**MODES[args.mode], "methods": args.methods}
    if args.num_steps:
        config["num_steps"] = args.num_steps
    started = time.perf_counter()
    results = {}
    for method, num_steps, checkpointing, setting in runs_to_make(config):
        result = run_child(method, num_steps, checkpointing, setting, config["timed_steps"])
        results[f"{method}/{setting}/{num_steps}/{checkpointing}"] = result
        print(
            f"{method} {setting} K={num_steps} checkpointing={checkpointing}: peak {result['peak_rss_mb']:.0f} MB, "
            f"step {result['step_s']:.3f} s",
            flush=True,
        )
    summary = summarise(results)
    print(common.checkpointing_block({"summary": summary, "config": config}))
    config = {**config, "size": SIZE, "reference_steps": REFERENCE_STEPS, "targets": TARGETS}
    return harness.child_runs_report(config, results, summary, started, args.json)


if __name__ == "__main__":
    main()
