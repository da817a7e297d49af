"""The package surface: public names, and the backend check at import."""

import subprocess

import child_process

import keras_tlnode


def test_public_api_is_exactly_the_documented_names():
    assert sorted(keras_tlnode.__all__) == [
        "BackupAndRestore",
        "ContinuousNormalizingFlow",
        "DormandPrinceODE",
        "DormandPrinceTeacher",
        "FixedStepODE",
        "MidpointCorrection",
        "RK4Teacher",
        "TLNODEModel",
        "TaylorLagrangeODE",
        "export_saved_model",
        "taylor_coefficients",
    ]
    for name in keras_tlnode.__all__:
        assert getattr(keras_tlnode, name).__doc__


def test_import_under_another_keras_backend_says_how_to_fix_it():
    # The child makes Keras report another backend (see the program's docstring).
    env = child_process.environment(TF_CPP_MIN_LOG_LEVEL="3")
    command = child_process.command("import_under_another_backend.py")
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    assert "ImportError" in run.stderr
    assert "KERAS_BACKEND=tensorflow" in run.stderr
