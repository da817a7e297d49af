"""Forward-mode (JVP) rules, inlined into the graph, for the ops of usual vector fields.

`tf.autodiff.ForwardAccumulator` computes the JVP of an op by transposing the
op's gradient twice, inside a traced function per op; a nest of accumulators
then differentiates those function calls in turn. Three failures of the nested
pass come from there (measured on TensorFlow 2.21, docs/support.md):

- With a batch size unknown at trace time, the transposition's `ones_like` of an
  output creates a `Shape` op; its JVP function has no outputs, and TensorFlow's
  record of such a call fails (`IndexError` in `_DelayedRewriteGradientFunctions`)
  from depth 4 on, for every field.
- Under XLA, the gradients of broadcasting, reducing and concatenating ops
  compute integer tensors (reduction axes, `Tile` multiples, concat offsets)
  that leave one function and enter the next as compile-time constants. XLA's
  constant analysis cannot see that such an output depends on shapes only and
  demands every input of that function as a constant, back to the states and
  the weights: XLA compiles again for every new input and weight update, from
  depth 2 on.
- Under XLA, the gradient of a slice is an `XlaDynamicUpdateSlice`, which has no
  gradient: reverse mode over forward mode (training) of slicing or
  concatenating fields fails.

A rule here states the JVP directly (a linear op applied to the tangents, the
product rule, the derivative of an elementwise function), and `rules_inlined()`
makes TensorFlow emit it straight into the graph being traced instead of into a
function call: no gradient graph, no integer tensor crosses a function boundary,
and the outer accumulators differentiate the rule's ops with the rules again.
Ops without a rule keep TensorFlow's own JVP; ops with no floating output (shape
queries) get none, as TensorFlow's transposition would give, without a call.
Training differentiates the traced pass (a function call) in reverse mode; there
`ConcatV2` takes the gradient `_concat_gradient` (through
`GRADIENT_OVERRIDES`), whose axis and offsets are constants of its own graph.
Every rule is checked against TensorFlow's JVP or a closed form in
tests/test_jvp_rules.py, and whole fields against closed forms in
tests/test_taylor.py.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from keras_tlnode.compat import jvp_callbacks

# TensorFlow's JVP hook (compat.py). Without it `rules_inlined` changes nothing and
# forward mode is TensorFlow's own: orders 0-3 only (docs/support.md).
_CALLBACKS = jvp_callbacks()
INLINED = _CALLBACKS is not None
if _CALLBACKS is not None:
    _register_jvp, _tensorflow_jvp = _CALLBACKS

Tensors = Sequence[tf.Tensor]
# rule(attributes, inputs, outputs, tangents) -> output tangents. TensorFlow
# passes zeros as the tangent of a floating input that has none (a weight, a
# constant), and None for integer inputs (shapes, axes, indices). The rules of
# `ZERO_AWARE` ops receive None for those zeros too and leave their terms out.
Rule = Callable[[dict, Tensors, Tensors, Sequence], list]


def _mat_mul(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    flags = {"transpose_a": attributes["transpose_a"], "transpose_b": attributes["transpose_b"]}
    return [_product_rule(lambda a, b: tf.linalg.matmul(a, b, **flags), inputs, tangents)]


def _batch_mat_mul(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    flags = {"adjoint_a": attributes["adj_x"], "adjoint_b": attributes["adj_y"]}
    return [_product_rule(lambda a, b: tf.linalg.matmul(a, b, **flags), inputs, tangents)]


def _product_rule(
    product: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], inputs: Tensors, tangents: Sequence
) -> tf.Tensor:
    """The JVP of a bilinear `product(a, b)`: `product(ta, b) + product(a, tb)`, without the term of a zero tangent."""
    (a, b), (ta, tb) = inputs, tangents
    terms = [product(ta, b) if ta is not None else None, product(a, tb) if tb is not None else None]
    return _sum(terms)


def _sum(terms: Sequence[tf.Tensor | None]) -> tf.Tensor:
    """The sum, broadcasting, of the terms that are not None (at least one is)."""
    return functools.reduce(operator.add, [term for term in terms if term is not None])


def _broadcast(tangent: tf.Tensor, output: tf.Tensor) -> tf.Tensor:
    """`tangent` broadcast to `output`'s shape, as a sum with a zero of that shape would."""
    if tangent.shape.is_fully_defined() and tangent.shape == output.shape:
        return tangent
    return tf.broadcast_to(tangent, tf.shape(output))


def _add(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    return [_broadcast(_sum(tangents), outputs[0])]


def _sub(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    (ta, tb), (z,) = tangents, outputs
    if tb is None:
        return [_broadcast(ta, z)]
    return [_broadcast(-tb if ta is None else ta - tb, z)]


def _bias_add(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    (t_value, t_bias), (z,) = tangents, outputs
    if t_bias is None:
        return [t_value]
    value = tf.zeros_like(z) if t_value is None else t_value
    return [tf.raw_ops.BiasAdd(value=value, bias=t_bias, data_format=attributes["data_format"])]


def _real_div(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    (ta, tb), (_, b), (z,) = tangents, inputs, outputs
    if tb is None:
        return [ta / b]
    return [(-z * tb if ta is None else ta - z * tb) / b]


def _strided_slice(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    masks = ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")
    return [
        tf.raw_ops.StridedSlice(
            input=tangents[0], begin=inputs[1], end=inputs[2], strides=inputs[3], **{m: attributes[m] for m in masks}
        )
    ]


def _pow(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    (x, y), (tx, ty), (z,) = inputs, tangents, outputs
    base_term = tx * y * tf.pow(x, y - 1)
    if tf.get_static_value(y) is not None:
        # A constant exponent (`x**2`) has a zero tangent: leaving its term out
        # keeps each depth from doubling the nest's ops.
        return [base_term]
    # As TensorFlow's gradient of Pow: log x only where x > 0, zero elsewhere.
    positive = x > 0
    log_x = tf.where(positive, tf.math.log(tf.where(positive, x, tf.ones_like(x))), tf.zeros_like(x))
    return [base_term + ty * z * log_x]


def _einsum(attributes: dict, inputs: Tensors, outputs: Tensors, tangents: Sequence) -> list:
    # Multilinear: one term per operand, that operand replaced by its tangent.
    equation = _text(attributes["equation"])
    terms = [
        tf.einsum(equation, *inputs[:k], tangent, *inputs[k + 1 :]) if tangent is not None else None
        for k, tangent in enumerate(tangents)
    ]
    return [_sum(terms)]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


_TWO_OVER_ROOT_PI = 2 / math.sqrt(math.pi)
# tf.nn.selu's constants (Klambauer et al., 2017).
_SELU_SCALE, _SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717

RULES: dict[str, Rule] = {
    # Linear in their floating inputs: the op applied to the tangents.
    "AddV2": _add,
    "Add": _add,
    "AddN": lambda a, i, o, t: [tf.add_n([tangent for tangent in t if tangent is not None])],
    "Sub": _sub,
    "Neg": lambda a, i, o, t: [-t[0]],
    "BiasAdd": _bias_add,
    "BiasAddGrad": lambda a, i, o, t: [tf.raw_ops.BiasAddGrad(out_backprop=t[0], data_format=a["data_format"])],
    "Sum": lambda a, i, o, t: [tf.reduce_sum(t[0], i[1], keepdims=a["keep_dims"])],
    "Mean": lambda a, i, o, t: [tf.reduce_mean(t[0], i[1], keepdims=a["keep_dims"])],
    "ConcatV2": lambda a, i, o, t: [tf.concat(list(t[:-1]), i[-1])],
    "Pack": lambda a, i, o, t: [tf.stack(list(t), a["axis"])],
    "Slice": lambda a, i, o, t: [tf.slice(t[0], i[1], i[2])],
    "StridedSlice": _strided_slice,
    "GatherV2": lambda a, i, o, t: [tf.gather(t[0], i[1], axis=i[2], batch_dims=a["batch_dims"])],
    "Reshape": lambda a, i, o, t: [tf.reshape(t[0], i[1])],
    "ExpandDims": lambda a, i, o, t: [tf.expand_dims(t[0], i[1])],
    "Squeeze": lambda a, i, o, t: [tf.squeeze(t[0], a["squeeze_dims"] or None)],
    "Transpose": lambda a, i, o, t: [tf.transpose(t[0], i[1])],
    "Tile": lambda a, i, o, t: [tf.tile(t[0], i[1])],
    "BroadcastTo": lambda a, i, o, t: [tf.broadcast_to(t[0], i[1])],
    "Cast": lambda a, i, o, t: [tf.cast(t[0], a["DstT"])],
    "ZerosLike": lambda a, i, o, t: [tf.zeros_like(o[0])],
    "OnesLike": lambda a, i, o, t: [tf.zeros_like(o[0])],
    "Sign": lambda a, i, o, t: [tf.zeros_like(o[0])],
    # Bilinear: the product rule.
    "Mul": lambda a, i, o, t: [_product_rule(tf.multiply, i, t)],
    "RealDiv": _real_div,
    "MatMul": _mat_mul,
    "BatchMatMulV2": _batch_mat_mul,
    "Pow": _pow,
    # Elementwise functions and the gradient ops their own gradients use.
    "Tanh": lambda a, i, o, t: [t[0] * (1 - o[0] * o[0])],
    "TanhGrad": lambda a, i, o, t: [t[1] * (1 - i[0] * i[0]) - 2 * i[1] * i[0] * t[0]],
    "Sigmoid": lambda a, i, o, t: [t[0] * o[0] * (1 - o[0])],
    "SigmoidGrad": lambda a, i, o, t: [t[1] * i[0] * (1 - i[0]) + i[1] * (1 - 2 * i[0]) * t[0]],
    "Relu": lambda a, i, o, t: [tf.raw_ops.ReluGrad(gradients=t[0], features=i[0])],
    "ReluGrad": lambda a, i, o, t: [tf.raw_ops.ReluGrad(gradients=t[0], features=i[1])],
    "Exp": lambda a, i, o, t: [t[0] * o[0]],
    "Sin": lambda a, i, o, t: [t[0] * tf.cos(i[0])],
    "Cos": lambda a, i, o, t: [-t[0] * tf.sin(i[0])],
    "Log": lambda a, i, o, t: [t[0] / i[0]],
    "Square": lambda a, i, o, t: [2 * i[0] * t[0]],
    "Sqrt": lambda a, i, o, t: [t[0] / (2 * o[0])],
    "Softplus": lambda a, i, o, t: [t[0] * tf.sigmoid(i[0])],
    "SelectV2": lambda a, i, o, t: [tf.where(i[0], t[1], t[2])],
    "Abs": lambda a, i, o, t: [t[0] * tf.sign(i[0])],
    "Atan": lambda a, i, o, t: [t[0] / (1 + i[0] * i[0])],
    "Log1p": lambda a, i, o, t: [t[0] / (1 + i[0])],
    "Rsqrt": lambda a, i, o, t: [-0.5 * t[0] * o[0] * o[0] * o[0]],
    "Softsign": lambda a, i, o, t: [t[0] / ((1 + tf.abs(i[0])) * (1 + tf.abs(i[0])))],
    "Softmax": lambda a, i, o, t: [o[0] * (t[0] - tf.reduce_sum(o[0] * t[0], -1, keepdims=True))],
    # As TensorFlow's gradients: ties go to the first input.
    "Maximum": lambda a, i, o, t: [tf.where(i[0] >= i[1], t[0], t[1])],
    "Minimum": lambda a, i, o, t: [tf.where(i[0] <= i[1], t[0], t[1])],
    "SquaredDifference": lambda a, i, o, t: [2 * (i[0] - i[1]) * (t[0] - t[1])],
    "Cumsum": lambda a, i, o, t: [tf.math.cumsum(t[0], i[1], exclusive=a["exclusive"], reverse=a["reverse"])],
    "Einsum": _einsum,
    "Elu": lambda a, i, o, t: [tf.raw_ops.EluGrad(gradients=t[0], outputs=o[0])],
    "EluGrad": lambda a, i, o, t: [tf.where(i[1] < 0, t[0] * (i[1] + 1) + i[0] * t[1], t[0])],
    "Selu": lambda a, i, o, t: [tf.raw_ops.SeluGrad(gradients=t[0], outputs=o[0])],
    "SeluGrad": lambda a, i, o, t: [
        tf.where(i[1] < 0, t[0] * (i[1] + _SELU_SCALE * _SELU_ALPHA) + i[0] * t[1], t[0] * _SELU_SCALE)
    ],
    "LeakyRelu": lambda a, i, o, t: [tf.raw_ops.LeakyReluGrad(gradients=t[0], features=i[0], alpha=a["alpha"])],
    "LeakyReluGrad": lambda a, i, o, t: [tf.raw_ops.LeakyReluGrad(gradients=t[0], features=i[1], alpha=a["alpha"])],
    "Erf": lambda a, i, o, t: [t[0] * _TWO_OVER_ROOT_PI * tf.exp(-i[0] * i[0])],
    "Erfc": lambda a, i, o, t: [-t[0] * _TWO_OVER_ROOT_PI * tf.exp(-i[0] * i[0])],
}


@tf.RegisterGradient("KerasTLNodeConcatV2")
def _concat_gradient(op: tf.Operation, grad: tf.Tensor) -> list:
    """ConcatV2's gradient with the axis and the sizes along it as constants of the gradient's own graph.

    TensorFlow's own gradient reads the axis from the forward op and computes
    the offsets with `ConcatOffset`; the gradient of the traced pass (a function
    call) receives that axis as an input, which XLA cannot treat as the
    compile-time constant `ConcatOffset` needs.
    """
    values, static_axis = op.inputs[:-1], tf.get_static_value(op.inputs[-1])
    if static_axis is None or grad.shape.rank is None:  # not from a Python axis: TensorFlow's way, in graph only
        axis = op.inputs[-1] % tf.rank(grad)
        sizes: list | tf.Tensor = tf.stack([tf.shape(v)[axis] for v in values])
    else:
        axis = int(static_axis) % grad.shape.rank
        sizes = [v.shape[axis] if v.shape[axis] is not None else tf.shape(v)[axis] for v in values]
        if any(isinstance(size, tf.Tensor) for size in sizes):
            sizes = tf.stack(sizes)
    # Differentiated again (a flow's step Jacobian, then training), the split's own
    # gradient must keep its axis a constant of its graph too.
    with tf.compat.v1.get_default_graph().gradient_override_map(GRADIENT_OVERRIDES):
        return [*tf.split(grad, sizes, axis=axis), None]


@tf.RegisterGradient("KerasTLNodeSplitV")
def _split_gradient(op: tf.Operation, *grads: tf.Tensor) -> list:
    """SplitV's gradient (a concat of the output gradients) with the axis a constant of the gradient's own graph.

    TensorFlow's own passes the forward op's axis tensor to the concat; in the
    gradient of a gradient of the traced pass that tensor crosses a function
    boundary, and XLA cannot treat it as the compile-time constant ConcatV2 needs.
    """
    value, static_axis = op.inputs[0], tf.get_static_value(op.inputs[2])
    rank = value.shape.rank
    if static_axis is None or rank is None:  # TensorFlow's way, in graph only
        axis: int | tf.Tensor = op.inputs[2]
    else:
        axis = int(static_axis) % rank
    dense = [tf.zeros_like(output) if g is None else g for g, output in zip(grads, op.outputs, strict=True)]
    with tf.compat.v1.get_default_graph().gradient_override_map(GRADIENT_OVERRIDES):
        return [tf.concat(dense, axis=axis), None, None]


# Rules that take None for a zero tangent and leave its term out (`_jvp`).
ZERO_AWARE = frozenset(
    {"AddV2", "Add", "AddN", "Sub", "BiasAdd", "Mul", "RealDiv", "MatMul", "BatchMatMulV2", "Einsum"}
)

# Ops whose gradient inside the traced pass is the package's (`Graph.gradient_override_map`);
# each override creates its gradient's ops under the same map, so any order of differentiation keeps them.
GRADIENT_OVERRIDES = {"ConcatV2": "KerasTLNodeConcatV2", "SplitV": "KerasTLNodeSplitV"}


def _jvp(
    op_name: str, attr_tuple: tuple, inputs: Tensors, outputs: Tensors, tangents: Sequence, use_batch: bool = False
) -> list:
    """TensorFlow's JVP callback, with the rules emitted inline while tracing."""
    if use_batch or tf.executing_eagerly():
        # Eagerly, inline ops would recurse; batched tangents need TensorFlow's vectorisation.
        return _tensorflow_jvp(op_name, attr_tuple, inputs, outputs, tangents, use_batch)
    if not any(output.dtype.is_floating or output.dtype.is_complex for output in outputs):
        return [None] * len(outputs)
    zero = [tangent is not None and _is_zero(tangent) for tangent in tangents]
    if all(zero[k] for k, tangent in enumerate(tangents) if tangent is not None):
        # Linear in the tangents: zero in, zero out, as a zero the next op recognises.
        return [tf.zeros_like(output) if output.dtype.is_floating else None for output in outputs]
    rule = RULES.get(op_name)
    if rule is None:
        return _tensorflow_jvp(op_name, attr_tuple, inputs, outputs, tangents, use_batch)
    if op_name in ZERO_AWARE:
        tangents = [None if is_zero else tangent for tangent, is_zero in zip(tangents, zero, strict=True)]
    return rule(dict(zip(attr_tuple[::2], attr_tuple[1::2], strict=True)), inputs, outputs, tangents)


def _is_zero(tangent: tf.Tensor) -> bool:
    """Whether `tangent` is a zero known while tracing: TensorFlow's for a weight or a constant, or a rule's.

    A weight's tangent is zero at every depth of the nest; the product rule's
    term for it (`x @ 0` for every layer's kernel) would double a field's
    matmuls, and XLA does not remove it (measured: 9 dots instead of 6 for
    order 1 of a two-hidden-layer MLP).
    """
    op = tangent.op
    if op.type == "ZerosLike":
        return True
    if op.type == "Fill":
        value = tf.get_static_value(op.inputs[1])
    elif op.type == "Const":
        value = tf.get_static_value(tangent)
    else:
        return False
    return value is not None and not np.any(value)


@contextlib.contextmanager
def rules_inlined() -> Iterator[None]:
    """Within this block, forward-mode JVPs use `RULES`, inline (see the module docstring).

    TensorFlow holds one JVP callback per process, with no public API to set it
    (`forwardprop` registers `_jvp_dispatch` at import); the block sets ours and
    puts TensorFlow's back, so forward mode outside `taylor_coefficients` stays
    TensorFlow's own. Being process-wide, the callback also serves another
    thread's forward mode while a pass is traced; every rule gives the value
    TensorFlow's own JVP gives, so that thread's results do not change. On a
    TensorFlow without these internals the block changes nothing: orders 0-3
    then work as TensorFlow's own forward mode does (docs/support.md).
    """
    if not INLINED:
        yield
        return
    global _open_blocks
    with _blocks_lock:  # replicas of a distribution strategy trace in threads of their own
        _open_blocks += 1
        _register_jvp(_jvp)
    try:
        yield
    finally:
        with _blocks_lock:
            _open_blocks -= 1
            if not _open_blocks:  # the last block out (a field may take Taylor coefficients itself)
                _register_jvp(_tensorflow_jvp)


# Blocks open in any thread: TensorFlow's callback is restored when none is.
_open_blocks = 0
_blocks_lock = threading.Lock()
