"""Benchmarks behind the README's numbers, printed as ratios (this machine is noisy).

Part (a): the cost of `taylor_coefficients` at orders 0..4 relative to one
evaluation of f, for an MLP of width 256 at batch 1024, with and without XLA.

    python examples/benchmark.py [--repeats 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_tlnode as kt  # noqa: E402


def median_seconds(fn: Callable[[tf.Tensor], object], inputs: list[tf.Tensor]) -> float:
    """Median wall-clock of `fn(x)` over `inputs[2:]`, after two warm-up calls.

    Every call gets a new input: XLA folds inputs it treats as compile-time
    constants into the executable, so timing one input again and again measures
    a cached, constant-folded result instead of the computation.
    """
    for x in inputs[:2]:
        _block(fn(x))
    times = []
    for x in inputs[2:]:
        start = time.perf_counter()
        _block(fn(x))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _block(result: object) -> None:
    """Waits for the result, so the timing covers the computation."""
    tf.nest.map_structure(lambda t: t.numpy(), result)


def taylor_cost(width: int, state: int, batch: int, max_order: int, repeats: int) -> dict:
    """Seconds per call of f and of taylor_coefficients(f, x, k), and their ratios."""
    keras.utils.set_random_seed(0)
    field = keras.Sequential(
        [
            keras.Input((state,)),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(state),
        ]
    )
    inputs = [tf.random.uniform((batch, state), -1.0, 1.0) for _ in range(repeats + 2)]
    results = {}
    for xla in (False, True):
        plain = median_seconds(tf.function(field, jit_compile=xla), inputs)
        rows = {}
        for order in range(max_order + 1):
            coefficients = functools.partial(kt.taylor_coefficients, field, order=order)
            seconds = median_seconds(tf.function(coefficients, jit_compile=xla), inputs)
            rows[order] = {"seconds": seconds, "ratio_to_f": seconds / plain}
        results["xla" if xla else "graph"] = {"f_seconds": plain, "orders": rows}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-order", type=int, default=4)
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)

    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__},
        "taylor_cost": taylor_cost(256, 32, 1024, args.max_order, args.repeats),
    }
    print("(a) taylor_coefficients cost relative to one f evaluation (MLP 32-256-256-32, batch 1024)")
    print(f"{'order':>5} {'graph':>8} {'XLA':>8}")
    for order in range(args.max_order + 1):
        graph = report["taylor_cost"]["graph"]["orders"][order]["ratio_to_f"]
        xla = report["taylor_cost"]["xla"]["orders"][order]["ratio_to_f"]
        print(f"{order:>5} {graph:>7.1f}x {xla:>7.1f}x")
    f_graph = report["taylor_cost"]["graph"]["f_seconds"] * 1e3
    f_xla = report["taylor_cost"]["xla"]["f_seconds"] * 1e3
    print(f"one f evaluation: {f_graph:.3f} ms (graph), {f_xla:.3f} ms (XLA)")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return report


if __name__ == "__main__":
    main()
