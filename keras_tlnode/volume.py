"""The change of volume of a fixed-step map, and its inverse: what makes a flow's likelihood a density.

A fixed-step flow computes the map Φ = S_{K-1} ∘ … ∘ S_0, one step S_k per
step of the rollout. By the change of variables, log N(Φ(x)) + log|det ∂Φ/∂x|
is a probability density exactly when Φ is one-to-one, whatever the step's
error against the continuous flow; and log|det ∂Φ/∂x| = Σ_k log|det ∂S_k/∂z|
at the states z_k the rollout passes through. Each step's Jacobian comes from
one forward-mode pass over the batch repeated d times, copy i pushed along the
basis direction e_i: exact, at about d times the step's cost.

A step that folds (det ∂S_k/∂z ≤ 0 somewhere) is not one-to-one, and no
density exists there: the log-determinant is NaN at such points rather than a
number that would look like a likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from keras_tlnode.taylor import traced_pass

# step(states, k) -> (next states, remainder), as `rollout` takes it.
StepFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]

NEWTON_ITERATIONS = 60
# A step whose Jacobian determinant is below this somewhere is near a fold: the flow's
# training penalises the shortfall (a determinant can be this small and legitimate,
# where the density is ~0; below 0 the step is not one-to-one).
FOLD_FLOOR = 0.1
FOLD_BARRIER_REACH = 1e-3  # the barrier is logarithmic from FOLD_FLOOR down to this fraction of it, then linear


def step_jacobian(step: StepFn, z: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(S(z), (∂S/∂z)ᵀ, remainder)` of one step from flat states `z` `(batch, d)`; the Jacobian `(batch, d, d)`
    transposed (row i is ∂S/∂z e_i), as it comes from the tangents. Its determinant is the Jacobian's.

    The step and its d tangents run in one traced pass (`taylor.traced_pass`):
    the step's Taylor passes run inline there, so that the tangents use the
    package's forward-mode rules through them and the gradient of it all
    (training) compiles under XLA. The reshapes stay outside that pass, and no
    transpose is taken: inside it, their gradients would take shapes and
    permutations across a function boundary, which XLA cannot compile.
    """
    d = z.shape[-1]
    # Each sample d times, copy i pushed along e_i; tiled by constant multiples (`tf.repeat` of
    # a batch unknown at trace time computes its multiples, and XLA cannot compile their gradient).
    repeated = tf.reshape(tf.tile(z[:, None, :], [1, d, 1]), [-1, d])
    basis = tf.reshape(tf.tile(tf.eye(d, dtype=z.dtype)[None], tf.stack([tf.shape(z)[0], 1, 1])), [-1, d])
    following, columns, remainder = traced_pass(_tangents, step, repeated, basis, k)
    # Every copy of a sample steps to the same point: the first copy's.
    return following[::d], tf.reshape(columns, [-1, d, d]), remainder[::d]


def _tangents(step: StepFn, z: tf.Tensor, tangents: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(S(z), ∂S/∂z · tangents, remainder)`: the step and its directional derivatives, row by row."""
    with tf.autodiff.ForwardAccumulator(z, tangents) as accumulator:
        following, remainder = step(z, k)
    return following, accumulator.jvp(following, unconnected_gradients=tf.UnconnectedGradients.ZERO), remainder


def with_log_det(step: StepFn, barrier: bool) -> StepFn:
    """`step` on the flat state [z, Δ, F]: z ↦ S(z), Δ ↦ Δ + log det ∂S/∂z, F ↦ F + fold_barrier(det ∂S/∂z).

    Outside training (`barrier` False), Δ is NaN where a determinant is ≤ 0
    (the step folds: no density there), and F stays 0: the inference path does
    no training-only work. In training (`barrier`), Δ adds log|det| everywhere
    and F a barrier on how close each step comes to folding: a NaN would drop a
    folded point from the likelihood and its gradient, which rewarded folding
    (measured: an uncorrected 2-step flow on eight Gaussians folded mid-run and
    its test NLL went from 2.15 to 13), whereas log|det| → -∞ at a fold makes
    the likelihood itself repel it, and the barrier pushes folded points back.
    """

    def augmented(state: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        z, total, shortfall = state[:, :-2], state[:, -2:-1], state[:, -1:]
        following, transposed, remainder = step_jacobian(step, z, k)
        sign, log_abs = slogdet(transposed)
        if barrier:
            log_det = log_abs
            shortfall += fold_barrier(sign, log_abs)[:, None]
        else:
            log_det = tf.where(sign > 0, log_abs, tf.constant(float("nan"), log_abs.dtype))
        next_state = tf.concat([following, total + log_det[:, None], shortfall], -1)
        return next_state, remainder

    return augmented


def slogdet(matrices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(sign, log|det|)` of a batch of square matrices `(batch, d, d)`, d known at trace time, as `tf.linalg.slogdet`.

    By Gaussian elimination with partial pivoting, in ops XLA compiles: TensorFlow's
    `slogdet` (and `det`, `lu`) has no XLA kernel, and a flow compiled with
    `jit_compile=True` failed on it. Eliminated column by column, unrolled (d
    steps of O(d²) work per matrix); the sign is 0 (log|det| = -inf) for a singular matrix.
    """
    d = matrices.shape[-1]
    rows = tf.range(d)
    one = tf.ones_like(matrices[:, 0, 0])
    sign, log_abs = one, tf.zeros_like(one)
    for k in range(d):
        column = tf.abs(matrices[:, :, k])
        pivot_row = tf.argmax(tf.where(rows >= k, column, -tf.ones_like(column)), axis=-1, output_type=tf.int32)
        swapped = tf.where(rows == k, pivot_row[:, None], tf.where(rows == pivot_row[:, None], k, rows))
        matrices = tf.gather(matrices, swapped, batch_dims=1)
        pivot = matrices[:, k, k]
        sign *= tf.where(pivot_row == k, one, -one) * tf.sign(pivot)
        log_abs += tf.math.log(tf.abs(pivot))
        if k + 1 < d:
            factors = matrices[:, :, k] / tf.where(pivot == 0, one, pivot)[:, None]
            factors = tf.where(rows > k, factors, tf.zeros_like(factors))
            matrices -= factors[:, :, None] * matrices[:, k : k + 1, :]
    return sign, log_abs


def fold_barrier(sign: tf.Tensor, log_abs: tf.Tensor) -> tf.Tensor:
    """0 for a determinant above `FOLD_FLOOR`, log(FOLD_FLOOR / det) below it, and past det = δ = FOLD_FLOOR/1000
    a line of the same slope that goes on through 0 and below: finite everywhere, steep towards a fold.

    A linear penalty on det alone is too weak: maximising the likelihood squeezes
    the volume between the data towards 0, and pushed steps there over the fold.
    """
    floor, delta = math.log(FOLD_FLOOR), math.log(FOLD_FLOOR * FOLD_BARRIER_REACH)
    above = sign > 0
    logarithmic = tf.nn.relu(floor - tf.where(above, log_abs, floor))
    determinant = tf.where(above, tf.exp(tf.minimum(log_abs, delta)), -tf.exp(tf.minimum(log_abs, 80.0)))
    linear = floor - delta + (1.0 - determinant / math.exp(delta))
    return tf.where(above & (log_abs > delta), logarithmic, linear)


def invert_step(step: StepFn, y: tf.Tensor, k: tf.Tensor, tolerance: float | tf.Tensor) -> tf.Tensor:
    """The z with S(z) = y, by damped Newton iterations from z = y, with the exact Jacobian at each iterate.

    Each sample takes the Newton step times its own damping α, accepted only
    if it lowers the sample's residual max|S(z) − y| (then α doubles, up to 1;
    else α halves): plain Newton from z = y can leave the basin of a strongly
    nonlinear step (seen at 2 uncorrected Taylor steps of a trained flow). A
    sample stops when its residual is within `tolerance` or its α has shrunk
    below 1e-6 (the residual is then at rounding level, or the step is singular
    there: on a fold); all stop after `NEWTON_ITERATIONS`.
    """

    def linearised(z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        following, transposed, _ = step_jacobian(step, z, k)
        residual = following - y
        return residual, tf.reduce_max(tf.abs(residual), axis=-1), transposed

    def active(damping: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        return (size > tolerance) & (damping > 1e-6)

    def unconverged(z, residual, size, transposed, damping) -> tf.Tensor:
        return tf.reduce_any(active(damping, size))

    def newton(z, residual, size, transposed, damping):
        moving = active(damping, size)
        direction = tf.linalg.solve(transposed, residual[..., None], adjoint=True)[..., 0]
        candidate = z - damping[:, None] * direction
        candidate_residual, candidate_size, candidate_transposed = linearised(candidate)
        better = moving & (candidate_size < size)
        return (
            tf.where(better[:, None], candidate, z),
            tf.where(better[:, None], candidate_residual, residual),
            tf.where(better, candidate_size, size),
            tf.where(better[:, None, None], candidate_transposed, transposed),
            tf.where(better, tf.minimum(2 * damping, 1.0), tf.where(moving, damping / 2, damping)),
        )

    start = (y, *linearised(y), tf.ones_like(y[:, 0]))
    z, *_ = tf.while_loop(unconverged, newton, start, maximum_iterations=NEWTON_ITERATIONS)
    return z
