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
    "MultiWorkerFit",
    "flatten_layers",
    "get_input_signature",
    "jvp_callbacks",
    "loss_tracker",
    "make_tf_tensor_spec",
    "multi_worker_logs",
    "set_initial_epoch",
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


def set_initial_epoch(model: keras.Model, epoch: int | None) -> None:
    """Makes the `fit` whose callbacks are starting begin at `epoch` (None: at its `initial_epoch`).

    `fit` reads the epoch to start at from the model after `on_train_begin`,
    which is how Keras's own BackupAndRestore resumes; no public API sets it,
    and Keras never clears it, so a later `fit` would start there too.
    """
    model._initial_epoch = epoch


# --- fit under MultiWorkerMirroredStrategy (keras-team/keras#20585) ----------------
# Keras 3's TensorFlow trainer fails twice there, for every model: the symbolic
# build averages a distributed batch across workers only to read its shapes, and
# the step logs are averaged over axis 0 as well as across workers, which a
# scalar lacks. MultiWorkerFit and multi_worker_logs supply both for TLNODEModel;
# tests/test_multi_worker.py keeps a plain keras.Model as a canary, expected to
# fail until Keras fixes it, when these two go.


def _in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """The condition of Keras's multi-worker branch (`_collective_all_reduce_multi_worker`)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


class MultiWorkerFit:
    """Mixin for a `keras.Model`: its symbolic build reads a local batch under multi-worker training.

    Keras's `fit` pulls one batch before the first step and, under a strategy,
    `strategy.reduce`s it, whose multi-worker implementation cannot take a
    nested batch. This worker's share of it has the same shapes and needs no
    communication.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if iterator is not None and _in_multi_worker_mode(strategy):
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: (
                        strategy.experimental_local_results(value)[0]
                        if isinstance(value, tf.distribute.DistributedValues)
                        else value
                    ),
                    next(batches),
                )
                break
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def multi_worker_logs(logs: dict) -> dict:
    """A step's logs as Keras's multi-worker reduction needs them: shape (1,) each.

    That reduction (`strategy.reduce("MEAN", value, axis=0)`) averages across
    workers and over axis 0; on a one-element vector it is the cross-worker mean
    of the scalar, which Keras then logs. Elsewhere the logs pass unchanged.
    """
    if not _in_multi_worker_mode(tf.distribute.get_strategy()):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
