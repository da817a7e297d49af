"""The learned mean-value point of the Lagrange remainder: Γ_φ."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

MODES = ("vector", "matrix")


@keras.saving.register_keras_serializable(package="keras_tlnode")
class MidpointCorrection(keras.layers.Layer):
    """Γ_φ, which places the point ξ where the Lagrange remainder is evaluated.

    For a state `x` with time derivative `f = f_θ(x)` and step `Δt`:

        mode="vector":  ξ = x + Δt · Γ_φ(x) ⊙ f      (Γ has the state's shape)
        mode="matrix":  ξ = x + Δt · Γ_φ(x) f        (Γ is n×n per sample; flat states)

    Γ is dimensionless, a fraction of the step (the paper's Γ is Δt times this
    one, which trains badly on stiff systems). It is parametrised as

        Γ_φ(x) = γ₀ + N_φ(x)     (γ₀ · I + N_φ(x) in matrix mode)

    where `γ₀ = base_value` defaults to 1/(p+2) for a `TaylorLagrangeODE` of
    order p, which by the mean-value expansion makes the untrained step one order
    more accurate than the plain Taylor step of degree p+1, and `N_φ` is a small
    MLP whose output layer starts at zero, or any Keras layer you supply.

    Args:
        mode: "vector" or "matrix".
        hidden_units: widths of the default MLP's hidden layers.
        activation: activation of the default MLP's hidden layers.
        network: optional Keras layer used as N_φ instead of the default MLP. It
            receives the flattened state `(batch, n)` (plus Δt as a last column
            with `use_step_size=True`) and must return `(batch, n)` in vector
            mode or `(batch, n·n)` in matrix mode.
        use_step_size: also feed Δt to N_φ.
        base_value: γ₀; `None` lets the owning `TaylorLagrangeODE` set 1/(p+2).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> import keras, keras_tlnode
    >>> ode = keras_tlnode.TaylorLagrangeODE(
    ...     keras.layers.Dense(2), order=1,
    ...     correction=keras_tlnode.MidpointCorrection(hidden_units=(16,)))
    >>> ode.correction.base_value  # 1/(p+2) for p = 1
    0.3333333333333333
    """

    def __init__(
        self,
        mode: str = "vector",
        hidden_units: tuple[int, ...] | list[int] = (32,),
        activation: str = "relu",
        network: keras.layers.Layer | None = None,
        use_step_size: bool = False,
        base_value: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        hidden_units = tuple(hidden_units)
        if any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in hidden_units):
            raise ValueError(f"`hidden_units` must be positive ints, got {hidden_units!r}.")
        if network is not None and not isinstance(network, keras.layers.Layer):
            raise TypeError(f"`network` must be a keras.layers.Layer or None, got {type(network).__name__}.")
        if base_value is not None and not math.isfinite(base_value):
            raise ValueError(f"`base_value` must be a finite float or None, got {base_value!r}.")
        self.mode = mode
        self.hidden_units = hidden_units
        self.activation = activation
        self.network = network
        self.use_step_size = bool(use_step_size)
        self.base_value = None if base_value is None else float(base_value)

    def build(self, input_shape: tuple) -> None:
        state_size = _flat_size(input_shape, self.mode)
        output_size = state_size * state_size if self.mode == "matrix" else state_size
        features = state_size + int(self.use_step_size)
        if self.network is None:
            self.network = _default_network(self.hidden_units, self.activation, output_size, self)
        if not self.network.built:
            self.network.build((None, features))
        produced = self.network.compute_output_shape((None, features))[-1]
        if produced != output_size:
            what = f"n·n = {output_size}" if self.mode == "matrix" else f"n = {output_size}"
            raise ValueError(
                f"`network` of MidpointCorrection (mode={self.mode!r}) must output {what} values per sample "
                f"for a state of size n = {state_size}, got {produced}."
            )
        if self.base_value is None:
            raise ValueError(
                "MidpointCorrection has no `base_value`: pass it, or attach the correction to a "
                "TaylorLagrangeODE, which sets 1/(order+2)."
            )

    def call(self, x: tf.Tensor, step_size: tf.Tensor | float | None = None) -> tf.Tensor:
        """Returns Γ_φ(x): shaped like `x` (vector) or `(batch, n, n)` (matrix)."""
        n = math.prod(x.shape[1:])
        features = tf.reshape(x, (-1, n))
        if self.use_step_size:
            if step_size is None:
                raise ValueError("MidpointCorrection(use_step_size=True) needs `step_size`.")
            column = tf.ones_like(features[:, :1]) * tf.cast(step_size, features.dtype)
            features = tf.concat([features, column], axis=-1)
        deviation = tf.cast(self.network(features), x.dtype)
        if self.mode == "matrix":
            return self.base_value * tf.eye(n, dtype=x.dtype) + tf.reshape(deviation, (-1, n, n))
        return self.base_value + tf.reshape(deviation, tf.shape(x))

    def midpoint(
        self, x: tf.Tensor, fx: tf.Tensor, step_size: tf.Tensor | float
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """ξ = x + Δt · Γ(x) ⊙ f (or Γ(x) f), and θ̄: the mean fraction of the step taken.

        θ̄ (shape `(batch, 1)`) is the mean over components of Γ applied to a vector
        of ones; a time-dependent field is evaluated at time t + θ̄ Δt at ξ.
        """
        gamma = self(x, step_size=step_size)
        if self.mode == "matrix":
            move = tf.linalg.matvec(gamma, fx)
            fraction = tf.reduce_mean(tf.reduce_sum(gamma, axis=-1), axis=-1, keepdims=True)
        else:
            move = gamma * fx
            fraction = tf.reduce_mean(tf.reshape(gamma, (-1, math.prod(x.shape[1:]))), axis=-1, keepdims=True)
        return x + step_size * move, fraction

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        if self.mode == "matrix":
            n = _flat_size(input_shape, self.mode)
            return (input_shape[0], n, n)
        return tuple(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            mode=self.mode,
            hidden_units=list(self.hidden_units),
            activation=self.activation,
            network=keras.saving.serialize_keras_object(self.network),
            use_step_size=self.use_step_size,
            base_value=self.base_value,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> "MidpointCorrection":
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def _flat_size(input_shape: tuple, mode: str) -> int:
    state_shape = tuple(input_shape[1:])
    if mode == "matrix" and len(state_shape) != 1:
        raise ValueError(f"MidpointCorrection(mode='matrix') needs flat states (batch, n), got shape {input_shape}.")
    if any(d is None for d in state_shape):
        raise ValueError(f"MidpointCorrection needs a fully defined state shape, got {input_shape}.")
    return math.prod(state_shape)


def _default_network(
    hidden_units: tuple[int, ...], activation: str, output_size: int, owner: keras.layers.Layer
) -> keras.Sequential:
    dtype = owner.dtype_policy
    hidden = [keras.layers.Dense(units, activation=activation, dtype=dtype) for units in hidden_units]
    # A zero output layer starts Γ exactly at γ₀, the mean-value default; its
    # kernel still gets gradients, since the hidden activations are nonzero.
    output = keras.layers.Dense(
        output_size,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        dtype=dtype,
    )
    return keras.Sequential(hidden + [output], name=f"{owner.name}_network")
