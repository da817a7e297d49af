"""Bad arguments and bad data, in one place: an early TypeError for a wrong type, a ValueError for a wrong
value, each naming the argument and what it expects."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt


def tl(**kwargs):
    return kt.TaylorLagrangeODE(keras.layers.Dense(2), **kwargs)


def compiled(**kwargs):
    inputs = keras.Input((2,))
    ode = kt.TaylorLagrangeODE(keras.layers.Dense(2), correction=kt.MidpointCorrection())
    kt.TLNODEModel(inputs, ode(inputs)).compile(optimizer="sgd", loss="mse", **kwargs)


def exported(tmp_path, **kwargs):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, kt.TaylorLagrangeODE(keras.layers.Dense(2))(inputs))
    kt.export_saved_model(model, tmp_path / "m", **kwargs)


CASES = {
    "num_steps": (lambda bad: tl(num_steps=bad), "2", 0),
    "order": (lambda bad: tl(order=bad), 1.0, 7),
    "duration": (lambda bad: tl(duration=bad), "1", float("nan")),
    "t_initial": (lambda bad: tl(t_initial=bad), None, float("inf")),
    "remainder_weight": (lambda bad: tl(remainder_weight=bad), [0.1], -0.1),
    "method": (lambda bad: kt.FixedStepODE(keras.layers.Dense(2), method=bad), 4, "dopri5"),
    "rtol": (lambda bad: kt.DormandPrinceODE(keras.layers.Dense(2), rtol=bad), "1e-6", 0.0),
    "max_num_steps": (lambda bad: kt.DormandPrinceTeacher(max_num_steps=bad), 10.0, 0),
    "mode": (lambda bad: kt.MidpointCorrection(mode=bad), 2, "diagonal"),
    "hidden_units": (lambda bad: kt.MidpointCorrection(hidden_units=bad), (2.5,), (0,)),
    "correction_every": (lambda bad: compiled(correction_every=bad), 1.5, 0),
    "teacher_samples": (lambda bad: compiled(teacher_samples=bad), "all", 0),
}


@pytest.mark.parametrize("argument", sorted(CASES))
def test_wrong_type_is_a_type_error_and_wrong_value_a_value_error(argument):
    make, wrong_type, wrong_value = CASES[argument]
    with pytest.raises(TypeError, match=f"`{argument}`"):
        make(wrong_type)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make(wrong_value)


def test_export_chunk_size(tmp_path):
    with pytest.raises(TypeError, match="`chunk_size`"):
        exported(tmp_path, chunk_size=2.5)
    with pytest.raises(ValueError, match="`chunk_size`"):
        exported(tmp_path, chunk_size=0)


class WrongShape(keras.layers.Layer):
    """A vector field whose output is twice as wide as the state."""

    def call(self, x):
        return tf.concat([x, x], axis=-1)


class TimeField(keras.layers.Layer):
    """f(z, t) = z: a flow's field."""

    def call(self, inputs):
        return inputs[0]


def flow(**kwargs):
    return kt.ContinuousNormalizingFlow(TimeField(), **kwargs)


def rk4(**kwargs):
    return kt.FixedStepODE(keras.layers.Dense(2), **kwargs)


def model(**kwargs):
    inputs = keras.Input((2,))
    kt.TLNODEModel(inputs, kt.TaylorLagrangeODE(keras.layers.Dense(2))(inputs)).compile(
        optimizer="adam", loss="mse", **kwargs
    )


STATES = np.zeros((3, 2), "float32")

# (what is called, the error, a pattern its message must match)
BAD = {
    "order, a float": (lambda: tl(order=1.0), TypeError, "order"),
    "order below 0": (lambda: tl(order=-1), ValueError, "order"),
    "num_steps, a float": (lambda: tl(num_steps=2.0), TypeError, "num_steps"),
    "duration 0": (lambda: tl(duration=0.0), ValueError, "duration"),
    "duration < 0": (lambda: tl(duration=-1.0), ValueError, "duration"),
    "duration inf": (lambda: tl(duration=float("inf")), ValueError, "duration"),
    "duration and t_final": (lambda: tl(duration=1.0, t_final=1.0), ValueError, "duration"),
    "correction, a string": (lambda: tl(correction="midpoint"), TypeError, "correction"),
    "a classical method in TaylorLagrangeODE": (
        lambda: tl(method="rk4"),
        ValueError,
        re.escape("use keras_tlnode.FixedStepODE(vector_field, method='rk4'"),
    ),
    "a Taylor method in FixedStepODE": (lambda: rk4(method="taylor_lagrange"), ValueError, "method"),
    "vector_field, a function": (lambda: kt.TaylorLagrangeODE(lambda x: -x), TypeError, "vector_field"),
    "a field of the wrong width, symbolic": (
        lambda: kt.TaylorLagrangeODE(keras.layers.Dense(3))(keras.Input((2,))),
        ValueError,
        "vector_field",
    ),
    "a field of the wrong width, eager": (
        lambda: kt.TaylorLagrangeODE(WrongShape())(tf.ones((2, 2))),
        ValueError,
        "vector_field",
    ),
    "a field of the wrong width, taylor_coefficients": (
        lambda: kt.taylor_coefficients(lambda x: tf.concat([x, x[:, :1]], axis=1), tf.ones((4, 2)), 1),
        ValueError,
        r"`fn` must return its input's shape.*\(4, 3\).*\(4, 2\)",
    ),
    "integer states, symbolic": (lambda: tl()(keras.Input((2,), dtype="int32")), TypeError, "inputs"),
    "integer states, eager": (lambda: tl()(tf.ones((2, 2), dtype=tf.int32)), TypeError, "inputs"),
    "rank-1 states": (lambda: tl()(keras.Input(())), ValueError, r"at least one state dimension.*\(None,\)"),
    "duration 0 for a sample": (lambda: tl()([STATES, np.float32([0.1, 0.0, 0.2])]), ValueError, "`duration`"),
    "duration < 0 for a sample": (lambda: tl()([STATES, np.float32([0.1, -1.0, 0.2])]), ValueError, "`duration`"),
    "duration NaN for a sample": (lambda: tl()([STATES, np.float32([0.1, np.nan, 0.2])]), ValueError, "`duration`"),
    "durations of shape (3, 2)": (
        lambda: tl()([STATES, np.ones((3, 2), "float32")]),
        ValueError,
        "`duration` must have shape",
    ),
    "integer durations": (lambda: tl()([STATES, np.ones(3, "int32")]), TypeError, "`duration`"),
    "times with [x, duration]": (
        lambda: tl()([STATES, np.ones(3, "float32")], times=np.float32([0, 1])),
        ValueError,
        "`times=`.*replace `\\[x, duration\\]`",
    ),
    "times with return_trajectory": (
        lambda: tl(return_trajectory=True)(STATES, times=np.float32([0, 1])),
        ValueError,
        "return_trajectory=False",
    ),
    "integer times": (lambda: tl()(STATES, times=np.int32([0, 1])), TypeError, "`times`"),
    "one observation time": (lambda: tl()(STATES, times=np.float32([0])), ValueError, "`times`.*T >= 2"),
    "times of rank 3": (lambda: tl()(STATES, times=np.zeros((3, 2, 1), "float32")), ValueError, "`times`"),
    "times not increasing": (lambda: tl()(STATES, times=np.float32([0, 0.5, 0.5])), ValueError, "`times`.*increasing"),
    "times NaN": (lambda: tl()(STATES, times=np.float32([0, np.nan])), ValueError, "`times`.*finite"),
    "times for another batch": (
        lambda: tl()(STATES, times=np.float32([[0, 1], [0, 2]])),
        ValueError,
        "`times`.*batch 3",
    ),
    "times, symbolic, T = 1": (
        lambda: tl()(keras.Input((2,)), times=keras.Input((1,))),
        ValueError,
        "`times`.*T >= 2",
    ),
    "DormandPrinceODE atol inf": (
        lambda: kt.DormandPrinceODE(keras.layers.Dense(2), atol=float("inf")),
        ValueError,
        "`atol`",
    ),
    "DormandPrinceODE num_steps 0": (
        lambda: kt.DormandPrinceODE(keras.layers.Dense(2), num_steps=0),
        ValueError,
        "`num_steps`",
    ),
    "DormandPrinceODE duration < 0": (
        lambda: kt.DormandPrinceODE(keras.layers.Dense(2), duration=-1.0),
        ValueError,
        "`duration`",
    ),
    "network, a string": (lambda: kt.MidpointCorrection(network="mlp"), TypeError, "network"),
    "base_value NaN": (lambda: kt.MidpointCorrection(base_value=float("nan")), ValueError, "base_value"),
    "base_value 1.5, bounded": (lambda: kt.MidpointCorrection(base_value=1.5, bounded=True), ValueError, "base_value"),
    "bounded in matrix mode": (lambda: kt.MidpointCorrection(mode="matrix", bounded=True), ValueError, "bounded"),
    "bounded, a string": (lambda: kt.MidpointCorrection(bounded="yes"), TypeError, "bounded"),
    "trust, an int": (lambda: kt.MidpointCorrection(trust=1), TypeError, "trust"),
    "features 0": (lambda: kt.MidpointCorrection(features=0), ValueError, "features"),
    "features above the state's size": (
        lambda: kt.MidpointCorrection(base_value=0.3, features=4).build((None, 3)),
        ValueError,
        "features",
    ),
    "a network of the wrong width, vector mode": (
        lambda: kt.MidpointCorrection(network=keras.layers.Dense(4), base_value=0.3).build((None, 3)),
        ValueError,
        "n = 3",
    ),
    "a network of the wrong width, matrix mode": (
        lambda: kt.MidpointCorrection(mode="matrix", network=keras.layers.Dense(3), base_value=0.3).build((None, 3)),
        ValueError,
        "n·n = 9",
    ),
    "matrix mode on images": (
        lambda: kt.TaylorLagrangeODE(
            keras.layers.Conv2D(2, 3, padding="same"), correction=kt.MidpointCorrection(mode="matrix")
        )(keras.Input((4, 4, 2))),
        ValueError,
        "flat states",
    ),
    "teacher, a string": (lambda: model(teacher="dopri5"), TypeError, "teacher"),
    "RK4Teacher dtype": (lambda: kt.RK4Teacher(dtype="int32"), ValueError, "dtype"),
    "RK4Teacher num_steps 0": (lambda: kt.RK4Teacher(num_steps=0), ValueError, "num_steps"),
    "RK4Teacher num_steps 8.0": (lambda: kt.RK4Teacher(num_steps=8.0), TypeError, "num_steps"),
    "backup_dir empty": (lambda: kt.BackupAndRestore(""), ValueError, "backup_dir"),
    "save_freq 0": (lambda: kt.BackupAndRestore("backups", save_freq=0), ValueError, "save_freq"),
    "save_freq 'batch'": (lambda: kt.BackupAndRestore("backups", save_freq="batch"), TypeError, "save_freq"),
    "save_freq True": (lambda: kt.BackupAndRestore("backups", save_freq=True), TypeError, "save_freq"),
    "delete_checkpoint 1": (
        lambda: kt.BackupAndRestore("backups", delete_checkpoint=1),
        TypeError,
        "delete_checkpoint",
    ),
    "flow trace": (lambda: flow(trace="probes"), ValueError, "trace"),
    "flow seed": (lambda: flow(seed="one"), TypeError, "seed"),
    "flow num_steps 0": (lambda: flow(num_steps=0), ValueError, "num_steps"),
    "flow fold_weight < 0": (lambda: flow(fold_weight=-1.0), ValueError, "fold_weight"),
    "flow correction with RK4": (
        lambda: flow(method="rk4", correction=kt.MidpointCorrection()),
        ValueError,
        "correction",
    ),
    "flow tolerance 0": (lambda: flow().continuous_log_prob(np.zeros((2, 2)), 0.0), ValueError, "tolerance"),
    "flow on integers": (lambda: flow().log_prob(np.zeros((2, 2), "int32")), TypeError, "floating"),
    "flow on images": (lambda: flow().log_prob(np.zeros((2, 2, 2), "float32")), ValueError, "shape"),
    "flow sampled before it is built": (lambda: flow().sample(3), ValueError, "built"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_and_data_are_named(case):
    call, error, pattern = BAD[case]
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize(
    ("arguments", "fewest"),
    [
        ({"method": "euler", "num_steps": 3}, 4),
        ({"method": "rk4", "num_steps": 1}, 2),
        ({"order": 1, "num_steps": 3}, 4),
        ({"order": 2, "num_steps": 7}, 8),
    ],
)
def test_hutchinson_training_with_too_few_steps_is_refused(arguments, fewest):
    """Its steps folded there on the 64-D digits (keras_tlnode/flow.py, HUTCHINSON_MIN_STEPS)."""
    with pytest.raises(ValueError, match=f"`num_steps` must be >= {fewest} .*trace=.exact."):
        flow(trace="hutchinson", **arguments)
    # The same steps with exact determinants and the fold penalty, and the fewest with Hutchinson's, are accepted.
    flow(**arguments)
    flow(trace="hutchinson", **{**arguments, "num_steps": fewest})
