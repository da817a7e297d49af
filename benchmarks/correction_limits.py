"""What limits the learned correction: where a trained TL-NODE's step error comes from, against RK4 on the same f_θ.

TL-NODE at the package defaults is trained as in `systems_suite.py` (`common.train`:
same data, schedule and steps). Then, on held-out states of the system's region, each
of these is compared with the exact flow of the trained model's own f_θ (a
tight adaptive solve), one-step MSE:

    trained        the trained layer as it predicts (the correction scaled by its trust)
    full_strength  the same layer with the fitted correction at full strength (trust ignored):
                   what the correction phase fits
    converged      a fresh Γ_φ fitted to convergence on the frozen f_θ (`fit_updates` Adam
                   updates, each on 256 new states of the region, rate 1e-2 → 1e-4, teacher at
                   1e-8): the best this correction network does on this field at the same order
    converged_order2
                   the same at order 2 (one order higher, about 1.7x the f-evaluations)
    rk4            RK4 with the same steps per interval on the same f_θ

trained / full_strength is what the trust costs, full_strength / converged what the
correction's lag behind a changing f_θ costs, and converged / rk4 whether the step
could match RK4 even with a perfect correction. The exact flow of f_θ is also compared
with the data (`flow_vs_data`): how far f_θ's own dynamics are from the system's when
the model fits the data through its step.

Usage:
    python benchmarks/correction_limits.py                 # --quick: 2 systems, 1 seed, short runs
    python benchmarks/correction_limits.py --full --json benchmarks/results/correction_limits_full.json
"""

from __future__ import annotations

import sys

import common
import harness  # sets KERAS_BACKEND before keras is imported
import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

MODES = {
    # The full suite's data (its pairs) in both modes, so that --full trains as systems_suite.py --full does.
    "quick": {"systems": ["brusselator", "lotka_volterra"], "seeds": [0], "steps": 200, "fit_updates": 200},
    "full": {
        "systems": ["brusselator", "lotka_volterra", "fitzhugh_nagumo", "lorenz", "van_der_pol", "limit_cycle"],
        "seeds": [0, 1, 2],
        "steps": common.FULL_STEPS,
        "fit_updates": 3000,
    },
}
FIT_BATCH = 256
STATES = 256
TEACHER_TOLERANCE = 1e-8


def converged_step_error(
    system: common.System,
    field: keras.layers.Layer,
    order: int,
    states: np.ndarray,
    exact: np.ndarray,
    config: dict,
    seed: int,
) -> float:
    """One-step MSE against `exact` (at `states`) of a TL step of `order` whose fresh Γ_φ is fitted to convergence
    on the frozen `field`, from `config["fit_updates"]` batches of new states of the system's region."""
    keras.utils.set_random_seed(seed)
    correction = keras_tlnode.MidpointCorrection(trust=False)
    layer = keras_tlnode.TaylorLagrangeODE(field, order=order, duration=system.dt, correction=correction)
    layer.build((None, system.dimension))
    teacher = keras_tlnode.DormandPrinceTeacher(rtol=TEACHER_TOLERANCE, atol=TEACHER_TOLERANCE)
    optimizer = harness.decaying_adam(1e-2, 1e-4, config["fit_updates"])
    variables = correction.fitted_variables

    @tf.function
    def update(x: tf.Tensor) -> None:
        target = teacher.solve(field, x, system.dt).states
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x) - target))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    rng = np.random.default_rng(seed)
    for _ in range(config["fit_updates"]):
        update(tf.constant(system.sample(rng, FIT_BATCH).astype("float32")))
    return float(np.mean((layer(states).numpy() - exact) ** 2))


def decompose(name: str, seed: int, config: dict) -> dict:
    """Trains TL-NODE (defaults) on system `name` from `seed` and splits its step's error against its own flow."""
    system = common.systems()[name]
    data = common.make_data(system, common.FULL_PAIRS, config["data_seed"])
    trained = common.train(system, "tl_node@1", data, config, seed, f"  {name} tl_node seed {seed}")
    ode, field = trained.ode, trained.field
    states = data["test_x"][:STATES]
    exact = common.exact_own_flow(field, states, system.dt)

    def error(prediction: tf.Tensor | np.ndarray, truth: np.ndarray = exact) -> float:
        return float(np.mean((np.asarray(prediction) - truth) ** 2))

    own = common.own_flow_errors(ode, field, states, system.dt)
    return {
        "trust": float(ode.correction.trust_weight.numpy()),
        "trained": own["own_flow"],
        "full_strength": error(ode.step(tf.constant(states), apply_trust=False)[0]),
        "converged": converged_step_error(system, field, 1, states, exact, config, seed),
        "converged_order2": converged_step_error(system, field, 2, states, exact, config, seed),
        "rk4": own["rk4_own_flow"],
        "model_vs_data": error(ode(states), data["test_y"][:STATES]),
        "flow_vs_data": error(exact, data["test_y"][:STATES]),
    }


COLUMNS = [
    ("trust", "trust", ".2f"),
    ("trained", "trained", ".1e"),
    ("full_strength", "full", ".1e"),
    ("converged", "converged", ".1e"),
    ("converged_order2", "order 2", ".1e"),
    ("rk4", "RK4", ".1e"),
    ("model_vs_data", "model-data", ".1e"),
    ("flow_vs_data", "flow-data", ".1e"),
]


def main(argv: list[str] | None = None) -> dict:
    parser = harness.benchmark_parser(__doc__.splitlines()[0], "2 systems, 1 seed, short runs", "6 systems, 3 seeds")
    args = parser.parse_args(argv)
    mode = MODES[args.mode]
    config = {"mode": args.mode, "data_seed": args.seed, **mode}
    report = {"config": config, "environment": harness.environment(), "systems": {}}
    for name in mode["systems"]:
        runs = [decompose(name, seed, config) for seed in mode["seeds"]]
        summary = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
        report["systems"][name] = {"runs": runs, "median": summary}
        print(harness.format_table({name: {"label": name, **summary}}, COLUMNS), flush=True)
    if args.json:
        harness.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
