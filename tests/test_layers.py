"""TaylorLagrangeODE: shapes, serialisation, training, remainder penalty, NFE, bad input."""

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_checks import check_layer

import keras_tlnode as kt


@keras.saving.register_keras_serializable(package="keras_tlnode_tests")
class TimeField(keras.layers.Layer):
    """A trainable f(x, t) = tanh(W [x, t]), for the time-dependent calling convention."""

    def build(self, input_shape):
        x_shape, _ = input_shape
        self.dense = keras.layers.Dense(x_shape[-1], activation="tanh")
        self.dense.build((None, x_shape[-1] + 1))

    def call(self, inputs):
        x, t = inputs
        return self.dense(tf.concat([x, t], axis=-1))


def mlp_field(n: int = 2) -> keras.Sequential:
    return keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(n)])


def tanh_field(n: int = 2) -> keras.Sequential:
    """A one-layer nonlinear field: the training trace at orders 2-3 (nested passes of
    depth 3-4) costs in proportion to the field's ops, and nothing checked depends on its depth."""
    return keras.Sequential([keras.layers.Dense(n, activation="tanh")])


LAYER_CASES = {
    "tl_order1_vector": (lambda: kt.TaylorLagrangeODE(mlp_field(), correction=kt.MidpointCorrection()), (2,), (2,)),
    "tl_order2_matrix": (
        lambda: kt.TaylorLagrangeODE(
            tanh_field(), order=2, num_steps=2, correction=kt.MidpointCorrection(mode="matrix", use_step_size=True)
        ),
        (2,),
        (2,),
    ),
    "taylor_order3_trajectory": (
        lambda: kt.TaylorLagrangeODE(tanh_field(), order=3, num_steps=3, return_trajectory=True),
        (2,),
        (4, 2),
    ),
    "rk4": (lambda: kt.FixedStepODE(mlp_field(), method="rk4", num_steps=2), (2,), (2,)),
    "time_dependent": (
        lambda: kt.TaylorLagrangeODE(TimeField(), time_dependent=True, correction=kt.MidpointCorrection()),
        (3,),
        (3,),
    ),
    "image_state": (
        lambda: kt.TaylorLagrangeODE(
            keras.layers.Conv2D(2, 3, padding="same", activation="tanh"),
            num_steps=2,
            correction=kt.MidpointCorrection(hidden_units=(4,)),
        ),
        (4, 4, 2),
        (4, 4, 2),
    ),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_contract(case, tmp_path):
    make_layer, input_shape, output_shape = LAYER_CASES[case]
    loss_before, loss_after = check_layer(make_layer, input_shape, output_shape, tmp_path)
    assert loss_after < 0.9 * loss_before


def test_subclassed_model_trains():
    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = keras.layers.Dense(3)
            self.ode = kt.TaylorLagrangeODE(mlp_field(3), correction=kt.MidpointCorrection(), remainder_weight=0.1)
            self.head = keras.layers.Dense(1)

        def call(self, x):
            return self.head(self.ode(self.encoder(x)))

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = x[:, :1] * x[:, 1:2]
    model = Model()
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    history = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]


class Linear(keras.layers.Layer):
    def __init__(self, matrix, **kwargs):
        super().__init__(**kwargs)
        self.matrix = tf.constant(matrix, dtype="float64")

    def call(self, x):
        return tf.matmul(x, self.matrix, transpose_b=True)


def test_remainder_penalty_is_added_in_training_only():
    """λ Σ_k mean|R_k| with R_k = Δt^(p+1)/(p+1)! A^(p+1) x_k for f(x) = A x."""
    a = np.array([[-1.0, 2.0], [0.0, -3.0]])
    order, num_steps, dt, weight = 1, 3, 0.1, 0.7
    layer = kt.TaylorLagrangeODE(
        Linear(a, dtype="float64"),
        order=order,
        num_steps=num_steps,
        duration=num_steps * dt,
        remainder_weight=weight,
        dtype="float64",
    )
    x0 = np.array([[0.5, -1.0], [2.0, 0.3]])
    layer(x0, training=False)
    assert layer.losses == []
    layer(x0, training=True)
    step = sum(np.linalg.matrix_power(a * dt, i) / math.factorial(i) for i in range(order + 2))
    remainder_map = dt ** (order + 1) / math.factorial(order + 1) * np.linalg.matrix_power(a, order + 1)
    states = [x0 @ np.linalg.matrix_power(step, k).T for k in range(num_steps)]
    expected = weight * sum(np.abs(s @ remainder_map.T).mean() for s in states)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs,nfe",
    [
        (dict(order=1), 2),
        (dict(order=3, num_steps=2), 8),
        (dict(order=1, correction=True), 3),
        (dict(order=0, correction=True), 2),
        (dict(order=2, num_steps=4, correction=True), 20),
        (dict(method="euler", num_steps=3), 3),
        (dict(method="heun"), 2),
        (dict(method="rk4", num_steps=2), 8),
    ],
)
def test_nfe_counts_vector_field_calls(kwargs, nfe):
    calls = []

    class Counting(keras.layers.Layer):
        def call(self, x):
            calls.append(1)
            return -x

    kwargs = dict(kwargs)
    if kwargs.pop("correction", False):
        kwargs["correction"] = kt.MidpointCorrection(hidden_units=(2,))
    layer_class = kt.FixedStepODE if "method" in kwargs else kt.TaylorLagrangeODE
    layer = layer_class(Counting(), **kwargs)
    layer.build((None, 2))
    x = tf.ones((3, 2))
    calls.clear()
    # Trace the layer's call: the rollout's loop body holds one step, so each call of f is counted once per step.
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec((None, 2)))
    assert graph is not None
    assert len(calls) * layer.num_steps == nfe
    assert layer.nfe == nfe
    assert layer(x).shape == (3, 2)


def test_xla_matches_eager():
    keras.utils.set_random_seed(3)
    layer = kt.TaylorLagrangeODE(mlp_field(), order=2, num_steps=3, correction=kt.MidpointCorrection())
    x = tf.random.uniform((4, 2))
    eager = layer(x)
    compiled = tf.function(layer, jit_compile=True)(x)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


def test_eager_and_graph_gradients_agree_with_finite_differences():
    """Reverse over nested forward, through the layer, in float64."""
    keras.utils.set_random_seed(4)
    field = keras.Sequential(
        [keras.layers.Dense(3, activation="tanh", dtype="float64"), keras.layers.Dense(2, dtype="float64")]
    )
    layer = kt.TaylorLagrangeODE(field, order=2, num_steps=2, dtype="float64")
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (3, 2)))
    layer(x)

    def loss():
        return tf.reduce_sum(layer(x) ** 2)

    def gradient():
        with tf.GradientTape() as tape:
            value = loss()
        return tape.gradient(value, layer.trainable_variables)

    eager = gradient()
    graph = tf.function(gradient)()
    kernel = layer.trainable_variables[0]
    base = kernel.numpy()
    eps = 1e-6
    for index in [(0, 0), (1, 2)]:
        delta = np.zeros_like(base)
        delta[index] = eps
        kernel.assign(base + delta)
        plus = float(loss())
        kernel.assign(base - delta)
        minus = float(loss())
        kernel.assign(base)
        fd = (plus - minus) / (2 * eps)
        assert eager[0].numpy()[index] == pytest.approx(fd, rel=1e-6)
        assert graph[0].numpy()[index] == pytest.approx(fd, rel=1e-6)


def test_deprecated_spellings_still_work_and_warn():
    field = keras.layers.Dense(2)
    with pytest.warns(DeprecationWarning, match="duration"):
        layer = kt.TaylorLagrangeODE(field, t_final=0.25, t_initial=1.0)
    assert layer.duration == 0.25
    with pytest.warns(DeprecationWarning, match="duration"):
        assert layer.t_final == 0.25


def test_configs_saved_by_0_1_load_with_the_new_names():
    # A 0.1 config: `t_final`, and the classical schemes inside TaylorLagrangeODE.
    old = {
        "vector_field": keras.saving.serialize_keras_object(keras.layers.Dense(2)),
        "order": 1,
        "num_steps": 2,
        "t_final": 0.5,
        "correction": None,
        "remainder_weight": 0.0,
        "time_dependent": False,
        "return_trajectory": False,
        "method": "rk4",
        "t_initial": 0.0,
    }
    with pytest.warns(DeprecationWarning, match=re.escape("loads as FixedStepODE(method='rk4')")):
        classical = kt.TaylorLagrangeODE.from_config(old)
    assert type(classical) is kt.FixedStepODE and classical.duration == 0.5
    layer = kt.TaylorLagrangeODE.from_config({**old, "method": "taylor_lagrange"})
    assert type(layer) is kt.TaylorLagrangeODE and layer.duration == 0.5
    assert "t_final" not in layer.get_config() and "method" not in layer.get_config()


# --- orders 4-5 at any batch size (issue 11) --------------------------------------------


def affine_taylor_step(matrix: np.ndarray, bias: np.ndarray, x: np.ndarray, h: float, order: int) -> np.ndarray:
    """The uncorrected Taylor-Lagrange step of order p for dx/dt = A x + b, derived by hand:
    x^(k) = A^(k-1) (A x + b), so x_1 = x + Σ_{k=1..p+1} h^k/k! A^(k-1) (A x + b)."""
    derivative, step = x @ matrix.T + bias, x.copy()
    for k in range(1, order + 2):
        step = step + h**k / math.factorial(k) * derivative
        derivative = derivative @ matrix.T
    return step


@pytest.mark.parametrize("order", [4, 5])
def test_high_order_predict_matches_closed_form_for_any_batch_size(order):
    # Before issue 11, a second batch size (Keras retracing with an unknown
    # batch) failed from order 4 on for every field.
    rng = np.random.default_rng(order)
    matrix, bias = rng.uniform(-1, 1, (3, 3)), rng.uniform(-1, 1, 3)
    field = keras.layers.Dense(3, dtype="float64")
    field.build((None, 3))
    field.set_weights([matrix.T, bias])
    inputs = keras.Input((3,), dtype="float64")
    model = keras.Model(inputs, kt.TaylorLagrangeODE(field, order=order, duration=0.3, dtype="float64")(inputs))
    # Exact in float32: Keras's predict casts float64 arrays to float32 first.
    x = rng.uniform(-1, 1, (37, 3)).astype("float32").astype("float64")
    for batch_size in (32, 7):  # 32 + a ragged 5, then 7: three batch sizes, traced with an unknown batch
        np.testing.assert_allclose(
            model.predict(x, batch_size=batch_size, verbose=0),
            affine_taylor_step(matrix, bias, x, 0.3, order),
            rtol=1e-12,
            atol=1e-12,
        )
