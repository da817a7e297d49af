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

# step(states, k) -> (next states, remainder), as `rollout` takes it.
StepFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]

NEWTON_ITERATIONS = 60
# A step whose Jacobian determinant is below this somewhere is near a fold: the flow's
# training penalises the shortfall (a determinant can be this small and legitimate,
# where the density is ~0; below 0 the step is not one-to-one).
FOLD_FLOOR = 0.1
FOLD_BARRIER_REACH = 1e-3  # the barrier is logarithmic from FOLD_FLOOR down to this fraction of it, then linear


def step_jacobian(step: StepFn, z: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(S(z), ∂S/∂z, remainder)` of one step from flat states `z` `(batch, d)`; the Jacobian `(batch, d, d)`."""
    d = z.shape[-1]
    batch = tf.shape(z)[0]
    basis = tf.tile(tf.eye(d, dtype=z.dtype), tf.stack([batch, 1]))
    repeated = tf.repeat(z, d, axis=0)
    with tf.autodiff.ForwardAccumulator(repeated, basis) as accumulator:
        following, remainder = step(repeated, k)
    columns = accumulator.jvp(following, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # Row (b, i) of `columns` is ∂S/∂z e_i, column i of sample b's Jacobian.
    jacobian = tf.linalg.matrix_transpose(tf.reshape(columns, tf.stack([batch, d, d])))
    first = tf.range(batch) * d  # every copy of a sample steps to the same point
    return tf.gather(following, first), jacobian, tf.gather(remainder, first)


def with_log_det(step: StepFn, barrier: bool) -> StepFn:
    """`step` on the flat state [z, Δ, F]: z ↦ S(z), Δ ↦ Δ + log det ∂S/∂z, F ↦ F + fold_barrier(det ∂S/∂z).

    Δ is NaN where a determinant is ≤ 0 (the step folds: no density there); F,
    finite everywhere, measures how close the steps come to folding, so that
    training can keep them away from it. Without `barrier` (inference) F stays
    0: the inference path does no training-only work.
    """

    def augmented(state: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        z, total, shortfall = state[:, :-2], state[:, -2:-1], state[:, -1:]
        following, jacobian, remainder = step_jacobian(step, z, k)
        sign, log_abs = tf.linalg.slogdet(jacobian)
        log_det = tf.where(sign > 0, log_abs, tf.constant(float("nan"), log_abs.dtype))
        if barrier:
            shortfall += fold_barrier(sign, log_abs)[:, None]
        next_state = tf.concat([following, total + log_det[:, None], shortfall], -1)
        return next_state, remainder

    return augmented


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
        following, jacobian, _ = step_jacobian(step, z, k)
        residual = following - y
        return residual, tf.reduce_max(tf.abs(residual), axis=-1), jacobian

    def active(damping: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        return (size > tolerance) & (damping > 1e-6)

    def unconverged(z, residual, size, jacobian, damping) -> tf.Tensor:
        return tf.reduce_any(active(damping, size))

    def newton(z, residual, size, jacobian, damping):
        moving = active(damping, size)
        direction = tf.linalg.solve(jacobian, residual[..., None])[..., 0]
        candidate = z - damping[:, None] * direction
        candidate_residual, candidate_size, candidate_jacobian = linearised(candidate)
        better = moving & (candidate_size < size)
        return (
            tf.where(better[:, None], candidate, z),
            tf.where(better[:, None], candidate_residual, residual),
            tf.where(better, candidate_size, size),
            tf.where(better[:, None, None], candidate_jacobian, jacobian),
            tf.where(better, tf.minimum(2 * damping, 1.0), tf.where(moving, damping / 2, damping)),
        )

    start = (y, *linearised(y), tf.ones_like(y[:, 0]))
    z, *_ = tf.while_loop(unconverged, newton, start, maximum_iterations=NEWTON_ITERATIONS)
    return z
