"""Serves a model with a state and a duration input where neither Keras nor keras_tlnode can be imported.

Usage: serve_state_and_duration.py DIRECTORY, the directory where
tests/test_spans.py wrote the helper's export (served/), Keras's own (keras/)
and the inputs (x.npy, d.npy). Prints the served outputs as a list and the
trajectory's shape.
"""

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

# None in sys.modules makes an import fail (the import system's documented way to block one);
# typeshed types the values as modules only.
sys.modules["keras"] = None  # type: ignore[assignment]
sys.modules["keras_tlnode"] = None  # type: ignore[assignment]
directory = Path(sys.argv[1])
served = tf.saved_model.load(str(directory / "served"))
x, d = np.load(directory / "x.npy"), np.load(directory / "d.npy")
named = served.signatures["serving_default"](state=tf.constant(x), duration=tf.constant(d))
assert np.allclose(next(iter(named.values())).numpy(), served.serve([x, d]).numpy())
keras_served = tf.saved_model.load(str(directory / "keras"))
assert np.allclose(keras_served.serve([x, d]).numpy(), served.serve([x, d]).numpy(), rtol=0, atol=1e-6)
print(served.serve([x, d]).numpy().tolist(), served.trajectory([x, d]).numpy().shape)
