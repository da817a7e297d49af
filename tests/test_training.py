"""TLNODEModel: the alternating schedule, known-dynamics training, teacher failures, distribution."""

import json

import child_process
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt

P = np.array([[3.0, 1.0], [1.0, -2.0]])
STIFF = np.linalg.inv(P) @ np.diag([-1000.0, -1.0]) @ P


def propagator(matrix: np.ndarray, dt: float) -> np.ndarray:
    """expm(matrix · dt) by eigendecomposition (the matrices here are diagonalisable)."""
    values, vectors = np.linalg.eig(matrix)
    return (vectors @ np.diag(np.exp(values * dt)) @ np.linalg.inv(vectors)).real


def stiff_pairs(n: int, dt: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 2)).astype("float32")
    return x, (x @ propagator(STIFF, dt).T).astype("float32")


def frozen_linear_field(matrix: np.ndarray) -> keras.layers.Dense:
    field = keras.layers.Dense(2, use_bias=False, trainable=False)
    field.build((None, 2))
    field.set_weights([matrix.T.astype("float32")])
    return field


def tl_model(field, dt, correction_every=1, **compile_kwargs):
    inputs = keras.Input((2,))
    ode = kt.TaylorLagrangeODE(field, order=1, duration=dt, correction=kt.MidpointCorrection(hidden_units=(16,)))
    model = kt.TLNODEModel(inputs, ode(inputs))
    compile_kwargs.setdefault("correction_optimizer", keras.optimizers.Adam(1e-2))
    compile_kwargs.setdefault("correction_steps", 1)
    model.compile(optimizer="adam", loss="mse", correction_every=correction_every, **compile_kwargs)
    return model, ode


def test_known_dynamics_correction_beats_plain_taylor_fivefold():
    """The paper's first experiment: f frozen to the true stiff A, fit trains only Γ."""
    keras.utils.set_random_seed(0)
    dt = 0.002
    x, y = stiff_pairs(2000, dt)
    field = frozen_linear_field(STIFF)
    model, ode = tl_model(field, dt)
    dynamics_before = field.get_weights()
    history = model.fit(x, y, batch_size=200, epochs=10, verbose=0)
    x_test, y_test = stiff_pairs(500, dt, seed=1)
    corrected = np.mean((model.predict(x_test, verbose=0) - y_test) ** 2)
    plain = np.mean((kt.TaylorLagrangeODE(field, order=1, duration=dt)(x_test).numpy() - y_test) ** 2)
    assert corrected * 5 < plain
    np.testing.assert_array_equal(field.get_weights()[0], dynamics_before[0])
    assert history.history["teacher_failures"][-1] == 0
    assert history.history["correction_loss"][-1] < history.history["correction_loss"][0]
    assert set(history.history) >= {"loss", "remainder", "correction_loss", "nfe", "teacher_nfe", "teacher_failures"}
    assert history.history["nfe"][-1] == ode.nfe == 3


def _weights(layer):
    return [w.copy() for w in layer.get_weights()]


def test_correction_phase_runs_every_n_steps_and_only_on_corrections():
    keras.utils.set_random_seed(1)
    x, y = stiff_pairs(64, 0.01)
    model, ode = tl_model(keras.layers.Dense(2), 0.01, correction_every=3)
    correction = _weights(ode.correction)
    changes = []
    for _ in range(6):
        field_before = _weights(ode.vector_field)
        model.train_on_batch(x[:16], y[:16])
        after = _weights(ode.correction)
        changes.append(any(not np.array_equal(a, b) for a, b in zip(correction, after, strict=True)))
        correction = after
        assert any(not np.array_equal(a, b) for a, b in zip(field_before, _weights(ode.vector_field), strict=True))
    assert changes == [False, False, True, False, False, True]
    assert int(model.correction_optimizer.iterations) == 2
    assert int(model.optimizer.iterations) == 6


def test_model_without_correction_trains_like_a_plain_keras_model():
    x, y = stiff_pairs(64, 0.01)

    def train(model_class):
        keras.utils.set_random_seed(2)
        inputs = keras.Input((2,))
        ode = kt.FixedStepODE(keras.layers.Dense(2), method="rk4", duration=0.01)
        model = model_class(inputs, ode(inputs))
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        return model.get_weights()

    for ours, plain in zip(train(kt.TLNODEModel), train(keras.Model), strict=True):
        np.testing.assert_allclose(ours, plain, rtol=1e-6, atol=1e-7)


def test_teacher_failure_skips_the_update_and_is_counted():
    keras.utils.set_random_seed(3)
    x, y = stiff_pairs(64, 0.01)
    # One step cannot reach 1e-12 over Δt on this field.
    teacher = kt.DormandPrinceTeacher(rtol=1e-12, atol=1e-12, max_num_steps=1)
    model, ode = tl_model(keras.layers.Dense(2), 0.01, teacher=teacher)
    correction = _weights(ode.correction)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert history.history["teacher_failures"] == [4.0]
    assert history.history["correction_loss"] == [0.0]
    for before, after in zip(correction, _weights(ode.correction), strict=True):
        np.testing.assert_array_equal(before, after)
    assert int(model.correction_optimizer.iterations) == 0
    assert np.isfinite(history.history["loss"][0])


def test_evaluate_and_predict_never_call_the_teacher():
    x, y = stiff_pairs(32, 0.01)
    model, _ = tl_model(keras.layers.Dense(2), 0.01)

    def fail(*args, **kwargs):
        raise AssertionError("the teacher was called outside training")

    model.teacher.solve = fail
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)


def test_nested_and_several_tl_layers_all_get_corrected():
    keras.utils.set_random_seed(4)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")

    first = kt.TaylorLagrangeODE(keras.layers.Dense(4, activation="tanh"), correction=kt.MidpointCorrection())
    second = kt.TaylorLagrangeODE(keras.layers.Dense(4), correction=kt.MidpointCorrection(mode="matrix"))
    inner_inputs = keras.Input((4,))
    block = keras.Model(inner_inputs, second(inner_inputs), name="block")
    inputs = keras.Input((3,))
    hidden = first(keras.layers.Dense(4)(inputs))
    outputs = keras.layers.Dense(1, activation="sigmoid")(block(hidden))
    model = kt.TLNODEModel(inputs, outputs)
    # One update per solve: the test is about which corrections the phase reaches, not how often.
    model.compile(optimizer="adam", loss="binary_crossentropy", correction_every=1, correction_steps=1)
    before = [_weights(first.correction), _weights(second.correction)]
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    after = [_weights(first.correction), _weights(second.correction)]
    for old, new in zip(before, after, strict=True):
        assert any(not np.array_equal(a, b) for a, b in zip(old, new, strict=True))
    assert history.history["nfe"][-1] == first.nfe + second.nfe


def parity_fit(strategy: tf.distribute.Strategy | None = None, gradient_checkpointing: bool = False) -> dict:
    """Two epochs of a small corrected model built in `strategy`'s scope (default: none); what they leave."""
    strategy = strategy or tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (64, 2)).astype("float32")
    y = (x * 0.9).astype("float32")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        ode = kt.TaylorLagrangeODE(
            keras.layers.Dense(2),
            duration=0.1,
            correction=kt.MidpointCorrection(hidden_units=(4,)),
            remainder_weight=0.01,
            num_steps=2,
            gradient_checkpointing=gradient_checkpointing,
        )
        inputs = keras.Input((2,))
        model = kt.TLNODEModel(inputs, ode(inputs))
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="mse",
            correction_every=2,
            correction_steps=2,
            teacher_samples=None,
            correction_optimizer=keras.optimizers.SGD(0.1),
        )
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history
    return {
        "replicas": strategy.num_replicas_in_sync,
        "weights": [w.tolist() for w in model.get_weights()],
        "correction_steps": int(model.correction_optimizer.iterations.numpy()),
        "loss": history["loss"],
        "logs": {name: values for name, values in history.items() if name != "loss"},
    }


@pytest.fixture(scope="module", autouse=True)
def mirrored_child(request, tmp_path_factory):
    """The mirrored half of the parity test below, started with the module: it runs in a
    process of its own (two logical CPUs, tests/programs/mirrored_parity.py) beside this module's other tests."""
    if not child_process.selected(request, test_mirrored_strategy_matches_single_device):
        yield None
        return
    child = child_process.Child(tmp_path_factory.mktemp("mirrored"), "mirrored_parity.py")
    try:
        yield child
    finally:
        child.close()


def test_mirrored_strategy_matches_single_device(mirrored_child):
    """The mirrored runs from the child process (plain, and with gradient checkpointing) against the
    single-device plain one, here."""
    single = parity_fit()
    returncode = mirrored_child.process.wait(timeout=300)
    assert returncode == 0, mirrored_child.stderr()[-3000:]
    runs = json.loads(mirrored_child.stdout().strip().splitlines()[-1])
    assert sorted(runs) == ["checkpointed", "plain"]
    for mirrored in runs.values():
        assert (single["replicas"], mirrored["replicas"]) == (1, 2)
        gap = max(np.abs(np.subtract(a, b)).max() for a, b in zip(single["weights"], mirrored["weights"], strict=True))
        assert gap < 1e-6
        assert single["correction_steps"] == mirrored["correction_steps"] == 8  # 4 solves of 2 updates each
        np.testing.assert_allclose(single["loss"], mirrored["loss"], rtol=1e-5)


def test_jit_compile_matches_graph_training():
    """XLA gives the same training; it is slow here (README: XLA recompiles per batch)."""
    x, y = stiff_pairs(48, 0.01)

    def train(jit_compile):
        keras.utils.set_random_seed(6)
        inputs = keras.Input((2,))
        ode = kt.TaylorLagrangeODE(
            keras.layers.Dense(2),
            duration=0.01,
            correction=kt.MidpointCorrection(hidden_units=(4,)),
            remainder_weight=0.1,
        )
        model = kt.TLNODEModel(inputs, ode(inputs))
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="mse",
            correction_every=2,
            correction_steps=2,
            correction_optimizer=keras.optimizers.SGD(0.1),
            jit_compile=jit_compile,
        )
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        return model, history.history

    graph, graph_history = train(False)
    xla, xla_history = train(True)
    assert int(xla.correction_optimizer.iterations.numpy()) == 2
    for a, b in zip(graph.get_weights(), xla.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(graph_history["loss"], xla_history["loss"], rtol=1e-5)
