"""What a fit traces and compiles: the train step once per fit, the teacher's solve once per trace, and
`jit_compile=True` kept, with XLA's loss and gradients equal to graph mode's; a single step runs without a loop.

Timings live in benchmarks/cost.py; these count what is traced and compare numbers.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt


class _CountingTeacher(kt.DormandPrinceTeacher):
    """Counts the calls of `solve`: inside a traced step its Python body runs once per trace."""

    solves = 0

    def solve(self, *args, **kwargs):
        type(self).solves += 1
        return super().solve(*args, **kwargs)


def _count_traces(model: keras.Model) -> list[int]:
    """Wraps `model.train_step` (read by Keras when it builds the train function) to count its traces."""
    traces = [0]
    step = model.train_step

    def counted(data):
        traces[0] += 1
        return step(data)

    model.train_step = counted
    return traces


def _corrected_model(jit_compile: bool, teacher: kt.DormandPrinceTeacher | None = None) -> kt.TLNODEModel:
    keras.utils.set_random_seed(0)
    field = keras.Sequential([keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(2)])
    ode = kt.TaylorLagrangeODE(field, duration=0.1, num_steps=2, correction=kt.MidpointCorrection(hidden_units=(8,)))
    inputs = keras.Input((2,))
    model = kt.TLNODEModel(inputs, ode(inputs))
    model.compile("adam", "mse", steps_per_execution=5, jit_compile=jit_compile, correction_every=2, teacher=teacher)
    return model


def _flow(jit_compile: bool) -> kt.ContinuousNormalizingFlow:
    keras.utils.set_random_seed(0)
    flow = kt.ContinuousNormalizingFlow(TimeField(), num_steps=2, correction=kt.MidpointCorrection(hidden_units=(8,)))
    flow.compile(keras.optimizers.Adam(1e-2), steps_per_execution=5, jit_compile=jit_compile, correction_every=2)
    return flow


class TimeField(keras.layers.Layer):
    """f(z, t) = MLP([z, t]), the flow's field."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="tanh")
        self.out = keras.layers.Dense(2)

    def build(self, input_shape):
        self.hidden.build((None, 3))
        self.out.build((None, 16))

    def call(self, inputs):
        return self.out(self.hidden(tf.concat(inputs, axis=-1)))


def _data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(n, 2)).astype("float32")
    return x, 0.9 * x


def test_a_fit_of_three_epochs_traces_the_train_step_once_and_the_teacher_once():
    _CountingTeacher.solves = 0
    model = _corrected_model(jit_compile=False, teacher=_CountingTeacher())
    traces = _count_traces(model)
    x, y = _data()
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0).history  # 5 steps an epoch: one execution
    assert traces[0] == 1
    assert _CountingTeacher.solves == 1
    assert history["teacher_nfe"][-1] > 0  # the phase ran


@pytest.mark.parametrize("build", [_corrected_model, _flow], ids=["TLNODEModel", "ContinuousNormalizingFlow"])
def test_jit_compile_stays_on_after_the_first_fit(build):
    model = build(jit_compile=True)
    x, y = _data()
    if isinstance(model, kt.ContinuousNormalizingFlow):
        model.fit(x, batch_size=8, epochs=1, verbose=0)
    else:
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert model.jit_compile is True


def _loss_and_gradients(model: keras.Model, x: np.ndarray, y: np.ndarray, jit_compile: bool) -> list[np.ndarray]:
    """The training loss at `x` and its gradients, in one function compiled by XLA or run as a graph."""

    def loss_and_gradients(x, y):
        with tf.GradientTape() as tape:
            if isinstance(model, kt.ContinuousNormalizingFlow):
                loss = -tf.reduce_mean(model(x, training=True))
            else:
                loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
            loss += tf.add_n([tf.zeros(())] + model.losses)
        return [loss, *tape.gradient(loss, model.trainable_variables)]

    return [t.numpy() for t in tf.function(loss_and_gradients, jit_compile=jit_compile)(x, y)]


@pytest.mark.parametrize("build", [_corrected_model, _flow], ids=["TLNODEModel", "ContinuousNormalizingFlow"])
def test_xla_gives_graph_modes_loss_and_gradients(build):
    model = build(jit_compile=False)
    x, y = _data(16)
    graph = _loss_and_gradients(model, x, y, jit_compile=False)
    xla = _loss_and_gradients(model, x, y, jit_compile=True)
    assert len(graph) == len(model.trainable_variables) + 1
    for a, b in zip(graph, xla, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * max(1.0, float(np.max(np.abs(a)))))


def _op_types(layer: keras.layers.Layer) -> set[str]:
    """The op types of one training call of `layer` and its gradient, nested functions included."""
    x = tf.ones((4, 2))

    def loss(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer(x, training=True))
        return tape.gradient(y, x)

    graph = tf.function(loss).get_concrete_function(x).graph
    functions = graph.as_graph_def().library.function
    return {op.type for op in graph.get_operations()} | {n.op for f in functions for n in f.node_def}


@pytest.mark.parametrize(
    "make",
    [
        lambda n: kt.TaylorLagrangeODE(keras.layers.Dense(2, activation="tanh"), duration=0.1, num_steps=n),
        lambda n: kt.FixedStepODE(keras.layers.Dense(2, activation="tanh"), method="rk4", duration=0.1, num_steps=n),
    ],
    ids=["TaylorLagrangeODE", "FixedStepODE"],
)
def test_one_step_to_the_final_state_runs_without_a_loop(make):
    # The loop's bookkeeping and its saved-activation stacks cost more than a small step.
    assert not {"While", "StatelessWhile"} & _op_types(make(1))
    assert {"While", "StatelessWhile"} & _op_types(make(2))
