"""`ContinuousNormalizingFlow`: density estimation with a TL-NODE (FFJORD's model, Taylor-Lagrange steps).

The flow maps data x at t = 0 to base points z at t = T under dz/dt = f_θ(z, t),
and the change of log-density integrates along with the state:

    log p(x) = log N(z(T); 0, I) + ∫₀ᵀ tr(∂f_θ/∂z)(z(t), t) dt.

The data path is that of every TL-NODE: the augmented state [z, Δ] (and, with
Hutchinson's estimator, the noise ε, constant along the solve) goes through a
`TaylorLagrangeODE` whose vector field is the augmented one,

    d/dt [z, Δ, ε] = [f_θ(z, t), tr(∂f_θ/∂z), 0],

so the Taylor coefficients, the Lagrange remainder at the learned midpoint ξ,
the rollout, the teacher and the correction phase of `TLNODEModel` all work on
the augmented system unchanged.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_tlnode.correction import MidpointCorrection
from keras_tlnode.layers import FixedStepODE, StepwiseODE, TaylorLagrangeODE
from keras_tlnode.schemes import CLASSICAL
from keras_tlnode.taylor import MAX_ORDER
from keras_tlnode.training import TLNODEModel
from keras_tlnode.validation import (
    check_bool,
    check_choice,
    check_duration,
    check_instance,
    check_int,
    check_optional_int,
)

TRACES = ("exact", "hutchinson")
DEFAULT_NUM_STEPS = 8  # the authors' tabular FFJORD experiment: 8 steps of order 1


class FieldWrapper(keras.layers.Layer):
    """A layer around the flow's vector field: its outputs are shaped like the states; the field saves with it."""

    def __init__(self, vector_field: keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.vector_field = check_instance(vector_field, "vector_field", keras.layers.Layer)

    def compute_output_shape(self, input_shape: list) -> tuple:
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        return {**super().get_config(), "vector_field": keras.saving.serialize_keras_object(self.vector_field)}

    @classmethod
    def from_config(cls, config: dict) -> FieldWrapper:
        config = dict(config)
        config["vector_field"] = keras.saving.deserialize_keras_object(config["vector_field"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_tlnode")
class AugmentedField(FieldWrapper):
    """d/dt [z, Δ, ε] = [f(z, t), tr(∂f/∂z), 0]: a CNF's vector field on its augmented state.

    Called as `AugmentedField(...)([state, t])` with `state` of shape
    `(batch, d + 1)`, or `(batch, 2d + 1)` with `probes=True`: then the last d
    components are the probe ε of Hutchinson's estimator εᵀ(∂f/∂z)ε
    (E[εᵀJε] = tr J for Rademacher ε). ε rides in the state so that one draw
    serves every Taylor order, every step and the teacher's solve. The exact
    trace (`trace="exact"`, which ignores any ε) takes one forward-mode pass
    over the batch repeated d times, one basis direction per copy.

    Internal to `ContinuousNormalizingFlow`; registered so that it saves.
    """

    def __init__(self, vector_field: keras.layers.Layer, trace: str = "exact", probes: bool = False, **kwargs):
        super().__init__(vector_field, **kwargs)
        self.trace = check_choice(trace, "trace", TRACES)
        self.probes = check_bool(probes, "probes")
        if trace == "hutchinson" and not probes:
            raise ValueError('`trace="hutchinson"` needs `probes=True`: the probes ride in the state.')

    def dimension(self, state_size: int) -> int:
        """d, the data's dimension, from the augmented state's size."""
        return (state_size - 1) // 2 if self.probes else state_size - 1

    def build(self, input_shape: list) -> None:
        state_shape, time_shape = input_shape
        d = self.dimension(state_shape[-1])
        if not self.vector_field.built:
            self.vector_field.build([(state_shape[0], d), tuple(time_shape)])

    def call(self, inputs: list) -> tf.Tensor:
        state, t = inputs
        d = self.dimension(state.shape[-1])
        z = state[:, :d]
        if self.trace == "exact":
            f, trace = self._exact(z, t, d)
        else:
            noise = state[:, d + 1 :]
            with tf.autodiff.ForwardAccumulator(z, noise) as accumulator:
                f = self.vector_field([z, t])
            jvp = accumulator.jvp(f, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            trace = tf.reduce_sum(noise * jvp, axis=-1, keepdims=True)
        derivative = [f, tf.cast(trace, f.dtype)]
        if self.probes:
            derivative.append(tf.zeros_like(state[:, d + 1 :]))
        return tf.concat(derivative, axis=-1)

    def _exact(self, z: tf.Tensor, t: tf.Tensor, d: int) -> tuple[tf.Tensor, tf.Tensor]:
        """f(z, t) and tr(∂f/∂z) `(batch, 1)`: the batch repeated d times, copy i pushed along e_i."""
        batch = tf.shape(z)[0]
        basis = tf.tile(tf.eye(d, dtype=z.dtype), tf.stack([batch, 1]))
        repeated = tf.repeat(z, d, axis=0)
        with tf.autodiff.ForwardAccumulator(repeated, basis) as accumulator:
            f = self.vector_field([repeated, tf.repeat(t, d, axis=0)])
        jvp = accumulator.jvp(f, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # Row (b, i) holds J_b e_i; its component i is the diagonal entry (J_b)_ii.
        diagonal = tf.reshape(tf.reduce_sum(jvp * tf.cast(basis, jvp.dtype), axis=-1), tf.stack([batch, d]))
        return tf.reshape(f, tf.stack([batch, d, d]))[:, 0, :], tf.reduce_sum(diagonal, axis=-1, keepdims=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "trace": self.trace, "probes": self.probes}


@keras.saving.register_keras_serializable(package="keras_tlnode")
class ReversedField(FieldWrapper):
    """s ↦ -f(z, T - s): the field that carries base points back to data space over s in [0, T].

    Internal to `ContinuousNormalizingFlow.sample`; registered so that it saves.
    """

    def __init__(self, vector_field: keras.layers.Layer, duration: float, **kwargs):
        super().__init__(vector_field, **kwargs)
        self.duration = float(duration)

    def call(self, inputs: list) -> tf.Tensor:
        z, s = inputs
        return -self.vector_field([z, self.duration - s])

    def get_config(self) -> dict:
        return {**super().get_config(), "duration": self.duration}


@keras.saving.register_keras_serializable(package="keras_tlnode")
class NegativeLogLikelihood(keras.losses.Loss):
    """The mean of -log p(x) over the batch, from the per-sample log densities a flow outputs (targets unused)."""

    def __init__(self, name: str = "negative_log_likelihood", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return -y_pred


@keras.saving.register_keras_serializable(package="keras_tlnode")
class ContinuousNormalizingFlow(TLNODEModel):
    """A continuous normalizing flow with a standard normal base, integrated by Taylor-Lagrange steps.

    The flow maps data x (t = 0) to base points z (t = `duration`) under
    dz/dt = f_θ(z, t); `log_prob(x) = log N(z(T)) + ∫₀ᵀ tr(∂f_θ/∂z) dt`, in
    nats. The state and the log-density's change are one augmented state, so
    each step is the Taylor-Lagrange step of the augmented system: its last
    term, the Lagrange remainder, is evaluated for the log-density at the same
    point ξ as for the state, and Γ_φ (`correction`) places ξ from z alone (its
    `MidpointCorrection.features` are set to the data's dimension). The
    correction phase fits Γ_φ so that the augmented step matches the teacher's
    solve of the augmented system, the log-density included.

    Calling the model returns log p(x) per sample, shape `(batch,)`; `fit(x)`
    with no targets maximises the likelihood (`compile`'s default loss is the
    mean negative log-likelihood), `evaluate(x)` reports it. With
    `trace="hutchinson"`, training uses Hutchinson's estimator with one
    Rademacher probe per sample and solve, shared by every Taylor order and
    step; evaluation, `predict` and `log_prob` use the exact trace. `sample`
    integrates back from the base with the uncorrected Taylor step of the same
    order and step count (Γ_φ is fitted to the forward steps only).

    Args:
        vector_field: Keras layer computing f_θ, called as `vector_field([z, t])`
            with `t` of shape `(batch, 1)`; output shaped like `z`.
        duration: T, finite and > 0.
        num_steps: fixed steps over [0, T], >= 1.
        order: p of the Taylor-Lagrange step, an int in [0, 6].
        correction: `MidpointCorrection` (Γ_φ) or None.
        trace: "exact" or "hutchinson" (the trace estimator in training).
        remainder_weight: λ >= 0, weight of the remainder penalty.
        seed: seed of Hutchinson's probes (`keras.random.SeedGenerator`).
        method: "taylor_lagrange", or a classical scheme, "euler", "heun" or
            "rk4" (a `FixedStepODE` of the augmented field, without correction:
            the baselines of the same model).
        **kwargs: `keras.Model` arguments (e.g. `name`).

    Example:

    >>> import keras, numpy as np, keras_tlnode
    >>> class Field(keras.layers.Layer):
    ...     def build(self, input_shape):
    ...         self.dense = keras.layers.Dense(2)
    ...     def call(self, inputs):
    ...         z, t = inputs
    ...         return self.dense(keras.ops.concatenate([z, t], axis=-1))
    >>> flow = keras_tlnode.ContinuousNormalizingFlow(Field(), num_steps=4)
    >>> flow.compile(optimizer="adam")
    >>> x = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    >>> history = flow.fit(x, batch_size=32, epochs=1, verbose=0)
    >>> flow.log_prob(x[:3]).shape, flow.sample(5, seed=1).shape
    (TensorShape([3]), TensorShape([5, 2]))
    """

    def __init__(
        self,
        vector_field: keras.layers.Layer,
        duration: float = 1.0,
        num_steps: int = DEFAULT_NUM_STEPS,
        order: int = 1,
        correction: MidpointCorrection | None = None,
        trace: str = "exact",
        remainder_weight: float = 0.0,
        seed: int | None = None,
        method: str = "taylor_lagrange",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.method = check_choice(method, "method", ("taylor_lagrange", *CLASSICAL))
        if method != "taylor_lagrange" and (correction is not None or remainder_weight):
            raise ValueError(
                f"`correction` and `remainder_weight` apply to method='taylor_lagrange' only, not {method!r}."
            )
        self.order = check_int(order, "order", 0, MAX_ORDER)
        self.remainder_weight = remainder_weight
        self.vector_field = check_instance(vector_field, "vector_field", keras.layers.Layer)
        self.duration = check_duration(duration, None)
        self.num_steps = check_int(num_steps, "num_steps")
        self.trace = check_choice(trace, "trace", TRACES)
        self.seed = check_optional_int(seed, "seed", minimum=0)
        self.correction = check_instance(correction, "correction", MidpointCorrection, optional=True)
        probes = trace == "hutchinson"

        def steps(field: keras.layers.Layer, **tl) -> StepwiseODE:
            if method != "taylor_lagrange":
                return FixedStepODE(
                    field, method=method, num_steps=self.num_steps, duration=self.duration, time_dependent=True
                )
            return TaylorLagrangeODE(
                field, order=order, num_steps=self.num_steps, duration=self.duration, time_dependent=True, **tl
            )

        self.flow = steps(
            AugmentedField(vector_field, trace, probes), correction=correction, remainder_weight=remainder_weight
        )
        # Evaluation takes the exact trace on the same augmented state (ε unused) with the same Γ_φ.
        self.exact_flow = (
            steps(AugmentedField(vector_field, "exact", probes), correction=correction) if probes else self.flow
        )
        self.reverse_flow = steps(ReversedField(vector_field, self.duration))
        self.probe_seeds = keras.random.SeedGenerator(seed) if probes else None
        self.dimension: int | None = None

    # --- the data path: x → augmented state → Taylor-Lagrange rollout → log p(x) ----------

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"ContinuousNormalizingFlow takes flat data (batch, d), got shape {tuple(input_shape)}.")
        self.dimension = int(input_shape[-1])
        if self.correction is not None and self.correction.features is None:
            # Γ_φ sees z alone: Δ grows along the solve, and ε differs between training and evaluation.
            self.correction.set_features(self.dimension)
        size = 2 * self.dimension + 1 if self.trace == "hutchinson" else self.dimension + 1
        for layer in {id(f): f for f in (self.flow, self.exact_flow)}.values():
            layer.build((input_shape[0], size))
        self.reverse_flow.build(tuple(input_shape))
        self.built = True

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """log p(x) per sample, `(batch,)`: Hutchinson's trace in training if so configured, else the exact one."""
        z, log_det = self._encode(x, training)
        return standard_normal_log_density(z) + log_det

    def _encode(self, x: tf.Tensor, training: bool | None) -> tuple[tf.Tensor, tf.Tensor]:
        """(z(T), ∫₀ᵀ tr(∂f/∂z) dt) from the augmented state's rollout."""
        hutchinson = bool(training) and self.trace == "hutchinson"
        end = (self.flow if hutchinson else self.exact_flow)(self._augment(x, hutchinson), training=training)
        d = self.dimension
        return end[:, :d], end[:, d]

    def _augment(self, x: tf.Tensor, probes: bool) -> tf.Tensor:
        """[x, 0]; with Hutchinson's estimator [x, 0, ε], ε Rademacher if `probes` (training), else 0 (unused)."""
        parts = [x, tf.zeros_like(x[:, :1])]
        if self.trace == "hutchinson":
            if probes:
                signs = keras.random.randint(tf.shape(x), 0, 2, seed=self.probe_seeds)
                parts.append(tf.cast(2 * signs - 1, x.dtype))
            else:
                parts.append(tf.zeros_like(x))
        return tf.concat(parts, axis=-1)

    def log_prob(self, x) -> tf.Tensor:
        """log p(x) in nats, `(batch,)`, with the exact trace."""
        return self(self._data(x), training=False)

    def encode(self, x) -> tuple[tf.Tensor, tf.Tensor]:
        """Data to base: `(z, log_det)`, z = z(T) `(batch, d)` and log_det = log|det ∂z/∂x| = ∫₀ᵀ tr(∂f/∂z) dt `(batch,)`."""
        x = self._data(x)
        if not self.built:
            self.build(tuple(x.shape))
        return self._encode(x, training=False)

    def decode(self, z) -> tf.Tensor:
        """Base to data: z carried back from t = T to 0, `(batch, d)`, by the uncorrected Taylor step."""
        if not self.built:
            raise ValueError("ContinuousNormalizingFlow.decode needs a built model: fit it, or call it on data, first.")
        return self.reverse_flow(self._data(z))

    def sample(self, n: int, seed: int | None = None) -> tf.Tensor:
        """`n` points of the model's distribution, `(n, d)`: standard normal draws, decoded."""
        n = check_int(n, "n")
        if self.dimension is None:
            raise ValueError("ContinuousNormalizingFlow.sample needs a built model: fit it, or call it on data, first.")
        return self.decode(keras.random.normal((n, self.dimension), dtype=self.compute_dtype, seed=seed))

    def bijector(self) -> tfp.bijectors.Bijector:
        """This flow as a `tfp.bijectors.Bijector`: forward maps base to data (`decode`), inverse data to base.

        With a standard normal base,
        `tfp.distributions.TransformedDistribution(tfp.distributions.MultivariateNormalDiag(tf.zeros(d)), flow.bijector())`
        has this flow's `log_prob` and composes with the rest of tfp.
        """
        if self.dimension is None:
            raise ValueError(
                "ContinuousNormalizingFlow.bijector needs a built model: fit it, or call it on data, first."
            )
        return FlowBijector(self)

    def _data(self, x) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise TypeError(f"ContinuousNormalizingFlow takes floating data, got dtype {x.dtype.name}.")
        if x.shape.rank != 2:
            raise ValueError(f"ContinuousNormalizingFlow takes data of shape (batch, d), got shape {x.shape}.")
        return tf.cast(x, self.compute_dtype)

    # --- training ------------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, **kwargs) -> None:
        """`TLNODEModel.compile`; the loss defaults to the mean negative log-likelihood."""
        super().compile(optimizer=optimizer, loss=NegativeLogLikelihood() if loss is None else loss, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # `fit(x)` has no targets; the likelihood needs none.
        y = tf.zeros_like(y_pred) if y is None else y
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        y = tf.zeros_like(y_pred) if y is None else y
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "vector_field": keras.saving.serialize_keras_object(self.vector_field),
            "duration": self.duration,
            "num_steps": self.num_steps,
            "order": self.order,
            "correction": keras.saving.serialize_keras_object(self.correction),
            "trace": self.trace,
            "remainder_weight": self.remainder_weight,
            "seed": self.seed,
            "method": self.method,
        }

    @classmethod
    def from_config(cls, config: dict) -> ContinuousNormalizingFlow:
        config = dict(config)
        for key in ("vector_field", "correction"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


class FlowBijector(tfp.bijectors.Bijector):
    """`ContinuousNormalizingFlow.bijector()`: forward is `decode`, inverse `encode`, log|det| its integral of the trace."""

    def __init__(self, flow: ContinuousNormalizingFlow):
        self.flow = flow
        super().__init__(forward_min_event_ndims=1, validate_args=False, name=f"{flow.name}_bijector")

    def _forward(self, z: tf.Tensor) -> tf.Tensor:
        return self.flow.decode(z)

    def _inverse(self, x: tf.Tensor) -> tf.Tensor:
        return self.flow.encode(x)[0]

    def _inverse_log_det_jacobian(self, x: tf.Tensor) -> tf.Tensor:
        return self.flow.encode(x)[1]


def standard_normal_log_density(z: tf.Tensor) -> tf.Tensor:
    """log N(z; 0, I) per sample, `(batch,)`."""
    d = z.shape[-1]
    return -0.5 * tf.reduce_sum(tf.square(z), axis=-1) - 0.5 * d * math.log(2.0 * math.pi)
