"""The adaptive-solver side: tfp's DormandPrince, as a solve and as a Keras layer.

`dormand_prince` is the one place that calls `tfp.math.ode.DormandPrince`. The
teacher of TL-NODE training uses it on single steps without gradients;
`DormandPrinceODE` uses it as the classic neural-ODE layer (gradients by tfp's
adjoint method), the baseline TL-NODE is measured against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_tlnode.layers import ODELayer, eager_traced
from keras_tlnode.schemes import per_state
from keras_tlnode.validation import check_float


class Solution(NamedTuple):
    """An adaptive solve: its `states`, `nfe` its f-evaluations, and `ok` whether it
    succeeded within its step cap with a finite f throughout (a scalar bool)."""

    states: tf.Tensor
    nfe: tf.Tensor
    ok: tf.Tensor


class EvaluationBudget:
    """A cap on the f-evaluations of one solve, counted as the solve runs.

    tfp's DormandPrince enforces its own `max_num_steps` with an assertion,
    which would abort training in graph mode and is dropped under XLA; its loop
    has no other exit. The count lives in a variable, assigned from inside the
    solver's loop, because the loop carries no state that `ode_fn` can see. It
    is synchronised on read with no aggregation so that, created inside a
    distribution strategy's scope, every replica counts its own solves.

    Args:
        max_evaluations: evaluations of f allowed per solve, >= 1.
    """

    def __init__(self, max_evaluations: int):
        self.max_evaluations = max_evaluations
        self.count = tf.Variable(
            0,
            dtype=tf.int64,
            trainable=False,
            name="evaluations",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.NONE,
        )

    def reset(self) -> None:
        self.count.assign(0)

    def spend(self) -> tf.Tensor:
        """Counts one evaluation; whether it was still within the budget."""
        return self.count.assign_add(1) <= self.max_evaluations


def dormand_prince(
    field: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    times: list[float] | tf.Tensor,
    rtol: float,
    atol: float,
    dtype: tf.dtypes.DType,
    budget: EvaluationBudget | None = None,
) -> Solution:
    """Solves dx/ds = field(x, s) from `x` at s = 0; the states at `times` on a new axis 0.

    The solver's state and error control run in `dtype`; `field` receives the
    state and the elapsed time s (a scalar) in `x`'s dtype, and the states come
    back in it. The whole batch is one system for the solver, so its steps
    follow the stiffest sample. The first step tried is the whole way to
    `times[0]`: tfp's default (1e-3, growing at most 10x per step) would cost
    a fixed few steps on long intervals whatever the tolerance, and the error
    control shrinks a first step that is too long after one rejection.

    With a `budget`, the solve stops being work once the budget is spent: f is
    replaced by 0 (the solver then accepts steps growing 10x each and reaches
    the end in a few more) and the solve is flagged as failed.
    """
    model_dtype = x.dtype

    def ode_fn(s: tf.Tensor, state: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        y, _ = state
        derivative = field(tf.cast(y, model_dtype), tf.cast(s, model_dtype))
        # A non-finite f makes DormandPrince reject every step and never return;
        # the solve goes on with f = 0 instead, and a second state component,
        # growing at unit rate while f is non-finite, flags it. A spent budget
        # is handled the same way.
        usable = tf.reduce_all(tf.math.is_finite(derivative))
        if budget is not None:
            usable = tf.logical_and(usable, budget.spend())
        derivative = tf.where(usable, tf.cast(derivative, dtype), tf.zeros_like(y))
        return derivative, tf.where(usable, tf.constant(0.0, dtype), tf.constant(1.0, dtype))

    if budget is not None:
        budget.reset()
    times = tf.cast(times, dtype)
    solver = tfp.math.ode.DormandPrince(rtol=rtol, atol=atol, first_step_size=times[0])
    results = solver.solve(
        ode_fn, tf.constant(0.0, dtype), (tf.cast(x, dtype), tf.constant(0.0, dtype)), solution_times=times
    )
    states = tf.cast(results.states[0], model_dtype)
    ok = tf.reduce_all(
        [
            tf.equal(results.diagnostics.status, 0),
            tf.equal(results.states[1][-1], 0.0),
            tf.reduce_all(tf.math.is_finite(states)),
        ]
    )
    return Solution(states, tf.cast(results.diagnostics.num_ode_fn_evaluations, tf.int64), ok)


@keras.saving.register_keras_serializable(package="keras_tlnode")
class DormandPrinceODE(ODELayer):
    """Integrates `dx/dt = f_θ(x)` over `[t_initial, t_initial + duration]` with adaptive DormandPrince.

    The classic neural ODE (torchdiffeq's `odeint_adjoint(method="dopri5")`),
    here as the baseline that TL-NODE is measured against: the same vector
    field and interface as `TaylorLagrangeODE`, solved by
    `tfp.math.ode.DormandPrince`, gradients by tfp's adjoint method. Its cost
    is not fixed: `solve` returns the f-evaluations of a call with its states
    (docs/usage.md, "The adaptive-solver baseline").

    The solver runs in the inputs' dtype (tfp's adjoint needs the state and
    the weights in one dtype). In float32, tolerances below about 1e-6 to 1e-7
    (it depends on the field: measure) cost more steps without making the
    solution more accurate. The first step tried is the whole interval, which
    the error control shrinks: tfp's default first step (1e-3, growing at
    most 10x per step) would cost a fixed few steps on long intervals at any
    tolerance.

    A solve whose f turns non-finite returns NaN states (it would otherwise
    never finish). There is no cap on the solver's steps: a field that grows
    stiff in training makes every call slower (the NFE of `solve` shows it).

    Args:
        vector_field: Keras layer or model computing f_θ, output shaped like its
            input; with `time_dependent=True` called as `vector_field([x, t])`,
            `t` of shape `(batch, 1)`.
        num_steps: with `return_trajectory`, the number of equal intervals at
            whose ends the states are returned (the solver chooses its own
            steps), >= 1.
        duration: length of the integration interval, finite and > 0
            (default 1.0).
        rtol: relative tolerance, > 0.
        atol: absolute tolerance, > 0.
        time_dependent: whether f depends on t as well.
        return_trajectory: return the states at t_initial + 0, Δt, ...,
            duration on a new axis 1 instead of the final state.
        t_initial: time at the start of the interval (time-dependent fields).
        t_final: deprecated name of `duration`, with a `DeprecationWarning`;
            removed in 1.0.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: the states `x`, or a list `[x, duration]` with one duration
            per sample (finite and > 0; checked in eager calls only): sample
            i is integrated over `[t_initial, t_initial + duration_i]`, as
            dx/ds = duration_i · f(x, t_initial + s · duration_i) over
            s ∈ [0, 1].
        times: observation times `(T,)` shared by the batch, as for
            `TaylorLagrangeODE` (torchdiffeq's `odeint(f, x, t)`): the
            states at those times, from one adaptive solve. Times per sample
            `(batch, T)` raise a `ValueError`: the batch is one system for
            the solver, on one time axis.

    Input shape:
        `x`: `(batch, *state_shape)`, a floating tensor with at least one
        state axis. `duration`, if given: `(batch,)` or `(batch, 1)`.

    Output shape:
        `(batch, *state_shape)`, the states at `t_initial + duration` (NaN
        where the solve failed). With `return_trajectory=True`,
        `(batch, num_steps + 1, *state_shape)`: the states at t_initial + 0,
        duration / num_steps, ..., duration. With `times`, `(batch, T,
        *state_shape)`.

    Example:

        >>> import keras, keras_tlnode
        >>> ode = keras_tlnode.DormandPrinceODE(keras.layers.Dense(2), rtol=1e-6, atol=1e-6)
        >>> inputs = keras.Input((2,))
        >>> model = keras.Model(inputs, ode(inputs))
        >>> solution = ode.solve(keras.ops.ones((4, 2)))
        >>> tuple(solution.states.shape), bool(solution.ok)
        ((4, 2), True)
    """

    def __init__(
        self,
        vector_field: keras.layers.Layer,
        num_steps: int = 1,
        duration: float | None = None,
        rtol: float = 1e-6,
        atol: float = 1e-6,
        time_dependent: bool = False,
        return_trajectory: bool = False,
        t_initial: float = 0.0,
        *,
        t_final: float | None = None,
        **kwargs,
    ):
        super().__init__(
            vector_field, num_steps, duration, time_dependent, return_trajectory, t_initial, t_final=t_final, **kwargs
        )
        self.rtol = check_float(rtol, "rtol", positive=True)
        self.atol = check_float(atol, "atol", positive=True)

    def call(self, inputs: tf.Tensor | list, times: tf.Tensor | None = None) -> tf.Tensor:
        return self.solve(inputs, times).states

    def solve(self, inputs: tf.Tensor | list, times: tf.Tensor | None = None) -> Solution:
        """The layer's solve from `inputs`, with its cost and whether it succeeded.

        The solve runs over s ∈ [0, 1] on dx/ds = T · f(x, t_initial + s T),
        T the duration (each sample's own with `[x, duration]`); at
        observation times, from t_0 over t, returning the states at the
        times (tfp's `solution_times`). The whole batch is one system for
        the solver, so its steps follow the stiffest sample.

        Args:
            inputs: as the layer takes them: `x` or `[x, duration]`.
            times: observation times, as the layer takes them.

        Returns:
            A `Solution(states, nfe, ok)`, as the teacher's: `states` the
            layer's output (NaN where the solve failed), `nfe` the calls of
            f (an int64 scalar), `ok` whether the solve succeeded with a finite
            f throughout (a bool scalar). (0.1 returned `(outputs, nfe)`.)
        """
        inputs = (
            [tf.convert_to_tensor(i) for i in inputs]
            if isinstance(inputs, (list, tuple))
            else tf.convert_to_tensor(inputs)
        )
        if times is not None and tf.convert_to_tensor(times).shape.rank == 2:
            raise ValueError(
                f"{type(self).__name__} takes `times` shared by the batch, shape (T,), got shape "
                f"{tuple(tf.convert_to_tensor(times).shape)}: tfp's solver integrates the batch as one system on "
                "one time axis. For times per sample, use TaylorLagrangeODE or FixedStepODE."
            )
        spans = self._spans(inputs) if times is None else self._observed(inputs, times)
        if not self.built:
            self.build([tuple(i.shape) for i in inputs] if isinstance(inputs, list) else tuple(spans.states.shape))
        solve = eager_traced(self, "_solve") if tf.executing_eagerly() else self._solve
        return solve(*spans)

    def _solve(self, x: tf.Tensor, step_size: tf.Tensor | None, times: tf.Tensor | None) -> Solution:
        """The solve of `Spans(x, step_size, times)` (see `solve`)."""
        if times is not None:
            return self._solve_at_times(x, times[0])
        duration = self.duration if step_size is None else step_size * self.num_steps
        ends = [k / self.num_steps for k in range(1, self.num_steps + 1)] if self.return_trajectory else [1.0]

        def rescaled(y: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
            if not self.time_dependent:
                return per_state(duration, y) * self.derivative(y)
            t = self.t_initial + s * duration * tf.ones(tf.stack([tf.shape(y)[0], 1]), y.dtype)
            return per_state(duration, y) * self.derivative(y, t)

        solution = dormand_prince(rescaled, x, ends, self.rtol, self.atol, x.dtype)
        states = tf.where(solution.ok, solution.states, tf.constant(math.nan, x.dtype))
        if self.return_trajectory:
            states = tf.experimental.numpy.moveaxis(tf.concat([x[tf.newaxis], states], axis=0), 0, 1)
        else:
            states = states[-1]
        return Solution(states, solution.nfe, solution.ok)

    def _solve_at_times(self, x: tf.Tensor, times: tf.Tensor) -> Solution:
        """The solve at observation times `(T,)`, by tfp's own `solution_times`, from t_0 = times[0]."""
        start = tf.cast(times[0], x.dtype)

        def shifted(y: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
            if not self.time_dependent:
                return self.derivative(y)
            return self.derivative(y, (start + s) * tf.ones(tf.stack([tf.shape(y)[0], 1]), y.dtype))

        solution = dormand_prince(shifted, x, tf.cast(times[1:], x.dtype) - start, self.rtol, self.atol, x.dtype)
        states = tf.where(solution.ok, solution.states, tf.constant(math.nan, x.dtype))
        states = tf.experimental.numpy.moveaxis(tf.concat([x[tf.newaxis], states], axis=0), 0, 1)
        return Solution(states, solution.nfe, solution.ok)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(rtol=self.rtol, atol=self.atol)
        return config
