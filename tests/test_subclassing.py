"""Subclassing TLNODEModel, the three ways Keras allows: a subclass built functionally, a subclass with its own
`call` (layers made in `__init__`), and one called before `compile`; each trains both phases, saves and reloads."""

import keras
import numpy as np
from test_keras_training_features import DT, spiral_pairs

import keras_tlnode as kt


@keras.saving.register_keras_serializable(package="keras_tlnode_tests")
class MyModel(kt.TLNODEModel):
    """A user's subclass, built the functional way (module level, so that a `.keras` file can find it)."""

    def marker(self) -> str:
        return "mine"


def test_a_user_subclass_builds_functionally_trains_saves_and_reloads(tmp_path):
    for _ in range(2):  # the second build once failed with an MRO error
        keras.utils.set_random_seed(0)
        inputs = keras.Input((2,))
        ode = kt.TaylorLagrangeODE(
            keras.layers.Dense(2), duration=DT, correction=kt.MidpointCorrection(hidden_units=(4,))
        )
        model = MyModel(inputs, ode(inputs))
        assert isinstance(model, MyModel) and model.marker() == "mine"
    plain = keras.Model(inputs, inputs)  # Keras's own classes are untouched
    assert type(plain).__name__ == "Functional"
    model.compile(optimizer="sgd", loss="mse", correction_every=1, correction_steps=1)
    x, y = spiral_pairs()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert history["correction_loss"][0] > 0
    path = str(tmp_path / "mine.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, MyModel) and restored.marker() == "mine"
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    assert restored.correction_every == 1


@keras.saving.register_keras_serializable(package="keras_tlnode_tests")
class SubclassedModel(kt.TLNODEModel):
    """A subclassed model (its layers made in __init__, its graph in call)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ode = kt.TaylorLagrangeODE(
            keras.layers.Dense(2), duration=DT, correction=kt.MidpointCorrection(hidden_units=(4,))
        )

    def call(self, x):
        return self.ode(x)


def test_a_subclass_called_before_compile_trains_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    model = SubclassedModel()
    x, y = spiral_pairs()
    model(x[:2])  # inspected first: built before compile
    model.compile(optimizer="sgd", loss="mse", correction_every=1, correction_steps=1)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert history["loss"][1] < history["loss"][0] and history["correction_loss"][0] > 0
    path = str(tmp_path / "subclassed.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, SubclassedModel) and restored.correction_every == 1
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    assert len(restored.metrics_names) == len(set(restored.metrics_names))


def test_a_subclass_with_its_own_call_trains_both_phases():
    class Classifier(kt.TLNODEModel):
        def __init__(self):
            super().__init__()
            self.encoder = keras.layers.Dense(3)
            self.ode = kt.TaylorLagrangeODE(
                keras.layers.Dense(3, activation="tanh"), correction=kt.MidpointCorrection(), remainder_weight=0.1
            )
            self.head = keras.layers.Dense(1)

        def call(self, x):
            return self.head(self.ode(self.encoder(x)))

    keras.utils.set_random_seed(5)
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    y = x[:, :1] - x[:, 1:2]
    model = Classifier()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", correction_every=2, correction_steps=1)
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    assert history.history["remainder"][-1] > 0
    assert history.history["correction_loss"][-1] > 0
