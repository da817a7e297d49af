"""Fit a whole trajectory: learn a system's dynamics from one long, noisy recording at irregular times.

    python examples/trajectory.py   # about a minute on 2 CPU cores; writes trajectory.png

System identification from one recording, as in torchdiffeq's "spiral" demo:
1000 noisy observations, at irregular times, of a damped pendulum spiralling
into rest (its phase portrait is a spiral). An ODE layer called with `times=`
returns the states at those times, `num_steps` fixed steps between each two,
and trains under `model.fit` with a loss over the whole trajectory. Training
first uses windows (runs of consecutive observations, each from its own
observed first state: the times differ per sample), then the whole recording
at once, one rollout through all 1000 times, where gradient checkpointing
keeps a training step's memory flat in the rollout's length. TL-NODE and RK4
are fitted the same way and rolled out over the whole recording.
"""

import time

import keras
import numpy as np

import keras_tlnode

FRICTION = 0.2  # the true dynamics, unknown to the models: θ'' = -sin θ - FRICTION θ'
START = np.array([[2.5, 0.0]])  # (θ, θ') at t = 0: a wide swing
DURATION, OBSERVATIONS, NOISE = 25.0, 1000, 0.02
WINDOW = 10  # observations per training window


class Pendulum(keras.layers.Layer):
    """The true field, to record the data (a precise adaptive solve at the observation times)."""

    def call(self, y):
        return keras.ops.stack([y[:, 1], -keras.ops.sin(y[:, 0]) - FRICTION * y[:, 1]], axis=1)


def record(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observation times (the first 0, then uniform at random), the true states there, and noisy observations."""
    times = np.concatenate([[0.0], np.sort(rng.uniform(0.0, DURATION, OBSERVATIONS - 1))])
    solver = keras_tlnode.DormandPrinceODE(Pendulum(dtype="float64"), rtol=1e-10, atol=1e-10, dtype="float64")
    truth = solver(START, times=times).numpy()[0]  # shared times: (1, T, 2)
    return times, truth, truth + NOISE * rng.normal(size=truth.shape)


def windows(rng: np.random.Generator, times: np.ndarray, observed: np.ndarray, count: int) -> tuple[list, np.ndarray]:
    """`count` windows of WINDOW consecutive observations: ([first state, times (count, WINDOW)], the observations)."""
    first = rng.integers(0, len(times) - WINDOW, count)
    index = first[:, None] + np.arange(WINDOW)
    return [observed[first], times[index]], observed[index]


def build(method: str) -> keras.Model:
    """[y(t_0), times] -> y at every time: `times` has no fixed length, so one model takes windows and the recording."""
    field = keras.Sequential([keras.layers.Dense(64, "tanh"), keras.layers.Dense(64, "tanh"), keras.layers.Dense(2)])
    if method == "TL-NODE":
        correction = keras_tlnode.MidpointCorrection(hidden_units=(16,))
        ode = keras_tlnode.TaylorLagrangeODE(field, num_steps=1, correction=correction, gradient_checkpointing=True)
    else:
        ode = keras_tlnode.FixedStepODE(field, method="rk4", num_steps=1, gradient_checkpointing=True)
    state, times = keras.Input((2,)), keras.Input((None,))
    return keras_tlnode.TLNODEModel([state, times], ode(state, times=times))


def fit(method: str, data: tuple, epochs: int, whole_steps: int) -> tuple[keras.Model, float]:
    """Windows first, then the whole recording; returns the model and the training time in seconds."""
    (times, observed), (x, y) = data
    model = build(method)
    began = time.perf_counter()
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, epochs * len(y) // 32)), "mse")
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    # The whole recording: one sample, so one rollout through every observation time per training step.
    model.compile(keras.optimizers.Adam(3e-4), "mse")
    model.fit([observed[:1], times[np.newaxis]], observed[np.newaxis], epochs=whole_steps, verbose=0)
    return model, time.perf_counter() - began


def plot(path: str, truth: np.ndarray, observed: np.ndarray, rollouts: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 6))
    axis.scatter(*observed.T, s=3, color="0.6", label="observations")
    axis.plot(*truth.T, color="black", lw=1, label="truth")
    for (method, states), style in zip(rollouts.items(), ("-", "--"), strict=False):
        axis.plot(*states.T, style, lw=1.5, label=f"{method}, rolled out from y(0)")
    axis.set(xlabel="θ", ylabel="dθ/dt", title="One recording of 1000 noisy observations at irregular times")
    axis.legend(loc="lower left")
    figure.savefig(path, dpi=120, bbox_inches="tight")


def main(epochs: int = 15, whole_steps: int = 30, windows_per_epoch: int = 2048, path: str | None = "trajectory.png"):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    times, truth, observed = record(rng)
    gaps = np.diff(times)
    print(f"{len(times)} observations over t in [0, {DURATION}], gaps {gaps.min():.1e} to {gaps.max():.2f}")
    data = ((times, observed.astype("float32")), windows(rng, times, observed.astype("float32"), windows_per_epoch))
    results, rollouts = {}, {}
    for method in ("TL-NODE", "RK4"):
        model, seconds = fit(method, data, epochs, whole_steps)
        rollout = model.predict([START.astype("float32"), times[np.newaxis]], verbose=0)[0]
        error = float(np.sqrt(np.mean((rollout - truth) ** 2)))
        rollouts[method] = rollout
        results[method] = {"seconds": seconds, "rollout_rmse": error}
        print(f"{method:8s} trained in {seconds:5.1f} s; rollout over the recording: RMSE {error:.3f}")
    still = float(np.sqrt(np.mean((truth - START) ** 2)))
    print(f"(a model that never moves: RMSE {still:.3f}; the observation noise: {NOISE})")
    if path:
        plot(path, truth, observed, rollouts)
        print(f"wrote {path}")
    return {"methods": results, "still_rmse": still}


if __name__ == "__main__":
    main()
