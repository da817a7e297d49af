"""Export for serving: a TensorFlow SavedModel that holds the inference path only.

`model.export(path)` (Keras's own export) works for models whose TL layers have
any order 0-6, with a dynamic batch size. `export_saved_model` writes the same kind of SavedModel and adds
what Keras's export cannot do for a TL-NODE:

- a `"trajectory"` endpoint, the states of the model's fixed-step ODE layer
  (`TaylorLagrangeODE` or `FixedStepODE`) at t_initial + 0, Δt, ..., duration, next to the usual `"serve"` endpoint;
- the model's own endpoints, if it has an `export_endpoints(input_signature)`
  method returning `{name: (function, input signature)}`: a
  `ContinuousNormalizingFlow` adds `"log_prob"` and `"sample"` so;
- one trace of the model per endpoint, where `model.export` traces it three
  times (its cost grows like 2^order).
"""

from __future__ import annotations

import os
import warnings

import keras
import tensorflow as tf

from keras_tlnode.compat import AutoTrackable, get_input_signature, make_tf_tensor_spec
from keras_tlnode.layers import StepwiseODE, TaylorLagrangeODE, layers_of
from keras_tlnode.validation import check_optional_int

SERVE = "serve"
TRAJECTORY = "trajectory"


def export_saved_model(
    model: keras.Model,
    filepath: str | os.PathLike,
    *,
    trajectory: bool | StepwiseODE = False,
    input_signature: list | None = None,
    chunk_size: int | None = None,
) -> None:
    """Writes `model` as a TensorFlow SavedModel for serving (TF Serving, `tf.saved_model.load`).

    The SavedModel holds the inference path only (`training=False`; no teacher,
    optimizer or loss) and loads without Keras or `keras_tlnode`. Its endpoints,
    each also a signature of the same name:

    - `"serve"`, also the `"serving_default"` signature: `model(x, training=False)`.
    - `"trajectory"`, with `trajectory=True`: the states of the model's
      `TaylorLagrangeODE` (or `FixedStepODE`) at t_initial + 0, Δt, ..., duration, shape
      `(batch, num_steps + 1, *state_shape)`, integrated from the states that the
      layer receives inside the model (the model's inputs, if nothing comes
      before it); layers after it are not applied.
    - the model's own, if it defines `export_endpoints(input_signature)`
      returning `{name: (function, its input signature)}`: for a
      `ContinuousNormalizingFlow`, `"log_prob"` and `"sample"`
      (`ContinuousNormalizingFlow.export_endpoints`).

    The loaded object's `variables`, `trainable_variables` and
    `non_trainable_variables` list the saved weights. Each endpoint is traced
    once (`model.export` traces a model three times, and a Taylor pass's
    trace grows like 2^order).

    Args:
        model: a built `keras.Model` (functional, `Sequential`, `TLNODEModel` or a
            subclass that has been called).
        filepath: directory to write, e.g. `"models/tlnode/1"`, the versioned
            layout TF Serving expects.
        trajectory: `True` for the model's only `TaylorLagrangeODE`, or the layer
            whose trajectory to serve. Needs a functional or `Sequential` model,
            in which the layer is called once.
        input_signature: list of `tf.TensorSpec` (or `keras.InputSpec`), as in
            `model.export`; default: the model's inputs with a dynamic batch size.
        chunk_size: deprecated, no longer needed (every order exports with a
            dynamic batch) and removed in 1.0; still runs the model on chunks
            of exactly this many samples (the last one padded), one chunk after
            the other, with a `DeprecationWarning`. Single-input models whose
            output is one tensor of the input's dtype, shaped `(batch, ...)`, only.

    Raises:
        TypeError: for a `model` that is not a `keras.Model`, or a `trajectory`
            that is neither a bool nor a fixed-step ODE layer.
        ValueError: for an unbuilt model, a `trajectory` that cannot be served
            (not exactly one fixed-step ODE layer for `True`, a layer not in the
            model, a model that is neither functional nor `Sequential`), or a
            `chunk_size` with a model it cannot serve.

    Example:

        >>> import tempfile, keras, tensorflow as tf, keras_tlnode
        >>> inputs = keras.Input((2,))
        >>> ode = keras_tlnode.TaylorLagrangeODE(keras.layers.Dense(2), num_steps=2)
        >>> model = keras.Model(inputs, ode(inputs))
        >>> path = tempfile.mkdtemp() + "/1"
        >>> keras_tlnode.export_saved_model(model, path, trajectory=True)
        >>> served = tf.saved_model.load(path)  # elsewhere: no Keras needed
        >>> sorted(served.signatures)
        ['serve', 'serving_default', 'trajectory']
        >>> tuple(served.serve(tf.ones((3, 2))).shape), tuple(served.trajectory(tf.ones((3, 2))).shape)
        ((3, 2), (3, 3, 2))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError("The model must be built (called once, or built with `keras.Input`) before export.")
    chunk_size = check_optional_int(chunk_size, "chunk_size")
    signature = keras.tree.map_structure(make_tf_tensor_spec, list(input_signature or get_input_signature(model)))
    layers = layers_of(model, StepwiseODE)
    if chunk_size is not None:
        _check_chunks(signature)

    endpoints = {SERVE: (_serving_function(model, chunk_size), signature)}
    if trajectory is not False:
        endpoints[TRAJECTORY] = (_serving_function(_trajectory_model(model, layers, trajectory), chunk_size), signature)
    # A model may serve more: `export_endpoints(signature)` → {name: (function, its input signature)}.
    extra = getattr(model, "export_endpoints", None)
    if callable(extra):
        endpoints.update(extra(signature))

    root = AutoTrackable()
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    root.non_trainable_variables = list(model.non_trainable_variables)
    signatures = {}
    for name, (function, specs) in endpoints.items():
        # One trace per endpoint: saving concrete functions does not retrace,
        # while saving a tf.function retraces it in the save context.
        concrete = tf.function(function, input_signature=specs, autograph=False).get_concrete_function()
        setattr(root, name, concrete)
        signatures[name] = concrete
    signatures["serving_default"] = signatures[SERVE]
    # The tf.Variables the functions capture (inside Keras's variables) must be
    # tracked themselves: TF Serving and other session-based loaders restore
    # only tracked variables, and `tf.saved_model.load` alone would not notice.
    root._captured_variables = _captured_variables(signatures.values())
    # Without the gradients of custom-gradient ops: serving needs none, and saving them
    # fails for the package's ConcatV2 gradient inside a Taylor pass (jvp_rules.py),
    # which TensorFlow's saver traces with the op's inputs in place of its gradients.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(root, os.fspath(filepath), signatures=signatures, options=options)


def _captured_variables(functions) -> list[tf.Variable]:
    found: dict[int, tf.Variable] = {}
    for function in functions:
        for variable in function.variables:
            found.setdefault(id(variable), variable)
    return list(found.values())


def _check_chunks(signature: list[tf.TensorSpec]) -> None:
    warnings.warn(
        "`chunk_size` is deprecated and will be removed in 1.0: every order now exports with a dynamic batch "
        "size, and the model runs on the whole batch without it.",
        DeprecationWarning,
        stacklevel=3,
    )
    single = len(signature) == 1 and isinstance(signature[0], tf.TensorSpec)
    if not single or not signature[0].shape.rank or not signature[0].shape[1:].is_fully_defined():
        raise ValueError(
            "`chunk_size` needs a model with one input tensor of a fully defined shape besides the batch "
            f"axis, got the input signature {signature}."
        )


def _trajectory_model(model: keras.Model, layers: list[StepwiseODE], trajectory: bool | StepwiseODE) -> keras.Model:
    """A model from `model`'s inputs to the trajectory of one of its fixed-step layers, sharing its weights."""
    if trajectory is True:
        if len(layers) != 1:
            raise ValueError(
                f"`trajectory=True` needs a model with exactly one TaylorLagrangeODE or FixedStepODE, found {len(layers)}; "
                "pass the layer itself as `trajectory`."
            )
        layer = layers[0]
    elif isinstance(trajectory, StepwiseODE):
        if not any(trajectory is candidate for candidate in layers):
            raise ValueError(f"`trajectory`: the layer {trajectory.name!r} is not part of the model.")
        layer = trajectory
    else:
        raise TypeError(
            f"`trajectory` must be a bool or a TaylorLagrangeODE or FixedStepODE of the model, got {trajectory!r}."
        )
    try:
        # A Sequential model has one input and no `input` of its own.
        inputs = model.inputs[0] if isinstance(model, keras.Sequential) else model.input
        state = layer.input
    except (AttributeError, ValueError, IndexError, TypeError) as error:
        raise ValueError(
            "The trajectory endpoint needs a functional or Sequential model in which the ODE layer "
            f"is called once (what feeds the layer must be known): {error}"
        ) from error
    # The same vector field and correction objects, so the same weights; only
    # the output changes. remainder_weight only acts in training.
    config = layer.get_config()
    config.update(vector_field=layer.vector_field, return_trajectory=True, name=f"{layer.name}_trajectory")
    if isinstance(layer, TaylorLagrangeODE):
        config.update(correction=layer.correction, remainder_weight=0.0)
    twin = type(layer)(**config)
    return keras.Model(inputs, twin(state), name=f"{model.name}_{TRAJECTORY}")


def _serving_function(resource: keras.Model, chunk_size: int | None):
    if chunk_size is None:
        return lambda *args: resource(*args, training=False)

    def chunked(x: tf.Tensor) -> tf.Tensor:
        count = tf.shape(x)[0]
        padding = (chunk_size - count % chunk_size) % chunk_size
        padded = tf.pad(x, [[0, padding]] + [[0, 0]] * (x.shape.rank - 1))
        chunks = tf.reshape(padded, [-1, chunk_size] + x.shape[1:].as_list())
        outputs = tf.map_fn(lambda chunk: resource(chunk, training=False), chunks)
        return tf.reshape(outputs, [-1] + outputs.shape[2:].as_list())[:count]

    return chunked
