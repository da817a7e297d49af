"""`import keras_tlnode` under a Keras that reports another backend: it must fail, saying how to fix it.

Run by tests/test_package.py. No other backend (JAX, PyTorch) is installed
there, and Keras's "numpy" backend imports JAX, so this process makes Keras
report another backend.
"""

import keras

keras.backend.backend = lambda: "jax"
import keras_tlnode  # noqa: E402, F401
