"""One helper that checks every layer of the package the same way, as Keras's own tests do.

`check_layer` asserts, for a layer factory and an input shape: the symbolic and
eager output shapes (dynamic batch), the config round trip, the `.keras` round
trip of a model holding the layer; it returns the loss of a small `fit`
before and after training, for the caller to assert that it went down.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import keras
import numpy as np


def check_layer(
    make_layer: Callable[[], keras.layers.Layer],
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    tmp_path: os.PathLike,
    rtol: float = 1e-6,
) -> tuple[float, float]:
    """Runs every shared check; `input_shape`/`output_shape` exclude the batch axis.

    `rtol` bounds the gap between two evaluations of the same weights (clone,
    reload): float32 rounding for fixed-step layers; an adaptive solver turns a
    last-bit difference into a different step sequence, so give it its tolerance.

    Returns the (before, after) loss of 20 epochs of `fit` on a small problem.
    """
    layer = make_layer()
    inputs = keras.Input(input_shape)
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None,) + output_shape
    assert tuple(layer.compute_output_shape((None,) + input_shape)) == (None,) + output_shape
    model = keras.Model(inputs, outputs)

    rng = np.random.default_rng(0)
    for batch in (1, 5):
        x = rng.uniform(-0.5, 0.5, (batch,) + input_shape).astype("float32")
        assert model(x).shape == (batch,) + output_shape
        assert model.predict(x, verbose=0).shape == (batch,) + output_shape

    x = rng.uniform(-0.5, 0.5, (16,) + input_shape).astype("float32")
    _check_config_round_trip(layer, x, rtol)
    _check_saved_model_round_trip(model, x, tmp_path, rtol)
    return _fit_losses(make_layer, x, output_shape)


def _check_config_round_trip(layer: keras.layers.Layer, x: np.ndarray, rtol: float) -> None:
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(clone(x), layer(x), rtol=rtol, atol=1e-7)


def _check_saved_model_round_trip(model: keras.Model, x: np.ndarray, tmp_path: os.PathLike, rtol: float) -> None:
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    # TF's CPU kernels are not bitwise deterministic (two predicts of one model
    # differ in the last bit), so "identical" means equal to float32 rounding.
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=rtol, atol=1e-7)


def _fit_losses(
    make_layer: Callable[[], keras.layers.Layer], x: np.ndarray, output_shape: tuple[int, ...]
) -> tuple[float, float]:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(x.shape[1:]), make_layer()])
    target = 0.5 * np.tanh(np.resize(x, (len(x),) + output_shape)).astype("float32")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    before = model.evaluate(x, target, verbose=0)
    model.fit(x, target, epochs=20, batch_size=8, verbose=0)
    return before, model.evaluate(x, target, verbose=0)
