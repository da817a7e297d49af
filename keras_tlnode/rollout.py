"""The fixed-step loop shared by every scheme, and its gradient-checkpointed variant."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

StepFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def rollout(
    step: StepFn,
    x0: tf.Tensor,
    num_steps: int | tf.Tensor,
    save_every: int | None = None,
    sum_remainders: bool = False,
    checkpoint: bool = False,
    step_inputs: tuple[tf.Tensor, ...] = (),
) -> tuple[tf.Tensor, tf.Tensor]:
    """Applies `step` `num_steps` times from `x0`.

    A `tf.while_loop` keeps the graph size independent of `num_steps` and
    compiles under XLA. A single step to its final state is called directly:
    the loop's bookkeeping (and, in the backward pass, its stacks of saved
    activations) costs more than the step at small sizes.

    Args:
        step: `step(x, k) -> (x_next, remainder)`, `k` the int32 step index.
        x0: initial states, `(batch, ...)`.
        num_steps: number of steps, >= 1 (a scalar int32 tensor where the
            count is known only at run time).
        save_every: None returns the final state `(batch, ...)`; s returns
            the states after 0, s, 2s, ..., num_steps steps on a new axis 1,
            `(batch, num_steps / s + 1, ...)` (num_steps a multiple of s): 1
            for every state of a trajectory, `num_steps` per observation
            interval for the states at observation times.
        sum_remainders: accumulate the remainder penalty; only training needs
            it, so inference and export graphs leave it out.
        checkpoint: gradient checkpointing (`checkpointed_rollout`): the
            backward pass keeps the states only and recomputes each step.
        step_inputs: with `checkpoint`, the tensors other than the state and
            the variables that `step` reads and that gradients may flow to
            (per-sample step sizes and times).

    Returns:
        `(states, remainder)`, where `remainder` is the scalar Σ_k mean|R_k| of
        the steps' Lagrange remainders (zero unless `sum_remainders`).
    """
    if checkpoint:
        return checkpointed_rollout(step, x0, num_steps, save_every, sum_remainders, step_inputs)
    if isinstance(num_steps, int) and num_steps == 1 and save_every is None:
        x, remainder = step(x0, tf.constant(0))
        return x, _penalty(remainder) if sum_remainders else tf.zeros((), x0.dtype)
    states, total = _loop(step, x0, num_steps, save_every is not None, sum_remainders)
    return (states if save_every is None else _saved(states.stack(), save_every)), total


def checkpointed_rollout(
    step: StepFn,
    x0: tf.Tensor,
    num_steps: int | tf.Tensor,
    save_every: int | None,
    sum_remainders: bool,
    step_inputs: tuple[tf.Tensor, ...] = (),
) -> tuple[tf.Tensor, tf.Tensor]:
    """`rollout` whose gradient keeps only the states and recomputes each step, one at a time, last first.

    Backpropagating through the loop keeps every activation of every step (for
    a Taylor-Lagrange step, its nested forward-mode passes too) until the
    backward pass: memory grows with `num_steps` times the step's activations.
    Here the forward loop keeps the `num_steps + 1` states only, and the
    backward loop recomputes step k from state k under a tape and takes its
    vector-Jacobian product: one more forward pass per step, and the
    activations of one step alive at a time (full checkpointing, as in
    diffrax's `RecursiveCheckpointAdjoint` with a checkpoint per step). The
    gradients are those of backpropagation, up to rounding.

    The custom gradient sits around the whole rollout, not around each step
    inside the loop: TensorFlow cannot differentiate a while loop whose body
    holds a custom gradient that reads variables (the loop's gradient does not
    find the variables' captures). `tf.recompute_grad` (`keras.remat` on
    TensorFlow) is not used either: it runs the forward pass with the tapes
    stopped, which stops forward-mode accumulators too, so Taylor coefficients
    inside it come out wrong.
    """

    @tf.custom_gradient
    def run(x0: tf.Tensor, *inputs: tf.Tensor):
        states, total = _loop(step, x0, num_steps, True, sum_remainders)
        states = states.stack()  # (num_steps + 1, batch, ...): what the backward pass keeps
        output = states[-1] if save_every is None else _saved(states, save_every)

        def backward(
            d_output: tf.Tensor | None, d_total: tf.Tensor | None, variables: list | None = None
        ) -> tuple | list:
            variables = list(variables or [])
            sources = [*inputs, *variables]
            d_output = tf.zeros_like(output) if d_output is None else d_output
            d_total = tf.zeros_like(total) if d_total is None else d_total
            # Each state's gradient from the outputs directly (the saved ones; zero for the others).
            d_states = None
            if save_every is not None:
                saved = tf.range(0, tf.shape(states)[0], save_every)[:, None]
                d_states = tf.scatter_nd(saved, _swap_steps_and_batch(d_output), tf.shape(states))

            def vjp(k: tf.Tensor, adjoint: tf.Tensor, gradients: list[tf.Tensor]) -> tuple:
                start = states[k]
                with tf.GradientTape() as tape:
                    tape.watch([start, *sources])
                    x_next, remainder = step(start, k)
                    targets = [x_next, _penalty(remainder)] if sum_remainders else [x_next]
                d_start, *d_sources = tape.gradient(
                    targets,
                    [start, *sources],
                    output_gradients=[adjoint, d_total] if sum_remainders else [adjoint],
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
                if d_states is not None:
                    d_start += d_states[k]
                d_sources = [tf.convert_to_tensor(g) for g in d_sources]
                return k - 1, d_start, [g + d for g, d in zip(gradients, d_sources, strict=True)]

            last = d_states[num_steps] if d_states is not None else d_output
            _, d_x0, d_sources = tf.while_loop(
                lambda k, *_: k >= 0,
                vjp,
                (tf.convert_to_tensor(num_steps - 1), last, [tf.zeros_like(s) for s in sources]),
                maximum_iterations=num_steps,
            )
            d_inputs = [d_x0, *d_sources[: len(inputs)]]
            return (d_inputs, d_sources[len(inputs) :]) if variables else d_inputs

        return (output, total), backward

    return run(x0, *step_inputs)


def _loop(
    step: StepFn, x0: tf.Tensor, num_steps: int | tf.Tensor, keep_states: bool, sum_remainders: bool
) -> tuple[tf.Tensor | tf.TensorArray, tf.Tensor]:
    """The while loop: `(final state, or every state in a TensorArray if keep_states; Σ_k mean|R_k|)`."""

    def body(k, x, total, *states):
        x_next, remainder = step(x, k)
        if sum_remainders:
            total += _penalty(remainder)
        # The TensorArray exists only for trajectories: in the final-state graph
        # it would be dead weight, and it blocks TFLite conversion with a dynamic batch.
        return (k + 1, x_next, total) + tuple(array.write(k + 1, x_next) for array in states)

    states: tuple[tf.TensorArray, ...] = ()
    if keep_states:
        states = (tf.TensorArray(x0.dtype, size=num_steps + 1, element_shape=x0.shape).write(0, x0),)
    _, x, total, *states = tf.while_loop(
        lambda k, *_: k < num_steps,
        body,
        (tf.constant(0), x0, tf.zeros((), x0.dtype)) + states,
        maximum_iterations=num_steps,
    )
    return (states[0] if keep_states else x), total


def _penalty(remainder: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.abs(remainder))


def _saved(states: tf.Tensor, save_every: int) -> tf.Tensor:
    """The states after 0, s, 2s, ... steps, batch first, from all of them `(num_steps + 1, batch, ...)`."""
    return _swap_steps_and_batch(states[::save_every] if save_every > 1 else states)


def _swap_steps_and_batch(states: tf.Tensor) -> tf.Tensor:
    """`(steps, batch, ...)` ↔ `(batch, steps, ...)`."""
    return tf.transpose(states, [1, 0] + list(range(2, len(states.shape))))
