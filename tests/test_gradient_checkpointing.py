"""`gradient_checkpointing=True`: the same gradients as backpropagation through every kept activation, from
a backward pass that keeps one state per step.

The truth is the plain backward pass of the same layer and weights, in float64 (agreement to 1e-10), at
orders 1-3, with and without the correction, with per-sample spans, trajectories, the remainder penalty,
time-dependent fields, the classical schemes and the flow; what the backward pass keeps is read from the
graph (the forward loop's saved-tensor stacks); memory and time are measured in
benchmarks/checkpointing.py, not here.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt


@keras.saving.register_keras_serializable(package="test_gradient_checkpointing")
class TimeField(keras.layers.Layer):
    """f(x, t) = tanh MLP of [x, t]."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(2)

    def build(self, input_shape):
        self.hidden.build((None, 3))
        self.out.build((None, 8))

    def call(self, inputs):
        return self.out(self.hidden(tf.concat(inputs, axis=-1)))


@pytest.fixture
def float64():
    """Every layer built in the test in float64 (the field's sublayers included)."""
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy("float32")


def _mlp() -> keras.Sequential:
    return keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])


def _pair(make, **kwargs) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """A float64 layer and its copy with checkpointing (from the config, with the same weights)."""
    keras.utils.set_random_seed(0)
    plain = make(**kwargs)
    plain.build((None, 2))
    checkpointed = type(plain).from_config({**plain.get_config(), "gradient_checkpointing": True})
    checkpointed.build((None, 2))
    checkpointed.set_weights(plain.get_weights())
    assert not plain.gradient_checkpointing and checkpointed.gradient_checkpointing
    assert type(plain).from_config(checkpointed.get_config()).gradient_checkpointing  # kept in the config
    return plain, checkpointed


def _loss_and_gradients(
    layer: keras.layers.Layer, inputs: list, jit_compile: bool = False, observed: bool = False
) -> list[np.ndarray]:
    """A training loss through `layer` (its output and its added losses) and its gradients to the inputs and weights.

    `inputs` is `[x]`, `[x, durations]`, or with `observed`, `[x, times]` (the layer called with `times=`).
    """

    def run(x, *rest):
        with tf.GradientTape() as tape:
            tape.watch([x, *rest])  # per-sample durations and observation times get their gradient too
            if observed:
                y = layer(x, times=rest[0], training=True)
            else:
                y = layer([x, *rest] if rest else x, training=True)
            # In float64 whatever the layer computes in (mixed precision: float16).
            losses = [tf.cast(loss, tf.float64) for loss in layer.losses]
            loss = tf.reduce_sum(tf.sin(3.0 * tf.cast(y, tf.float64))) + tf.add_n([tf.zeros((), tf.float64), *losses])
        return [loss, *tape.gradient(loss, [x, *rest, *layer.trainable_variables])]

    return [t.numpy() for t in tf.function(run, jit_compile=jit_compile)(*inputs)]


def _assert_same(plain: list[np.ndarray], checkpointed: list[np.ndarray], rtol: float = 1e-10) -> None:
    assert len(plain) == len(checkpointed) > 2
    for a, b in zip(plain, checkpointed, strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(a)))))


def _states(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1.0, 1.0, (n, 2))


def _taylor(order: int, corrected: bool, **kwargs):
    def make(**more):
        correction = kt.MidpointCorrection(hidden_units=(4,)) if corrected else None
        return kt.TaylorLagrangeODE(
            _mlp(), order=order, num_steps=5, duration=0.5, correction=correction, **kwargs, **more
        )

    return make


@pytest.mark.parametrize("corrected", [False, True], ids=["uncorrected", "corrected"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_taylor_lagrange_gradients_are_unchanged(order, corrected, float64):
    plain, checkpointed = _pair(_taylor(order, corrected, remainder_weight=0.1))
    x = _states()
    _assert_same(_loss_and_gradients(plain, [x]), _loss_and_gradients(checkpointed, [x]))


@pytest.mark.parametrize(
    "make",
    [
        _taylor(2, True, return_trajectory=True),
        lambda **kw: kt.TaylorLagrangeODE(TimeField(), num_steps=4, time_dependent=True, t_initial=0.3, **kw),
        lambda **kw: kt.FixedStepODE(_mlp(), method="rk4", num_steps=4, return_trajectory=True, **kw),
    ],
    ids=["trajectory", "time-dependent", "rk4"],
)
def test_gradients_are_unchanged_for_trajectories_time_and_classical_schemes(make, float64):
    plain, checkpointed = _pair(make)
    x = _states()
    _assert_same(_loss_and_gradients(plain, [x]), _loss_and_gradients(checkpointed, [x]))


def test_gradients_are_unchanged_with_per_sample_spans(float64):
    plain, checkpointed = _pair(_taylor(2, True))
    x, durations = _states(), np.linspace(0.1, 1.0, 6)
    _assert_same(_loss_and_gradients(plain, [x, durations]), _loss_and_gradients(checkpointed, [x, durations]))


@pytest.mark.parametrize("order", [1, 3])
def test_gradients_are_unchanged_at_observation_times(order, float64):
    plain, checkpointed = _pair(_taylor(order, True, remainder_weight=0.1))
    x, times = _states(), np.sort(np.random.default_rng(2).uniform(0.0, 1.0, (6, 4)), axis=1)
    _assert_same(
        _loss_and_gradients(plain, [x, times], observed=True),
        _loss_and_gradients(checkpointed, [x, times], observed=True),
    )


def test_gradients_are_unchanged_under_xla(float64):
    plain, checkpointed = _pair(_taylor(2, True, remainder_weight=0.1))
    x = _states()
    _assert_same(_loss_and_gradients(plain, [x]), _loss_and_gradients(checkpointed, [x], jit_compile=True), rtol=1e-9)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_the_flows_likelihood_gradients_are_unchanged(trace, float64):
    def flow(gradient_checkpointing: bool) -> kt.ContinuousNormalizingFlow:
        keras.utils.set_random_seed(0)
        model = kt.ContinuousNormalizingFlow(
            TimeField(),
            num_steps=4,
            trace=trace,
            correction=kt.MidpointCorrection(hidden_units=(4,)),
            seed=3,
            gradient_checkpointing=gradient_checkpointing,
        )
        model.build((None, 2))
        return model

    plain, checkpointed = flow(False), flow(True)
    checkpointed.set_weights(plain.get_weights())
    x = _states(8)

    def run(model):
        with tf.GradientTape() as tape:
            losses = [tf.cast(loss, tf.float64) for loss in model.losses]
            loss = -tf.reduce_mean(model(x, training=True)) + tf.add_n([tf.zeros((), tf.float64), *losses])
        return [loss, *tape.gradient(loss, model.trainable_variables)]

    _assert_same(
        [t.numpy() for t in tf.function(lambda: run(plain))()],
        [t.numpy() for t in tf.function(lambda: run(checkpointed))()],
    )
    assert kt.ContinuousNormalizingFlow.from_config(checkpointed.get_config()).gradient_checkpointing


def _saved_activations(layer: keras.layers.Layer) -> int:
    """Tensors the forward rollout loop saves for the backward pass, per step (TensorList pushes in its body)."""
    x = tf.ones((4, 2), layer.compute_dtype)

    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer(x, training=True))
        return tape.gradient(y, x)

    library = tf.function(gradient).get_concrete_function(x).graph.as_graph_def().library.function
    return max(sum(node.op == "TensorListPushBack" for node in f.node_def) for f in library)


def test_the_forward_loop_saves_no_activations(float64):
    plain, checkpointed = _pair(_taylor(2, True))
    assert _saved_activations(plain) > 20  # every activation of the nested forward passes, every step
    # Only the states, which the loop writes for its backward pass (TensorListSetItem, not a push).
    assert _saved_activations(checkpointed) == 0


def test_inference_and_export_keep_the_plain_steps(float64):
    _, checkpointed = _pair(_taylor(1, True))
    graph = tf.function(lambda x: checkpointed(x, training=False)).get_concrete_function(tf.ones((4, 2), tf.float64))
    ops = {node.op for f in graph.graph.as_graph_def().library.function for node in f.node_def}
    assert not any(op.startswith("IdentityN") for op in ops)  # no custom gradient in the inference graph


def _fit(gradient_checkpointing: bool, strategy: tf.distribute.Strategy | None = None) -> list[np.ndarray]:
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (64, 2)).astype("float32")
    with strategy.scope():
        ode = kt.TaylorLagrangeODE(
            _mlp(),
            num_steps=3,
            duration=0.3,
            correction=kt.MidpointCorrection(hidden_units=(4,)),
            remainder_weight=0.01,
            gradient_checkpointing=gradient_checkpointing,
        )
        inputs = keras.Input((2,))
        model = kt.TLNODEModel(inputs, ode(inputs))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", correction_every=2, correction_steps=2)
    model.fit(x, 0.8 * x, batch_size=16, epochs=1, verbose=0, shuffle=False)  # 2 correction phases
    return model.get_weights()


def test_a_tlnode_model_trains_the_same_with_its_correction_phase_and_under_a_strategy():
    plain = _fit(False)
    for checkpointed in (_fit(True), _fit(True, tf.distribute.MirroredStrategy(["/cpu:0"]))):
        for a, b in zip(plain, checkpointed, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_the_flag_must_be_a_bool():
    for make in (
        lambda: kt.TaylorLagrangeODE(_mlp(), gradient_checkpointing=1),
        lambda: kt.FixedStepODE(_mlp(), gradient_checkpointing="yes"),
        lambda: kt.ContinuousNormalizingFlow(TimeField(), gradient_checkpointing=None),
    ):
        with pytest.raises(TypeError, match="`gradient_checkpointing` must be a bool"):
            make()


def test_mixed_precision_gives_the_same_gradients():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        plain, checkpointed = _pair(_taylor(1, True, remainder_weight=0.1))
        x = _states().astype("float16")
        assert checkpointed.compute_dtype == "float16"
        a, b = _loss_and_gradients(plain, [x]), _loss_and_gradients(checkpointed, [x])
    finally:
        keras.config.set_dtype_policy("float32")
    for left, right in zip(a, b, strict=True):
        np.testing.assert_allclose(right, left, rtol=1e-3, atol=1e-3 * max(1.0, float(np.max(np.abs(left)))))


def test_tf_recompute_grad_still_stops_forward_mode(float64):
    """Why the package checkpoints with its own gradient: `tf.recompute_grad` (keras.remat on TensorFlow) runs the
    forward pass with the tapes stopped, forward-mode accumulators included. The day this fails, it no longer does."""
    plain, _ = _pair(_taylor(2, False))
    x = tf.constant(_states())
    remat = tf.function(lambda x: tf.recompute_grad(lambda z: plain(z, training=True))(x))
    assert float(tf.reduce_max(tf.abs(remat(x) - plain(x, training=True)))) > 1e-4
