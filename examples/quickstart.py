"""Quickstart: learn a pendulum with TL-NODE, compare with the adaptive baseline, save, serve.

    python examples/quickstart.py

Under a minute on 2 CPU cores. Every step is the public API of keras_tlnode.
"""

import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import keras_tlnode

DT = 0.1  # time between an observation and the next
EPOCHS = 40


def pendulum(x: np.ndarray) -> np.ndarray:
    """The true dynamics, unknown to the models: a damped pendulum (angle, angular velocity)."""
    return np.stack([x[:, 1], -np.sin(x[:, 0]) - 0.1 * x[:, 1]], axis=1)


def next_states(x: np.ndarray, substeps: int = 20) -> np.ndarray:
    """The state DT later, by RK4 with small substeps in float64 (the data's ground truth)."""
    h = DT / substeps
    for _ in range(substeps):
        k1 = pendulum(x)
        k2 = pendulum(x + h / 2 * k1)
        k3 = pendulum(x + h / 2 * k2)
        k4 = pendulum(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def vector_field() -> keras.Model:
    """f_θ: any Keras model whose output is shaped like its input."""
    return keras.Sequential([keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(2)])


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Trains with a callback, as any Keras model; returns the seconds it took."""
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    start = time.perf_counter()
    model.fit(x, y, batch_size=128, epochs=EPOCHS, verbose=0, callbacks=[keras.callbacks.ReduceLROnPlateau("loss")])
    return time.perf_counter() - start


def main() -> dict:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform([-2.5, -2.0], [2.5, 2.0], (4096, 2))
    y = next_states(x)
    x, y, x_test, y_test = (a.astype("float32") for a in (x[:3584], y[:3584], x[3584:], y[3584:]))

    # 1. A TL-NODE in a functional model: one Taylor-Lagrange step of order 1 over DT,
    #    with the learned midpoint correction Γ_φ, trained by TLNODEModel's two phases.
    inputs = keras.Input((2,))
    ode = keras_tlnode.TaylorLagrangeODE(
        vector_field(), order=1, duration=DT, correction=keras_tlnode.MidpointCorrection(), remainder_weight=1e-3
    )
    model = keras_tlnode.TLNODEModel(inputs, ode(inputs))
    tl_seconds = fit(model, x, y)

    # 2. The classic neural ODE on the same data: adaptive DormandPrince, same f_θ architecture.
    baseline_inputs = keras.Input((2,))
    baseline = keras_tlnode.DormandPrinceODE(vector_field(), duration=DT, rtol=1e-6, atol=1e-6)
    baseline_model = keras.Model(baseline_inputs, baseline(baseline_inputs))
    dp_seconds = fit(baseline_model, x, y)

    tl_mse = np.mean((model.predict(x_test, verbose=0) - y_test) ** 2)
    dp_mse = np.mean((baseline_model.predict(x_test, verbose=0) - y_test) ** 2)
    dp_nfe = int(baseline.solve(x_test).nfe)
    print(f"{'model':<16}{'test MSE':>10}{'train s':>9}{'f calls':>9}")
    print(f"{'TL-NODE':<16}{tl_mse:>10.2e}{tl_seconds:>9.1f}{ode.nfe:>9}")
    print(f"{'DormandPrince':<16}{dp_mse:>10.2e}{dp_seconds:>9.1f}{dp_nfe:>9}")
    # What the models improve on: predicting that nothing moves over DT.
    still_mse = np.mean((x_test - y_test) ** 2)

    with tempfile.TemporaryDirectory() as folder:
        # 3. Save and reload: the layers are registered Keras serializables.
        model.save(f"{folder}/pendulum.keras")
        restored = keras.models.load_model(f"{folder}/pendulum.keras")
        np.testing.assert_allclose(restored.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-6)

        # 4. Export for serving: a SavedModel that needs TensorFlow only (no Keras, no keras_tlnode).
        keras_tlnode.export_saved_model(model, f"{folder}/served/1", trajectory=True)
        served = tf.saved_model.load(f"{folder}/served/1")
        np.testing.assert_allclose(served.serve(x_test).numpy(), model.predict(x_test, verbose=0), atol=1e-5)
        trajectory_shape = tuple(served.trajectory(x_test[:3]).shape)
        print("reloaded and served: same predictions; trajectory shape", trajectory_shape)
    return {
        "tl_mse": float(tl_mse),
        "dp_mse": float(dp_mse),
        "still_mse": float(still_mse),
        "tl_nfe": ode.nfe,
        "dp_nfe": dp_nfe,
        "trajectory_shape": trajectory_shape,
    }


if __name__ == "__main__":
    main()
