"""Taylor coefficients on a TensorFlow without the JVP hook: the package's fallback to TensorFlow's own forward mode.

Run by tests/test_compat.py, in a process of its own: it deletes the hook before
the package is imported. Prints "fallback ok".
"""

import numpy as np
import tensorflow as tf
from tensorflow.python import pywrap_tfe

del pywrap_tfe.TFE_Py_RegisterJVPFunction  # a TensorFlow without the hook
import keras_tlnode as kt  # noqa: E402
from keras_tlnode import jvp_rules  # noqa: E402

assert not jvp_rules.INLINED


def unused(*args):
    raise AssertionError("the inlined rules were registered")


jvp_rules._jvp = unused
x = np.array([[0.3], [-0.7]], "float32")
coefficients = tf.function(lambda x: kt.taylor_coefficients(tf.square, x, 3))(x).numpy()
# dx/dt = x^2: the k-th derivative of the solution is k! x^(k+1).
expected = np.stack([np.prod(np.arange(1, k + 1)) * x ** (k + 1) for k in range(1, 5)])
np.testing.assert_allclose(coefficients, expected, rtol=1e-5)
print("fallback ok")
