"""`.keras` files saved by each released version load and predict as they did (tests/data/saved_<version>/).

Each version's files are written once by tests/programs/save_version_models.py and never rewritten: they
stand for what users of that version have on disk. Configs saved by 0.1 are tested in test_layers.py,
test_correction.py and test_keras_training_features.py.
"""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_tlnode as kt

DATA = Path(__file__).resolve().parent / "data"
SAVED = sorted((path.parent.name, path.stem) for path in DATA.glob("saved_*/*.keras"))


def _register_the_saved_classes() -> None:
    """Imports the writer, which registers the test field the saved flow uses."""
    path = Path(__file__).resolve().parent / "programs" / "save_version_models.py"
    spec = importlib.util.spec_from_file_location("save_version_models", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


_register_the_saved_classes()


def test_every_kind_is_saved_for_version_0_2():
    assert {name for version, name in SAVED if version == "saved_0_2"} == {"corrected", "fixed_step", "flow"}


@pytest.mark.parametrize(("version", "name"), SAVED)
def test_a_saved_model_loads_and_predicts_as_it_did(version, name):
    model = keras.saving.load_model(DATA / version / f"{name}.keras")
    stored = np.load(DATA / version / f"{name}.npz")
    arguments = [stored[f"arr_{i}"] for i in range(len(stored.files) - 1)]
    predicted = model.predict(arguments if len(arguments) > 1 else arguments[0], verbose=0)
    np.testing.assert_allclose(predicted, stored["outputs"], rtol=1e-6, atol=1e-6)
    if name == "corrected":
        assert isinstance(model, kt.TLNODEModel) and model.correction_every == 3
    if name == "flow":
        assert isinstance(model, kt.ContinuousNormalizingFlow) and model.correction is not None
    if model.compiled:  # trained 4 steps before saving: the optimizer's state came back with the weights
        assert int(model.optimizer.iterations) == 4
