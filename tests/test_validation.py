"""One exception policy: TypeError for a wrong type, ValueError for a wrong value, naming the argument."""

import keras
import pytest

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
