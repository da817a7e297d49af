"""The fixed-step ODE layers: `TaylorLagrangeODE` and `FixedStepODE`.

`ODELayer` holds what every ODE layer of the package shares (the vector field,
the interval, the output shape, the config), also the adaptive
`DormandPrinceODE`. A fixed-step layer's data path reads top to bottom:
inputs → `rollout` of `num_steps` calls of `step` → output; `step` is the
Taylor-Lagrange step (`schemes.taylor_lagrange_step`) or a classical one.

Module state, on purpose: eager calls run the rollout as a tf.function, one per
layer, kept in `_TRACED`, a weak cache outside the layer so that Keras's
tracking and export never see it.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import keras
import numpy as np
import tensorflow as tf

from keras_tlnode.compat import flatten_layers
from keras_tlnode.correction import MidpointCorrection
from keras_tlnode.recording import record
from keras_tlnode.rollout import StepFn, rollout
from keras_tlnode.schemes import CLASSICAL, runge_kutta_step, taylor_lagrange_evaluations, taylor_lagrange_step
from keras_tlnode.taylor import MAX_ORDER
from keras_tlnode.validation import (
    check_bool,
    check_choice,
    check_duration,
    check_field_shape,
    check_float,
    check_instance,
    check_int,
)
from keras_tlnode.volume import invert_step, with_log_det

L = TypeVar("L", bound=keras.layers.Layer)


class Spans(NamedTuple):
    """One call's inputs, parsed once: the states, and each sample's Δt or observation times if the call gave them.

    `step_size` is `(batch, 1)` (the sample's duration / num_steps) for a call
    as `[x, duration]`; `times` is `(batch, T)` for a call with `times=`
    (times shared by the batch are broadcast to it); both are None for a call
    on `x` alone (the layer's own Δt). A fixed-step layer's `call` builds it;
    the rollout, the recording of the call and the correction phase
    (`step_starts`, `step_sizes`, `step_times`) reuse it.
    """

    states: tf.Tensor
    step_size: tf.Tensor | None = None
    times: tf.Tensor | None = None


class ODELayer(keras.layers.Layer):
    """What the package's ODE layers share: the vector field, the interval, the output shape, the config.

    Subclasses solve dx/dt = f_θ(x) (or f_θ(x, t)) from their inputs at
    `t_initial` to `t_initial + duration` in `call`; this base validates the
    shared arguments, builds the vector field and checks its output shape.
    `t_final`, the old name of `duration`, still works with a
    `DeprecationWarning` until 1.0.
    """

    def __init__(
        self,
        vector_field: keras.layers.Layer,
        num_steps: int = 1,
        duration: float | None = None,
        time_dependent: bool = False,
        return_trajectory: bool = False,
        t_initial: float = 0.0,
        *,
        t_final: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vector_field = check_instance(vector_field, "vector_field", keras.layers.Layer)
        self.num_steps = check_int(num_steps, "num_steps")
        self.duration = check_duration(duration, t_final)
        self.t_initial = check_float(t_initial, "t_initial")
        self.time_dependent = check_bool(time_dependent, "time_dependent")
        self.return_trajectory = check_bool(return_trajectory, "return_trajectory")

    def __getattr__(self, name: str):
        # `t_final`, the deprecated name of `duration` (until 1.0), is looked up here rather
        # than as a property, so that Keras's saving, which reads every attribute `dir()`
        # lists, does not warn about it.
        if name == "t_final":
            warnings.warn("`t_final` is deprecated: use `duration`.", DeprecationWarning, stacklevel=2)
            return self.duration
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def step_size(self) -> float:
        """Δt = duration / num_steps, the layer's own step (a call on `[x, duration]` uses duration_i / num_steps)."""
        return self.duration / self.num_steps

    def build(self, input_shape: tuple | list) -> None:
        input_shape = self._state_shape(input_shape)
        if len(input_shape) < 2:
            raise ValueError(
                f"{type(self).__name__} needs inputs of shape (batch, *state_shape) with at least one state "
                f"dimension, e.g. keras.Input((n,)); got shape {tuple(input_shape)}."
            )
        state_shape = tuple(input_shape[1:])
        if not self.vector_field.built:
            self.vector_field.build(self._field_input_shape(input_shape))
        spec = self.vector_field.compute_output_spec(self._field_input_spec(state_shape))
        check_field_shape(tuple(spec.shape[1:]), state_shape)

    def derivative(self, x: tf.Tensor, t: tf.Tensor | None = None) -> tf.Tensor:
        """The vector field at the states `x`: f_θ(x), or f_θ(x, t) for a time-dependent field.

        What the teacher of `TLNODEModel` solves; `build` checked that it is
        shaped like the states.

        Args:
            x: states `(batch, *state_shape)`.
            t: times `(batch, 1)` for a time-dependent field, else None.

        Returns:
            dx/dt at `x`, shaped like `x`.
        """
        return self.vector_field(x if t is None else [x, t])

    def _field_input_shape(self, input_shape: tuple) -> tuple | list:
        return [tuple(input_shape), (input_shape[0], 1)] if self.time_dependent else tuple(input_shape)

    def _field_input_spec(self, state_shape: tuple) -> keras.KerasTensor | list:
        x = keras.KerasTensor((None,) + state_shape, dtype=self.compute_dtype)
        return [x, keras.KerasTensor((None, 1), dtype=self.compute_dtype)] if self.time_dependent else x

    def _check_inputs(self, inputs: tf.Tensor) -> None:
        if not tf.as_dtype(inputs.dtype).is_floating:
            raise TypeError(
                f"{type(self).__name__} `inputs` must have a floating dtype, got {tf.as_dtype(inputs.dtype).name}."
            )

    def _state_shape(self, input_shape: tuple | list) -> tuple:
        """The states' shape from the shape of `x` or of `[x, duration]` (checking the duration's)."""
        if not (isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple))):
            return tuple(input_shape)
        if len(input_shape) != 2:
            raise ValueError(
                f"{type(self).__name__} takes the states `x` or a list `[x, duration]`, got {len(input_shape)} inputs."
            )
        state_shape, duration_shape = tuple(input_shape[0]), tuple(input_shape[1])
        if not (len(duration_shape) == 1 or (len(duration_shape) == 2 and duration_shape[1] == 1)):
            raise ValueError(f"`duration` must have shape (batch,) or (batch, 1), got {duration_shape}.")
        return state_shape

    def _spans(self, inputs: tf.Tensor | list) -> Spans:
        """`Spans(x, Δt)` from `x` (Δt None: the layer's own) or from `[x, duration]` (Δt per sample, `(batch, 1)`).

        Durations are checked to be finite and > 0 in eager calls only: a
        check inside a graph would be a synchronisation point.
        """
        if not isinstance(inputs, (list, tuple)):
            self._check_inputs(inputs)
            return Spans(inputs, None)
        self._state_shape([tuple(tensor.shape) for tensor in inputs])
        x, duration = inputs
        self._check_inputs(x)
        if not tf.as_dtype(duration.dtype).is_floating:
            raise TypeError(f"`duration` must have a floating dtype, got {tf.as_dtype(duration.dtype).name}.")
        duration = tf.reshape(tf.cast(duration, x.dtype), (-1, 1))
        if tf.executing_eagerly() and not bool(tf.reduce_all(tf.math.is_finite(duration) & (duration > 0))):
            raise ValueError(f"`duration` must be finite and > 0 for every sample, got {duration.numpy().ravel()}.")
        return Spans(x, duration / self.num_steps)

    def compute_output_shape(self, input_shape: tuple | list) -> tuple:
        input_shape = self._state_shape(input_shape)
        if self.return_trajectory:
            return (input_shape[0], self.num_steps + 1) + tuple(input_shape[1:])
        return tuple(input_shape)

    def compute_output_spec(
        self, inputs: keras.KerasTensor | list, training: bool | None = None, times: keras.KerasTensor | None = None
    ) -> keras.KerasTensor:
        if times is None:
            self._check_inputs(inputs[0] if isinstance(inputs, (list, tuple)) else inputs)
            return super().compute_output_spec(inputs)
        x = self._observed_spec(inputs, times)
        return keras.KerasTensor((x.shape[0], times.shape[-1], *x.shape[1:]), dtype=self.compute_dtype)

    def _observed_spec(self, inputs: keras.KerasTensor | list, times: keras.KerasTensor) -> keras.KerasTensor:
        """The states of a call with `times=`, after the checks that need shapes only."""
        if isinstance(inputs, (list, tuple)):
            raise ValueError(
                f"{type(self).__name__} takes `times=` with the states `x` alone: the observation times "
                "replace `[x, duration]` (give each sample's times as a (batch, T) tensor instead)."
            )
        if self.return_trajectory:
            raise ValueError(
                f"{type(self).__name__} with `times=` returns the states at those times: build the layer "
                "with return_trajectory=False."
            )
        self._check_inputs(inputs)
        if not tf.as_dtype(times.dtype).is_floating:
            raise TypeError(f"`times` must have a floating dtype, got {tf.as_dtype(times.dtype).name}.")
        if len(times.shape) not in (1, 2) or (times.shape[-1] is not None and times.shape[-1] < 2):
            raise ValueError(
                "`times` must have shape (T,) (shared by the batch) or (batch, T) with T >= 2 observation times, "
                f"the first the start; got shape {tuple(times.shape)}."
            )
        return inputs

    def _observed(self, inputs: tf.Tensor, times: tf.Tensor) -> Spans:
        """`Spans(x, times=(batch, T))` for a call at observation times.

        The times are checked to be finite and increasing in eager calls only
        (as durations are). Keras's `__call__` casts them to the compute dtype
        with every floating input: under mixed precision, float16, whose
        resolution at t is about t / 1000 (see docs/usage.md).
        """
        times = tf.convert_to_tensor(times)
        x = self._observed_spec(inputs, times)
        batch = tf.shape(x)[0]
        if times.shape.rank == 1:
            times = tf.broadcast_to(times[tf.newaxis], tf.stack([batch, tf.shape(times)[0]]))
        elif tf.executing_eagerly() and times.shape[0] != x.shape[0]:
            raise ValueError(
                f"`times` of shape (batch, T) must have the states' batch {x.shape[0]}, got {times.shape[0]}."
            )
        if tf.executing_eagerly() and not bool(
            tf.reduce_all(tf.math.is_finite(times)) and tf.reduce_all(times[:, 1:] > times[:, :-1])
        ):
            raise ValueError(f"`times` must be finite and strictly increasing, got {times.numpy()}.")
        return Spans(x, None, times)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            vector_field=keras.saving.serialize_keras_object(self.vector_field),
            num_steps=self.num_steps,
            duration=self.duration,
            time_dependent=self.time_dependent,
            return_trajectory=self.return_trajectory,
            t_initial=self.t_initial,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> ODELayer:
        config = dict(config)
        config["vector_field"] = keras.saving.deserialize_keras_object(config["vector_field"])
        if "t_final" in config:  # saved by 0.1
            config["duration"] = config.pop("t_final")
        return cls(**config)


class StepwiseODE(ODELayer):
    """A layer that integrates in `num_steps` fixed steps of its `step`: the base
    of `TaylorLagrangeODE` and `FixedStepODE` (internal; not part of the public API)."""

    def __init__(self, *args, gradient_checkpointing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.gradient_checkpointing = check_bool(gradient_checkpointing, "gradient_checkpointing")

    @property
    def nfe(self) -> int:
        """Calls of the vector field per call of this layer: `num_steps` times the calls per step."""
        raise NotImplementedError

    def step(
        self, states: tf.Tensor, times: tf.Tensor | None = None, *, step_size: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One step: `(next states, remainder term)`; of Δt, or of `step_size` `(batch, 1)` per sample."""
        raise NotImplementedError

    def call(self, inputs: tf.Tensor | list, training: bool | None = None, times: tf.Tensor | None = None) -> tf.Tensor:
        return self._forward(self._as_spans(inputs, times), training, log_det=False)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(gradient_checkpointing=self.gradient_checkpointing)
        return config

    def change_of_variables(self, x: tf.Tensor, training: bool | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """`(Φ(x), log det ∂Φ/∂x, fold)`: the rollout map Φ of flat states and its log-volume change.

        log det ∂Φ/∂x is the sum over the steps of each step's exact
        log-determinant (keras_tlnode/volume.py: d forward-mode tangents per
        step), NaN where a step's determinant is ≤ 0 (the map folds there and
        is not one-to-one; in training, Σ_k log|det| there, which the
        likelihood and the barrier push away from the fold). With it,
        log N(Φ(x)) + log det ∂Φ/∂x is a probability density of x whatever
        the step's error: `ContinuousNormalizingFlow` is built on it.

        Args:
            x: flat states `(batch, d)`; the layer must have
                `return_trajectory=False`.
            training: whether in training mode (only then is `fold` computed).

        Returns:
            `Φ(x)` `(batch, d)`; log det ∂Φ/∂x `(batch,)`; `fold` `(batch,)`:
            in training, Σ_k of a barrier on each step's determinant
            (`volume.fold_barrier`), zero where every step keeps it above
            0.1, steep towards 0 and finite beyond, the penalty that
            `ContinuousNormalizingFlow` adds to keep training away from folds;
            outside training, zeros (not computed).

        Raises:
            ValueError: for states that are not flat, or with `return_trajectory=True`.
        """
        x = tf.convert_to_tensor(x)
        self._check_inputs(x)
        if x.shape.rank != 2 or self.return_trajectory:
            raise ValueError(
                f"{type(self).__name__}.change_of_variables takes flat states (batch, d) and return_trajectory=False, "
                f"got shape {x.shape} and return_trajectory={self.return_trajectory}."
            )
        end = self._forward(Spans(x, None), training, log_det=True)
        return end[:, :-2], end[:, -2], end[:, -1]

    def inverse(self, y: tf.Tensor) -> tf.Tensor:
        """Φ⁻¹(y), the inverse of the layer's map on flat states: each step undone by Newton's method, the last first.

        Each step is inverted by damped Newton iterations with its exact
        Jacobian, which start from the step's output and stop at rounding
        level (`volume.invert_step`): exact to the dtype's precision where
        every step is one-to-one (see `change_of_variables`).

        Args:
            y: flat states `(batch, d)` at the end of the interval.

        Returns:
            The states x `(batch, d)` with Φ(x) = y.
        """
        self._check_inputs(y)
        invert = eager_traced(self, "_invert") if tf.executing_eagerly() else self._invert
        return invert(y)

    def _forward(self, spans: Spans, training: bool | None, log_det: bool) -> tf.Tensor:
        """The output of the rollout of `spans`, with [·, log det] if `log_det`."""
        return self._rollout(spans, training, False, log_det)[0]

    def _rollout(
        self, spans: Spans, training: bool | None, penalise: bool, log_det: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """`(output states, Σ_k mean|R_k| if penalise)` of the rollout of `spans` (see `_integrate`)."""
        integrate = eager_traced(self, "_integrate") if tf.executing_eagerly() else self._integrate
        # Only training takes gradients: inference and export keep the plain steps.
        checkpoint = self.gradient_checkpointing and bool(training)
        return integrate(*spans, penalise, log_det, log_det and bool(training), checkpoint)

    def _integrate(
        self,
        x: tf.Tensor,
        step_size: tf.Tensor | None,
        times: tf.Tensor | None,
        penalise: bool,
        log_det: bool = False,
        barrier: bool = False,
        checkpoint: bool = False,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The rollout; with `log_det`, of [x, Δ, F] (`volume.with_log_det`), F accumulated only with `barrier`."""
        spans = Spans(x, step_size, times)
        step, step_inputs = self._step_fn(spans)
        if log_det:
            step, x = (
                with_log_det(step, barrier),
                tf.concat([x, tf.zeros(tf.stack([tf.shape(x)[0], 2]), x.dtype)], axis=-1),
            )
        # With observation times, the states at every num_steps-th step are the output.
        save_every = self.num_steps if times is not None else 1 if self.return_trajectory else None
        return rollout(
            step,
            x,
            self._steps_per_sample(spans),
            save_every,
            sum_remainders=penalise,
            checkpoint=checkpoint,
            step_inputs=step_inputs,
        )

    def _invert(self, y: tf.Tensor) -> tf.Tensor:
        step, _ = self._step_fn(Spans(y))
        # A residual of a few roundings of the states' size: Newton's last step then leaves an error far below it.
        tolerance = 8 * float(np.finfo(y.dtype.as_numpy_dtype).eps) * (1.0 + tf.reduce_max(tf.abs(y)))
        _, x = tf.while_loop(
            lambda k, _: k > 0,
            lambda k, z: (k - 1, invert_step(step, z, k - 1, tolerance)),
            (tf.constant(self.num_steps), y),
            maximum_iterations=self.num_steps,
        )
        return x

    def _step_fn(self, spans: Spans) -> tuple[StepFn, tuple[tf.Tensor, ...]]:
        """`step(states, k)` of the rollout of `spans`, as `rollout` takes it, and the tensors it reads.

        With observation times, step k reads its Δt and start time from the
        per-sample grid (`_grid`); otherwise every step has the same Δt (the
        layer's, or each sample's with durations).
        """
        if spans.times is None:
            step_size = spans.step_size

            def step(state: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return self.step(state, self._time(state, k, step_size), step_size=step_size)

            return step, () if step_size is None else (step_size,)
        # Step-major `(K, batch, 1)`: step k reads row k, of static shape (batch, 1).
        sizes, starts = (tf.transpose(grid)[..., tf.newaxis] for grid in self._grid(spans.times, spans.states.dtype))

        def step_at_times(state: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return self.step(state, starts[k] if self.time_dependent else None, step_size=sizes[k])

        return step_at_times, (sizes, starts) if self.time_dependent else (sizes,)

    def _grid(self, times: tf.Tensor, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
        """Each step's Δt and start time `(batch, K)` at observation times `(batch, T)`, cast to `dtype`.

        `num_steps` steps of (t_{j+1} − t_j) / num_steps span each interval,
        so K = (T − 1) · num_steps; both are computed in the times' dtype.
        """
        intervals = (times[:, 1:] - times[:, :-1]) / self.num_steps
        sizes = tf.repeat(intervals, self.num_steps, axis=1)
        offsets = tf.cast(tf.tile(tf.range(self.num_steps), [tf.shape(intervals)[1]]), times.dtype)
        starts = tf.repeat(times[:, :-1], self.num_steps, axis=1) + offsets * sizes
        return tf.cast(sizes, dtype), tf.cast(starts, dtype)

    def _steps_per_sample(self, spans: Spans) -> int | tf.Tensor:
        """K, the steps of the rollout of `spans`: `num_steps` per observation interval (int32 if T is dynamic)."""
        if spans.times is None:
            return self.num_steps
        count = spans.times.shape[-1]
        return self.num_steps * ((count if count is not None else tf.shape(spans.times)[-1]) - 1)

    def step_starts(self, inputs: tf.Tensor | list | Spans, times: tf.Tensor | None = None) -> tf.Tensor:
        """The state at which each step of this layer's rollout from `inputs` starts.

        The correction phase of `TLNODEModel` fits Γ_φ on these states.

        Args:
            inputs: as the layer takes them (`x` or `[x, duration]`), or their
                `Spans` as a call parsed them.
            times: the call's observation times, if it had them.

        Returns:
            `(batch · K, *state_shape)` states, sample-major (the steps of
            sample 0 first), without gradients: K = num_steps, or
            (T − 1) · num_steps with T observation times.
        """
        spans = self._as_spans(inputs, times)
        x, steps = spans.states, self._steps_per_sample(spans)
        if isinstance(steps, int) and steps == 1:
            return tf.stop_gradient(x)
        trajectory, _ = rollout(self._step_fn(spans)[0], tf.stop_gradient(x), steps - 1, save_every=1)
        return tf.stop_gradient(tf.reshape(trajectory, tf.concat([[-1], tf.shape(x)[1:]], axis=0)))

    def step_sizes(self, inputs: tf.Tensor | list | Spans, times: tf.Tensor | None = None) -> tf.Tensor | None:
        """Each step start's Δt, matching `step_starts`.

        Args:
            inputs: as for `step_starts`.
            times: as for `step_starts`.

        Returns:
            `(batch · K, 1)` step sizes for inputs with per-sample durations
            (`[x, duration]`) or observation times, else None (every step is
            the layer's `step_size`).
        """
        spans = self._as_spans(inputs, times)
        if spans.times is not None:
            return tf.reshape(self._grid(spans.times, spans.states.dtype)[0], (-1, 1))
        step_size = spans.step_size
        return None if step_size is None else tf.repeat(step_size, self.num_steps, axis=0)

    def step_times(self, inputs: tf.Tensor | list | Spans, times: tf.Tensor | None = None) -> tf.Tensor | None:
        """The time at which each step starts, matching `step_starts`.

        Args:
            inputs: as for `step_starts`.
            times: as for `step_starts`.

        Returns:
            `(batch · K, 1)` start times for a time-dependent field
            (`t_initial` + k Δt, with each sample's own Δt for per-sample
            durations; t_j + i (t_{j+1} − t_j) / num_steps at observation
            times), or None for an autonomous field.
        """
        if not self.time_dependent:
            return None
        spans = self._as_spans(inputs, times)
        if spans.times is not None:
            return tf.reshape(self._grid(spans.times, spans.states.dtype)[1], (-1, 1))
        x, step_size = spans.states, spans.step_size
        index = tf.cast(tf.tile(tf.range(self.num_steps), [tf.shape(x)[0]]), x.dtype)[:, None]
        sizes = self.step_size if step_size is None else tf.repeat(step_size, self.num_steps, axis=0)
        return self.t_initial + index * sizes

    def _as_spans(self, inputs: tf.Tensor | list | Spans, times: tf.Tensor | None = None) -> Spans:
        """`inputs`, parsed unless they already are `Spans` (as recorded by `call`)."""
        if isinstance(inputs, Spans):
            return inputs
        return self._spans(inputs) if times is None else self._observed(inputs, times)

    def _time(self, state: tf.Tensor, k: tf.Tensor | int, step_size: tf.Tensor | None = None) -> tf.Tensor | None:
        """Times `(batch, 1)` at step `k`, or None for autonomous fields."""
        if not self.time_dependent:
            return None
        if step_size is not None:
            return self.t_initial + tf.cast(k, state.dtype) * step_size
        now = self.t_initial + tf.cast(k, state.dtype) * self.step_size
        return tf.fill(tf.stack([tf.shape(state)[0], 1]), now)


@keras.saving.register_keras_serializable(package="keras_tlnode")
class FixedStepODE(StepwiseODE):
    """Integrates `dx/dt = f_θ(x)` over `[t_initial, t_initial + duration]` in fixed steps of a classical scheme.

    The fixed-grid solvers of torchdiffeq and diffrax (`"euler"`, `"heun"`,
    `"rk4"`, explicit Runge-Kutta schemes kept as Butcher tableaus), with the
    same interface as `TaylorLagrangeODE`: the same arguments, `nfe`, `step`,
    `step_starts`, `step_sizes`, `step_times`, `derivative`,
    `change_of_variables`, `inverse`, trajectories, per-sample durations and
    export; `step` returns zeros as its remainder term. They are the natural
    comparison for TL-NODE. Gradients flow through the steps
    (discretise-then-optimise).

    Args:
        vector_field: Keras layer or model computing f_θ, output shaped like its
            input; its weights become this layer's weights. With
            `time_dependent=True` it is called as `vector_field([x, t])`, `t`
            of shape `(batch, 1)`.
        method: "euler" (1 f-evaluation per step), "heun" (2) or "rk4" (4).
        num_steps: number of fixed steps, >= 1.
        duration: length of the integration interval, finite and > 0
            (default 1.0).
        time_dependent: whether f depends on t as well.
        return_trajectory: return the states at t_initial + 0, Δt, ...,
            duration on a new axis 1 instead of the final state.
        t_initial: time at the start of the interval (time-dependent fields).
        gradient_checkpointing: in training, keep only each step's start
            state for the backward pass and recompute the step's activations
            there: a training step's memory no longer grows with `num_steps`
            times the field's activations, for about one more forward pass
            (docs/usage.md, "Long horizons"). Inference and export are
            unchanged.
        t_final: deprecated name of `duration`, with a `DeprecationWarning`;
            removed in 1.0.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `x`, or `[x, duration]` with one duration per sample, as for
            `TaylorLagrangeODE`.
        training: Keras's training flag; a classical step does the same in
            training and inference.
        times: observation times `(T,)` or `(batch, T)`, as for
            `TaylorLagrangeODE`.

    Input shape:
        As for `TaylorLagrangeODE`: `x` of shape `(batch, *state_shape)`,
        floating, with at least one state axis; a `duration` of shape
        `(batch,)` or `(batch, 1)`.

    Output shape:
        As for `TaylorLagrangeODE`: the final states, `(batch, *state_shape)`,
        or with `return_trajectory=True` every state from t_initial on,
        `(batch, num_steps + 1, *state_shape)`, or with `times` the states
        at those times, `(batch, T, *state_shape)`.

    Example:

        >>> import keras, keras_tlnode
        >>> ode = keras_tlnode.FixedStepODE(keras.layers.Dense(2), method="rk4", num_steps=4, duration=0.5)
        >>> inputs = keras.Input((2,))
        >>> model = keras.Model(inputs, ode(inputs))
        >>> tuple(model(keras.ops.ones((3, 2))).shape), ode.nfe
        ((3, 2), 16)
    """

    def __init__(
        self,
        vector_field: keras.layers.Layer,
        method: str = "rk4",
        num_steps: int = 1,
        duration: float | None = None,
        time_dependent: bool = False,
        return_trajectory: bool = False,
        t_initial: float = 0.0,
        *,
        gradient_checkpointing: bool = False,
        t_final: float | None = None,
        **kwargs,
    ):
        super().__init__(
            vector_field,
            num_steps,
            duration,
            time_dependent,
            return_trajectory,
            t_initial,
            gradient_checkpointing=gradient_checkpointing,
            t_final=t_final,
            **kwargs,
        )
        self.method = check_choice(method, "method", tuple(CLASSICAL))

    @property
    def nfe(self) -> int:
        """Calls of the vector field per call of this layer: `num_steps` times 1, 2 or 4."""
        return self.num_steps * CLASSICAL[self.method].stages

    def step(
        self, states: tf.Tensor, times: tf.Tensor | None = None, *, step_size: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One step of the scheme from a batch of states.

        Args:
            states: `(batch, *state_shape)`, each the start of a step.
            times: `(batch, 1)` start times for a time-dependent field, else None.
            step_size: `(batch, 1)`, each sample's Δt; None: the layer's Δt.

        Returns:
            `(next states, zeros)`, both shaped like `states`: a classical
            step has no remainder term.
        """
        dt = self.step_size if step_size is None else step_size
        return runge_kutta_step(CLASSICAL[self.method], self.derivative, states, times, dt)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(method=self.method)
        return config


@keras.saving.register_keras_serializable(package="keras_tlnode")
class TaylorLagrangeODE(StepwiseODE):
    """Integrates `dx/dt = f_θ(x)` over `[t_initial, t_initial + duration]` in fixed Taylor-Lagrange steps.

    Each of the `num_steps` steps of size Δt = duration / num_steps is

        x_{k+1} = x_k + Σ_{i=1..p} Δt^i/i! · x^(i)(x_k) + Δt^(p+1)/(p+1)! · x^(p+1)(ξ_k)

    with the Taylor coefficients x^(i) from nested forward-mode differentiation
    (`taylor_coefficients`) and ξ_k = x_k + Δt · Γ_φ(x_k) ⊙ f_θ(x_k) placed by
    `correction`; with `correction=None`, ξ_k = x_k and the step is the Taylor
    method of degree p+1. For the classical schemes use `FixedStepODE`.

    f-evaluations per call (`nfe`): `num_steps` times the calls of f per step,
    p+1 for the uncorrected step and max(p, 1) + p + 1 with a correction (T − 1
    times that for a call at T observation times). A call
    inside k nested forward accumulators costs about 2^k plain calls;
    `benchmarks/benchmark.py` measures the real cost.

    In training mode, `remainder_weight` λ > 0 adds λ · Σ_k mean|R_k| to the
    model's losses, R_k being the last (remainder) term of step k. Inside a
    `TLNODEModel`, `fit` also fits the correction to a reference solver
    (docs/usage.md, "Alternating teacher training").

    Args:
        vector_field: Keras layer or model computing f_θ, output shaped like its
            input. Its weights become this layer's weights. With
            `time_dependent=True` it is called as `vector_field([x, t])`, `t` of
            shape `(batch, 1)`.
        order: p, the degree of the Taylor polynomial, an int in [0, 6]; the
            remainder uses the (p+1)-th derivative. Orders 0-3 work for every
            op; every op measured works to order 6, but an op without a
            forward-mode rule of the package traces slowly at orders 4-6
            (seconds to minutes; docs/support.md, "Support matrix").
        num_steps: number of fixed steps, >= 1.
        duration: length of the integration interval, finite and > 0
            (default 1.0).
        correction: `MidpointCorrection` (Γ_φ) or None. A correction without a
            `base_value` gets γ₀ = 1/(p+2) from this layer.
        remainder_weight: λ >= 0, weight of the remainder penalty.
        time_dependent: whether f depends on t as well.
        return_trajectory: return the states at t_initial + 0, Δt, ...,
            duration on a new axis 1 instead of the final state.
        method: None or "taylor_lagrange"; a classical scheme (0.1's
            `method="rk4"`) raises, naming `FixedStepODE(method=...)`;
            `.keras` files saved by 0.1 with one still load as that
            `FixedStepODE`, with a `DeprecationWarning`.
        t_initial: time at the start of the interval (time-dependent fields).
        gradient_checkpointing: in training, keep only each step's start
            state for the backward pass and recompute the step's activations
            there: a training step's memory no longer grows with `num_steps`
            times the field's activations, for about one more forward pass
            (docs/usage.md, "Long horizons"). Inference and export are
            unchanged.
        t_final: deprecated name of `duration`, with a `DeprecationWarning`;
            removed in 1.0.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: the states `x`, or a list `[x, duration]` with one duration
            per sample (finite and > 0; checked in eager calls only): sample
            i is integrated over `[t_initial, t_initial + duration_i]` in
            `num_steps` steps of duration_i / num_steps (docs/usage.md,
            "Per-sample time spans").
        training: in training mode, with `remainder_weight` > 0, the
            remainder penalty joins the layer's losses.
        times: observation times, `(T,)` shared by the batch or `(batch, T)`
            per sample, T >= 2, strictly increasing (checked in eager calls
            only), the first the start: the layer returns the states at
            these times, in `num_steps` steps of (t_{j+1} − t_j) / num_steps
            between each two (`duration` and `t_initial` are not used; the
            states `x` alone, no `[x, duration]`, and
            `return_trajectory=False`). For fitting trajectories observed at
            irregular times (docs/usage.md, "Fitting trajectories").

    Input shape:
        `x`: `(batch, *state_shape)`, a floating tensor with at least one
        state axis (vectors, images, any rank). `duration`, if given:
        `(batch,)` or `(batch, 1)`.

    Output shape:
        `(batch, *state_shape)`, the states at `t_initial + duration`. With
        `return_trajectory=True`, `(batch, num_steps + 1, *state_shape)`: the
        states at t_initial + 0, Δt, ..., duration (each sample on its own
        grid with per-sample durations). With `times`, `(batch, T,
        *state_shape)`: the states at the T times, the first `x`.

    Raises:
        ValueError: for `method` other than None and "taylor_lagrange" (the
            migration to `FixedStepODE` is in the message).

    Example:

        >>> import keras, keras_tlnode
        >>> ode = keras_tlnode.TaylorLagrangeODE(
        ...     keras.layers.Dense(2), order=1, num_steps=2,
        ...     correction=keras_tlnode.MidpointCorrection(hidden_units=(16,)))
        >>> inputs = keras.Input((2,))
        >>> model = keras.Model(inputs, keras.layers.Dense(1)(ode(inputs)))
        >>> model.compile("adam", "mse")
        >>> ode.nfe
        6
        >>> trajectory = keras_tlnode.TaylorLagrangeODE(keras.layers.Dense(2), num_steps=4, return_trajectory=True)
        >>> tuple(trajectory([keras.ops.ones((3, 2)), keras.ops.full((3,), 0.5)]).shape)
        (3, 5, 2)
    """

    def __init__(
        self,
        vector_field: keras.layers.Layer,
        order: int = 1,
        num_steps: int = 1,
        duration: float | None = None,
        correction: MidpointCorrection | None = None,
        remainder_weight: float = 0.0,
        time_dependent: bool = False,
        return_trajectory: bool = False,
        method: str | None = None,
        t_initial: float = 0.0,
        *,
        gradient_checkpointing: bool = False,
        t_final: float | None = None,
        **kwargs,
    ):
        if method not in (None, "taylor_lagrange"):
            # 0.1 returned a FixedStepODE here: a constructor must not return another class.
            raise ValueError(
                f"TaylorLagrangeODE(method={method!r}) was removed in 0.2: use "
                f"keras_tlnode.FixedStepODE(vector_field, method={method!r}, num_steps=..., duration=...)."
            )
        super().__init__(
            vector_field,
            num_steps,
            duration,
            time_dependent,
            return_trajectory,
            t_initial,
            gradient_checkpointing=gradient_checkpointing,
            t_final=t_final,
            **kwargs,
        )
        self.order = check_int(order, "order", 0, MAX_ORDER)
        self.remainder_weight = check_float(remainder_weight, "remainder_weight", non_negative=True)
        self.correction = check_instance(correction, "correction", MidpointCorrection, optional=True)
        if correction is not None and correction.base_value is None:
            correction.set_base_value(1.0 / (self.order + 2))

    @property
    def nfe(self) -> int:
        """Calls of the vector field per call of this layer: `num_steps` times p+1, or max(p, 1) + p + 1 corrected."""
        return self.num_steps * taylor_lagrange_evaluations(self.order, self.correction is not None)

    def build(self, input_shape: tuple | list) -> None:
        super().build(input_shape)
        if self.correction is not None and not self.correction.built:
            self.correction.build(self._state_shape(input_shape))

    def _forward(self, spans: Spans, training: bool | None, log_det: bool) -> tf.Tensor:
        # In training, the remainder penalty joins the loss and the call is recorded for the correction phase.
        penalise = bool(training) and self.remainder_weight > 0
        states, remainder = self._rollout(spans, training, penalise, log_det)
        penalty = self.remainder_weight * remainder if penalise else None
        if penalty is not None and penalty.dtype.size < 4:
            # Under mixed precision Keras sums the losses in float32.
            penalty = tf.cast(penalty, tf.float32)
        if penalty is not None:
            self.add_loss(penalty)
        record(self, spans, penalty)
        return states

    def step(
        self,
        states: tf.Tensor,
        times: tf.Tensor | None = None,
        apply_trust: bool = True,
        *,
        step_size: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One Taylor-Lagrange step from a batch of states: `(next states, remainder term)`.

        Args:
            states: `(batch, *state_shape)`, each the start of a step.
            times: `(batch, 1)` start times for a time-dependent field, else None.
            apply_trust: False steps with the fitted correction at full strength
                (`MidpointCorrection.call`), as the correction phase fits it.
            step_size: `(batch, 1)`, each sample's Δt; None: the layer's Δt.

        Returns:
            The states one step later and the step's Lagrange remainder term,
            both shaped like `states`.
        """
        midpoint = None
        if self.correction is not None:
            midpoint = functools.partial(self.correction.midpoint, apply_trust=apply_trust)
        dt = self.step_size if step_size is None else step_size
        return taylor_lagrange_step(self.derivative, states, times, dt, self.order, midpoint)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            order=self.order,
            correction=keras.saving.serialize_keras_object(self.correction),
            remainder_weight=self.remainder_weight,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> StepwiseODE:
        config = dict(config)
        method = config.pop("method", None)
        if method not in (None, "taylor_lagrange"):
            # Saved by 0.1, whose TaylorLagrangeODE(method=...) built a classical scheme: it loads as one.
            warnings.warn(
                f"a TaylorLagrangeODE config with method={method!r} (saved by 0.1) loads as "
                f"FixedStepODE(method={method!r}); save it again to drop this warning.",
                DeprecationWarning,
                stacklevel=2,
            )
            for name in ("order", "correction", "remainder_weight"):
                config.pop(name, None)
            return FixedStepODE.from_config({**config, "method": method})
        config["correction"] = keras.saving.deserialize_keras_object(config["correction"])
        return super().from_config(config)


_TRACED: weakref.WeakKeyDictionary[ODELayer, dict[str, Callable]] = weakref.WeakKeyDictionary()


def eager_traced(layer: ODELayer, method: str) -> Callable:
    """`layer.<method>` (its rollout, its inverse, its adaptive solve) as a tf.function, cached per layer, for eager calls.

    Each Taylor pass is a function call of its own (see `taylor_coefficients`);
    tracing the whole rollout once keeps eager calls from tracing every step.
    tfp's adaptive solver, run eagerly, is a Python loop over its steps
    (about 18x slower than traced, measured). The cache lives outside the
    layer, so export never sees it, and holds the layer weakly.
    """
    functions = _TRACED.setdefault(layer, {})
    if method not in functions:
        owner = weakref.ref(layer)

        def traced(*args):
            alive = owner()
            if alive is None:  # unreachable: the cache drops a layer's entry with the layer
                raise ReferenceError("the layer of this traced rollout no longer exists")
            return getattr(alive, method)(*args)

        functions[method] = tf.function(traced, autograph=False, reduce_retracing=True)
    return functions[method]


def layers_of(model: keras.layers.Layer, cls: type[L]) -> list[L]:
    """Every layer of class `cls` inside `model`, however deeply nested, once each."""
    return [layer for layer in flatten_layers(model) if isinstance(layer, cls)]
