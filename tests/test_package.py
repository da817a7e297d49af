"""The package surface: public names, and the backend check at import."""

import os
import subprocess
import sys

import keras_tlnode


def test_public_api_is_exactly_the_documented_names():
    assert sorted(keras_tlnode.__all__) == [
        "BackupAndRestore",
        "ContinuousNormalizingFlow",
        "DormandPrinceODE",
        "DormandPrinceTeacher",
        "FixedStepODE",
        "MidpointCorrection",
        "TLNODEModel",
        "TaylorLagrangeODE",
        "export_saved_model",
        "taylor_coefficients",
    ]
    for name in keras_tlnode.__all__:
        assert getattr(keras_tlnode, name).__doc__


def test_import_under_another_keras_backend_says_how_to_fix_it():
    # No other backend (JAX, PyTorch) is installed here, and Keras's "numpy"
    # backend imports JAX, so the subprocess makes Keras report another backend.
    script = "import keras; keras.backend.backend = lambda: 'jax'; import keras_tlnode"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    assert "ImportError" in run.stderr
    assert "KERAS_BACKEND=tensorflow" in run.stderr
