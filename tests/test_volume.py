"""keras_tlnode/volume.py's log-determinant, against LAPACK's (NumPy), in graph mode and under XLA."""

import numpy as np
import pytest
import tensorflow as tf

from keras_tlnode.volume import slogdet


def _matrices(d: int, dtype: str) -> np.ndarray:
    """Random matrices of both signs of determinant, plus a zero and a rank-deficient one."""
    matrices = np.random.default_rng(d).normal(size=(40, d, d)).astype(dtype)
    matrices[0] = 0.0
    if d > 1:
        matrices[1, :, 0] = matrices[1, :, 1]
    return matrices


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("d", [1, 2, 3, 8, 64])
def test_slogdet_matches_lapacks(d, jit_compile):
    matrices = _matrices(d, "float64")
    sign, log_abs = tf.function(slogdet, jit_compile=jit_compile)(tf.constant(matrices))
    expected_sign, expected_log_abs = np.linalg.slogdet(matrices[2:])
    assert sign.numpy()[0] == 0 and log_abs.numpy()[0] == -np.inf
    if d > 1:  # singular by construction: rounding may leave a tiny pivot, never a determinant of the usual size
        assert sign.numpy()[1] == 0 or log_abs.numpy()[1] < np.median(expected_log_abs) - 20
    assert {-1.0, 1.0} <= set(expected_sign)  # both signs are tested
    np.testing.assert_array_equal(sign.numpy()[2:], expected_sign)
    np.testing.assert_allclose(log_abs.numpy()[2:], expected_log_abs, rtol=1e-12, atol=1e-11)


def test_slogdet_gradient_is_the_inverse_transpose():
    matrices = tf.constant(_matrices(3, "float64")[2:])
    with tf.GradientTape() as tape:
        tape.watch(matrices)
        log_abs = slogdet(matrices)[1]
    gradient = tape.gradient(log_abs, matrices).numpy()
    np.testing.assert_allclose(gradient, np.linalg.inv(matrices.numpy()).transpose(0, 2, 1), rtol=1e-10)


def test_slogdet_keeps_float32():
    sign, log_abs = slogdet(tf.constant(_matrices(2, "float32")))
    assert sign.dtype == log_abs.dtype == tf.float32
