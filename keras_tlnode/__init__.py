"""keras_tlnode: Taylor-Lagrange neural ODEs (TL-NODE) as Keras 3 layers.

Public API: `taylor_coefficients`, `TaylorLagrangeODE`, `MidpointCorrection`,
`TLNODEModel` and its teachers, `DormandPrinceTeacher` and `RK4Teacher`, `BackupAndRestore`
for fault-tolerant training, `export_saved_model` for serving, and the
baselines: `FixedStepODE` (Euler, Heun, RK4) and `DormandPrinceODE` (adaptive);
`ContinuousNormalizingFlow` for density estimation.
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_tlnode needs Keras's TensorFlow backend, but Keras is using "
        f"{_keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras."
    )

from keras_tlnode.adaptive import DormandPrinceODE
from keras_tlnode.backup import BackupAndRestore
from keras_tlnode.correction import MidpointCorrection
from keras_tlnode.export import export_saved_model
from keras_tlnode.flow import ContinuousNormalizingFlow
from keras_tlnode.layers import FixedStepODE, TaylorLagrangeODE
from keras_tlnode.taylor import taylor_coefficients
from keras_tlnode.teacher import DormandPrinceTeacher, RK4Teacher
from keras_tlnode.training import TLNODEModel

__all__ = [
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
__version__ = "0.2.0"
