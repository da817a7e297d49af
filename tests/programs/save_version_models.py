"""Writes the `.keras` files that tests/test_saved_versions.py loads: a model of every saved kind, as this
version saves it, with its inputs and predictions.

Run once per release, from the repository root, to add that version's files (never to rewrite an old
version's: they are what users of that version have on disk):

    python tests/programs/save_version_models.py 0.2
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np

import keras_tlnode


class Field(keras.layers.Layer):
    """f(z, t) for the flow: a dense layer of [z, t]."""

    def build(self, input_shape: list) -> None:
        self.dense = keras.layers.Dense(2)
        self.dense.build((None, 3))

    def call(self, inputs: list):
        z, t = inputs
        return self.dense(keras.ops.concatenate([z, t], axis=-1))


keras.saving.register_keras_serializable(package="keras_tlnode_tests")(Field)


def models() -> dict[str, keras.Model]:
    """A corrected TLNODEModel and a flow, compiled, and a FixedStepODE model with per-sample spans and trajectory."""
    keras.utils.set_random_seed(0)
    x = keras.Input((2,))
    ode = keras_tlnode.TaylorLagrangeODE(
        keras.layers.Dense(2), order=2, num_steps=2, duration=0.1, correction=keras_tlnode.MidpointCorrection()
    )
    corrected = keras_tlnode.TLNODEModel(x, ode(x))
    corrected.compile(optimizer="adam", loss="mse", correction_every=3)
    state, duration = keras.Input((2,)), keras.Input((1,))
    fixed = keras.Model(
        [state, duration],
        keras_tlnode.FixedStepODE(keras.layers.Dense(2), method="rk4", num_steps=3, return_trajectory=True)(
            [state, duration]
        ),
    )
    flow = keras_tlnode.ContinuousNormalizingFlow(Field(), num_steps=2, correction=keras_tlnode.MidpointCorrection())
    flow.compile(optimizer="adam")
    return {"corrected": corrected, "fixed_step": fixed, "flow": flow}


def inputs(name: str) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (5, 2)).astype("float32")
    return [x, rng.uniform(0.1, 0.5, (5, 1)).astype("float32")] if name == "fixed_step" else [x]


def main(version: str) -> None:
    directory = Path(__file__).resolve().parent.parent / "data" / f"saved_{version.replace('.', '_')}"
    if directory.exists():
        raise SystemExit(f"{directory} exists: a version's saved files are never rewritten.")
    directory.mkdir(parents=True)
    for name, model in models().items():
        arguments = inputs(name)
        if model.compiled:
            # Trained a little, so that the optimizers' states are saved too.
            x = np.random.default_rng(2).uniform(-1, 1, (32, 2)).astype("float32")
            model.fit(x, None if name == "flow" else 0.9 * x, batch_size=8, epochs=1, verbose=0)
        outputs = model.predict(arguments if len(arguments) > 1 else arguments[0], verbose=0)
        model.save(directory / f"{name}.keras")
        np.savez(directory / f"{name}.npz", *arguments, outputs=outputs)
        print(f"wrote {directory / name}.keras")


if __name__ == "__main__":
    main(sys.argv[1])
