"""The fixed-step loop shared by every scheme."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

StepFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def rollout(
    step: StepFn, x0: tf.Tensor, num_steps: int, return_trajectory: bool, sum_remainders: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Applies `step` `num_steps` times from `x0`.

    A `tf.while_loop` keeps the graph size independent of `num_steps` and
    compiles under XLA. A single step to its final state is called directly:
    the loop's bookkeeping (and, in the backward pass, its stacks of saved
    activations) costs more than the step at small sizes.

    Args:
        step: `step(x, k) -> (x_next, remainder)`, `k` the int32 step index.
        x0: initial states, `(batch, ...)`.
        num_steps: number of steps, >= 1.
        return_trajectory: return all states `(batch, num_steps + 1, ...)`
            (after 0, 1, ..., num_steps steps) instead of the final state `(batch, ...)`.
        sum_remainders: accumulate the remainder penalty; only training needs
            it, so inference and export graphs leave it out.

    Returns:
        `(states, remainder)`, where `remainder` is the scalar Σ_k mean|R_k| of
        the steps' Lagrange remainders (zero unless `sum_remainders`).
    """

    def body(k, x, total, *trajectory):
        x_next, remainder = step(x, k)
        if sum_remainders:
            total += tf.reduce_mean(tf.abs(remainder))
        # The TensorArray exists only for trajectories: in the final-state graph
        # it would be dead weight, and it blocks TFLite conversion with a dynamic batch.
        return (k + 1, x_next, total) + tuple(states.write(k + 1, x_next) for states in trajectory)

    if num_steps == 1 and not return_trajectory:
        x, remainder = step(x0, tf.constant(0))
        total = tf.reduce_mean(tf.abs(remainder)) if sum_remainders else tf.zeros((), x0.dtype)
        return x, total
    trajectory: tuple[tf.TensorArray, ...] = ()
    if return_trajectory:
        trajectory = (tf.TensorArray(x0.dtype, size=num_steps + 1, element_shape=x0.shape).write(0, x0),)
    _, x, total, *trajectory = tf.while_loop(
        lambda k, *_: k < num_steps,
        body,
        (tf.constant(0), x0, tf.zeros((), x0.dtype)) + trajectory,
        maximum_iterations=num_steps,
    )
    if not return_trajectory:
        return x, total
    states = trajectory[0].stack()
    return tf.transpose(states, [1, 0] + list(range(2, len(x0.shape) + 1))), total
