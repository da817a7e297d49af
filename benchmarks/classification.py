"""Image classification with a neural ODE: TL-NODE vs the adaptive DormandPrince baseline.

The supervised classification experiment of the TL-NODE paper (Djeumou et al.,
IJCAI 2022, arXiv:2201.05715; its Figure 1), on scikit-learn's 8x8 digits by
default (1797 images shipped with scikit-learn, no download; 4-bit pixels
0..16, divided by 16 into [0, 1]; a stratified 80/20 split) or on full MNIST
from a local Keras `mnist.npz` with `--mnist PATH` (pixels / 255). Nothing is
ever downloaded.

The paper's model, with d = number of pixels (the ODE state is the image):

    f_θ(x, t) = Dense(d)([t, sigmoid(Dense(100)([t, sigmoid(x)]))])   ([·,·] = concatenation)
    logits    = Dense(10)(sigmoid(x(1))),   dx/dt = f_θ(x, t), x(0) = the flattened image

integrated over t ∈ [0, 1] by each of, on identical data, split, initial
weights of f_θ and of the head, batches, optimiser and epochs:

    tl_node   TaylorLagrangeODE(order=1, correction=MidpointCorrection((32,)), 2 steps),
              remainder weight λ = 10, trained by TLNODEModel (TL-NODE)
    dopri     DormandPrinceODE, adaptive, gradients by the adjoint (the baseline)
    taylor2   TaylorLagrangeODE(order=1, 2 steps) (Taylor method of degree 2, no correction)
    rk4       FixedStepODE(method="rk4", 2 steps)

Baseline tolerance: rtol = atol = 1e-7 (the paper's is 1.4e-8; the baseline
solves in float32, as tfp's adjoint needs the weights' dtype): the tightest
tolerance whose solve is more accurate than a looser one's, measured in
docs/results.md ("How the examples' settings were chosen").

TL-NODE's correction Γ_φ is fitted with the package's default schedule and
teacher (`TLNODEModel.compile`: every 5 steps, 4 updates per DormandPrince solve
from 64 sampled states, rtol = atol = 1e-6 in float64); `--correction-every`
overrides the schedule (the paper corrects every 400 of 600 steps per epoch
on MNIST).

Reported per method: test accuracy, training wall-clock time (all of `fit`,
tracing included) and mean time per training step over the second half of the epochs,
evaluation time (inference on the whole test set in batches, median of 5
passes), and f-evaluations per solve (fixed for the fixed-step layers; for
DormandPrince the mean over the test batches). Printed as a table, written as
JSON (--json) and as a PNG bar chart of the scores relative to the baseline,
as in the paper's Figure 1, in --out.

XLA: training runs without it for every method (the results were measured so;
XLA could not train the Taylor layers with this concatenating f_θ before the
Taylor engine's own concatenation gradient, and has not been measured here
since); inference runs under XLA for every method. Every method runs
`steps_per_execution` (default 10) steps per call of Keras's train function.

Usage:
    python benchmarks/classification.py            # --quick (default): digits, 20 epochs, about a minute on 2 cores
    python benchmarks/classification.py --full --json benchmarks/results/classification_full.json --out benchmarks/results
    python benchmarks/classification.py --full --mnist ~/data/mnist.npz --epochs 10
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import zipfile
from collections.abc import Callable
from typing import NamedTuple

import common
import harness  # the benchmarks' shared reporting; sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

# Epochs per mode (overridable on the command line).
MODES = {"quick": {"epochs": 20}, "full": {"epochs": 50}}
BATCH_SIZE = 100  # the paper's
TEST_FRACTION = 0.2  # of the digits; MNIST comes with its own test set
NUM_CLASSES = 10
HIDDEN_UNITS = 100
CORRECTION_UNITS = (32,)
NUM_STEPS = 2
DURATION = 1.0
REMAINDER_WEIGHT = 10.0
# Adam with exponential decay from the first to the second over the run. The
# paper's code trains MNIST at 1e-2 for 160 epochs (96000 steps); quick mode
# has 300 steps, in which 3e-2 learns faster than 1e-2 (tried on Taylor 2).
LEARNING_RATE = (3e-2, 3e-3)
BASELINE_TOLERANCE = 1e-7  # measured, see the module docstring
# Steps per call of Keras's compiled train function, the same for every method.
# 1, 10 and 15 (an epoch) gave the same time per step here (within 5%): the
# tf.data pipeline already keeps the per-step overhead small.
STEPS_PER_EXECUTION = 10
EVAL_REPEATS = 5  # timed passes over the test set, after two untimed ones
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")

METHODS = {
    "tl_node": "TL-NODE (order 1 + correction)",
    "dopri": "DormandPrince (baseline)",
    "taylor2": "Taylor degree 2",
    "rk4": "RK4",
}
BASELINE = "dopri"
# Inference runs under XLA for every method: on the digits test set (4 batches)
# it took 2.7 instead of 3.3 ms for TL-NODE, 2.6 / 3.0 for Taylor 2, 2.3 / 3.1
# for RK4 and 21 instead of 38-50 ms for DormandPrince.
EVAL_JIT_COMPILE = True


# ---------------------------------------------------------------- data


class Data(NamedTuple):
    """Flattened images in [0, 1] (float32) and integer labels (int32)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def load_digits(seed: int) -> Data:
    """scikit-learn's 8x8 digits, pixels / 16, split 80/20 stratified by class."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    # The pixels are 4-bit counts 0..16 (not 0..255 as in MNIST).
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    return Data(x_train, y_train, x_test, y_test, "sklearn digits 8x8, pixels / 16")


def load_mnist(path: str) -> Data:
    """MNIST from a local Keras-format `mnist.npz` (keys x_train, y_train, x_test, y_test), pixels / 255.

    Raises ValueError if the file is not an npz archive with those keys, or its
    images and labels do not match.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable npz archive ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not an npz archive with {', '.join(MNIST_KEYS)}")
    with archive:
        missing = [key for key in MNIST_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"{path} lacks the key(s) {', '.join(missing)} (expected {', '.join(MNIST_KEYS)})")
        arrays = {key: archive[key] for key in MNIST_KEYS}
    splits = []
    for part in ("train", "test"):
        images, labels = arrays[f"x_{part}"], arrays[f"y_{part}"].reshape(-1)
        if images.ndim < 2 or len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"{path}: x_{part} {images.shape} and y_{part} {labels.shape} are not one label per image")
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise ValueError(f"{path}: y_{part} has labels outside 0..{NUM_CLASSES - 1}")
        splits += [(images.reshape(len(images), -1) / 255.0).astype(np.float32), labels.astype(np.int32)]
    if splits[0].shape[1] != splits[2].shape[1]:
        raise ValueError(f"{path}: train images have {splits[0].shape[1]} pixels, test images {splits[2].shape[1]}")
    return Data(*splits, f"MNIST ({path}), pixels / 255")


def subsample(data: Data, train: int | None, test: int | None, seed: int) -> Data:
    """At most `train` training and `test` test examples, drawn at random (None keeps all)."""
    rng = np.random.default_rng(seed)

    def take(x: np.ndarray, y: np.ndarray, count: int | None) -> tuple[np.ndarray, np.ndarray]:
        if count is None or count >= len(x):
            return x, y
        index = np.sort(rng.choice(len(x), count, replace=False))
        return x[index], y[index]

    return Data(*take(data.x_train, data.y_train, train), *take(data.x_test, data.y_test, test), data.source)


# ---------------------------------------------------------------- models


class Network(NamedTuple):
    """A method's classifier: `model` (images -> logits) = `head` after `ode`."""

    model: keras.Model
    ode: keras.layers.Layer
    head: keras.Model


def vector_field(dim: int) -> keras.Model:
    """f_θ([x, t]) = Dense(d)([t, sigmoid(Dense(100)([t, sigmoid(x)]))]), t of shape (batch, 1)."""
    x, t = keras.Input((dim,), name="x"), keras.Input((1,), name="t")
    hidden = keras.layers.Concatenate()([t, keras.layers.Activation("sigmoid")(x)])
    hidden = keras.layers.Dense(HIDDEN_UNITS, activation="sigmoid")(hidden)
    derivative = keras.layers.Dense(dim)(keras.layers.Concatenate()([t, hidden]))
    return keras.Model([x, t], derivative, name="vector_field")


def head(dim: int) -> keras.Model:
    """logits = Dense(10)(sigmoid(x(1)))."""
    return keras.Sequential(
        [keras.Input((dim,)), keras.layers.Activation("sigmoid"), keras.layers.Dense(NUM_CLASSES)], name="head"
    )


def build_ode(method: str, field: keras.Model, tolerance: float) -> keras.layers.Layer:
    """The ODE layer of `method` around `field`, over t ∈ [0, DURATION]."""
    steps = {} if method == "dopri" else {"num_steps": NUM_STEPS}
    return harness.ode_layer(
        method,
        field,
        DURATION,
        correction=keras_tlnode.MidpointCorrection(hidden_units=CORRECTION_UNITS),
        remainder_weight=REMAINDER_WEIGHT,
        tolerance=tolerance,
        time_dependent=True,
        **steps,
    )


def build_network(method: str, dim: int, seed: int, tolerance: float) -> Network:
    """The uncompiled classifier of `method`; f_θ and the head start from weights that depend only on `seed`."""
    keras.utils.set_random_seed(seed)
    # Both are built here, before any method-specific weight (Γ_φ) draws from the generator.
    field, classifier = vector_field(dim), head(dim)
    ode = build_ode(method, field, tolerance)
    inputs = keras.Input((dim,))
    return Network(harness.model_class(method)(inputs, classifier(ode(inputs))), ode, classifier)


def compile_network(network: Network, method: str, config: dict) -> None:
    options = dict(
        optimizer=harness.decaying_adam(*LEARNING_RATE, config["total_steps"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,  # see the module docstring, "XLA"
        steps_per_execution=config["steps_per_execution"],
    )
    if method == "tl_node":
        schedule = {"correction_every": config["correction_every"]} if config["correction_every"] else {}
        network.model.compile(**schedule, **options)  # the package's teacher and correction defaults
    else:
        network.model.compile(**options)


# ---------------------------------------------------------------- train and evaluate


def inference_function(network: Network, jit_compile: bool) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """images -> (logits, f-evaluations of the solve), compiled."""
    adaptive = isinstance(network.ode, keras_tlnode.DormandPrinceODE)

    def infer(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if adaptive:
            states, nfe, _ = network.ode.solve(x)
        else:
            states, nfe = network.ode(x, training=False), tf.constant(network.ode.nfe, tf.int64)
        return network.head(states, training=False), nfe

    return tf.function(infer, jit_compile=jit_compile)


def batches(x: np.ndarray, batch_size: int) -> list[tf.Tensor]:
    return [tf.constant(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]


def evaluate(network: Network, data: Data, batch_size: int, jit_compile: bool, seed: int) -> dict:
    """Test accuracy, mean f-evaluations per solve and the time of one pass over the test set, in batches."""
    infer = inference_function(network, jit_compile)
    outputs = [infer(batch) for batch in batches(data.x_test, batch_size)]
    logits = np.concatenate([np.asarray(out[0]) for out in outputs])
    # Every pass sees the test set in a new order (see `harness.median_seconds`).
    rng = np.random.default_rng(seed)
    passes = [batches(data.x_test[rng.permutation(len(data.x_test))], batch_size) for _ in range(EVAL_REPEATS + 2)]
    seconds = harness.median_seconds(lambda pass_: [infer(batch) for batch in pass_], passes)
    return {
        "accuracy": float(np.mean(np.argmax(logits, axis=-1) == data.y_test)),
        "eval_seconds": seconds,
        "nfe": float(np.mean([int(out[1]) for out in outputs])),
    }


def run_method(method: str, data: Data, config: dict, position: str) -> dict:
    network = build_network(method, data.x_train.shape[1], config["seed"], config["baseline_tolerance"])
    compile_network(network, method, config)
    log = harness.TrainingLog(f"{position} {METHODS[method]}")
    dataset = harness.training_pipeline(data.x_train, data.y_train, config["batch_size"], config["seed"])
    # The dataset reshuffles itself every epoch; `shuffle` only applies to arrays.
    history = network.model.fit(dataset, epochs=config["epochs"], shuffle=False, verbose=0, callbacks=[log])
    scores = evaluate(network, data, config["eval_batch_size"], EVAL_JIT_COMPILE, config["seed"])
    result = {
        "label": METHODS[method],
        **scores,
        "train_seconds": log.train_seconds,
        "step_ms": log.step_ms,
        "final_train_loss": float(history.history["loss"][-1]),
        "final_train_accuracy": float(history.history["accuracy"][-1]),
    }
    if method == "tl_node":
        for name in ("remainder", "correction_loss", "teacher_failures"):
            result[name] = float(history.history[name][-1])
    return result


def relative_scores(results: dict) -> dict[str, dict[str, float]]:
    """Each method's accuracy, training time per step, evaluation time and NFE over the baseline's."""
    baseline = results[BASELINE]
    keys = {"accuracy": "accuracy", "training time": "step_ms", "evaluation time": "eval_seconds", "NFE": "nfe"}
    # A baseline accuracy of 0 (possible in tiny runs) leaves its panel empty.
    return {
        panel: {r["label"]: r[key] / baseline[key] if baseline[key] else math.nan for r in results.values()}
        for panel, key in keys.items()
    }


def comparisons(results: dict) -> dict:
    """TL-NODE's ratios against the baseline (when both ran)."""
    tl, baseline = results.get("tl_node"), results[BASELINE]
    if tl is None:
        return {}
    return {
        "accuracy_points_vs_dopri": 100 * (tl["accuracy"] - baseline["accuracy"]),
        "train_speedup_vs_dopri": baseline["train_seconds"] / tl["train_seconds"],
        "step_speedup_vs_dopri": baseline["step_ms"] / tl["step_ms"],
        "eval_speedup_vs_dopri": baseline["eval_seconds"] / tl["eval_seconds"],
        "nfe_ratio_dopri_over_tl_node": baseline["nfe"] / tl["nfe"],
    }


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = harness.benchmark_parser(__doc__.splitlines()[0], "20 epochs", "50 epochs")
    parser.add_argument("--mnist", metavar="PATH", help="train on MNIST from this local Keras mnist.npz")
    parser.add_argument("--epochs", type=int, help="training epochs (default: per mode)")
    parser.add_argument("--train-samples", type=int, help="use at most this many training examples")
    parser.add_argument("--test-samples", type=int, help="use at most this many test examples")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--eval-batch-size", type=int, default=BATCH_SIZE, help="batch of the timed inference")
    parser.add_argument("--steps-per-execution", type=int, default=STEPS_PER_EXECUTION)
    parser.add_argument(
        "--correction-every", type=int, help="TL-NODE's correction phase every this many steps (default: the package's)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=BASELINE_TOLERANCE,
        help="rtol = atol of the DormandPrince baseline (default: %(default)g)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help=f"methods to compare; must include the baseline, {BASELINE}",
    )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    harness.check_flags(
        parser,
        args,
        (
            "epochs",
            "train_samples",
            "test_samples",
            "batch_size",
            "eval_batch_size",
            "steps_per_execution",
            "correction_every",
        ),
    )
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        parser.error(f"--tolerance must be a finite number > 0, got {args.tolerance}")
    if BASELINE not in args.methods:
        parser.error(f"--methods must include {BASELINE}, the baseline every score is relative to")
    if args.mnist is not None and not os.path.isfile(args.mnist):
        parser.error(f"--mnist: no such file: {args.mnist} (a local Keras mnist.npz; nothing is downloaded)")
    return args


def load_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Data:
    if args.mnist is None:
        data = load_digits(args.seed)
    else:
        try:
            data = load_mnist(args.mnist)
        except ValueError as error:
            parser.error(f"--mnist: {error}")
    return subsample(data, args.train_samples, args.test_samples, args.seed)


def make_config(args: argparse.Namespace, data: Data) -> dict:
    steps_per_epoch = math.ceil(len(data.x_train) / args.batch_size)
    epochs = args.epochs or MODES[args.mode]["epochs"]
    return {
        "mode": args.mode,
        "data": data.source,
        "train_examples": len(data.x_train),
        "test_examples": len(data.x_test),
        "pixels": data.x_train.shape[1],
        "epochs": epochs,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": steps_per_epoch * epochs,
        "eval_batch_size": args.eval_batch_size,
        "steps_per_execution": args.steps_per_execution,
        "seed": args.seed,
        "num_steps": NUM_STEPS,
        "duration": DURATION,
        "learning_rate": list(LEARNING_RATE),
        "remainder_weight": REMAINDER_WEIGHT,
        "correction_units": list(CORRECTION_UNITS),
        "correction_every": args.correction_every,  # None: the package's default
        "baseline_tolerance": args.tolerance,
        "baseline_tolerance_note": (
            "rtol = atol, solved in float32. The default, 1e-7, is the tightest tolerance at which the solve of "
            "this model still got clearly more accurate; below it the error stays at float32 round-off while "
            "the NFE grows (module docstring; the paper's 1.4e-8 cost 1.3-1.5x the NFE of 1e-7)"
        ),
        "jit_compile": {"train": False, "eval": EVAL_JIT_COMPILE},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parse_args(parser, argv)
    data = load_data(parser, args)
    config = make_config(args, data)
    print(
        f"classification ({config['mode']}): {config['data']}, {config['train_examples']} train / "
        f"{config['test_examples']} test images of {config['pixels']} pixels, {config['epochs']} epochs of batch "
        f"{config['batch_size']} ({config['total_steps']} steps), correction every {config['correction_every'] or 'default'} "
        f"steps, baseline rtol = atol = {config['baseline_tolerance']:g}, seed {config['seed']}",
        flush=True,
    )
    results = harness.run_methods(
        args.methods,
        lambda method, position: run_method(method, data, config, position),
        lambda result: f", test accuracy {result['accuracy']:.4f}",
    )
    print()
    print(harness.format_table(results, common.DIGITS_COLUMNS))
    ratios = comparisons(results)
    for name, value in ratios.items():
        print(f"{name}: {value:.3g}")
    dataset = "MNIST" if args.mnist else "8x8 digits"
    harness.plot_bars(
        os.path.join(args.out, "classification.png"),
        relative_scores(results),
        f"Classification, {dataset}: each score / DormandPrince's (= 1); training time = steady time per step",
    )
    report = {"config": config, "environment": harness.environment(), "methods": results, "comparisons": ratios}
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
