"""Taylor coefficients of an ODE solution by nested forward-mode differentiation.

For `dx/dt = f(x)` the solution through `x` has time derivatives

    x^(1) = f(x),   x^(2) = J_f(x) f(x),   x^(i+1) = D[x^(i)](x) · f(x).

Each level of a stack of `tf.autodiff.ForwardAccumulator`s differentiates the
level inside it along the direction `f(x)`. Because every tangent `f(x)` is itself
computed under the outer accumulators, its own dependence on `x` is
differentiated too, so one nested pass of depth `order` yields all of
`x^(1) .. x^(order+1)`: the lower orders are by-products of the highest one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Callable
from typing import TypeVar

import keras
import tensorflow as tf

from keras_tlnode.jvp_rules import GRADIENT_OVERRIDES, rules_inlined
from keras_tlnode.validation import check_int

MAX_ORDER = 6
# TensorFlow's own nested forward mode holds for every op up to this depth
# (measured on TF 2.21). Deeper, the package's forward-mode rules (jvp_rules.py)
# carry every op measured to order 6 (docs/support.md, "Support matrix"); should
# TensorFlow still fail for an op without a rule, the failure is reported as a
# NotImplementedError naming the field's line rather than a raw error.
GUARANTEED_ORDER = 3

# Errors TensorFlow's nested JVP machinery raised at depth 4-6 before the rules
# (e.g. "Cannot convert a partially known TensorShape", "returned a result with
# an exception set", an IndexError recording a function with no outputs).
_NESTED_FORWARD_ERRORS = (ValueError, TypeError, IndexError, SystemError, tf.errors.OpError)

VectorField = Callable[..., tf.Tensor]
T = TypeVar("T")


def taylor_coefficients(fn: VectorField, x: tf.Tensor, order: int, t: tf.Tensor | None = None) -> tf.Tensor:
    """Time derivatives `x^(1) .. x^(order+1)` of the solution of `dx/dt = fn(x)`.

    Entry `i` of the result is the unnormalised (i+1)-th time derivative at the
    point `x` (t = 0 of the local solution): entry 0 is `fn(x)`, entry 1 is
    `J_fn(x) fn(x)`, and so on. The Taylor polynomial of the solution is
    `x(Δt) ≈ x + Σ_i Δt^(i+1)/(i+1)! · result[i]`.

    All entries come from one pass through `order` nested
    `tf.autodiff.ForwardAccumulator`s, in which `fn` is called `order + 1` times.
    The pass runs as a function call of its own (traced anew on each eager call;
    wrap eager loops in `tf.function`), which keeps its values right eagerly
    (tensorflow#127753) and its gradients right inside graphs
    (docs/support.md, "Known TensorFlow traps we handle").

    Args:
        fn: maps a batch of states to their time derivatives, same shape and
            dtype as `x`. With `t`, it is called as `fn(x, t)`.
        x: floating tensor of shape `(batch, ...)`: vectors, images, any rank.
        order: highest derivative index to return, an int in [0, 6], at any
            batch size (known or not at trace time). Orders 0-3 work for every
            op; every op measured works to order 6, but an op without a
            forward-mode rule of the package traces slowly at orders 4-6
            (docs/support.md, "Support matrix").
        t: optional time tensor, for non-autonomous fields `dx/dt = fn(x, t)`.
            It advances at unit rate (dt/dt = 1) and is broadcast by `fn` itself.

    Returns:
        A tensor of shape `(order + 1, *x.shape)`: entry i is x^(i+1).

    Raises:
        TypeError: for a non-floating `x` or a non-int `order`.
        ValueError: for an `order` outside [0, 6], or an `fn` whose output is
            not shaped like its input.
        NotImplementedError: should TensorFlow's nested forward mode fail for
            an op of `fn` at orders 4-6; the message names the op's line.

    Example:

        >>> import tensorflow as tf, keras_tlnode
        >>> A = tf.constant([[0.0, 1.0], [-1.0, 0.0]])
        >>> c = keras_tlnode.taylor_coefficients(lambda x: x @ tf.transpose(A), tf.ones((1, 2)), 2)
        >>> c.shape
        TensorShape([3, 1, 2])
        >>> c[:, 0].numpy().tolist()  # x^(1) = Ax, x^(2) = A²x, x^(3) = A³x at x = (1, 1)
        [[1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]]
    """
    order = check_int(order, "order", 0, MAX_ORDER)
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"`x` must have a floating dtype, got {x.dtype.name}.")
    # The pass always runs as its own function call, for two TensorFlow bugs:
    # nested forward mode is wrong eagerly (tensorflow#127753), and a GradientTape
    # recording it op by op inside a graph returns wrong gradients from order 2
    # on; the gradient of a function call, built from its graph, is right.
    # Inside another such call (`traced_pass`), it runs inline: that call's
    # graph then holds its ops, which an enclosing forward mode differentiates
    # with the rules too.
    if getattr(_TRACING, "inside", False):
        return _accumulate(fn, x, order, t)
    return traced_pass(_accumulate, fn, x, order, t)


_TRACING = threading.local()


def traced_pass(body: Callable[..., T], *args: object) -> T:
    """`body(*args)` as a function call of its own, traced with the package's forward-mode rules.

    The rules (jvp_rules.py) are emitted inline and ConcatV2 and SplitV take the
    package's gradients (`GRADIENT_OVERRIDES`): without them, depth 4 fails for
    an unknown batch size and XLA compiles again at every call from depth 2, or
    cannot compile the gradient of a JVP at all. Taylor passes inside `body`
    run inline, so a forward mode around them (a flow's step Jacobian) sees
    their ops rather than a call. A fresh tf.function per call holds no
    reference to `body` or `args` after it returns.
    """

    def _traced_pass(*args: object) -> T:
        with tf.compat.v1.get_default_graph().gradient_override_map(GRADIENT_OVERRIDES):
            outer, _TRACING.inside = getattr(_TRACING, "inside", False), True
            try:
                return body(*args)
            finally:
                _TRACING.inside = outer

    with rules_inlined():
        return tf.function(_traced_pass, autograph=False)(*args)


def _accumulate(fn: VectorField, x: tf.Tensor, order: int, t: tf.Tensor | None) -> tf.Tensor:
    def field(state: tf.Tensor) -> tf.Tensor:
        derivative = fn(state) if t is None else fn(state, t)
        if not derivative.shape.is_compatible_with(state.shape):
            raise ValueError(
                f"taylor_coefficients: `fn` must return its input's shape (the time derivative of the state), "
                f"got shape {derivative.shape} for `x` of shape {state.shape}."
            )
        return derivative

    primals = (x,) if t is None else (x, t)
    depth = 0
    try:
        with contextlib.ExitStack() as stack:
            accumulators = []
            for depth in range(order):  # noqa: B007 (the error report reads the depth reached)
                tangents = _tangents(field(x), t)
                accumulators.append(stack.enter_context(tf.autodiff.ForwardAccumulator(primals, tangents)))
            depth = order
            derivative = field(x)
            coefficients = [derivative]
            for accumulator in reversed(accumulators):
                derivative = accumulator.jvp(derivative, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                coefficients.append(derivative)
    except _NESTED_FORWARD_ERRORS as error:
        if depth <= GUARANTEED_ORDER:
            raise
        raise NotImplementedError(_unsupported_message(order, depth, error)) from error
    return tf.stack(coefficients)


def _tangents(fx: tf.Tensor, t: tf.Tensor | None) -> tuple[tf.Tensor, ...]:
    return (fx,) if t is None else (fx, tf.ones_like(t))


def _unsupported_message(order: int, depth: int, error: Exception) -> str:
    frame = _user_frame(error)
    where = f" in `{frame.line}` ({frame.filename}:{frame.lineno})" if frame else ""
    return (
        f"taylor_coefficients(order={order}): TensorFlow's nested forward mode fails at depth {depth} "
        f"for an op of the vector field{where}: {type(error).__name__}: {error}. Orders 0-{GUARANTEED_ORDER} "
        "work for every op; at higher orders rewrite that op with ops that have a forward-mode rule in "
        "keras_tlnode/jvp_rules.py (products, matmuls, tanh, ...) or lower `order` (keras_tlnode docs/support.md, "
        "'Support matrix')."
    )


def _user_frame(error: Exception) -> traceback.FrameSummary | None:
    """The innermost traceback frame outside TensorFlow, Keras and this package."""
    library_dirs = tuple(os.path.dirname(path) + os.sep for path in (tf.__file__, keras.__file__, __file__))
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(library_dirs)]
    return frames[-1] if frames else None
