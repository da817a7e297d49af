"""Each forward-mode rule gives the JVP TensorFlow's own transposition gives (or a closed form), to second order, inline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf

from keras_tlnode.jvp_rules import RULES, ZERO_AWARE, rules_inlined

RNG = np.random.default_rng(0)


def tensor(*shape: int, positive: bool = False) -> tf.Tensor:
    values = RNG.uniform(0.5, 1.5, shape) if positive else RNG.normal(size=shape)
    return tf.constant(values, tf.float64)


X, Y = tensor(3, 4), tensor(3, 4)
POSITIVE = tensor(3, 4, positive=True)
SQUARE = tensor(4, 4)
CUBE = tensor(2, 3, 4)
BIAS = tensor(4)

# op name: (a function of floating primals made of that op, the primals)
CASES: dict[str, tuple[Callable[..., tf.Tensor], tuple[tf.Tensor, ...]]] = {
    "AddV2": (lambda a, b: a + b, (X, Y)),
    "Sub": (lambda a, b: a - b, (X, Y)),
    "Neg": (lambda a: -a, (X,)),
    "Mul": (lambda a, b: a * b, (X, Y)),
    "RealDiv": (lambda a, b: a / b, (X, POSITIVE)),
    "MatMul": (lambda a, b: tf.linalg.matmul(a, b, transpose_b=True), (X, Y)),
    "BatchMatMulV2": (lambda a, b: tf.linalg.matmul(a, b, adjoint_a=True), (CUBE, CUBE)),
    "Pow": (lambda a, b: a**b, (POSITIVE, X)),
    "Tanh": (tf.tanh, (X,)),
    "Sigmoid": (tf.sigmoid, (X,)),
    "Relu": (tf.nn.relu, (X,)),
    "Exp": (tf.exp, (X,)),
    "Sin": (tf.sin, (X,)),
    "Cos": (tf.cos, (X,)),
    "Log": (tf.math.log, (POSITIVE,)),
    "Square": (tf.square, (X,)),
    "Sqrt": (tf.sqrt, (POSITIVE,)),
    "Softplus": (tf.nn.softplus, (X,)),
    "SelectV2": (lambda a, b: tf.where(a > 0, a * b, b), (X, Y)),  # TensorFlow's own fails: see CLOSED_FORMS
    "Abs": (tf.abs, (X,)),
    "Atan": (tf.math.atan, (X,)),
    "Log1p": (tf.math.log1p, (POSITIVE,)),
    "Rsqrt": (tf.math.rsqrt, (POSITIVE,)),
    "Softsign": (tf.math.softsign, (X,)),
    "Softmax": (tf.nn.softmax, (X,)),
    "Maximum": (tf.maximum, (X, Y)),
    "Minimum": (tf.minimum, (X, Y)),
    "SquaredDifference": (tf.math.squared_difference, (X, Y)),
    "Cumsum": (lambda a: tf.math.cumsum(a * a, axis=1, exclusive=True, reverse=True), (X,)),
    "Einsum": (lambda a, b: tf.einsum("bi,bj->ij", a, b * b), (X, Y)),
    "Elu": (tf.nn.elu, (X,)),
    "EluGrad": (lambda a, b: tf.raw_ops.EluGrad(gradients=b * b, outputs=tf.nn.elu(a)), (X, Y)),
    "Selu": (tf.nn.selu, (X,)),
    "SeluGrad": (lambda a, b: tf.raw_ops.SeluGrad(gradients=b * b, outputs=tf.nn.selu(a)), (X, Y)),
    "LeakyRelu": (lambda a: tf.nn.leaky_relu(a, 0.3), (X,)),
    "LeakyReluGrad": (lambda a, b: tf.raw_ops.LeakyReluGrad(gradients=b * b, features=a, alpha=0.3), (X, Y)),
    "Erf": (tf.math.erf, (X,)),
    "Erfc": (tf.math.erfc, (X,)),
    "BiasAdd": (tf.nn.bias_add, (X, BIAS)),
    "Sum": (lambda a: tf.reduce_sum(a * a, axis=1, keepdims=True), (X,)),
    "Mean": (lambda a: tf.reduce_mean(a * a, axis=0), (X,)),
    "ConcatV2": (lambda a, b: tf.concat([a, b * b], axis=1), (X, Y)),
    "Pack": (lambda a, b: tf.stack([a, a * b], axis=1), (X, Y)),
    "Slice": (lambda a: tf.slice(a * a, [1, 0], [2, 3]), (X,)),
    "StridedSlice": (lambda a: (a * a)[:, 1] + (a * a)[1:, ::2][0, 0], (X,)),
    "GatherV2": (lambda a: tf.gather(a * a, [2, 0, 0], axis=1), (X,)),
    "Reshape": (lambda a: tf.reshape(a * a, [4, 3]), (X,)),
    "ExpandDims": (lambda a: tf.expand_dims(a * a, 1), (X,)),
    "Squeeze": (lambda a: tf.squeeze(tf.reshape(a * a, [3, 1, 4]), 1), (X,)),
    "Transpose": (lambda a: tf.transpose(a * a), (X,)),
    "Tile": (lambda a: tf.tile(a * a, [2, 1]), (X,)),
    "BroadcastTo": (lambda a: tf.broadcast_to(a[:1] * a[:1], [3, 4]), (X,)),
    "Cast": (lambda a: tf.cast(tf.cast(a * a, tf.float32), tf.float64), (X,)),
    "TanhGrad": (lambda a, b: tf.raw_ops.TanhGrad(y=tf.tanh(a), dy=b * b), (X, Y)),
    "SigmoidGrad": (lambda a, b: tf.raw_ops.SigmoidGrad(y=tf.sigmoid(a), dy=b * b), (X, Y)),
    "ReluGrad": (lambda a, b: tf.raw_ops.ReluGrad(gradients=b * b, features=a), (X, Y)),
    "BiasAddGrad": (lambda a: tf.raw_ops.BiasAddGrad(out_backprop=a * a), (X,)),
    "ZerosLike": (lambda a: tf.raw_ops.ZerosLike(x=a * a) + a, (X,)),
    "Sign": (lambda a: tf.sign(a) * a, (X,)),
    "AddN": (lambda a, b: tf.add_n([a, b * b, a * b]), (X, Y)),
    "OnesLike": (lambda a: tf.raw_ops.OnesLike(x=a * a) * a, (X,)),
}

# TensorFlow's own nested forward mode fails for these at depth 2 (an op without
# floating outputs: the `IndexError` the rules remove; a gradient op without a
# gradient), so their truth is the closed form: (first, second) derivative along
# the tangents.
CLOSED_FORMS: dict[str, Callable[..., tuple[tf.Tensor, tf.Tensor]]] = {
    "SelectV2": lambda a, b, ta, tb: (
        tf.where(a > 0, ta * b + a * tb, tb),
        tf.where(a > 0, 2 * ta * tb, tf.zeros_like(a)),
    ),
    "ZerosLike": lambda a, ta: (ta, tf.zeros_like(a)),
    "OnesLike": lambda a, ta: (ta, tf.zeros_like(a)),
    "Sign": lambda a, ta: (tf.sign(a) * ta, tf.zeros_like(a)),  # sign(x) x = |x|
    # x / (1 + |x|): TensorFlow's own fails at depth 2 (SoftsignGrad has no gradient).
    "Softsign": lambda a, ta: (ta / (1 + tf.abs(a)) ** 2, -2 * tf.sign(a) * ta * ta / (1 + tf.abs(a)) ** 3),
}


def tangents(primals: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, ...]:
    return tuple(tf.sin(p) for p in primals)


def second_order(fn: Callable[..., tf.Tensor], primals: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, tf.Tensor]:
    """The JVP and the second directional derivative of `fn` along `tangents(primals)`."""
    directions = tangents(primals)
    with tf.autodiff.ForwardAccumulator(primals, directions) as outer:
        with tf.autodiff.ForwardAccumulator(primals, directions) as inner:
            value = fn(*primals)
        first = inner.jvp(value, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return first, outer.jvp(first, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def test_every_rule_is_checked():
    assert set(CASES) >= set(RULES) - {"Add"}  # `Add` is AddV2's older twin, for strings and old graphs


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_tensorflows_jvp_to_second_order(name):
    fn, primals = CASES[name]
    if name in CLOSED_FORMS:
        expected = CLOSED_FORMS[name](*primals, *tangents(primals))
    else:
        expected = tf.function(second_order, autograph=False)(fn, primals)
    rules = tf.function(second_order, autograph=False)
    with rules_inlined():
        graph = rules.get_concrete_function(fn, primals).graph
    ours = rules(fn, primals)
    for truth, actual in zip(expected, ours, strict=True):
        np.testing.assert_allclose(actual.numpy(), truth.numpy(), rtol=1e-12, atol=1e-12)
    assert name in {op.type for op in graph.get_operations()}
    # Inline: no per-op JVP function is called, as TensorFlow's own transposition does.
    assert not {op.type for op in graph.get_operations()} & {"PartitionedCall", "StatefulPartitionedCall"}


HELD = [(name, held) for name in sorted(ZERO_AWARE - {"Add"}) for held in range(len(CASES[name][1]))]


@pytest.mark.parametrize("name,held", HELD)
def test_rule_leaves_out_the_term_of_an_input_without_a_tangent(name, held):
    """With input `held` a constant (TensorFlow passes zeros as its tangent), the rule's JVP is still TensorFlow's."""
    fn, primals = CASES[name]
    watched = primals[:held] + primals[held + 1 :]

    def with_constant(*args: tf.Tensor) -> tf.Tensor:
        return fn(*args[:held], primals[held], *args[held:])

    expected = tf.function(second_order, autograph=False)(with_constant, watched)
    rules = tf.function(second_order, autograph=False)
    with rules_inlined():
        rules.get_concrete_function(with_constant, watched)
    for truth, actual in zip(expected, rules(with_constant, watched), strict=True):
        np.testing.assert_allclose(actual.numpy(), truth.numpy(), rtol=1e-12, atol=1e-12)


def test_a_fields_weights_cost_no_terms():
    """A weight's tangent is zero at every depth: no product in the pass takes a known zero, and XLA's
    optimised order-1 pass of an MLP with L layers does 2L matrix products (f and its JVP), not 3L."""
    import re

    import keras

    from keras_tlnode import taylor_coefficients

    keras.utils.set_random_seed(0)
    field = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, "tanh"), keras.layers.Dense(16, "tanh")])
    field.add(keras.layers.Dense(4))
    z = tf.random.normal((8, 4))
    graph = tf.function(lambda z: taylor_coefficients(field, z, 3)).get_concrete_function(z).graph.as_graph_def()
    bodies = [list(graph.node)] + [list(function.node_def) for function in graph.library.function]
    products = {"MatMul", "Mul", "BiasAdd", "BatchMatMulV2", "Einsum"}
    for nodes in bodies:
        zeros = {
            node.name for node in nodes if node.op == "Const" and not np.any(tf.make_ndarray(node.attr["value"].tensor))
        }
        for node in nodes:
            if node.op in products:
                assert not {name.split(":")[0] for name in node.input} & zeros, node
    hlo = tf.function(lambda z: taylor_coefficients(field, z, 1), jit_compile=True).experimental_get_compiler_ir(z)(
        stage="optimized_hlo"
    )
    assert len(re.findall(r" dot\(", hlo)) == 2 * 3


def graph_ops() -> set[str]:
    """The ops of a second-order forward pass through tanh, traced now."""
    traced = tf.function(second_order, autograph=False).get_concrete_function(tf.tanh, (X,))
    return {op.type for op in traced.graph.get_operations()}


def test_forward_mode_outside_the_block_stays_tensorflows_own():
    with rules_inlined():
        with rules_inlined():  # nested blocks: a field that takes Taylor coefficients itself
            pass
        assert "PartitionedCall" not in graph_ops()
    assert "PartitionedCall" in graph_ops()  # TensorFlow's per-op JVP functions


@pytest.mark.parametrize("jit_compile", [False, True])
def test_gradient_of_a_concatenating_pass_matches_the_same_field_without_concat(jit_compile):
    """The pass's own ConcatV2 gradient (constant axis and sizes, for XLA) gives TensorFlow's values."""
    from keras_tlnode import taylor_coefficients

    weights = tf.Variable(RNG.normal(size=(8, 4)) / 3)
    fields = {
        "concat": lambda z: tf.concat([z, z * z], axis=-1) @ weights,
        "split": lambda z: z @ weights[:4] + (z * z) @ weights[4:],
    }

    def gradients(name: str, z: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(taylor_coefficients(fields[name], z, 3) ** 2)
        return tape.gradient(loss, [z, weights])

    results = {name: tf.function(gradients, jit_compile=jit_compile)(name, tf.sin(X)) for name in fields}
    for concatenated, split in zip(results["concat"], results["split"], strict=True):
        np.testing.assert_allclose(concatenated.numpy(), split.numpy(), rtol=1e-10)


def test_blocks_opened_in_threads_restore_tensorflows_jvp_once_all_are_closed():
    import threading

    entered = threading.Barrier(5)
    releases = [threading.Event() for _ in range(4)]

    def hold(release: threading.Event) -> None:
        with rules_inlined():
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=hold, args=(release,), daemon=True) for release in releases]
    for thread in threads:
        thread.start()
    try:
        entered.wait(timeout=60)
        assert "PartitionedCall" not in graph_ops()  # four blocks open: the rules, inline
        for release, thread in zip(releases[:3], threads[:3], strict=True):
            release.set()
            thread.join()
        assert "PartitionedCall" not in graph_ops()  # one still open
        releases[3].set()
        threads[3].join()
        assert "PartitionedCall" in graph_ops()  # all closed: TensorFlow's per-op JVP functions again
    finally:  # a failed check leaves no thread waiting
        for release in releases:
            release.set()
