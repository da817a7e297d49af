"""Every use of a Keras or TensorFlow internal, each with why no public API serves.

The rest of the package uses public APIs only; tests/test_compat.py fails if a
module other than this one reaches `keras.src`, `tf.__internal__`, a `pywrap_*`
module or a private attribute of a Keras or TensorFlow object. When a release
moves one of these, this module is the one place to adapt.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

# The input signature `Model.export` infers from a model, as TensorSpecs; the
# public `keras.export.ExportArchive` needs it spelled out (export.py).
from keras.src.export.export_utils import get_input_signature, make_tf_tensor_spec

# The class that `keras.Model(inputs, outputs)` builds; Keras does not export it,
# and a functional TLNODEModel has to derive from it (training.py, `__new__`).
from keras.src.models.functional import Functional

# The root object of a SavedModel with settable `variables` lists, as Keras's
# ExportArchive writes it; `tf.Module`, the public trackable, makes them read-only.
AutoTrackable = tf.__internal__.tracking.AutoTrackable

__all__ = [
    "AutoTrackable",
    "Functional",
    "flatten_layers",
    "get_input_signature",
    "jvp_callbacks",
    "loss_tracker",
    "make_tf_tensor_spec",
]


def flatten_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer inside `layer`, however deeply nested, once each.

    `Layer.layers` is public only on models and lists direct children; a layer
    held by a custom layer's attribute (the vector field inside an ODE layer)
    is reached only by Keras's own traversal.
    """
    return list(layer._flatten_layers(include_self=False, recursive=True))


def loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    """The compiled model's `loss` metric, which Keras's own `train_step` updates.

    A `train_step` that logs the loss as Keras does (one `loss` entry, reset
    with the other metrics) needs this tracker; Keras gives no public handle.
    """
    return model._loss_tracker


def jvp_callbacks() -> tuple[Callable, Callable] | None:
    """(register, TensorFlow's own callback) of TensorFlow's process-wide JVP hook, or None.

    TensorFlow computes a forward-mode JVP through one callback per process,
    which `forwardprop` registers at import, with no public API to replace it;
    jvp_rules.py swaps it for its inlined rules while a Taylor pass is traced.
    None on a TensorFlow without these internals: the package then uses
    TensorFlow's own forward mode (orders 0-3, docs/support.md).
    """
    try:
        from tensorflow.python import pywrap_tfe
        from tensorflow.python.eager import forwardprop

        return pywrap_tfe.TFE_Py_RegisterJVPFunction, forwardprop._jvp_dispatch
    except (ImportError, AttributeError):
        return None
