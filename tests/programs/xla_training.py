"""Trains and predicts with each case of tests/test_xla_compilations.py under XLA, for its compilation log.

Usage: xla_training.py STEPS CASE... with CASE "<order>-<kind>", kind one of
tanh, gelu, forced, corrected, flow. Each case prints "CASE <case>" to stdout
and stderr (where XLA logs its compilations, after the marker) and "DONE <case>"
to stdout when it ends.
"""

import sys

import keras
import numpy as np
import tensorflow as tf

import keras_tlnode as kt


class Forced(keras.layers.Layer):
    # f(x, t) = W2 tanh(W1 [x, t]) + sin(t) b: a time-dependent field that concatenates.
    def build(self, input_shape):
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(2)
        self.b = self.add_weight(shape=(2,), initializer="ones")

    def call(self, inputs):
        x, t = inputs
        return self.out(self.hidden(keras.layers.Concatenate()([x, t]))) + tf.sin(t) * self.b


def model(order, kind):
    keras.utils.set_random_seed(order)
    compiled = {}
    if kind == "forced":
        ode = kt.TaylorLagrangeODE(Forced(), order=order, num_steps=2, duration=0.2, time_dependent=True)
    elif kind == "flow":  # a ContinuousNormalizingFlow: the steps' log-determinants, the fold barrier
        flow = kt.ContinuousNormalizingFlow(Forced(), num_steps=2, correction=kt.MidpointCorrection(hidden_units=(8,)))
        flow.compile(optimizer="adam", jit_compile=True, correction_every=2)
        return flow
    elif kind == "corrected":  # TLNODEModel's correction phase (teacher, Γ updates) at every other step
        field = keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
        correction = kt.MidpointCorrection(hidden_units=(8,))
        ode = kt.TaylorLagrangeODE(field, order=order, num_steps=2, duration=0.2, correction=correction)
        compiled = {"correction_every": 2}
    else:
        field = keras.Sequential([keras.layers.Dense(8, activation=kind), keras.layers.Dense(2)])
        ode = kt.TaylorLagrangeODE(field, order=order, num_steps=2, duration=0.2)
    inputs = keras.Input((2,))
    tlnode = (kt.TLNODEModel if compiled else keras.Model)(inputs, ode(inputs))
    tlnode.compile(optimizer="adam", loss="mse", jit_compile=True, **compiled)
    return tlnode


steps = int(sys.argv[1])
for case in sys.argv[2:]:
    order, kind = case.split("-")
    tlnode = model(int(order), kind)
    x = np.random.default_rng(0).uniform(-1, 1, (16 * steps, 2)).astype("float32")
    print("CASE", case, flush=True)
    print("CASE", case, file=sys.stderr, flush=True)  # marks where its compilations start
    flow = isinstance(tlnode, kt.ContinuousNormalizingFlow)
    tlnode.fit(x, None if flow else np.tanh(x), batch_size=16, epochs=1, verbose=0)
    if isinstance(tlnode, kt.TLNODEModel):  # the phase ran and fitted Γ_φ
        assert float(tlnode.get_metrics_result()["correction_loss"]) > 0
    tlnode.predict(x + 1, batch_size=16, verbose=0)
    sys.stderr.flush()
    print("DONE", case, flush=True)
