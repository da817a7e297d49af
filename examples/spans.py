"""Per-sample time spans: learn a series observed at irregular times, each pair over its own gap.

    python examples/spans.py

Sensor logs and clinical records are sampled irregularly: the time between an
observation and the next varies. Every ODE layer of keras_tlnode called on a
list `[x, duration]` integrates each sample over its own duration, in
`num_steps` steps of Δt_i = duration_i / num_steps, so one model learns from,
and predicts over, every gap. Under half a minute on 2 CPU cores.
"""

import keras
import numpy as np

import keras_tlnode

DAMPING, FREQUENCY = 0.3, 2.0  # the true dynamics: a spiral into the origin
EPOCHS = 30


def exact_flow(x: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """The true state each sample's gap later: x(t + Δ) = exp(-aΔ) R(ωΔ) x(t), R a rotation (unknown to the model).

    The flow of dx/dt = A x with A = [[-a, -ω], [ω, -a]], a = DAMPING, ω = FREQUENCY.
    """
    cos, sin = np.cos(FREQUENCY * gaps), np.sin(FREQUENCY * gaps)
    rotated = np.stack([cos * x[:, 0] - sin * x[:, 1], sin * x[:, 0] + cos * x[:, 1]], axis=1)
    return np.exp(-DAMPING * gaps)[:, np.newaxis] * rotated


def observe(rng: np.random.Generator, series: int, length: int = 8) -> tuple[np.ndarray, ...]:
    """`series` series of `length` observations at random times, as pairs: (state, gap) -> the state a gap later."""
    x = rng.uniform(-2.0, 2.0, (series, 2))
    states, gaps, targets = [], [], []
    for _ in range(length - 1):
        gap = 0.02 + rng.exponential(0.15, series)  # from 0.02 to about 1 time unit
        following = exact_flow(x, gap)
        states.append(x)
        gaps.append(gap)
        targets.append(following)
        x = following
    return tuple(np.concatenate(parts).astype("float32") for parts in (states, gaps, targets))


def build_model() -> keras.Model:
    """[state, gap] -> the state a gap later: one TL-NODE layer, called with one duration per sample."""
    state, gap = keras.Input((2,), name="state"), keras.Input((), name="gap")  # gap: shape (batch,)
    field = keras.Sequential([keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(2)])  # f_θ
    ode = keras_tlnode.TaylorLagrangeODE(
        field,
        num_steps=2,  # per sample: two steps of its own gap / 2
        # Γ_φ takes each sample's Δt as a feature, so that one correction serves every step size;
        # TLNODEModel's teacher solves each state over its own Δt.
        correction=keras_tlnode.MidpointCorrection(use_step_size=True),
    )
    model = keras_tlnode.TLNODEModel([state, gap], ode([state, gap]))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    return model


def main(epochs: int = EPOCHS, series: int = 512) -> dict:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, gap, y = observe(rng, series)
    test_x, test_gap, test_y = observe(rng, 128)
    print(f"{len(x)} training pairs, gaps from {gap.min():.2f} to {gap.max():.2f} (mean {gap.mean():.2f})")

    model = build_model()

    def test_mse(gaps: np.ndarray) -> float:
        prediction = model.predict([test_x, gaps], batch_size=len(test_x), verbose=0)
        return float(np.mean((prediction - test_y) ** 2))

    # 1. Train as any Keras model on two inputs: the states and their gaps.
    untrained = test_mse(test_gap)
    model.fit([x, gap], y, batch_size=128, epochs=epochs, verbose=0)
    trained = test_mse(test_gap)
    # The same trained model, told one mean gap for every pair: what a model of one span would get.
    one_span = test_mse(np.full_like(test_gap, gap.mean()))
    print(
        f"test MSE: untrained {untrained:.2e}, trained {trained:.2e}; with the mean gap for every pair {one_span:.2e}"
    )

    # 2. One model for every gap: the error on short and on long gaps.
    prediction = model.predict([test_x, test_gap], batch_size=len(test_x), verbose=0)
    errors = np.mean((prediction - test_y) ** 2, axis=1)
    for low, high in ((0.0, 0.1), (0.1, 0.3), (0.3, np.inf)):
        chosen = (test_gap >= low) & (test_gap < high)
        print(f"  gaps in [{low:.1f}, {high:.1f}): {chosen.sum():4d} pairs, MSE {errors[chosen].mean():.2e}")

    # 3. Forecast a new series on an irregular grid: each call advances every series by its own next gap.
    start = rng.uniform(-2.0, 2.0, (4, 2)).astype("float32")
    state, truth = start, start.astype("float64")
    for gaps in rng.uniform(0.05, 0.5, (10, 4)).astype("float32"):
        state = model.predict([state, gaps], verbose=0)
        truth = exact_flow(truth, gaps.astype("float64"))
    drift = float(np.max(np.abs(state - truth)))
    print(f"10 irregular steps ahead, 4 series: max |forecast - truth| = {drift:.3f}")
    return {"untrained": untrained, "trained": trained, "one_span": one_span, "forecast_error": drift}


if __name__ == "__main__":
    main()
