"""The teachers: high-fidelity solves of the current vector field over one step.

Phase 2 of TL-NODE training fits Γ_φ so that the Taylor-Lagrange step matches an
accurate solution of the same f_θ: by default `tfp.math.ode.DormandPrince`
(adaptive, `DormandPrinceTeacher`), or fixed RK4 steps (`RK4Teacher`, cheaper to
trace and compile, for non-stiff fields). The teacher is only on the training
path, never in inference or export.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_tlnode.adaptive import EvaluationBudget, Solution, dormand_prince
from keras_tlnode.rollout import rollout
from keras_tlnode.schemes import RK4, per_state, runge_kutta_step
from keras_tlnode.validation import check_bool, check_float, check_int

Field = Callable[..., tf.Tensor]
# dx/ds = Δt · f(x, t + s Δt) on s in [0, 1], in the model's dtype: what a teacher integrates.
Rescaled = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class Teacher:
    """What the teachers share: the solve over s in [0, 1], without gradients, optionally under XLA.

    A subclass integrates the rescaled field in `_integrate`; every state then
    reaches its own Δt. Created under the strategy it will serve (`TLNODEModel.compile`
    checks it).
    """

    def __init__(self, dtype: str, jit_compile: bool):
        if not tf.as_dtype(dtype).is_floating:
            raise ValueError(f"`dtype` must be a floating dtype, got {dtype!r}.")
        self.dtype = tf.as_dtype(dtype)
        self.jit_compile = check_bool(jit_compile, "jit_compile")
        self.strategy = tf.distribute.get_strategy()

    def solve(self, field: Field, x: tf.Tensor, dt: float | tf.Tensor, t: tf.Tensor | None = None) -> Solution:
        """The solution of dx/dt = field(x) (or field(x, t)) at Δt = `dt` from the states `x`, without gradients.

        The solve runs over s ∈ [0, 1] on dx/ds = Δt · f(x, t + s Δt), so that
        every state reaches its own Δt.

        Args:
            field: maps states (and times, with `t`) to their time
                derivatives, shaped like the states: `field(x)` or
                `field(x, t)`.
            x: states `(batch, *state_shape)`.
            dt: Δt, a float or a `(batch, 1)` tensor of one Δt per state.
            t: start times `(batch, 1)` for a time-dependent field, else None.

        Returns:
            A `Solution(states, nfe, ok)`: the states at Δt in `x`'s dtype,
            `nfe` the calls of `field` on the batch, and `ok` (a bool
            scalar) False if the solve failed (see the subclass).
        """

        def run(x: tf.Tensor, t: tf.Tensor | None, dt: float | tf.Tensor) -> Solution:
            def rescaled(y: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
                derivative = field(y) if t is None else field(y, t + s * dt)
                return per_state(dt, y) * derivative

            solution = self._integrate(rescaled, x)
            # Stopped inside the function too: a recording tape would otherwise
            # build the compiled call's backward pass (for DormandPrince, tfp's adjoint solve).
            return Solution(tf.stop_gradient(solution.states), solution.nfe, solution.ok)

        if self.jit_compile:
            run = tf.function(run, jit_compile=True, autograph=False)
        return run(tf.stop_gradient(x), t, dt)

    def _integrate(self, rescaled: Rescaled, x: tf.Tensor) -> Solution:
        """The states at s = 1 in `x`'s dtype, the calls of `rescaled`, and success."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict) -> Teacher:
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_tlnode")
class DormandPrinceTeacher(Teacher):
    """Solves dx/dt = f(x) (or f(x, t)) over one interval with tfp's DormandPrince.

    The reference solver of `TLNODEModel`'s correction phase (the default
    `teacher` of `TLNODEModel.compile`), only on the training path: never in
    inference or export. The solve runs in `dtype` (float64 by default, also for float32 models: f is
    evaluated in its own dtype and the solver's state and error control stay in
    float64: about float32's cost in a graph, somewhat more under XLA, a small
    share of a training step either way). A solve that reports a
    non-success status, needs more than `max_num_steps` steps, or meets a
    non-finite f has `ok=False`. The cap stops the solve: a failed capped solve
    costs about `max_num_steps` steps. The teacher counts evaluations in a
    variable; under a distribution strategy, create it (or compile the model
    that creates the default one) inside the strategy's scope. A compiled
    `TLNODEModel` saves its teacher by registered class, so a subclass
    registered with `keras.saving.register_keras_serializable` (and a
    `get_config` for any argument of its own) reloads as itself.

    The default tolerance, 1e-6, puts the targets' error orders of magnitude
    below what the correction reaches (docs/results.md, "The correction's settings"), at about half
    the cost of 1e-8. With `jit_compile=True` (default) the solve is compiled by
    XLA, which makes it several times cheaper on CPU than graph mode (docs/results.md, "The correction's settings"); pass
    `jit_compile=False` for a vector field with ops that XLA cannot compile.

    Args:
        rtol: relative tolerance, > 0.
        atol: absolute tolerance, > 0.
        max_num_steps: cap on the solver's steps per solve, >= 1.
        dtype: floating dtype the solver runs in.
        jit_compile: compile the solve with XLA.

    Raises:
        ValueError: for a `dtype` that is not floating.

    Example:

        >>> import tensorflow as tf, keras_tlnode
        >>> teacher = keras_tlnode.DormandPrinceTeacher(rtol=1e-8, atol=1e-8)
        >>> solution = teacher.solve(lambda x: -x, tf.ones((2, 3)), 0.5)
        >>> bool(solution.ok), round(float(solution.states[0, 0]), 6)  # exp(-0.5)
        (True, 0.606531)
    """

    def __init__(
        self,
        rtol: float = 1e-6,
        atol: float = 1e-6,
        max_num_steps: int = 2000,
        dtype: str = "float64",
        jit_compile: bool = True,
    ):
        super().__init__(dtype, jit_compile)
        self.rtol = check_float(rtol, "rtol", positive=True)
        self.atol = check_float(atol, "atol", positive=True)
        self.max_num_steps = check_int(max_num_steps, "max_num_steps")
        # One evaluation before the first step, then one per stage but the first.
        self._budget = EvaluationBudget(1 + self.max_num_steps * tfp.math.ode.DormandPrince.ODE_FN_EVALS_PER_STEP)

    def _integrate(self, rescaled: Rescaled, x: tf.Tensor) -> Solution:
        # The whole batch is one system for the solver: its steps follow the
        # stiffest sample. `ok` is False for a non-success status, more than
        # `max_num_steps` steps or a non-finite f.
        solution = dormand_prince(rescaled, x, [1.0], self.rtol, self.atol, self.dtype, self._budget)
        return Solution(solution.states[-1], solution.nfe, solution.ok)

    def get_config(self) -> dict:
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "max_num_steps": self.max_num_steps,
            "dtype": self.dtype.name,
            "jit_compile": self.jit_compile,
        }


@keras.saving.register_keras_serializable(package="keras_tlnode")
class RK4Teacher(Teacher):
    """Solves dx/dt = f(x) (or f(x, t)) over one interval with `num_steps` classical Runge-Kutta steps.

    A cheaper reference solver for `TLNODEModel`'s correction phase than the
    default `DormandPrinceTeacher`: no error control, so a fixed `4 · num_steps`
    evaluations per solve and a small graph, which traces and compiles in a
    fraction of the adaptive solve's time (docs/benchmarks.md, "What a training
    step costs"). Its error per solve is about `(Δt/num_steps)^4` times the
    field's fourth derivative along the solution: orders of magnitude below a
    TL-NODE step's on non-stiff fields at the default 8 steps (tested against
    DormandPrince at 1e-10). It is not a teacher for stiff fields: with
    Δt·|λ| = 10 (the stiff example) each of 8 steps is off by 7% in the fast
    mode; keep DormandPrince there. Runs in `dtype` (f in its own dtype), as
    `DormandPrinceTeacher` does. `ok` is False if a state is not finite.

    Args:
        num_steps: RK4 steps per solve, >= 1.
        dtype: floating dtype the steps are taken in.
        jit_compile: compile the solve with XLA.

    Raises:
        ValueError: for a `dtype` that is not floating.

    Example:

        >>> import tensorflow as tf, keras_tlnode
        >>> teacher = keras_tlnode.RK4Teacher(num_steps=8)
        >>> solution = teacher.solve(lambda x: -x, tf.ones((2, 3)), 0.5)
        >>> bool(solution.ok), round(float(solution.states[0, 0]), 6), int(solution.nfe)  # exp(-0.5)
        (True, 0.606531, 32)
    """

    def __init__(self, num_steps: int = 8, dtype: str = "float64", jit_compile: bool = True):
        super().__init__(dtype, jit_compile)
        self.num_steps = check_int(num_steps, "num_steps")

    def _integrate(self, rescaled: Rescaled, x: tf.Tensor) -> Solution:
        model_dtype, h = x.dtype, 1.0 / self.num_steps

        def field(y: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
            return tf.cast(rescaled(tf.cast(y, model_dtype), tf.cast(s, model_dtype)), self.dtype)

        def step(y: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return runge_kutta_step(RK4, field, y, tf.cast(k, self.dtype) * h, h)

        states, _ = rollout(step, tf.cast(x, self.dtype), self.num_steps)
        states = tf.cast(states, model_dtype)
        nfe = tf.constant(RK4.stages * self.num_steps, tf.int64)
        return Solution(states, nfe, tf.reduce_all(tf.math.is_finite(states)))

    def get_config(self) -> dict:
        return {"num_steps": self.num_steps, "dtype": self.dtype.name, "jit_compile": self.jit_compile}
