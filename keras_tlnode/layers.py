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
import inspect
import warnings
import weakref
from collections.abc import Callable
from typing import TypeVar

import keras
import tensorflow as tf

from keras_tlnode.compat import flatten_layers
from keras_tlnode.correction import MidpointCorrection
from keras_tlnode.recording import record
from keras_tlnode.rollout import rollout
from keras_tlnode.schemes import CLASSICAL, taylor_lagrange_evaluations, taylor_lagrange_step
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

L = TypeVar("L", bound=keras.layers.Layer)


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
        """Δt = duration / num_steps."""
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
        """f_θ(x) (or f_θ(x, t), `t` of shape `(batch, 1)`), checked to be shaped like the states."""
        derivative = self.vector_field(x if t is None else [x, t])
        check_field_shape(tuple(derivative.shape[1:]), tuple(x.shape[1:]))
        return derivative

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

    def _spans(self, inputs: tf.Tensor | list) -> tuple[tf.Tensor, tf.Tensor | None]:
        """`(x, Δt)` from `x` (Δt None: the layer's own) or from `[x, duration]` (Δt per sample, `(batch, 1)`).

        Durations are checked to be finite and > 0 in eager calls only: a
        check inside a graph would be a synchronisation point.
        """
        if not isinstance(inputs, (list, tuple)):
            self._check_inputs(inputs)
            return inputs, None
        self._state_shape([tuple(tensor.shape) for tensor in inputs])
        x, duration = inputs
        self._check_inputs(x)
        if not tf.as_dtype(duration.dtype).is_floating:
            raise TypeError(f"`duration` must have a floating dtype, got {tf.as_dtype(duration.dtype).name}.")
        duration = tf.reshape(tf.cast(duration, x.dtype), (-1, 1))
        if tf.executing_eagerly() and not bool(tf.reduce_all(tf.math.is_finite(duration) & (duration > 0))):
            raise ValueError(f"`duration` must be finite and > 0 for every sample, got {duration.numpy().ravel()}.")
        return x, duration / self.num_steps

    def compute_output_shape(self, input_shape: tuple | list) -> tuple:
        input_shape = self._state_shape(input_shape)
        if self.return_trajectory:
            return (input_shape[0], self.num_steps + 1) + tuple(input_shape[1:])
        return tuple(input_shape)

    def compute_output_spec(self, inputs: keras.KerasTensor | list, training: bool | None = None) -> keras.KerasTensor:
        self._check_inputs(inputs[0] if isinstance(inputs, (list, tuple)) else inputs)
        return super().compute_output_spec(inputs)

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

    @property
    def nfe(self) -> int:
        """Calls of the vector field per call of this layer."""
        raise NotImplementedError

    def step(
        self, states: tf.Tensor, times: tf.Tensor | None = None, *, step_size: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One step: `(next states, remainder term)`; of Δt, or of `step_size` `(batch, 1)` per sample."""
        raise NotImplementedError

    def call(self, inputs: tf.Tensor | list, training: bool | None = None) -> tf.Tensor:
        x, step_size = self._spans(inputs)
        return self._rollout(x, step_size, penalise=False)[0]

    def _rollout(self, x: tf.Tensor, step_size: tf.Tensor | None, penalise: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """`(output states, Σ_k mean|R_k| if penalise)` of the rollout from `x`."""
        integrate = _traced_integrate(self) if tf.executing_eagerly() else self._integrate
        return integrate(x, step_size, penalise)

    def _integrate(self, x: tf.Tensor, step_size: tf.Tensor | None, penalise: bool) -> tuple[tf.Tensor, tf.Tensor]:
        def step(state: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return self.step(state, self._time(state, k, step_size), step_size=step_size)

        return rollout(step, x, self.num_steps, self.return_trajectory, sum_remainders=penalise)

    def step_starts(self, inputs: tf.Tensor | list) -> tf.Tensor:
        """The state at which each step of this layer's rollout from `inputs` starts.

        Returns `(batch · num_steps, *state_shape)` states, sample-major (the
        steps of sample 0 first), without gradients. The correction phase of
        `TLNODEModel` fits Γ_φ on these states.
        """
        x, step_size = self._spans(inputs)
        if self.num_steps == 1:
            return tf.stop_gradient(x)

        def step(state: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return self.step(state, self._time(state, k, step_size), step_size=step_size)

        trajectory, _ = rollout(step, tf.stop_gradient(x), self.num_steps - 1, return_trajectory=True)
        return tf.stop_gradient(tf.reshape(trajectory, tf.concat([[-1], tf.shape(x)[1:]], axis=0)))

    def step_sizes(self, inputs: tf.Tensor | list) -> tf.Tensor | None:
        """Each step start's Δt `(batch · num_steps, 1)`, matching `step_starts`; None without per-sample durations."""
        _, step_size = self._spans(inputs)
        return None if step_size is None else tf.repeat(step_size, self.num_steps, axis=0)

    def step_times(self, inputs: tf.Tensor | list) -> tf.Tensor | None:
        """The start times `(batch · num_steps, 1)` matching `step_starts`, or None for an autonomous field."""
        if not self.time_dependent:
            return None
        x, step_size = self._spans(inputs)
        index = tf.cast(tf.tile(tf.range(self.num_steps), [tf.shape(x)[0]]), x.dtype)[:, None]
        sizes = self.step_size if step_size is None else tf.repeat(step_size, self.num_steps, axis=0)
        return self.t_initial + index * sizes

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
    `"rk4"`), with the same interface, rollout and export as
    `TaylorLagrangeODE`, against which they are the natural comparison.
    Gradients flow through the steps (discretise-then-optimise).

    Args:
        vector_field: Keras layer or model computing f_θ, output shaped like its
            input; with `time_dependent=True` called as `vector_field([x, t])`,
            `t` of shape `(batch, 1)`.
        method: "euler" (1 f-evaluation per step), "heun" (2) or "rk4" (4).
        num_steps: number of fixed steps, >= 1.
        duration: length of the integration interval, finite and > 0
            (default 1.0).
        time_dependent: whether f depends on t as well.
        return_trajectory: return the states at t_initial + 0, Δt, ...,
            duration on a new axis 1 instead of the final state.
        t_initial: time at the start of the interval (time-dependent fields).
        t_final: deprecated name of `duration`.
        **kwargs: standard `keras.layers.Layer` arguments.

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
        t_final: float | None = None,
        **kwargs,
    ):
        super().__init__(
            vector_field, num_steps, duration, time_dependent, return_trajectory, t_initial, t_final=t_final, **kwargs
        )
        self.method = check_choice(method, "method", tuple(CLASSICAL))

    @property
    def nfe(self) -> int:
        """Calls of the vector field per call of this layer: `num_steps` times 1, 2 or 4."""
        return self.num_steps * CLASSICAL[self.method][1]

    def step(
        self, states: tf.Tensor, times: tf.Tensor | None = None, *, step_size: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One step of the scheme: `(next states, zeros)` (a classical step has no remainder term).

        Of Δt, or of `step_size`, `(batch, 1)`, one per sample.
        """
        dt = self.step_size if step_size is None else step_size
        return CLASSICAL[self.method][0](self.derivative, states, times, dt)

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
    p+1 for the uncorrected step and max(p, 1) + p + 1 with a correction. A call
    inside k nested forward accumulators costs about 2^k plain calls;
    `examples/benchmark.py` measures the real cost.

    In training mode, `remainder_weight` λ > 0 adds λ · Σ_k mean|R_k| to the
    model's losses, R_k being the last (remainder) term of step k.

    Args:
        vector_field: Keras layer or model computing f_θ, output shaped like its
            input. Its weights become this layer's weights. With
            `time_dependent=True` it is called as `vector_field([x, t])`, `t` of
            shape `(batch, 1)`.
        order: p, the degree of the Taylor polynomial, an int in [0, 6]; the
            remainder uses the (p+1)-th derivative. Orders above 3 trace
            slowly for ops without a forward-mode rule (docs/support.md).
        num_steps: number of fixed steps, >= 1.
        duration: length of the integration interval, finite and > 0
            (default 1.0).
        correction: `MidpointCorrection` (Γ_φ) or None.
        remainder_weight: λ >= 0, weight of the remainder penalty.
        time_dependent: whether f depends on t as well.
        return_trajectory: return the states at t_initial + 0, Δt, ...,
            duration on a new axis 1 instead of the final state.
        method: deprecated; `method="euler" | "heun" | "rk4"` returns the
            `FixedStepODE` of that scheme, with a `DeprecationWarning`.
        t_initial: time at the start of the interval (time-dependent fields).
        t_final: deprecated name of `duration`.
        **kwargs: standard `keras.layers.Layer` arguments.

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
    """

    def __new__(cls, *args, **kwargs):
        method = inspect.signature(cls.__init__).bind_partial(None, *args, **kwargs).arguments.get("method")
        if method not in (None, "taylor_lagrange"):
            warnings.warn(
                f"TaylorLagrangeODE(method={method!r}) is deprecated and will be removed in 1.0: "
                f"use FixedStepODE(vector_field, method={method!r}, ...).",
                DeprecationWarning,
                stacklevel=2,
            )
            return FixedStepODE(**_classical_arguments(args, kwargs))
        return super().__new__(cls, *args, **kwargs)

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
        t_final: float | None = None,
        **kwargs,
    ):
        super().__init__(
            vector_field, num_steps, duration, time_dependent, return_trajectory, t_initial, t_final=t_final, **kwargs
        )
        self.order = check_int(order, "order", 0, MAX_ORDER)
        self.remainder_weight = check_float(remainder_weight, "remainder_weight", non_negative=True)
        self.correction = check_instance(correction, "correction", MidpointCorrection, optional=True)
        if correction is not None and correction.base_value is None:
            correction.set_base_value(1.0 / (self.order + 2))

    @property
    def nfe(self) -> int:
        """Calls of the vector field per call of this layer (see the class docstring)."""
        return self.num_steps * taylor_lagrange_evaluations(self.order, self.correction is not None)

    def build(self, input_shape: tuple | list) -> None:
        super().build(input_shape)
        if self.correction is not None and not self.correction.built:
            self.correction.build(self._state_shape(input_shape))

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x, step_size = self._spans(inputs)
        penalise = bool(training) and self.remainder_weight > 0
        states, remainder = self._rollout(x, step_size, penalise)
        penalty = self.remainder_weight * remainder if penalise else None
        if penalty is not None and penalty.dtype.size < 4:
            # Under mixed precision Keras sums the losses in float32.
            penalty = tf.cast(penalty, tf.float32)
        if penalty is not None:
            self.add_loss(penalty)
        record(self, inputs, penalty)
        return states

    def step(
        self,
        states: tf.Tensor,
        times: tf.Tensor | None = None,
        apply_trust: bool = True,
        *,
        step_size: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One Taylor-Lagrange step: `(next states, remainder term)`.

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
    def from_config(cls, config: dict) -> TaylorLagrangeODE:
        config = dict(config)
        config["correction"] = keras.saving.deserialize_keras_object(config["correction"])
        return super().from_config(config)


def _classical_arguments(args: tuple, kwargs: dict) -> dict:
    """`FixedStepODE` arguments for a deprecated `TaylorLagrangeODE(method=...)` call.

    The Taylor-Lagrange arguments must keep their defaults: a classical step
    has no order, correction or remainder, and none is accepted to be ignored.
    """
    bound = inspect.signature(TaylorLagrangeODE.__init__).bind(None, *args, **kwargs).arguments
    bound.pop("self")
    for name, default in (("order", 1), ("correction", None), ("remainder_weight", 0.0)):
        if name in bound and bound.pop(name) != default:
            raise ValueError(f"`{name}` does not apply to method={bound['method']!r}; leave it at its default.")
    bound.update(bound.pop("kwargs", {}))
    return bound


_TRACED: weakref.WeakKeyDictionary[StepwiseODE, Callable] = weakref.WeakKeyDictionary()


def _traced_integrate(layer: StepwiseODE) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """`layer._integrate` as a tf.function, cached per layer, for eager calls.

    Each Taylor pass is a function call of its own (see `taylor_coefficients`);
    tracing the whole rollout once keeps eager calls from tracing every step.
    The cache lives outside the layer, so export never sees it, and holds the
    layer weakly.
    """
    if layer not in _TRACED:
        owner = weakref.ref(layer)

        def integrate(x: tf.Tensor, step_size: tf.Tensor | None, penalise: bool) -> tuple[tf.Tensor, tf.Tensor]:
            alive = owner()
            if alive is None:  # unreachable: the cache drops a layer's entry with the layer
                raise ReferenceError("the layer of this traced rollout no longer exists")
            return alive._integrate(x, step_size, penalise)

        _TRACED[layer] = tf.function(integrate, autograph=False, reduce_retracing=True)
    return _TRACED[layer]


def layers_of(model: keras.layers.Layer, cls: type[L]) -> list[L]:
    """Every layer of class `cls` inside `model`, however deeply nested, once each."""
    return [layer for layer in flatten_layers(model) if isinstance(layer, cls)]
