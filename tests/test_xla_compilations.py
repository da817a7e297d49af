"""XLA compiles a Taylor-Lagrange training and prediction step once (issue 11), counted from XLA's own log.

Before, from order 2 on, XLA's constant analysis demanded the states and weights
as compile-time constants, so `fit` compiled again at every step. Counting needs
XLA's compilation log (`TF_CPP_VMODULE`), which is read when TensorFlow loads:
the training runs in a child process.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import textwrap

import pytest

STEPS = 8  # a recompiling step would be counted 8 times

CHILD = textwrap.dedent(
    r"""
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
    """
)


def compilations(cases: list[str]) -> dict[str, collections.Counter]:
    """Per case, how often XLA compiled each function (XLA logs every compilation with a running count)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "device_compilation_profiler=1"}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(STEPS), *cases], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-5000:]
    # XLA logs to the same stream as the case markers, after them: each
    # compilation belongs to the case marked last.
    counts: dict[str, collections.Counter] = {}
    case = None
    for line in run.stderr.splitlines():
        if line.startswith("CASE "):
            case = line.split()[1]
        elif match := re.search(r"Compiled (\S+) (\d+) times", line):
            counts.setdefault(case, collections.Counter())[match[1]] = int(match[2])
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("DONE")] == cases
    return counts


ORDERS = (1, 2, 3)
# Each order meets two of the three fields, and each field an order: the time-dependent field, which
# concatenates, at both (the case that recompiled); tanh at order 2 and GELU (erf's rule) at order 3;
# a corrected TLNODEModel, whose correction phase steps from the teacher's states, at order 2; and a
# corrected flow (the time-dependent field, the steps' exact log-determinants) at its default order 1.
KINDS = {1: ("flow",), 2: ("tanh", "forced", "corrected"), 3: ("gelu", "forced")}


@pytest.fixture(scope="module")
def counts() -> dict[str, collections.Counter]:
    """Every case of every order in one child process (one TensorFlow start)."""
    return compilations([f"{order}-{kind}" for order in ORDERS for kind in KINDS[order]])


@pytest.mark.parametrize("order", ORDERS)
def test_xla_training_compiles_once(order, counts):
    for kind in KINDS[order]:
        found = counts.get(f"{order}-{kind}", collections.Counter())
        steps = {name: count for name, count in found.items() if "step_on_data" in name}
        # One training and one prediction function, each compiled once over
        # its steps (and as many prediction batches, on new inputs).
        assert len(steps) == 2, (kind, found)
        assert set(steps.values()) == {1}, (kind, found)
