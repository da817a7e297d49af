"""TLNODEModel keeps what Keras's training offers: loss scaling, mixed precision, honest metrics, shared layers, the teacher's saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt

A = np.array([[-1.0, 2.0], [-2.0, -1.0]])
DT = 0.05


def spiral_pairs(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eig(A * DT)
    flow = np.real(vectors @ np.diag(np.exp(values)) @ np.linalg.inv(vectors))
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 2)).astype("float32")
    return x, (x @ flow.T).astype("float32")


def tl_model(remainder_weight: float = 1e-2, field: keras.layers.Layer | None = None, **compile_kwargs):
    keras.utils.set_random_seed(0)
    ode = kt.TaylorLagrangeODE(
        field or keras.layers.Dense(2),
        duration=DT,
        remainder_weight=remainder_weight,
        correction=kt.MidpointCorrection(hidden_units=(4,)),
    )
    inputs = keras.Input((2,))
    model = kt.TLNODEModel(inputs, ode(inputs))
    compile_kwargs.setdefault("optimizer", keras.optimizers.SGD(0.5))
    # One correction update per solve: each one adds its own gradient graph to the traced
    # step, and no test here depends on how many there are.
    compile_kwargs.setdefault("correction_steps", 1)
    model.compile(loss="mse", **compile_kwargs)
    return model, ode


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def final_loss(model: keras.Model, epochs: int = 15) -> float:
    x, y = spiral_pairs()
    return model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=False).history["loss"][-1]


def test_mixed_precision_trains_like_float32(mixed_precision):
    mixed, _ = tl_model()
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(mixed.correction_optimizer, keras.optimizers.LossScaleOptimizer)
    mixed_loss = final_loss(mixed)
    keras.mixed_precision.set_global_policy("float32")
    single_loss = final_loss(tl_model()[0])
    assert np.isfinite(mixed_loss)
    assert mixed_loss < 2 * single_loss and single_loss < 2 * mixed_loss, (mixed_loss, single_loss)


def plain_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    ode = kt.TaylorLagrangeODE(
        keras.layers.Dense(2), duration=DT, remainder_weight=1e-2, correction=kt.MidpointCorrection(hidden_units=(4,))
    )
    inputs = keras.Input((2,))
    model = keras.Model(inputs, ode(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    return model


def test_a_plain_keras_model_with_the_layer_trains_under_mixed_precision(mixed_precision):
    mixed_loss = final_loss(plain_model())
    keras.mixed_precision.set_global_policy("float32")
    single_loss = final_loss(plain_model())
    assert np.isfinite(mixed_loss)
    assert mixed_loss < 2 * single_loss and single_loss < 2 * mixed_loss, (mixed_loss, single_loss)


def test_a_loss_scale_factor_does_not_change_training():
    """Keras divides the gradients by `loss_scale_factor`, so train_step must scale the loss by it."""
    plain, _ = tl_model(remainder_weight=0.0, optimizer=keras.optimizers.SGD(0.5))
    scaled, _ = tl_model(remainder_weight=0.0, optimizer=keras.optimizers.SGD(0.5, loss_scale_factor=128.0))
    assert final_loss(scaled, epochs=3) == pytest.approx(final_loss(plain, epochs=3), rel=1e-4)


def test_the_remainder_metric_leaves_out_weight_regularisers():
    field = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(1.0))
    model, _ = tl_model(remainder_weight=0.0, field=field)
    history = model.fit(*spiral_pairs(), batch_size=16, epochs=1, verbose=0).history
    assert history["remainder"] == [0.0]
    assert history["loss"][0] > 0.1  # the regulariser is in the loss


def test_a_shared_layer_is_corrected_on_the_inputs_of_all_its_calls():
    batch = 8

    class CheckingTeacher(kt.DormandPrinceTeacher):
        def solve(self, field, x, dt, t=None):
            tf.debugging.assert_equal(tf.shape(x)[0], 2 * batch, message="the teacher saw one call's states only")
            return super().solve(field, x, dt, t)

    keras.utils.set_random_seed(0)
    ode = kt.TaylorLagrangeODE(keras.layers.Dense(2), duration=DT, correction=kt.MidpointCorrection(hidden_units=(4,)))
    first, second = keras.Input((2,)), keras.Input((2,))
    model = kt.TLNODEModel([first, second], keras.layers.Concatenate()([ode(first), ode(second)]))
    model.compile(
        optimizer="sgd",
        loss="mse",
        correction_every=1,
        correction_steps=1,
        teacher_samples=None,
        teacher=CheckingTeacher(jit_compile=False),
    )
    x, y = spiral_pairs(2 * batch)
    model.fit([x[:batch], x[batch:]], np.concatenate([y[:batch], y[batch:]], axis=1), batch_size=batch, verbose=0)
    assert int(model.correction_optimizer.iterations) == model.correction_steps


def test_a_skipped_correction_update_leaves_the_correction_loss_finite():
    x, y = spiral_pairs()
    y[48:] = np.nan  # the last of 4 batches makes f_θ NaN before its correction phase
    model, _ = tl_model(correction_every=1, correction_steps=1)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False).history
    assert history["teacher_failures"] == [1.0]
    assert np.isfinite(history["correction_loss"][0]) and history["correction_loss"][0] > 0


def test_frozen_dynamics_keep_the_correction_schedule():
    field = keras.layers.Dense(2, trainable=False)
    keras.utils.set_random_seed(0)
    ode = kt.TaylorLagrangeODE(field, duration=DT, correction=kt.MidpointCorrection(hidden_units=(4,), trust=False))
    inputs = keras.Input((2,))
    model = kt.TLNODEModel(inputs, ode(inputs))
    model.compile(optimizer="sgd", loss="mse", correction_every=10, correction_steps=1)
    x, y = spiral_pairs(320)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 20 steps
    assert int(model.optimizer.iterations) == 20
    assert int(model.correction_optimizer.iterations) == 2


@pytest.mark.parametrize("order", [0, 1, 3])
def test_a_field_of_the_wrong_shape_is_rejected_at_every_order(order):
    with pytest.raises(ValueError, match=r"`fn` must return its input's shape.*\(4, 3\).*\(4, 2\)"):
        kt.taylor_coefficients(lambda x: tf.concat([x, x[:, :1]], axis=1), tf.ones((4, 2)), order)


def test_a_teacher_from_another_strategy_scope_is_refused():
    teacher = kt.DormandPrinceTeacher()
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        inputs = keras.Input((2,))
        ode = kt.TaylorLagrangeODE(keras.layers.Dense(2), duration=0.1, correction=kt.MidpointCorrection())
        model = kt.TLNODEModel(inputs, ode(inputs))
        with pytest.raises(ValueError, match="`teacher` was created under another distribution strategy"):
            model.compile(optimizer="sgd", loss="mse", teacher=teacher)
        model.compile(optimizer="sgd", loss="mse", teacher=kt.DormandPrinceTeacher())


TRAINING_ONLY = {"remainder", "correction_loss", "teacher_nfe", "teacher_failures", "trust"}


def test_metrics_are_listed_once_after_compile_fit_compile_fit():
    model, _ = tl_model(metrics=["mae"])
    x, y = spiral_pairs()
    for _ in range(2):
        model.compile(optimizer="sgd", loss="mse", metrics=["mae"], correction_steps=1)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        names = model.metrics_names
        assert len(names) == len(set(names)), names
        assert TRAINING_ONLY | {"loss", "nfe"} <= set(names)


def test_evaluation_reports_nfe_and_the_compiled_metrics_only():
    model, ode = tl_model(metrics=["mae"])
    x, y = spiral_pairs()
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "mae", "nfe"}
    assert logs["nfe"] == ode.nfe
    np.testing.assert_allclose(logs["mae"], np.mean(np.abs(model.predict(x, verbose=0) - y)), rtol=1e-5)
    as_list = model.evaluate(x, y, batch_size=16, verbose=0)
    assert as_list == pytest.approx([logs["loss"], logs["mae"], logs["nfe"]])
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_split=0.25).history
    assert TRAINING_ONLY <= set(history)
    assert {name for name in history if name.startswith("val_")} == {"val_loss", "val_mae", "val_nfe"}


def test_auto_scale_loss_false_leaves_both_optimizers_unwrapped(mixed_precision):
    model, _ = tl_model(auto_scale_loss=False)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(model.correction_optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_compile_config()["auto_scale_loss"] is False


@keras.saving.register_keras_serializable(package="keras_tlnode_tests")
class CountingTeacher(kt.DormandPrinceTeacher):
    """A user's teacher with an argument of its own."""

    def __init__(self, label: str = "mine", **kwargs):
        super().__init__(**kwargs)
        self.label = label

    def get_config(self) -> dict:
        return {**super().get_config(), "label": self.label}


def test_the_teacher_reloads_as_its_registered_class(tmp_path):
    model, _ = tl_model(teacher=CountingTeacher(label="tight", rtol=1e-7, atol=1e-7))
    x, y = spiral_pairs()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "teacher.keras")
    model.save(path)
    teacher = keras.models.load_model(path).teacher
    assert type(teacher) is CountingTeacher and teacher.label == "tight" and teacher.rtol == 1e-7


def test_a_teacher_saved_by_0_1_as_bare_arguments_still_loads():
    model, _ = tl_model()
    config = model.get_compile_config()
    config["teacher"] = {"rtol": 1e-5, "atol": 1e-5, "max_num_steps": 100, "dtype": "float64", "jit_compile": True}
    model.compile_from_config(config)
    assert type(model.teacher) is kt.DormandPrinceTeacher and model.teacher.rtol == 1e-5
