"""`ContinuousNormalizingFlow`: density estimation with a TL-NODE (FFJORD's model, Taylor-Lagrange steps).

The flow maps data x at t = 0 to base points z at t = T under dz/dt = f_θ(z, t)
in fixed steps: z = Φ(x), Φ the composition of the steps. Its likelihood is the
change of variables of the map it computes,

    log p(x) = log N(Φ(x); 0, I) + log det ∂Φ/∂x,

with each step's exact log-determinant (keras_tlnode/volume.py). Unlike the
continuous-time ∫₀ᵀ tr(∂f_θ/∂z) dt integrated by the same steps, which training
can make disagree with the map at coarse steps (the reported likelihood is then
no density), this is a density whenever the steps are one-to-one, at every step
count, order and scheme; a fold is reported as NaN. Sampling inverts the same
steps by Newton's method. The continuous-time likelihood of the learned field
stays available as a check (`continuous_log_prob`, `likelihood_gap`).

Hutchinson's estimator (`trace="hutchinson"`, for high dimensions) trains on
the continuous-time estimate: the augmented state [z, Δ, ε] goes through a
Taylor-Lagrange layer whose field is d/dt [z, Δ, ε] = [f_θ(z, t), εᵀ(∂f_θ/∂z)ε, 0];
evaluation still takes the exact change of variables.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_tlnode.adaptive import dormand_prince
from keras_tlnode.correction import MidpointCorrection
from keras_tlnode.layers import FixedStepODE, StepwiseODE, TaylorLagrangeODE
from keras_tlnode.schemes import CLASSICAL
from keras_tlnode.taylor import MAX_ORDER
from keras_tlnode.training import TLNODEModel
from keras_tlnode.validation import (
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    check_optional_int,
)

TRACES = ("exact", "hutchinson")
DEFAULT_NUM_STEPS = 8  # the authors' tabular FFJORD experiment: 8 steps of order 1
DEFAULT_FOLD_WEIGHT = 10.0
# Hutchinson's training fits the steps' estimate of ∫ tr(∂f/∂z) dt, not the determinants of the map
# they compute, and nothing there can keep the steps one-to-one: with too few steps training learns
# to exploit the estimate's error and the steps fold (measured on the 64-D digits of
# benchmarks/density_estimation.py, 500 training steps: folds at test points for Euler and order 1 at
# 2 steps, order 1 at 3, orders 2 and 3 at 4, Heun and RK4 at 1; none, over 2-3 seeds each, at the
# counts below; orders 4-6 unmeasured there, their 64-D exact evaluation outgrew 12 GB). The fewest
# steps a Hutchinson-trained flow accepts, by scheme.
HUTCHINSON_MIN_STEPS = {"euler": 4, "heun": 2, "rk4": 2}
HUTCHINSON_MIN_TAYLOR_STEPS = {0: 4, 1: 4}  # orders 2-6: 8


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
    dz/dt = f_θ(z, t) in `num_steps` fixed steps, z = Φ(x), and its likelihood
    is the change of variables of that map: `log_prob(x) = log N(Φ(x)) + log
    det ∂Φ/∂x`, in nats, each step's log-determinant exact (d forward-mode
    tangents per step). It is a normalised density at every step count,
    order and scheme as long as no step folds: where a step's determinant is
    ≤ 0, `log_prob(x)` is NaN, never a number that would look like a
    likelihood, and the fold penalty (`fold_weight`) keeps training away
    from it. `sample` and `decode` invert the same steps by Newton's method
    with their exact Jacobians, so `decode(encode(x)[0])` is x to rounding.
    The learned field's continuous-time
    likelihood, FFJORD's with the same field, is `continuous_log_prob`; the
    mean gap between the two, `likelihood_gap`, says how far the steps are
    from the field's exact flow (docs/usage.md, "Density estimation").

    Γ_φ (`correction`) places the remainder's point ξ from z alone (its
    `MidpointCorrection.features` are set to the data's dimension); the
    correction phase fits it so that each step matches the teacher's solve of
    dz/dt = f_θ(z, t).

    Calling the model returns log p(x) per sample, shape `(batch,)`; `fit(x)`
    with no targets maximises the likelihood (`compile`'s default loss is the
    mean negative log-likelihood), `evaluate(x)` reports it. With
    `trace="hutchinson"` (high dimensions, where d tangents per step are too
    many for training), training maximises the continuous-time likelihood of
    the same steps with Hutchinson's estimator of ∫ tr(∂f_θ/∂z) dt (one
    Rademacher probe ε per sample, shared by every Taylor order and step: the
    augmented state [z, Δ, ε] goes through a `TaylorLagrangeODE` of the
    augmented field, with the same Γ_φ), and evaluation, `predict` and
    `log_prob` take the exact change of variables.
    Nothing in that training keeps the steps one-to-one (the fold penalty needs
    the determinants), and with few steps it makes them fold: a flow trained
    so takes at least 4 steps at Taylor orders 0-1 and with Euler, 8 at
    orders 2-6, 2 with Heun or RK4 (`HUTCHINSON_MIN_STEPS`, measured).

    Args:
        vector_field: Keras layer computing f_θ, called as `vector_field([z, t])`
            with `t` of shape `(batch, 1)`; output shaped like `z`.
        duration: T, finite and > 0.
        num_steps: fixed steps over [0, T], >= 1 (with `trace="hutchinson"`,
            the minimum above). The default, 8 steps of order 1, is the
            authors' tabular FFJORD experiment's.
        order: p of the Taylor-Lagrange step, an int in [0, 6].
        correction: `MidpointCorrection` (Γ_φ) or None.
        trace: "exact" (training on the exact change of variables) or
            "hutchinson" (training on Hutchinson's estimate, for data of many
            dimensions).
        remainder_weight: λ >= 0, weight of the remainder penalty.
        fold_weight: weight >= 0 of the fold penalty in training (default 10): the mean over
            the batch and as many probe points (the batch plus Gaussian noise
            of its spread, to cover the gaps between the data) of Σ_k b(det
            ∂S_k/∂z), b a barrier on each step's Jacobian determinant
            (`volume.fold_barrier`): 0 above 0.1, log(0.1/det) down to 1e-4,
            then a line of the same slope through 0 and below, finite and
            steep towards a fold. It keeps every step one-to-one where the
            data do not reach (a linear penalty on the determinant let the
            steps fold in the empty space between the data); 0 turns it off.
            Not applied with `trace="hutchinson"`, whose training computes no
            Jacobians.
        seed: seed of the probes: Hutchinson's, or the fold penalty's probe
            points (`keras.random.SeedGenerator`).
        method: "taylor_lagrange", or a classical scheme, "euler", "heun" or
            "rk4" (a `FixedStepODE` of the same field, without correction: the
            baselines of the same model).
        gradient_checkpointing: in training, recompute each step's
            activations in the backward pass instead of keeping them, as for
            `TaylorLagrangeODE` (docs/usage.md, "Long horizons").
        **kwargs: `keras.Model` arguments (e.g. `name`).

    Call arguments:
        x: data `(batch, d)`.
        training: in training, the fold penalty (`fold_weight` > 0, exact
            trace) and the remainder penalty join the losses, and with
            `trace="hutchinson"` log p(x) is Hutchinson's estimate.

    Input shape:
        `(batch, d)`, flat floating data with a known d.

    Output shape:
        `(batch,)`: log p(x) per sample, in nats.

    Raises:
        ValueError: with `trace="hutchinson"` and fewer steps than the
            minimum above (the message names the alternatives), or with
            `correction` or `remainder_weight` for a classical `method`.

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
        >>> z, log_det = flow.encode(x[:3])
        >>> bool(np.allclose(flow.decode(z), x[:3], atol=1e-4))
        True
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
        fold_weight: float = DEFAULT_FOLD_WEIGHT,
        seed: int | None = None,
        method: str = "taylor_lagrange",
        *,
        gradient_checkpointing: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.method = check_choice(method, "method", ("taylor_lagrange", *CLASSICAL))
        if method != "taylor_lagrange" and (correction is not None or remainder_weight):
            raise ValueError(
                f"`correction` and `remainder_weight` apply to method='taylor_lagrange' only, not {method!r}."
            )
        self.order = check_int(order, "order", 0, MAX_ORDER)
        self.fold_weight = check_float(fold_weight, "fold_weight", non_negative=True)
        self.vector_field = check_instance(vector_field, "vector_field", keras.layers.Layer)
        self.trace = check_choice(trace, "trace", TRACES)
        self.seed = check_optional_int(seed, "seed", minimum=0)
        self.correction = check_instance(correction, "correction", MidpointCorrection, optional=True)
        probes = trace == "hutchinson"

        def steps(field: keras.layers.Layer) -> StepwiseODE:
            if method != "taylor_lagrange":
                return FixedStepODE(
                    field,
                    method=method,
                    num_steps=num_steps,
                    duration=duration,
                    time_dependent=True,
                    gradient_checkpointing=gradient_checkpointing,
                )
            return TaylorLagrangeODE(
                field,
                order=order,
                num_steps=num_steps,
                duration=duration,
                time_dependent=True,
                correction=correction,
                remainder_weight=remainder_weight,
                gradient_checkpointing=gradient_checkpointing,
            )

        # The steps of the data path: x → Φ(x), with the exact change of volume. The layer
        # validates `num_steps`, `duration` and `remainder_weight`; the flow reads them back.
        self.flow = steps(vector_field)
        self.num_steps, self.duration = self.flow.num_steps, self.flow.duration
        self.remainder_weight = getattr(self.flow, "remainder_weight", 0.0)
        self.gradient_checkpointing = self.flow.gradient_checkpointing
        if probes:
            check_hutchinson_steps(self.num_steps, method, self.order)
        # Hutchinson's training path: the same steps on [z, Δ, ε], with the same Γ_φ.
        self.hutchinson_flow = steps(AugmentedField(vector_field, "hutchinson", probes=True)) if probes else None
        # The field's continuous-time likelihood (the check): d/dt [z, Δ] = [f, tr ∂f/∂z].
        self.continuous_field = AugmentedField(vector_field, "exact")
        # Hutchinson's probes, or the fold penalty's probe points.
        self.probe_seeds = keras.random.SeedGenerator(seed)
        self.dimension: int | None = None

    # --- the data path: x → the steps' map Φ(x) and its log-determinant → log p(x) --------

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"ContinuousNormalizingFlow takes flat data (batch, d), got shape {tuple(input_shape)}.")
        self.dimension = int(input_shape[-1])
        if self.correction is not None and self.correction.features is None:
            # Γ_φ sees z alone: on Hutchinson's path the state also carries Δ and ε.
            self.correction.set_features(self.dimension)
        self.flow.build(tuple(input_shape))
        if self.hutchinson_flow is not None:
            self.hutchinson_flow.build((input_shape[0], 2 * self.dimension + 1))
        self.continuous_field.build([(input_shape[0], self.dimension + 1), (input_shape[0], 1)])
        self.built = True

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """log p(x) per sample, `(batch,)`: the exact change of variables (Hutchinson's estimate in training if so configured).

        Args:
            x: data `(batch, d)`.
            training: whether in training mode.

        Returns:
            log p(x) `(batch,)`, in nats.
        """
        z, log_det = self._encode(x, training)
        return standard_normal_log_density(z) + log_det

    def _encode(self, x: tf.Tensor, training: bool | None) -> tuple[tf.Tensor, tf.Tensor]:
        """(Φ(x), log det ∂Φ/∂x); in Hutchinson training, (Φ(x), the steps' estimate of ∫₀ᵀ tr(∂f/∂z) dt)."""
        if training and self.hutchinson_flow is not None:
            signs = keras.random.randint(tf.shape(x), 0, 2, seed=self.probe_seeds)
            probes = tf.cast(2 * signs - 1, x.dtype)
            end = self.hutchinson_flow(tf.concat([x, tf.zeros_like(x[:, :1]), probes], axis=-1), training=training)
            d = self.dimension
            return end[:, :d], end[:, d]
        if not (training and self.fold_weight > 0):
            z, log_det, _ = self.flow.change_of_variables(x, training=training)
            return z, log_det
        # The fold penalty, at the batch and at probe points around it, in the same rollout.
        spread = tf.math.reduce_std(x, axis=0, keepdims=True)
        around = x + spread * keras.random.normal(tf.shape(x), dtype=x.dtype, seed=self.probe_seeds)
        z, log_det, fold = self.flow.change_of_variables(tf.concat([x, around], axis=0), training=training)
        self.add_loss(tf.cast(self.fold_weight * tf.reduce_mean(fold), tf.float32))
        batch = tf.shape(x)[0]
        return z[:batch], log_det[:batch]

    def log_prob(self, x) -> tf.Tensor:
        """log p(x) in nats: the exact change of variables of the flow's steps.

        Args:
            x: floating data `(batch, d)`.

        Returns:
            log N(Φ(x)) + log det ∂Φ/∂x `(batch,)`; NaN where a step folds.
        """
        return self(self._data(x), training=False)

    def encode(self, x) -> tuple[tf.Tensor, tf.Tensor]:
        """Data to base: the flow's map Φ and its log-determinant.

        Args:
            x: floating data `(batch, d)`.

        Returns:
            `(z, log_det)`: z = Φ(x) `(batch, d)` and log_det = log det ∂Φ/∂x
            `(batch,)`.
        """
        x = self._data(x)
        if not self.built:
            self.build(tuple(x.shape))
        return self._encode(x, training=False)

    def decode(self, z) -> tf.Tensor:
        """Base to data, the inverse of `encode`: each step inverted by Newton's method with its exact Jacobian.

        Args:
            z: base points `(batch, d)`.

        Returns:
            Φ⁻¹(z) `(batch, d)`: `decode(encode(x)[0])` is x to rounding.

        Raises:
            ValueError: for a model that is not built yet.
        """
        if not self.built:
            raise ValueError("ContinuousNormalizingFlow.decode needs a built model: fit it, or call it on data, first.")
        return self.flow.inverse(self._data(z))

    def sample(self, n: int, seed: int | None = None) -> tf.Tensor:
        """Points of the model's distribution: standard normal draws, decoded.

        Args:
            n: how many points, >= 1.
            seed: seed of the draws (as `keras.random.normal` takes it), or None.

        Returns:
            `(n, d)` points.

        Raises:
            ValueError: for a model that is not built yet.
        """
        n = check_int(n, "n")
        if self.dimension is None:
            raise ValueError("ContinuousNormalizingFlow.sample needs a built model: fit it, or call it on data, first.")
        return self.decode(keras.random.normal((n, self.dimension), dtype=self.compute_dtype, seed=seed))

    def export_endpoints(self, input_signature: list[tf.TensorSpec]) -> dict[str, tuple]:
        """The flow's endpoints for `export_saved_model`, which serves them next to `"serve"`.

        Args:
            input_signature: the signature of the model's input, as
                `export_saved_model` received or inferred it.

        Returns:
            `{name: (function, input signature)}`: `"log_prob"`, `log_prob(x)`
            (which `"serve"` returns too) on `input_signature`; `"sample"`,
            `sample(n, seed)` with `n` an int32 scalar and `seed` two int32s
            (a stateless draw: the same seed, the same points).
        """

        def sample(n: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
            base = tf.random.stateless_normal(tf.stack([n, self.dimension]), seed=seed, dtype=self.compute_dtype)
            return self.flow.inverse(base)

        counts = [tf.TensorSpec([], tf.int32, name="n"), tf.TensorSpec([2], tf.int32, name="seed")]
        return {"log_prob": (lambda x: self(x, training=False), input_signature), "sample": (sample, counts)}

    # --- the check: the learned field's continuous-time likelihood ---------------------------

    def continuous_log_prob(self, x, tolerance: float = 1e-7) -> tf.Tensor:
        """log p(x) of the learned field's continuous flow: FFJORD's likelihood of the same f_θ.

        log N(z(T)) + ∫₀ᵀ tr(∂f_θ/∂z) dt, solved by DormandPrince in float64
        with the exact trace: the likelihood the steps approximate. Costly (an
        adaptive solve with d tangents per evaluation); a check, not a
        training path.

        Args:
            x: floating data `(batch, d)`.
            tolerance: rtol = atol of the solve, > 0.

        Returns:
            log p(x) `(batch,)`, in nats.
        """
        tolerance = check_float(tolerance, "tolerance", positive=True)
        x = self._data(x)
        if not self.built:
            self.build(tuple(x.shape))
        return _continuous_log_prob(self.continuous_field, x, self.duration, tolerance)

    def likelihood_gap(self, x, tolerance: float = 1e-7) -> float:
        """mean(log_prob(x) − continuous_log_prob(x)) in nats: how far the steps' density is from the field's own.

        Near 0 when the steps follow the learned field's flow; large (either
        sign) when training has fitted the steps rather than the field, as at
        coarse step counts. `log_prob` is a density either way (see the class
        docstring); the gap says whether it is also FFJORD's density of f_θ.
        As costly as `continuous_log_prob`: a check.

        Args:
            x: floating data `(batch, d)`.
            tolerance: as for `continuous_log_prob`.

        Returns:
            The mean gap over the batch, a Python float.
        """
        x = self._data(x)
        gap = self.log_prob(x) - self.continuous_log_prob(x, tolerance)
        return float(tf.reduce_mean(tf.cast(gap, tf.float64)))

    def bijector(self) -> tfp.bijectors.Bijector:
        """This flow as a `tfp.bijectors.Bijector`: forward maps base to data (`decode`), inverse data to base.

        With a standard normal base,
        `tfp.distributions.TransformedDistribution(tfp.distributions.MultivariateNormalDiag(tf.zeros(d)), flow.bijector())`
        has this flow's `log_prob` and composes with the rest of tfp.

        Returns:
            A bijector on events of shape `(d,)` that shares this flow's weights.

        Raises:
            ValueError: for a model that is not built yet.
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
        """`TLNODEModel.compile`; the loss defaults to the mean negative log-likelihood, so `fit(x)` takes no targets.

        Args:
            optimizer: as for `TLNODEModel.compile`.
            loss: default: the mean of -log p(x) over the batch.
            **kwargs: `TLNODEModel.compile`'s other arguments.
        """
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
            **super().get_config(),  # the name, `trainable` and the dtype policy
            "vector_field": keras.saving.serialize_keras_object(self.vector_field),
            "duration": self.duration,
            "num_steps": self.num_steps,
            "order": self.order,
            "correction": keras.saving.serialize_keras_object(self.correction),
            "trace": self.trace,
            "remainder_weight": self.remainder_weight,
            "fold_weight": self.fold_weight,
            "seed": self.seed,
            "method": self.method,
            "gradient_checkpointing": self.gradient_checkpointing,
        }

    @classmethod
    def from_config(cls, config: dict) -> ContinuousNormalizingFlow:
        config = dict(config)
        for key in ("vector_field", "correction"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def check_hutchinson_steps(num_steps: int, method: str, order: int) -> None:
    """Rejects a Hutchinson-trained flow with fewer steps than `HUTCHINSON_MIN_STEPS` (its steps fold: no density)."""
    if method == "taylor_lagrange":
        fewest, scheme = HUTCHINSON_MIN_TAYLOR_STEPS.get(order, 8), f"a Taylor-Lagrange flow of order {order}"
    else:
        fewest, scheme = HUTCHINSON_MIN_STEPS[method], f"method={method!r}"
    if num_steps < fewest:
        raise ValueError(
            f'`num_steps` must be >= {fewest} for {scheme} with trace="hutchinson", got {num_steps}: '
            "with fewer steps, training on Hutchinson's estimate of the trace integral makes the steps fold, and "
            f'log_prob is then no density. Use num_steps >= {fewest}, trace="exact" (exact determinants and a '
            'fold penalty, valid at any step count), or method="rk4" (2 steps or more).'
        )


class FlowBijector(tfp.bijectors.Bijector):
    """`ContinuousNormalizingFlow.bijector()`: forward is `decode`, inverse `encode`, with its log-determinant."""

    def __init__(self, flow: ContinuousNormalizingFlow):
        self.flow = flow
        super().__init__(forward_min_event_ndims=1, validate_args=False, name=f"{flow.name}_bijector")

    def _forward(self, z: tf.Tensor) -> tf.Tensor:
        return self.flow.decode(z)

    def _inverse(self, x: tf.Tensor) -> tf.Tensor:
        return self.flow.encode(x)[0]

    def _inverse_log_det_jacobian(self, x: tf.Tensor) -> tf.Tensor:
        return self.flow.encode(x)[1]


@functools.partial(tf.function, autograph=False, reduce_retracing=True)
def _continuous_log_prob(field: AugmentedField, x: tf.Tensor, duration: float, tolerance: float) -> tf.Tensor:
    def augmented(state: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        return field([state, tf.fill(tf.stack([tf.shape(state)[0], 1]), t)])

    start = tf.concat([x, tf.zeros_like(x[:, :1])], axis=-1)
    end = dormand_prince(augmented, start, [duration], tolerance, tolerance, tf.float64).states[-1]
    return standard_normal_log_density(end[:, :-1]) + end[:, -1]


def standard_normal_log_density(z: tf.Tensor) -> tf.Tensor:
    """log N(z; 0, I) per sample, `(batch,)`."""
    d = z.shape[-1]
    return -0.5 * tf.reduce_sum(tf.square(z), axis=-1) - 0.5 * d * math.log(2.0 * math.pi)
