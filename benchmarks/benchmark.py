"""The numbers behind the README, side by side in one run, printed as ratios (this machine is noisy).

(a) Cost of `taylor_coefficients` at orders 0..4 relative to one evaluation of f,
    for an MLP 32-256-256-32 (tanh) at batch 1024, in a graph and under XLA.
(b) Inference latency per batch of TL-NODE against DormandPrince at matched
    accuracy: f is a known vector field (the stiff linear system of
    `stiff_dynamics.py` (`common.stiff_matrix`) at Δt = 0.002, where λΔt = -2 for its fast mode,
    Van der Pol with μ = 8 at Δt = 0.05, and the random MLP of (a) at Δt = 0.1,
    where f's cost dominates), TL-NODE's Γ_φ is fitted to
    it by `TLNODEModel` (f frozen), and DormandPrince gets the loosest tolerance
    whose one-step error is no larger than TL-NODE's.
(c) The quick stiff-dynamics and classification comparisons
    (`stiff_dynamics.py --quick`, `classification.py --quick`, each run as its script).
(d) Cost of a training step on the stiff system at batch 500, f_θ = Dense(64) →
    Dense(2) started near the true field (so the baseline meets the stiffness it
    would meet in training): `TLNODEModel` with the package defaults (teacher
    included) against `DormandPrinceODE` at rtol = atol = 1e-6, each in a graph
    and under XLA, at `steps_per_execution` 1 and 10; TL-NODE's step split into
    phase 1, the teacher solve and the Γ_φ updates.
(e) TL-NODE against the baseline where it matters to a user, on the stiff
    system: time to accuracy from a random start (`systems_suite.py`'s runs of
    `stiff_random`, `common.run`, TL-NODE at the package defaults and DormandPrince 1e-6, over
    seeds: the wall-clock at which each first reaches 1.2x the baseline's final
    test error), and the ms per training step of each at two sizes of f_θ,
    both linear and started near the true field: the paper's 2-64-2 and
    2-512-512-2, where f's evaluations dominate the step (graph and XLA, 10
    steps per execution).

    python benchmarks/benchmark.py [--parts a b c d e] [--json PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable

import common
import harness  # the benchmarks' shared helpers; sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

# ---------------------------------------------------------------- (a) Taylor cost


def taylor_cost(width: int, state: int, batch: int, max_order: int, repeats: int) -> dict:
    """Seconds per call of f and of taylor_coefficients(f, x, k), and their ratios, graph and XLA.

    Every call gets a new input (see `harness.median_seconds`).
    """
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
        plain = harness.median_seconds(tf.function(field, jit_compile=xla), inputs)
        rows = {}
        for order in range(max_order + 1):
            coefficients = functools.partial(keras_tlnode.taylor_coefficients, field, order=order)
            seconds = harness.median_seconds(tf.function(coefficients, jit_compile=xla), inputs)
            rows[order] = {"seconds": seconds, "ratio_to_f": seconds / plain}
        results["xla" if xla else "graph"] = {"f_seconds": plain, "orders": rows}
    return results


# The TL-NODE authors' JAX figures on the same MLP (`jax.jvp` at order 1,
# `jax.experimental.jet` above), cost per order relative to one f call: quoted, not measured here.
JAX_REFERENCE = {1: 1.8, 2: 5.7, 3: 10.5, 4: 16.1}


def print_taylor_cost(cost: dict, max_order: int) -> None:
    print("(a) taylor_coefficients cost relative to one f evaluation (MLP 32-256-256-32, batch 1024)")
    print(f"{'order':>5} {'graph':>8} {'XLA':>8} {'JAX (authors)':>14}")
    for order in range(max_order + 1):
        graph = cost["graph"]["orders"][order]["ratio_to_f"]
        xla = cost["xla"]["orders"][order]["ratio_to_f"]
        jax = f"{JAX_REFERENCE[order]:.1f}x" if order in JAX_REFERENCE else "-"
        print(f"{order:>5} {graph:>7.1f}x {xla:>7.1f}x {jax:>14}")
    print(
        f"one f evaluation: {cost['graph']['f_seconds'] * 1e3:.3f} ms (graph), "
        f"{cost['xla']['f_seconds'] * 1e3:.3f} ms (XLA)\n"
    )


# ---------------------------------------------------------------- (b) inference latency


class VanDerPol(keras.layers.Layer):
    """The known field dx/dt = y, dy/dt = μ(1 - x²) y - x."""

    def __init__(self, mu: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self.mu = mu

    def call(self, state: tf.Tensor) -> tf.Tensor:
        x, y = state[:, :1], state[:, 1:]
        return tf.concat([y, self.mu * (1.0 - x * x) * y - x], axis=-1)


def stiff_field(dtype: str = "float32") -> keras.layers.Layer:
    """The stiff linear system of `stiff_dynamics.py`, dx/dt = A x, as a frozen Dense layer."""
    field = keras.layers.Dense(2, use_bias=False, trainable=False, dtype=dtype)
    field.build((None, 2))
    field.set_weights([common.stiff_matrix().T.astype(dtype)])
    return field


def mlp_field(dtype: str = "float32") -> keras.layers.Layer:
    """A fixed random MLP 32-256-256-32 (tanh), where f's cost dominates a step: the network of part (a)."""
    keras.utils.set_random_seed(0)
    weights = _mlp("float32").get_weights()
    field = _mlp(dtype)
    field.set_weights([w.astype(dtype) for w in weights])
    field.trainable = False
    return field


def _mlp(dtype: str) -> keras.Sequential:
    layers = [keras.layers.Dense(256, activation="tanh", dtype=dtype) for _ in range(2)]
    return keras.Sequential([keras.Input((32,)), *layers, keras.layers.Dense(32, dtype=dtype)])


# name: (field factory, Δt, half-width of the box of states, state dimension)
SYSTEMS = {
    "stiff linear, dt=0.002": (stiff_field, 0.002, 0.5, 2),
    "Van der Pol mu=8, dt=0.05": (VanDerPol, 0.05, 3.0, 2),
    "MLP 32-256-256-32 (tanh), dt=0.1": (mlp_field, 0.1, 1.0, 32),
}
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def reference_solution(make_field: Callable[..., keras.layers.Layer], x: np.ndarray, dt: float) -> np.ndarray:
    """The truth: DormandPrince at rtol = atol = 1e-12 on a float64 copy of the field, from float64 states."""
    field = make_field(dtype="float64")
    teacher = keras_tlnode.DormandPrinceTeacher(rtol=1e-12, atol=1e-12, max_num_steps=100_000)
    solve = tf.function(lambda s: teacher.solve(field, s, dt).states)
    return solve(tf.constant(x, tf.float64)).numpy().astype(np.float32)


def fitted_tl_node(field: keras.layers.Layer, dt: float, x: np.ndarray, y: np.ndarray, epochs: int):
    """TL-NODE (order 1 + correction) on the frozen `field`, Γ_φ fitted by the teacher on the states `x`."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(x.shape[1:])
    ode = keras_tlnode.TaylorLagrangeODE(
        field, order=1, duration=dt, correction=keras_tlnode.MidpointCorrection(hidden_units=(16,))
    )
    model = keras_tlnode.TLNODEModel(inputs, ode(inputs))
    # Not XLA: with slicing in f (Van der Pol), XLA's forward-mode slices have no
    # gradient (XlaDynamicUpdateSlice), which the correction phase needs.
    model.compile(optimizer="adam", loss="mse", correction_every=1, jit_compile=False)
    model.fit(x, y, batch_size=256, epochs=epochs, verbose=0)
    return model, ode


def matched_latency(name: str, batch: int, repeats: int, epochs: int) -> dict:
    """TL-NODE's one-step error and latency, and DormandPrince's at the loosest tolerance as accurate."""
    make_field, dt, scale, dimension = SYSTEMS[name]
    field = make_field()
    rng = np.random.default_rng(0)
    train = rng.uniform(-scale, scale, (4096, dimension)).astype("float32")
    tests = [rng.uniform(-scale, scale, (batch, dimension)).astype("float32") for _ in range(repeats + 2)]
    truth = reference_solution(make_field, tests[0], dt)
    model, ode = fitted_tl_node(field, dt, train, reference_solution(make_field, train, dt), epochs)
    plain = keras_tlnode.TaylorLagrangeODE(field, order=1, duration=dt)
    tl_predict = tf.function(lambda s: model(s, training=False), jit_compile=True)
    result = {
        "tl_node": {
            "error": harness.relative_l2(tl_predict(tests[0]).numpy(), truth),
            "nfe": ode.nfe,
            "ms": 1e3 * harness.median_seconds(tl_predict, tests),
        },
        "taylor2_error": harness.relative_l2(plain(tests[0]).numpy(), truth),
        "dopri": [],
    }
    for tolerance in TOLERANCES:
        layer = keras_tlnode.DormandPrinceODE(field, duration=dt, rtol=tolerance, atol=tolerance)
        # Under XLA, its fastest setting here.
        solve = tf.function(layer.solve, jit_compile=True)
        states, nfe, _ = solve(tests[0])
        row = {"tolerance": tolerance, "error": harness.relative_l2(states.numpy(), truth), "nfe": int(nfe)}
        row["ms"] = 1e3 * harness.median_seconds(lambda s, solve=solve: solve(s).states, tests)
        result["dopri"].append(row)
    as_accurate = [row for row in result["dopri"] if row["error"] <= result["tl_node"]["error"]]
    matched = as_accurate[0] if as_accurate else min(result["dopri"], key=lambda row: row["error"])
    result["matched"] = {
        "tolerance": matched["tolerance"],
        "reached": bool(as_accurate),
        "speedup": matched["ms"] / result["tl_node"]["ms"],
        "nfe_ratio": matched["nfe"] / result["tl_node"]["nfe"],
    }
    return result


def print_latency(name: str, result: dict, batch: int) -> None:
    tl = result["tl_node"]
    print(f"(b) {name}, batch {batch}: one-step relative error, f-evaluations and latency per batch")
    print(
        f"    TL-NODE (order 1 + correction)  error {tl['error']:.2e}  nfe {tl['nfe']:4d}  {tl['ms']:7.2f} ms"
        f"   (uncorrected Taylor 2: error {result['taylor2_error']:.2e})"
    )
    for row in result["dopri"]:
        print(
            f"    DormandPrince tol {row['tolerance']:.0e}     error {row['error']:.2e}  nfe {row['nfe']:4d}  "
            f"{row['ms']:7.2f} ms  ({row['ms'] / tl['ms']:.1f}x TL-NODE)"
        )
    matched = result["matched"]
    verdict = "as accurate" if matched["reached"] else "none as accurate; the most accurate"
    print(
        f"    matched accuracy ({verdict}: tol {matched['tolerance']:.0e}): TL-NODE {matched['speedup']:.1f}x "
        f"faster, {matched['nfe_ratio']:.1f}x fewer f-evaluations\n"
    )


# ---------------------------------------------------------------- (d) training step

TRAIN_BATCH = 500
BASELINE_TOLERANCE = 1e-6
SETTINGS = {"graph": (False, 1), "XLA": (True, 1), "graph, 10/exec": (False, 10), "XLA, 10/exec": (True, 10)}


def stiff_training_model(
    method: str, jit_compile: bool, steps_per_execution: int, widths: tuple[int, ...] = (64,), **compile_kwargs
) -> keras.Model:
    """The stiff one-step model of `method` ("tl_node" or "dopri"), compiled; f_θ (linear, hidden `widths`) starts near the true field."""
    keras.utils.set_random_seed(0)
    field = common.linear_mlp(common.stiff_near_matrix(), widths)()
    inputs = keras.Input((2,))
    options = dict(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="mse",
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    ode = harness.ode_layer(method, field, common.STIFF_DT, tolerance=BASELINE_TOLERANCE)
    model = harness.model_class(method)(inputs, ode(inputs))
    model.compile(**options, **compile_kwargs)
    return model


def ms_per_step(model: keras.Model, dataset: tf.data.Dataset, steps: int, repeats: int = 2, warmup: int = 20) -> float:
    """Wall-clock ms per training step of `fit` over `steps` batches, the best of `repeats` timed fits.

    A warm-up fit traces and compiles first; the best, not the mean, because
    this machine's noise only ever adds time.
    """
    model.fit(dataset.take(warmup), verbose=0, shuffle=False)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(dataset.take(steps), verbose=0, shuffle=False)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times) / steps


TEACHER_SETTINGS = [(1e-4, "float64"), (1e-6, "float32"), (1e-6, "float64"), (1e-8, "float64")]


def teacher_accuracy(samples: int, repeats: int, settings: list = TEACHER_SETTINGS) -> list[dict]:
    """The teacher's targets against the exact flow on the stiff system (f = A), and ms per solve, per setting."""
    rng = np.random.default_rng(1)
    batches = [rng.uniform(-0.5, 0.5, (samples, 2)).astype("float32") for _ in range(repeats + 2)]
    truth = batches[0].astype("float64") @ common.stiff_propagator(common.STIFF_DT).T
    field = stiff_field()
    rows = []
    for tolerance, dtype in settings:
        for jit_compile in (False, True):
            teacher = keras_tlnode.DormandPrinceTeacher(tolerance, tolerance, dtype=dtype, jit_compile=jit_compile)
            solve = tf.function(lambda x, teacher=teacher: teacher.solve(field, x, common.STIFF_DT))
            solution = solve(tf.constant(batches[0]))
            rows.append(
                {
                    "tolerance": tolerance,
                    "dtype": dtype,
                    "jit_compile": jit_compile,
                    "nfe": int(solution.nfe),
                    "target_mse": float(np.mean((solution.states.numpy() - truth) ** 2)),
                    "ms": 1e3
                    * harness.median_seconds(lambda x, solve=solve: solve(x).states, [tf.constant(b) for b in batches]),
                }
            )
            print(
                f"(d) teacher rtol = atol = {tolerance:.0e} {dtype} {'XLA  ' if jit_compile else 'graph'}: "
                f"target MSE {rows[-1]['target_mse']:.1e}, nfe {rows[-1]['nfe']}, {rows[-1]['ms']:.2f} ms "
                f"per solve of {samples} states",
                flush=True,
            )
    return rows


def stiff_dataset() -> tf.data.Dataset:
    """Batches of TRAIN_BATCH exact one-step pairs of the stiff system, repeated."""
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (TRAIN_BATCH * 16, 2)).astype("float32")
    y = (x @ common.stiff_propagator(common.STIFF_DT).T).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(TRAIN_BATCH).repeat().prefetch(tf.data.AUTOTUNE)


def training_step_cost(
    steps: int,
    settings: tuple[str, ...] = tuple(SETTINGS),
    teacher_repeats: int = 10,
    warmup: int = 20,
    teacher_settings: list = TEACHER_SETTINGS,
) -> dict:
    """ms per step of TL-NODE (defaults, and its split) and of DormandPrince, per setting (names of SETTINGS),
    and the teacher's accuracy per `teacher_settings` ((tolerance, dtype) pairs)."""
    dataset = stiff_dataset()
    defaults = stiff_training_model("tl_node", False, 1)
    every, updates = defaults.correction_every, defaults.correction_steps
    report = {
        "correction_every": every,
        "correction_steps": updates,
        "settings": {},
        "teacher": teacher_accuracy(defaults.teacher_samples, teacher_repeats, teacher_settings),
    }
    for name in settings:
        jit_compile, per_execution = SETTINGS[name]

        def cost(method: str, jit_compile: bool = jit_compile, per_execution: int = per_execution, **kwargs) -> float:
            model = stiff_training_model(method, jit_compile, per_execution, **kwargs)
            return ms_per_step(model, dataset, steps, warmup=warmup)

        row = {
            "tl_node": cost("tl_node"),
            "phase1": cost("tl_node", correction_every=10**9),
            "every_step_1": cost("tl_node", correction_every=1, correction_steps=1),
            "every_step_k": cost("tl_node", correction_every=1, correction_steps=updates + 1),
            "dopri": cost("dopri"),
        }
        # Every step: phase 1 + teacher + 1 update, and + `updates` more; solved for both parts.
        update = max(row["every_step_k"] - row["every_step_1"], 0.0) / updates
        teacher = max(row["every_step_1"] - row["phase1"] - update, 0.0)
        row["teacher_per_step"] = teacher / every
        row["updates_per_step"] = updates * update / every
        row["teacher_share"] = (row["teacher_per_step"] + row["updates_per_step"]) / row["tl_node"]
        row["speedup"] = row["dopri"] / row["tl_node"]
        report["settings"][name] = row
        print(
            f"(d) {name:15s} TL-NODE {row['tl_node']:6.2f} ms/step (phase 1 {row['phase1']:.2f}, teacher "
            f"{row['teacher_per_step']:.2f}, Γ updates {row['updates_per_step']:.2f}: "
            f"{100 * row['teacher_share']:.0f}% correction)   DormandPrince {row['dopri']:7.2f} ms/step   "
            f"{row['speedup']:.1f}x",
            flush=True,
        )
    best_tl = min(row["tl_node"] for row in report["settings"].values())
    best_dopri = min(row["dopri"] for row in report["settings"].values())
    report["best_speedup"] = best_dopri / best_tl
    print(
        f"(d) best setting of each: TL-NODE {best_tl:.2f} ms, DormandPrince {best_dopri:.2f} ms: "
        f"{report['best_speedup']:.1f}x\n",
        flush=True,
    )
    return report


# ---------------------------------------------------------------- (e) against the baseline

FIELD_SIZES = {"2-64-2": (64,), "2-512-512-2": (512, 512)}


def time_to_accuracy(seeds: list[int], steps: int) -> dict:
    """systems_suite.py's stiff_random runs of TL-NODE (defaults) and DormandPrince 1e-6: time to accuracy per seed."""
    system = common.systems()["stiff_random"]
    data = common.make_data(system, common.FULL_PAIRS, 0)
    runs = {
        key: [
            common.run(system, key, data, {"steps": steps}, seed, f"(e) stiff_random {key} seed {seed}")
            for seed in seeds
        ]
        for key in ("tl_node@1", common.REFERENCE)
    }
    common.add_times_to_accuracy(runs)
    summary = {key: common.summarise(results) for key, results in runs.items()}
    speedup = common.speedup(summary, "tl_node@1")
    number = common.number
    print(
        f"(e) stiff system from a random start, {steps} steps, seeds {seeds}: time to 1.2x DormandPrince's final "
        f"test error, TL-NODE {number(common.median(summary, 'tl_node@1', 'to_accuracy_s'), '.1f')} s, "
        f"DormandPrince {number(common.median(summary, common.REFERENCE, 'to_accuracy_s'), '.1f')} s: "
        f"{number(speedup, '.1f')}x; final one-step MSE {summary['tl_node@1']['one_step']['median']:.1e} vs "
        f"{summary[common.REFERENCE]['one_step']['median']:.1e}",
        flush=True,
    )
    return {
        "steps": steps,
        "seeds": seeds,
        "summary": {
            key: {m: summary[key][m] for m in ("one_step", "rollout_abs", "train_s", "to_accuracy_s")}
            for key in summary
        },
        "speedup": speedup,
    }


def step_ratio_by_size(
    steps: int,
    warmup: int = 5,
    sizes: dict[str, tuple[int, ...]] = FIELD_SIZES,
    settings: tuple[str, ...] = ("graph, 10/exec", "XLA, 10/exec"),
) -> dict:
    """ms per training step of TL-NODE (defaults) and DormandPrince 1e-6 at each of `sizes` (hidden widths of f_θ)
    and `settings` (names of SETTINGS)."""
    dataset = stiff_dataset()
    report = {}
    for size, widths in sizes.items():
        for setting in settings:
            jit_compile, per_execution = SETTINGS[setting]
            row = {
                method: ms_per_step(
                    stiff_training_model(method, jit_compile, per_execution, widths), dataset, steps, warmup=warmup
                )
                for method in ("tl_node", "dopri")
            }
            row["ratio"] = row["dopri"] / row["tl_node"]
            report[f"{size}, {setting}"] = row
            print(
                f"(e) f_θ {size:12s} {setting:15s} TL-NODE {row['tl_node']:8.2f} ms/step   DormandPrince "
                f"{row['dopri']:8.2f} ms/step   {row['ratio']:.1f}x",
                flush=True,
            )
    return report


# ---------------------------------------------------------------- (c) the quick comparisons


def quick_examples(out: str) -> dict:
    """The quick comparisons of stiff_dynamics.py and classification.py, each run as its script (plots into `out`)."""
    print("(c) stiff_dynamics.py --quick")
    stiff = harness.run_script("stiff_dynamics", ["--quick", "--out", out])
    print("\n(c) classification.py --quick")
    digits = harness.run_script("classification", ["--quick", "--out", out])
    return {"stiff_dynamics": stiff, "classification": digits}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["a", "b", "c", "d", "e"], default=["a", "b", "c", "d", "e"])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--max-order", type=int, default=4, help="highest order in part (a)")
    parser.add_argument("--batch", type=int, default=1024, help="prediction batch in part (b)")
    parser.add_argument("--correction-epochs", type=int, default=20, help="epochs fitting Γ_φ in part (b)")
    parser.add_argument("--train-steps", type=int, default=200, help="timed training steps per model in part (d)")
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the time-to-accuracy runs (e)"
    )
    parser.add_argument(
        "--accuracy-steps", type=int, default=1500, help="training steps of the time-to-accuracy runs (e)"
    )
    parser.add_argument(
        "--size-steps", type=int, default=30, help="timed training steps per model and size in part (e)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--out", metavar="DIR", default=".", help="directory for the plots of part (c)")
    args = parser.parse_args(argv)
    harness.check_flags(
        parser, args, ("repeats", "batch", "correction_epochs", "train_steps", "accuracy_steps", "size_steps")
    )
    if not 0 <= args.max_order <= 6:
        parser.error(f"--max-order must be in [0, 6], got {args.max_order}")

    report = {"environment": harness.environment()}
    if "a" in args.parts:
        report["taylor_cost"] = taylor_cost(256, 32, 1024, args.max_order, args.repeats)
        print_taylor_cost(report["taylor_cost"], args.max_order)
    if "b" in args.parts:
        report["inference"] = {}
        for name in SYSTEMS:
            report["inference"][name] = matched_latency(name, args.batch, args.repeats, args.correction_epochs)
            print_latency(name, report["inference"][name], args.batch)
    if "c" in args.parts:
        report["examples"] = quick_examples(args.out)
    if "d" in args.parts:
        report["training_step"] = training_step_cost(args.train_steps)
    if "e" in args.parts:
        report["against_baseline"] = {
            "time_to_accuracy": time_to_accuracy(args.seeds, args.accuracy_steps),
            "step_by_field_size": step_ratio_by_size(args.size_steps),
        }
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
