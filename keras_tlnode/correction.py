"""The learned mean-value point of the Lagrange remainder: Γ_φ."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from keras_tlnode.schemes import per_state
from keras_tlnode.validation import check_bool, check_choice, check_float, check_instance, check_int, check_optional_int

MODES = ("vector", "matrix")


@keras.saving.register_keras_serializable(package="keras_tlnode")
class MidpointCorrection(keras.layers.Layer):
    """Γ_φ, which places the point ξ where the Lagrange remainder is evaluated.

    For a state `x` with time derivative `f = f_θ(x)` and step `Δt`:

        mode="vector":  ξ = x + Δt · Γ(x) ⊙ f      (Γ has the state's shape)
        mode="matrix":  ξ = x + Δt · Γ(x) f        (Γ is n×n per sample; flat states)

    Γ is dimensionless, a fraction of the step (the paper's Γ is Δt times this
    one, which trains badly on stiff systems):

        Γ_fit(x) = γ₀ + N_φ(x)                        (vector mode)
        Γ_fit(x) = sigmoid(logit(γ₀) + N_φ(x))       (vector mode, bounded=True)
        Γ_fit(x) = γ₀ · I + N_φ(x)                    (matrix mode)

    By the mean-value theorem the remainder of a scalar solution is exact at a
    point x(t + θΔt) with θ in (0, 1); `bounded=True` keeps each component of Γ
    in (0, 1) accordingly. It is not the default: ξ is a straight-line
    extrapolation, not a point of the curved solution, and on a nonlinear
    system (Van der Pol, docs/results.md, "The correction's settings") the bound left the model about
    2x worse than uncorrected (as good or worse elsewhere).

    `γ₀ = base_value` defaults to 1/(p+2) for a `TaylorLagrangeODE` of order
    p, which by the mean-value expansion makes the untrained step one order more
    accurate than the plain Taylor step of degree p+1; `N_φ` is a small MLP
    whose output layer starts at zero (so Γ starts at γ₀), or a Keras layer you
    supply. `TLNODEModel` fits `Γ_fit` to a reference solver (the teacher).

    The layer applies `Γ = γ₀ + s · (Γ_fit - γ₀)`, where `s`, the *trust*, is a
    weight in [0, 1] that starts at 1 and is trained with the dynamics on the
    model's own loss (`trust=True`). Where the fitted correction makes the model
    worse (a step too stiff for any midpoint, a correction lagging behind f_θ),
    the data pull `s` down and the layer falls back towards the untrained
    mean-value point γ₀. `trust=False` applies `Γ_fit` as it is. Measured in
    docs/results.md, "The correction's settings".

    Args:
        mode: "vector" or "matrix" (for flat states only).
        hidden_units: widths of the default MLP's hidden layers.
        activation: activation of the default MLP's hidden layers.
        network: optional Keras layer used as N_φ instead of the default MLP. It
            receives the flattened state `(batch, n)` (plus Δt as a last column
            with `use_step_size=True`) and must return `(batch, n)` in vector
            mode or `(batch, n·n)` in matrix mode.
        use_step_size: also feed Δt to N_φ, so that one correction serves
            every step size (per-sample durations).
        base_value: γ₀; `None` lets the owning `TaylorLagrangeODE` set 1/(p+2).
            In (0, 1) when `bounded`.
        bounded: keep each component of Γ in (0, 1) (vector mode only).
        trust: create the trust `s`, a weight named "trust" that starts at 1,
            trained with the dynamics. Models saved by 0.1, which had none,
            load with `trust=False`, as they were trained.
        features: N_φ sees the first `features` components of the flattened
            state only (default: all of them), and in vector mode places ξ
            for them only: the other components keep γ₀ and do not count in
            θ̄. For states that carry components which do not drive the
            dynamics (a continuous normalizing flow's log-density and probes).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        x: the states at which the steps start.
        step_size: Δt, a float or `(batch, 1)` (one per sample); needed with
            `use_step_size=True`, else unused.
        apply_trust: False returns `Γ_fit`, the correction at full strength,
            which the correction phase of `TLNODEModel` fits.

    Input shape:
        `(batch, *state_shape)` with a fully defined state shape; flat
        `(batch, n)` in matrix mode.

    Output shape:
        Γ(x): `(batch, *state_shape)` in vector mode, `(batch, n, n)` in
        matrix mode.

    Raises:
        ValueError: for `bounded=True` with `mode="matrix"`, a `base_value`
            outside (0, 1) when bounded, or (when built) a `network` whose
            output does not fit the state.

    Example:

        >>> import keras, keras_tlnode
        >>> ode = keras_tlnode.TaylorLagrangeODE(
        ...     keras.layers.Dense(2), order=1,
        ...     correction=keras_tlnode.MidpointCorrection(hidden_units=(16,)))
        >>> ode.correction.base_value  # 1/(p+2) for p = 1
        0.3333333333333333
        >>> ode.build((None, 2))
        >>> gamma = ode.correction(keras.ops.ones((3, 2)))  # Γ starts at γ₀
        >>> tuple(gamma.shape), round(float(gamma[0, 0]), 6)
        ((3, 2), 0.333333)
    """

    def __init__(
        self,
        mode: str = "vector",
        hidden_units: tuple[int, ...] | list[int] = (32,),
        activation: str = "relu",
        network: keras.layers.Layer | None = None,
        use_step_size: bool = False,
        base_value: float | None = None,
        bounded: bool = False,
        trust: bool = True,
        features: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mode = check_choice(mode, "mode", MODES)
        if not isinstance(hidden_units, (tuple, list)):
            raise TypeError(f"`hidden_units` must be a tuple or list of ints >= 1, got {hidden_units!r}.")
        self.hidden_units = tuple(check_int(units, "hidden_units") for units in hidden_units)
        self.activation = activation
        self.network = check_instance(network, "network", keras.layers.Layer, optional=True)
        self.use_step_size = check_bool(use_step_size, "use_step_size")
        self.bounded = check_bool(bounded, "bounded")
        self.trust = check_bool(trust, "trust")
        if bounded and mode == "matrix":
            raise ValueError("`bounded=True` applies to mode='vector' only; matrix mode is unbounded.")
        self.base_value = None
        if base_value is not None:
            self.base_value = _check_base_value(base_value, self.bounded)
        self.features = check_optional_int(features, "features")

    def set_base_value(self, value: float) -> None:
        """Sets γ₀ (the owning `TaylorLagrangeODE` calls it with 1/(p+2)); before `build` only.

        Args:
            value: γ₀, a finite float; in (0, 1) for a bounded correction.

        Raises:
            RuntimeError: if the layer is built.
        """
        if self.built:
            raise RuntimeError("MidpointCorrection.base_value can only be set before the layer is built.")
        self.base_value = _check_base_value(value, self.bounded)

    def set_features(self, features: int) -> None:
        """Sets `features` (a `ContinuousNormalizingFlow` calls it with the data's dimension); before `build` only.

        Args:
            features: how many leading components of the flattened state N_φ
                sees, >= 1.

        Raises:
            RuntimeError: if the layer is built.
        """
        if self.built:
            raise RuntimeError("MidpointCorrection.features can only be set before the layer is built.")
        self.features = check_int(features, "features")

    def build(self, input_shape: tuple) -> None:
        if self.built:  # Deserialisation builds the layer before a caller may build it again.
            return
        state_size = _flat_size(input_shape, self.mode)
        if self.features is not None and self.features > state_size:
            raise ValueError(f"`features` must be at most the state's size {state_size}, got {self.features}.")
        placed = state_size if self.features is None else self.features
        output_size = state_size * state_size if self.mode == "matrix" else placed
        features = placed + int(self.use_step_size)
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
        if self.trust:
            self.trust_weight = self.add_weight(
                name="trust", shape=(), initializer="ones", constraint=_UnitInterval(), dtype=self.variable_dtype
            )

    def call(self, x: tf.Tensor, step_size: tf.Tensor | float | None = None, apply_trust: bool = True) -> tf.Tensor:
        """Γ(x), the fraction of the step at which ξ is placed.

        Args:
            x: states `(batch, *state_shape)`.
            step_size: Δt, a float or `(batch, 1)`; needed with
                `use_step_size=True`, else unused.
            apply_trust: False returns `Γ_fit`, the correction at full
                strength, which is what the correction phase of `TLNODEModel`
                fits.

        Returns:
            Γ(x) shaped like `x` (vector mode) or `(batch, n, n)` (matrix mode).
        """
        if self.network is None or self.base_value is None:
            raise RuntimeError("MidpointCorrection must be built before it is called.")
        n = math.prod(x.shape[1:])
        features = tf.reshape(x, (-1, n))
        if self.features is not None:
            features = features[:, : self.features]
        if self.use_step_size:
            if step_size is None:
                raise ValueError("MidpointCorrection(use_step_size=True) needs `step_size`.")
            column = tf.ones_like(features[:, :1]) * tf.cast(step_size, features.dtype)
            features = tf.concat([features, column], axis=-1)
        output = tf.cast(self.network(features), x.dtype)
        if self.bounded:
            logit = math.log(self.base_value / (1.0 - self.base_value))
            deviation = tf.sigmoid(logit + output) - self.base_value
        else:
            deviation = output
        if apply_trust and self.trust:
            deviation = tf.cast(self.trust_weight, x.dtype) * deviation
        if self.mode == "matrix":
            return self.base_value * tf.eye(n, dtype=x.dtype) + tf.reshape(deviation, (-1, n, n))
        if deviation.shape[-1] != n:  # `features`: the trailing components stay at γ₀
            deviation = tf.pad(deviation, [[0, 0], [0, n - deviation.shape[-1]]])
        return self.base_value + tf.reshape(deviation, tf.shape(x))

    def midpoint(
        self, x: tf.Tensor, fx: tf.Tensor, step_size: tf.Tensor | float, apply_trust: bool = True
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """ξ = x + Δt · Γ(x) ⊙ f (or Γ(x) f), where the step evaluates its remainder, and θ̄.

        Args:
            x: states `(batch, *state_shape)`.
            fx: f_θ(x), shaped like `x`.
            step_size: Δt, a float or `(batch, 1)`.
            apply_trust: as for `call`.

        Returns:
            `(ξ, θ̄)`: ξ shaped like `x`; θ̄ `(batch, 1)`, the mean fraction of
            the step taken (the mean over the placed components of Γ applied
            to a vector of ones). A time-dependent field is evaluated at time
            t + θ̄ Δt at ξ.
        """
        gamma = self(x, step_size=step_size, apply_trust=apply_trust)
        if self.mode == "matrix":
            move = tf.linalg.matvec(gamma, fx)
            fraction = tf.reduce_mean(tf.reduce_sum(gamma, axis=-1), axis=-1, keepdims=True)
        else:
            move = gamma * fx
            placed = tf.reshape(gamma, (-1, math.prod(x.shape[1:])))[:, : self.features]
            fraction = tf.reduce_mean(placed, axis=-1, keepdims=True)
        return x + per_state(step_size, x) * move, fraction

    @property
    def fitted_variables(self) -> list:
        """The weights of N_φ, which the correction phase fits to the teacher (the trust is not among them)."""
        return list(self.network.trainable_variables) if self.network is not None else []

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
            bounded=self.bounded,
            trust=self.trust,
            features=self.features,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> MidpointCorrection:
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        # Models saved by keras_tlnode 0.1 had no trust weight.
        config.setdefault("trust", False)
        return cls(**config)


class _UnitInterval(keras.constraints.Constraint):
    """Clips a weight to [0, 1] after each optimizer step (the trust)."""

    def __call__(self, w):
        return keras.ops.clip(w, 0.0, 1.0)


def _check_base_value(value: object, bounded: bool) -> float:
    value = check_float(value, "base_value")
    if bounded and not 0.0 < value < 1.0:
        raise ValueError(f"`base_value` must be in (0, 1) for a bounded correction, got {value!r}.")
    return float(value)


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
