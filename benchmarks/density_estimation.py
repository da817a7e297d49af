"""Density estimation with continuous normalizing flows: TL-NODE against TensorFlow Probability's FFJORD.

Each method learns the same density with the same field f_θ([z, t]) (an MLP,
tanh), the same data, batches, initial weights, optimizer and steps, and maps
data x at t = 0 to a standard normal at t = 1:

    tl_node@K      ContinuousNormalizingFlow: K Taylor-Lagrange steps of order 1 with MidpointCorrection
    uncorrected@K  the same flow without the correction (the Taylor method of degree 2)
    rk4@K          the same flow with K RK4 steps (method="rk4")
    ffjord         tfp.bijectors.FFJORD with tfp.math.ode.DormandPrince at rtol = atol = 1e-5 (the FFJORD
                   paper's setting; gradients by tfp's adjoint), the baseline

for each step count K of `--flow-steps` (default 2, 4 and 8; 8 is the
package's default). A flow's likelihood is the change of variables of its
steps' map, log N(Φ(x)) + log det ∂Φ/∂x; FFJORD's is the continuous one,
log N(z(1)) + ∫₀¹ tr(∂f/∂z) dt.

Densities: three 2-D densities generated here (two moons, eight Gaussians, a
checkerboard), with the exact trace; and scikit-learn's bundled 8x8 digits
(64 dimensions, dequantised with uniform noise and standardised), with
Hutchinson's estimator in training for every method (one Rademacher probe per
sample and solve) and the exact change of variables in evaluation.

Reported per density and run: test NLL (nats, and nats per dimension), the
NLL of the trained field by a tight adaptive solve (DormandPrince at 1e-8, the
continuous likelihood of the learned f_θ) and the likelihood gap (the tight NLL
minus the test NLL, a flow's `likelihood_gap`: near 0 when the steps follow
the field), on the 2-D densities the mass of exp(log p) on a 161² grid over
[-4, 4]² (1 for a density) and the grid points where a step folds (NaN), the
round trip max|decode(encode(x)) − x| of the flows, f-evaluations per training
step (FFJORD's include its adjoint), training time, and time to accuracy: the
training wall-clock at which the test NLL first reaches the FFJORD baseline's
final test NLL + 0.05 nats. The acceptance gates (medians over the seeds,
TL-NODE at the default 8 steps): its NLL within 0.05 nats of the baseline's on
each 2-D density (0.02 nats per dimension on digits) with a time to accuracy at
least 5x shorter. Plots: each 2-D model's density and samples (flows at 8 steps).

Usage:
    python benchmarks/density_estimation.py            # --quick (default): two moons, one seed, about 5 minutes
    python benchmarks/density_estimation.py --densities two_moons eight_gaussians checkerboard \
        --json benchmarks/results/density_estimation_quick.json   # the committed quick results
    python benchmarks/density_estimation.py --full --json benchmarks/results/density_estimation_full.json --out benchmarks/results/
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import common
import harness  # the benchmarks' shared reporting; sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import keras_tlnode

FLOWS = {"tl_node": "TL-NODE, corrected", "uncorrected": "TL-NODE uncorrected", "rk4": "RK4"}
# The baseline, the gated run, the needed speed-up and the table columns are also its docs tables': common.py.
BASELINE = common.DENSITY_BASELINE
METHODS = [*FLOWS, BASELINE]
FLOW_STEPS = [2, 4, 8]
GATED = common.DENSITY_GATED  # the gates compare the package's defaults (8 steps) with the baseline
DENSITIES = ("two_moons", "eight_gaussians", "checkerboard", "digits")
BASELINE_TOLERANCE = 1e-5
TIGHT_TOLERANCE = 1e-8
ACCURACY_MARGIN = 0.05  # nats: time to accuracy is to the baseline's final test NLL + this
GATE_NLL = 0.05  # nats, 2-D densities
GATE_NLL_PER_DIMENSION = 0.02  # nats per dimension, digits
GATE_SPEEDUP = common.DENSITY_GATE_SPEEDUP
LEARNING_RATE = 5e-3  # Adam's, every method

# samples, test samples, training steps, batch, evaluations per run, seeds, densities
MODES = {
    "quick": {
        "train": 2048,
        "test": 1024,
        "steps": 120,
        "batch": 256,
        "points": 6,
        "seeds": 1,
        "densities": ["two_moons"],
        "flow_steps": FLOW_STEPS,
    },
    "full": {
        "train": 20000,
        "test": 5000,
        "steps": 1000,
        "batch": 256,
        "points": 30,
        "seeds": 3,
        "densities": list(DENSITIES),
        "flow_steps": FLOW_STEPS,
    },
}


# --- data ------------------------------------------------------------------------------------


def two_moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved half circles with Gaussian noise (σ = 0.1), scaled to about [-2, 2]."""
    angle = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x, y], axis=1) + 0.1 * rng.normal(size=(n, 2))
    return (2.0 * (points - [0.5, 0.25])).astype("float32")


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Eight Gaussians (σ = 0.1·2) on a circle of radius 2, as in FFJORD's toy data."""
    angles = 2 * np.pi * rng.integers(0, 8, n) / 8
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centres + 0.2 * rng.normal(size=(n, 2))).astype("float32")


def checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the black squares of a 4x4 checkerboard over [-2, 2]²."""
    x = rng.uniform(-2, 2, n)
    row = rng.integers(0, 2, n) * 2 + rng.uniform(0, 1, n)  # in [0, 1) ∪ [2, 3)
    y = row - 2 + (np.floor(x) % 2)
    return np.stack([x, y], axis=1).astype("float32")


def digits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), dequantised and standardised; (train, test)."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data  # integers 0..16
    pixels = pixels[rng.permutation(len(pixels))]
    x = (pixels + rng.uniform(0, 1, pixels.shape)) / 17.0
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    cut = int(0.8 * len(x))
    return x[:cut].astype("float32"), x[cut:].astype("float32")


SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}


def make_data(density: str, config: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if density == "digits":
        return digits(rng)
    sample = SAMPLERS[density]
    return sample(rng, config["train"]), sample(rng, config["test"])


# --- models ------------------------------------------------------------------------------------


class ConcatField(keras.layers.Layer):
    """f_θ(z, t) = MLP([z, t]): two tanh layers of `width`, a linear output."""

    def __init__(self, dimension: int, width: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.dimension, self.width = dimension, width
        self.hidden = [keras.layers.Dense(width, activation="tanh") for _ in range(2)]
        self.out = keras.layers.Dense(dimension)

    def build(self, input_shape):
        features = self.dimension + 1
        for layer in self.hidden:
            layer.build((None, features))
            features = self.width
        self.out.build((None, features))

    def call(self, inputs):
        z, t = inputs
        h = keras.ops.concatenate([z, t], axis=-1)
        for layer in self.hidden:
            h = layer(h)
        return self.out(h)


def ffjord_distribution(
    field: keras.layers.Layer, dimension: int, tolerance: float, trace: str, counter: tf.Variable | None = None
) -> tfp.distributions.TransformedDistribution:
    """p(x) of the flow dz/dt = field([z, t]) from data (t = 0) to a standard normal (t = 1), by tfp's FFJORD.

    tfp's FFJORD maps base to data forward in time; its inverse, which
    `log_prob` takes, integrates the reversed field, so the field given to it is
    -f(z, 1 - t): its inverse then integrates +f from the data, as the package's flow does.
    """

    def base_to_data(t: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        if counter is not None:
            counter.assign_add(1)
        time = tf.fill(tf.stack([tf.shape(z)[0], 1]), tf.cast(1.0 - t, z.dtype))
        return -field([z, time])

    augmentation = (
        tfp.bijectors.ffjord.trace_jacobian_exact
        if trace == "exact"
        else tfp.bijectors.ffjord.trace_jacobian_hutchinson
    )
    solver = tfp.math.ode.DormandPrince(rtol=tolerance, atol=tolerance)
    bijector = tfp.bijectors.FFJORD(
        state_time_derivative_fn=base_to_data, ode_solve_fn=solver.solve, trace_augmentation_fn=augmentation
    )
    base = tfp.distributions.MultivariateNormalDiag(loc=tf.zeros(dimension))
    return tfp.distributions.TransformedDistribution(base, bijector)


class FFJORDModel(keras.Model):
    """The baseline as a Keras model: `call` returns log p(x) of tfp's FFJORD (training trace in training,
    the exact trace otherwise), so that it trains with the same `fit`, loss and callbacks as the flows."""

    def __init__(self, field: keras.layers.Layer, dimension: int, trace: str, **kwargs):
        super().__init__(**kwargs)
        self.field = field
        self.evaluations = self.add_weight(shape=(), initializer="zeros", trainable=False, name="evaluations")
        self.training_distribution = ffjord_distribution(field, dimension, BASELINE_TOLERANCE, trace, self.evaluations)
        self.exact_distribution = ffjord_distribution(field, dimension, BASELINE_TOLERANCE, "exact")

    def call(self, x, training=None):
        distribution = self.training_distribution if training else self.exact_distribution
        return distribution.log_prob(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return -tf.reduce_mean(y_pred)  # the NLL; `fit(x)` has no targets


def label(key: str) -> str:
    """A run's name in tables: "ffjord", or a flow at K steps, "tl_node@K"."""
    if key == BASELINE:
        return f"FFJORD, DormandPrince {BASELINE_TOLERANCE:g}"
    method, steps = key.split("@")
    return f"{FLOWS[method]} ({steps} steps)"


def build_model(key: str, dimension: int, trace: str, seed: int) -> keras.Model:
    """The model of run `key` around a fresh field; the same initial weights for every run of a seed."""
    keras.utils.set_random_seed(seed)
    field = ConcatField(dimension)
    field.build([(None, dimension), (None, 1)])
    if key == BASELINE:
        model = FFJORDModel(field, dimension, trace)
        # tfp's adjoint solve does not compile under XLA.
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), jit_compile=False)
        return model
    method, steps = key.split("@")
    arguments = {
        "tl_node": {"correction": keras_tlnode.MidpointCorrection()},
        "uncorrected": {},
        "rk4": {"method": "rk4"},
    }[method]
    flow = keras_tlnode.ContinuousNormalizingFlow(field, num_steps=int(steps), trace=trace, seed=seed, **arguments)
    flow.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
    return flow


def tight_nll(field: keras.layers.Layer, x: np.ndarray, dimension: int) -> float:
    """The test NLL of a trained field by DormandPrince at 1e-8 with the exact trace."""
    distribution = ffjord_distribution(field, dimension, TIGHT_TOLERANCE, "exact")
    log_p = tf.function(distribution.log_prob)(tf.constant(x))
    return -float(np.mean(log_p))


def nll(model: keras.Model, x: np.ndarray) -> float:
    """Mean test NLL with the exact trace, in nats."""
    log_p = model.predict(x, batch_size=len(x), verbose=0)
    return -float(np.mean(log_p))


# --- runs ----------------------------------------------------------------------------------------


def run(key: str, density: str, data: tuple, config: dict, seed: int, position: str) -> dict:
    """Trains one run on one density and seed; its numbers and its curve of test NLL against wall-clock."""
    train, test = data
    dimension = train.shape[1]
    trace = "hutchinson" if density == "digits" else "exact"
    try:
        model = build_model(key, dimension, trace, seed)
    except ValueError as error:  # a setting the flow refuses: it could not make it a density
        return {"rejected": str(error)}
    pipeline = tf.data.Dataset.from_tensor_slices(train).shuffle(len(train), seed=seed).batch(config["batch"], True)
    steps_per_epoch = len(train) // config["batch"]
    epochs = math.ceil(config["steps"] / steps_per_epoch)
    log = harness.TrainingLog(
        f"{position} {density} {label(key)}",
        lambda: nll(model, test),
        every=max(1, config["steps"] // config["points"]),
    )
    model.fit(pipeline.repeat(), steps_per_epoch=steps_per_epoch, epochs=epochs, callbacks=[log], verbose=0)
    final = nll(model, test)
    flow = key != BASELINE
    nfe = float(model.flow.nfe) if flow else float(model.evaluations.numpy()) / config["steps"]
    tight = tight_nll(model.vector_field if flow else model.field, test, dimension)
    result = {
        "test_nll": final,
        "test_nll_per_dimension": final / dimension,
        "tight_nll": tight,
        "likelihood_gap": tight - final,  # mean log p minus the tight one: a flow's `likelihood_gap`
        "nfe_per_training_step": nfe,
        "train_seconds": log.train_seconds,
        "curve": {"seconds": log.seconds, "test_nll": log.errors},
        "model": model,
    }
    if flow:
        z, _ = model.encode(test[:512])
        result["round_trip"] = float(np.max(np.abs(model.decode(z).numpy() - test[:512])))
        if dimension == 2:
            result.update(grid_mass(model))
    return result


def grid_mass(flow: keras_tlnode.ContinuousNormalizingFlow) -> dict:
    """Σ exp(log p) · cell area on a 161² grid over [-4, 4]² (every 2-D density here lies inside), and its folds (NaN)."""
    edges = np.linspace(-4.0, 4.0, 161)
    grid = np.stack(np.meshgrid(edges, edges), axis=-1).reshape(-1, 2).astype("float32")
    log_p = np.concatenate([flow.log_prob(chunk).numpy() for chunk in np.array_split(grid, 8)])
    return {"mass": float(np.nansum(np.exp(log_p)) * (edges[1] - edges[0]) ** 2), "folds": int(np.isnan(log_p).sum())}


def time_to(curve: dict, target: float) -> float | None:
    """The training wall-clock at which the curve first reaches `target`, or None."""
    for seconds, value in zip(curve["seconds"], curve["test_nll"], strict=True):
        if value <= target:
            return float(seconds)
    return None


def gates(results: dict, keys: list[str]) -> dict:
    """Per density, medians over the seeds: TL-NODE's NLL gap to the baseline and its speed-up to accuracy."""
    if not {GATED, BASELINE} <= set(keys):
        return {}
    report = {}
    for density, seeds in results.items():
        dimension_scale = 64 if density == "digits" else 1
        gaps = [s[GATED]["test_nll"] - s[BASELINE]["test_nll"] for s in seeds]
        speedups = []
        for s in seeds:
            target = s[BASELINE]["test_nll"] + ACCURACY_MARGIN
            tl, baseline = time_to(s[GATED]["curve"], target), time_to(s[BASELINE]["curve"], target)
            speedups.append(baseline / tl if tl and baseline else 0.0)
        gap = float(np.median(gaps)) / dimension_scale
        limit = GATE_NLL_PER_DIMENSION if density == "digits" else GATE_NLL
        speedup = float(np.median(speedups))
        report[density] = {
            "nll_gap": gap,
            "nll_gap_limit": limit,
            "speedup_to_accuracy": speedup,
            "passes": bool(gap <= limit and speedup >= GATE_SPEEDUP),
        }
    return report


def plot_densities(path: str, density: str, data: np.ndarray, models: dict[str, keras.Model]) -> None:
    """Row 1: the data and each model's density on a grid; row 2: each model's samples."""
    plt = harness.pyplot()
    edges = np.linspace(-3, 3, 120)
    grid = np.stack(np.meshgrid(edges, edges), axis=-1).reshape(-1, 2).astype("float32")
    figure, panels = plt.subplots(2, len(models) + 1, figsize=(2.4 * (len(models) + 1), 4.8), dpi=90, squeeze=False)
    panels[0][0].scatter(data[:2000, 0], data[:2000, 1], s=1)
    panels[0][0].set_title("data", fontsize=8)
    panels[1][0].axis("off")
    for column, (method, model) in enumerate(models.items(), 1):
        log_p = model.predict(grid, batch_size=len(grid), verbose=0)
        panels[0][column].imshow(np.exp(log_p).reshape(120, 120), origin="lower", extent=(-3, 3, -3, 3))
        panels[0][column].set_title(label(method), fontsize=8)
        if isinstance(model, keras_tlnode.ContinuousNormalizingFlow):
            points = np.asarray(model.sample(2000, seed=0))
        else:
            points = np.asarray(model.exact_distribution.sample(2000, seed=(0, 0)))
        panels[1][column].scatter(points[:, 0], points[:, 1], s=1)
        panels[1][column].set_xlim(-3, 3)
        panels[1][column].set_ylim(-3, 3)
    for row in panels:
        for axes in row:
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle(f"{density}: density (top), samples (bottom)", fontsize=10)
    harness.save_figure(figure, path, top=0.92)


COLUMNS = common.DENSITY_COLUMNS
MEDIANS = [key for key, _, _ in COLUMNS[:-1]]


def summarise(seeds: list[dict], keys: list[str]) -> dict[str, dict]:
    """Medians over the seeds, per run, with the time to the baseline's final NLL + margin."""
    rows = {}
    for key in keys:
        if "rejected" in seeds[0][key]:
            rows[key] = {"label": f"{label(key)}: rejected by the flow", "time_to_accuracy": "-"}
            continue
        row: dict = {
            column: float(np.median([s[key][column] for s in seeds])) if column in seeds[0][key] else None
            for column in MEDIANS
        }
        row["label"] = label(key)
        row["time_to_accuracy"] = "-"
        if BASELINE in keys:
            times = [time_to(s[key]["curve"], s[BASELINE]["test_nll"] + ACCURACY_MARGIN) for s in seeds]
            reached = [t for t in times if t is not None]
            if reached:
                row["time_to_accuracy"] = f"{np.median(reached):.1f} ({len(reached)} of {len(times)})"
        rows[key] = row
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = harness.benchmark_parser(
        __doc__.splitlines()[0],
        "two moons, one seed, 120 steps, about 5 minutes",
        "all densities, 3 seeds, 1000 steps, several hours",
    )
    parser.add_argument("--densities", nargs="+", choices=DENSITIES, help="densities to learn (default: by mode)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--flow-steps", nargs="+", type=int, help="the flows' step counts (default: 2 4 8)")
    parser.add_argument("--steps", type=int, help="training steps per run (default: by mode)")
    parser.add_argument("--seeds", type=int, help="seeds per density (default: by mode)")
    args = parser.parse_args(argv)
    harness.check_flags(parser, args, ("steps", "seeds"))
    config = dict(MODES[args.mode])
    options = {"steps": args.steps, "seeds": args.seeds, "densities": args.densities, "flow_steps": args.flow_steps}
    config.update({k: v for k, v in options.items() if v})
    # The baseline first: the others' time to accuracy is measured against its final NLL.
    keys = [BASELINE] if BASELINE in args.methods else []
    keys += [f"{method}@{steps}" for steps in config["flow_steps"] for method in FLOWS if method in args.methods]
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for density in config["densities"]:
        results[density] = []
        for seed in range(args.seed, args.seed + config["seeds"]):
            data = make_data(density, config, seed)
            runs = {}
            for index, key in enumerate(keys, 1):
                runs[key] = run(key, density, data, config, seed, f"[{index}/{len(keys)}]")
                if "rejected" in runs[key]:
                    print(f"[{index}/{len(keys)}] {density} {label(key)}: rejected ({runs[key]['rejected']})")
                else:
                    print(
                        f"  -> test NLL {runs[key]['test_nll']:.3f} in {runs[key]['train_seconds']:.1f} s", flush=True
                    )
            if data[0].shape[1] == 2 and seed == args.seed:
                plotted = {k: r["model"] for k, r in runs.items() if k == BASELINE or k.endswith("@8")}
                plot_densities(f"{args.out}/density_{density}.png", density, data[0], plotted)
            results[density].append({k: {name: v for name, v in r.items() if name != "model"} for k, r in runs.items()})
        print(f"\n{density} (medians over {config['seeds']} seed(s)):")
        print(harness.format_table(summarise(results[density], keys), COLUMNS))
    report = {
        "config": {
            **config,
            "runs": keys,
            "baseline_tolerance": BASELINE_TOLERANCE,
            "tight_tolerance": TIGHT_TOLERANCE,
        },
        "environment": harness.environment(),
        "results": results,
        "summary": {density: summarise(seeds, keys) for density, seeds in results.items()},
        "gates": gates(results, keys),
        "seconds": time.perf_counter() - started,
    }
    for density, gate in report["gates"].items():
        verdict = "holds" if gate["passes"] else "fails"
        print(
            f"gate on {density}: NLL gap {gate['nll_gap']:+.3f} (limit {gate['nll_gap_limit']}), "
            f"speed-up to accuracy {gate['speedup_to_accuracy']:.1f}x (at least {GATE_SPEEDUP:.0f}x): {verdict}"
        )
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
