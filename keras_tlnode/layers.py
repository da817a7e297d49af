"""`TaylorLagrangeODE`: a neural ODE layer solved by fixed Taylor-Lagrange steps.

`ODELayer` holds what it shares with the adaptive baseline `DormandPrinceODE`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import threading
import weakref
from typing import Callable, Iterator, NamedTuple

import keras
import tensorflow as tf

from keras_tlnode.correction import MidpointCorrection
from keras_tlnode.rollout import rollout
from keras_tlnode.schemes import CLASSICAL, taylor_lagrange_evaluations, taylor_lagrange_step
from keras_tlnode.taylor import validate_order

METHODS = ("taylor_lagrange",) + tuple(CLASSICAL)


class ODELayer(keras.layers.Layer):
    """What the package's ODE layers share: the vector field, the interval, the output shape, the config.

    Subclasses solve dx/dt = f_θ(x) (or f_θ(x, t)) from their inputs at
    `t_initial` to `t_initial + t_final` in `call`; this base validates the
    shared arguments, builds the vector field and checks its output shape.
    """

    def __init__(
        self,
        vector_field: keras.layers.Layer,
        num_steps: int = 1,
        t_final: float = 1.0,
        time_dependent: bool = False,
        return_trajectory: bool = False,
        t_initial: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(vector_field, keras.layers.Layer):
            raise TypeError(
                f"`vector_field` must be a keras.layers.Layer or keras.Model, got {type(vector_field).__name__}."
            )
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
        self.vector_field = vector_field
        self.num_steps = num_steps
        self.t_final = finite_float(t_final, "t_final", positive=True)
        self.t_initial = finite_float(t_initial, "t_initial")
        self.time_dependent = _bool(time_dependent, "time_dependent")
        self.return_trajectory = _bool(return_trajectory, "return_trajectory")

    @property
    def step_size(self) -> float:
        """Δt = t_final / num_steps."""
        return self.t_final / self.num_steps

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) < 2:
            raise ValueError(
                f"{type(self).__name__} needs inputs of shape (batch, *state_shape) with at least one state "
                f"dimension, e.g. keras.Input((n,)); got shape {tuple(input_shape)}."
            )
        state_shape = tuple(input_shape[1:])
        if not self.vector_field.built:
            self.vector_field.build(self._field_input_shape(input_shape))
        spec = self.vector_field.compute_output_spec(self._field_input_spec(state_shape))
        _check_field_shape(tuple(spec.shape[1:]), state_shape)

    def derivative(self, x: tf.Tensor, t: tf.Tensor | None = None) -> tf.Tensor:
        """f_θ(x) (or f_θ(x, t), `t` of shape `(batch, 1)`), checked to be shaped like the states."""
        derivative = self.vector_field(x if t is None else [x, t])
        _check_field_shape(tuple(derivative.shape[1:]), tuple(x.shape[1:]))
        return derivative

    def _field_input_shape(self, input_shape: tuple) -> tuple | list:
        return [tuple(input_shape), (input_shape[0], 1)] if self.time_dependent else tuple(input_shape)

    def _field_input_spec(self, state_shape: tuple) -> keras.KerasTensor | list:
        x = keras.KerasTensor((None,) + state_shape, dtype=self.compute_dtype)
        return [x, keras.KerasTensor((None, 1), dtype=self.compute_dtype)] if self.time_dependent else x

    def _check_inputs(self, inputs: tf.Tensor) -> None:
        if not tf.as_dtype(inputs.dtype).is_floating:
            raise TypeError(f"{type(self).__name__} `inputs` must have a floating dtype, got {tf.as_dtype(inputs.dtype).name}.")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        if self.return_trajectory:
            return (input_shape[0], self.num_steps + 1) + tuple(input_shape[1:])
        return tuple(input_shape)

    def compute_output_spec(self, inputs: keras.KerasTensor, training: bool | None = None) -> keras.KerasTensor:
        self._check_inputs(inputs)
        return super().compute_output_spec(inputs)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            vector_field=keras.saving.serialize_keras_object(self.vector_field),
            num_steps=self.num_steps,
            t_final=self.t_final,
            time_dependent=self.time_dependent,
            return_trajectory=self.return_trajectory,
            t_initial=self.t_initial,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> "ODELayer":
        config = dict(config)
        config["vector_field"] = keras.saving.deserialize_keras_object(config["vector_field"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_tlnode")
class TaylorLagrangeODE(ODELayer):
    """Integrates `dx/dt = f_θ(x)` over `[t_initial, t_initial + t_final]` in fixed steps.

    Each of the `num_steps` steps of size Δt = t_final / num_steps is

        x_{k+1} = x_k + Σ_{i=1..p} Δt^i/i! · x^(i)(x_k) + Δt^(p+1)/(p+1)! · x^(p+1)(ξ_k)

    with the Taylor coefficients x^(i) from nested forward-mode differentiation
    (`taylor_coefficients`) and ξ_k = x_k + Δt · Γ_φ(x_k) ⊙ f_θ(x_k) placed by
    `correction`; with `correction=None`, ξ_k = x_k and the step is the Taylor
    method of degree p+1. `method="euler" | "heun" | "rk4"` swaps the step for a
    classical scheme through the same layer, rollout and API.

    f-evaluations per call (`nfe`): `num_steps` times the calls of f per step:
    p+1 for the uncorrected Taylor step, max(p, 1) + p + 1 with a correction, and
    1, 2, 4 for Euler, Heun, RK4. A call inside k nested forward accumulators
    costs about 2^k plain calls; `examples/benchmark.py` measures the real cost.

    In training mode, `remainder_weight` λ > 0 adds λ · Σ_k mean|R_k| to the
    model's losses, R_k being the last (remainder) term of step k.

    Args:
        vector_field: Keras layer or model computing f_θ, output shaped like its
            input. Its weights become this layer's weights. With
            `time_dependent=True` it is called as `vector_field([x, t])`, `t` of
            shape `(batch, 1)`.
        order: p, the degree of the Taylor polynomial, an int in [0, 6]; the
            remainder uses the (p+1)-th derivative. Orders above 3 work only for
            some ops (README, "Support matrix").
        num_steps: number of fixed steps, >= 1.
        t_final: length of the integration interval, finite and > 0.
        correction: `MidpointCorrection` (Γ_φ) or None.
        remainder_weight: λ >= 0, weight of the remainder penalty.
        time_dependent: whether f depends on t as well.
        return_trajectory: return the states at t = 0, Δt, ..., t_final on a new
            axis 1 instead of the final state.
        method: "taylor_lagrange" (default), "euler", "heun" or "rk4".
        t_initial: time at the start of the interval (time-dependent fields).
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

    def __init__(
        self,
        vector_field: keras.layers.Layer,
        order: int = 1,
        num_steps: int = 1,
        t_final: float = 1.0,
        correction: MidpointCorrection | None = None,
        remainder_weight: float = 0.0,
        time_dependent: bool = False,
        return_trajectory: bool = False,
        method: str = "taylor_lagrange",
        t_initial: float = 0.0,
        **kwargs,
    ):
        super().__init__(vector_field, num_steps, t_final, time_dependent, return_trajectory, t_initial, **kwargs)
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
        if correction is not None and not isinstance(correction, MidpointCorrection):
            raise TypeError(f"`correction` must be a MidpointCorrection or None, got {type(correction).__name__}.")
        if correction is not None and method != "taylor_lagrange":
            raise ValueError(f"`correction` only applies to method='taylor_lagrange', got method={method!r}.")
        self.order = validate_order(order)
        self.remainder_weight = finite_float(remainder_weight, "remainder_weight", non_negative=True)
        self.correction = correction
        if correction is not None and correction.base_value is None:
            correction.set_base_value(1.0 / (self.order + 2))
        self.method = method

    @property
    def nfe(self) -> int:
        """Calls of the vector field per call of this layer (see the class docstring)."""
        if self.method in CLASSICAL:
            return self.num_steps * CLASSICAL[self.method][1]
        return self.num_steps * taylor_lagrange_evaluations(self.order, self.correction is not None)

    def build(self, input_shape: tuple) -> None:
        super().build(input_shape)
        if self.correction is not None and not self.correction.built:
            self.correction.build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        self._check_inputs(inputs)
        penalise = bool(training) and self.remainder_weight > 0
        integrate = _traced_integrate(self) if tf.executing_eagerly() else self._integrate
        states, remainder = integrate(inputs, penalise)
        penalty = self.remainder_weight * remainder if penalise else None
        if penalty is not None and penalty.dtype.size < 4:
            # Under mixed precision Keras sums the losses in float32.
            penalty = tf.cast(penalty, tf.float32)
        if penalty is not None:
            self.add_loss(penalty)
        _record(self, inputs, penalty)
        return states

    def _integrate(self, x: tf.Tensor, penalise: bool) -> tuple[tf.Tensor, tf.Tensor]:
        def step(state: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return self.step(state, self._time(state, k))

        return rollout(step, x, self.num_steps, self.return_trajectory, sum_remainders=penalise)

    def step(
        self, states: tf.Tensor, times: tf.Tensor | None = None, apply_trust: bool = True
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One step of Δt of this layer's scheme: `(next states, remainder term)`.

        Args:
            states: `(batch, *state_shape)`, each the start of a step.
            times: `(batch, 1)` start times for a time-dependent field, else None.
            apply_trust: False steps with the fitted correction at full strength
                (`MidpointCorrection.call`), as the correction phase fits it.

        Returns:
            The states one step later and the step's Lagrange remainder term
            (zeros for the classical schemes), both shaped like `states`.
        """
        if self.method in CLASSICAL:
            scheme = CLASSICAL[self.method][0]
        else:
            scheme = functools.partial(
                taylor_lagrange_step, order=self.order, correction=self.correction, apply_trust=apply_trust
            )
        return scheme(self.derivative, states, times, self.step_size)

    def step_starts(self, inputs: tf.Tensor) -> tf.Tensor:
        """The state at which each step of this layer's rollout from `inputs` starts.

        Returns `(batch · num_steps, *state_shape)` states, sample-major (the
        steps of sample 0 first), without gradients. The correction phase of
        `TLNODEModel` fits Γ_φ on these states.
        """
        if self.num_steps == 1:
            return tf.stop_gradient(inputs)

        def step(state: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return self.step(state, self._time(state, k))

        trajectory, _ = rollout(step, tf.stop_gradient(inputs), self.num_steps - 1, return_trajectory=True)
        return tf.stop_gradient(tf.reshape(trajectory, tf.concat([[-1], tf.shape(inputs)[1:]], axis=0)))

    def step_times(self, batch_size: tf.Tensor | int, dtype: tf.DType) -> tf.Tensor | None:
        """The start times `(batch_size · num_steps, 1)` matching `step_starts`, or None for an autonomous field."""
        if not self.time_dependent:
            return None
        index = tf.tile(tf.range(self.num_steps), [batch_size])
        return self.t_initial + tf.cast(index, dtype)[:, None] * self.step_size

    def _time(self, state: tf.Tensor, k: tf.Tensor | int) -> tf.Tensor | None:
        """Times `(batch, 1)` at step `k`, or None for autonomous fields."""
        if not self.time_dependent:
            return None
        now = self.t_initial + tf.cast(k, state.dtype) * self.step_size
        return tf.fill(tf.stack([tf.shape(state)[0], 1]), now)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            order=self.order,
            correction=keras.saving.serialize_keras_object(self.correction),
            remainder_weight=self.remainder_weight,
            method=self.method,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> "TaylorLagrangeODE":
        config = dict(config)
        config["correction"] = keras.saving.deserialize_keras_object(config["correction"])
        return super().from_config(config)


_RECORDING = threading.local()


class RecordedCalls(NamedTuple):
    """What the TaylorLagrangeODE layers did inside a `recorded_calls()` block.

    `inputs` maps each layer to the inputs of each of its calls (a shared layer
    has several); `penalties` holds each call's remainder penalty that went into
    the loss, and nothing else (not the weights' regularisers).
    """

    inputs: dict[TaylorLagrangeODE, list[tf.Tensor]]
    penalties: list[tf.Tensor]
    graph: object  # the graph the block runs in; calls traced in other graphs are not recorded


@contextlib.contextmanager
def recorded_calls() -> Iterator[RecordedCalls]:
    """Collects what every TaylorLagrangeODE layer receives and adds to the loss inside the block.

    `TLNODEModel.train_step` uses it to fit each layer's correction on the
    states that layer actually saw, and to log the remainder penalty.
    Thread-local, because tf.distribute traces each replica in its own thread.
    """
    stack = _RECORDING.__dict__.setdefault("stack", [])
    stack.append(RecordedCalls({}, [], tf.compat.v1.get_default_graph()))
    try:
        yield stack[-1]
    finally:
        stack.pop()


def _record(layer: TaylorLagrangeODE, inputs: tf.Tensor, penalty: tf.Tensor | None) -> None:
    stack = getattr(_RECORDING, "stack", None)
    # Keras builds a subclassed model by calling it once in a scratch graph
    # inside the same step; those tensors cannot be used in the step's graph.
    if stack and (tf.executing_eagerly() or tf.compat.v1.get_default_graph() is stack[-1].graph):
        stack[-1].inputs.setdefault(layer, []).append(inputs)
        if penalty is not None:
            stack[-1].penalties.append(penalty)


_TRACED: "weakref.WeakKeyDictionary[TaylorLagrangeODE, Callable]" = weakref.WeakKeyDictionary()


def _traced_integrate(layer: TaylorLagrangeODE) -> Callable[[tf.Tensor, bool], tuple[tf.Tensor, tf.Tensor]]:
    """`layer._integrate` as a tf.function, cached per layer, for eager calls.

    Each Taylor pass is a function call of its own (see `taylor_coefficients`);
    tracing the whole rollout once keeps eager calls from tracing every step.
    The cache lives outside the layer, so export never sees it, and holds the
    layer weakly.
    """
    if layer not in _TRACED:
        owner = weakref.ref(layer)
        _TRACED[layer] = tf.function(lambda x, penalise: owner()._integrate(x, penalise), autograph=False, reduce_retracing=True)
    return _TRACED[layer]


def finite_float(value: object, name: str, positive: bool = False, non_negative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    if positive and value <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}.")
    if non_negative and value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
    return float(value)


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r} ({type(value).__name__}).")
    return value


def _check_field_shape(produced: tuple, state_shape: tuple) -> None:
    if produced != state_shape:
        raise ValueError(
            f"`vector_field` must return a tensor shaped like its input state {state_shape} "
            f"(per sample), got {produced}."
        )


def tl_layers(model: keras.layers.Layer) -> list[TaylorLagrangeODE]:
    """Every TaylorLagrangeODE inside `model`, however deeply nested, once each."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if isinstance(layer, TaylorLagrangeODE)]
