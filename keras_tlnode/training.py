"""`TLNODEModel`: the alternating TL-NODE training schedule inside `model.fit`.

Phase 1 (every step) fits the dynamics f_θ, and every other weight except the
corrections, to the compiled loss plus the layers' remainder penalties. Phase 2
(every `correction_every` steps) fits each correction Γ_φ, with f_θ frozen, so
that the layer's Taylor-Lagrange step matches a DormandPrince solve of the
current f_θ from the same states.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Functional is not exported by Keras; it is the class keras.Model(inputs, outputs) builds.
from keras.src.models.functional import Functional

from keras_tlnode.layers import TaylorLagrangeODE, recorded_inputs, tl_layers
from keras_tlnode.rollout import rollout
from keras_tlnode.teacher import DormandPrinceTeacher

# Measured on the known stiff system (eigenvalues -1000, -1; Δt = 0.002; 100 correction
# steps): Adam at 1e-4, 1e-3, 1e-2, 3e-2 made the step 5x, 370x, 3800x, 370000x more
# accurate than the uncorrected one; 1e-2 keeps a margin below the largest rate tried.
DEFAULT_CORRECTION_LEARNING_RATE = 1e-2


@keras.saving.register_keras_serializable(package="keras_tlnode")
class TLNODEModel(keras.Model):
    """A `keras.Model` whose `fit` alternates the two TL-NODE training phases.

    Build it like any Keras model (functional, `TLNODEModel(inputs, outputs)`, or
    by subclassing). Every `TaylorLagrangeODE` with a `MidpointCorrection`,
    however deeply nested, gets the correction phase; without any, the model
    trains like a plain `keras.Model`.

    Phase 2 uses local, one-step targets: for each state x_k of the layer's
    rollout on the batch (the states it actually received, then its own steps),
    the teacher solves dx/dt = f_θ(x) over Δt from x_k, and Γ_φ takes one step of
    `correction_optimizer` on the mean squared difference between the layer's
    step from x_k and that solution. Teacher targets are constants. A teacher
    solve that fails skips the update and counts in `teacher_failures`.

    Logged metrics, besides the compiled ones: `remainder` (the remainder penalty
    in the loss), `nfe` (f-evaluations per forward pass of all TL layers),
    `correction_loss` and `teacher_nfe` (averaged over the correction steps of the
    epoch only; 0 before the first), `teacher_failures` (count).

    Example:

    >>> import keras, keras_tlnode
    >>> inputs = keras.Input((2,))
    >>> ode = keras_tlnode.TaylorLagrangeODE(
    ...     keras.layers.Dense(2), t_final=0.1, remainder_weight=1e-2,
    ...     correction=keras_tlnode.MidpointCorrection(hidden_units=(8,)))
    >>> model = keras_tlnode.TLNODEModel(inputs, ode(inputs))
    >>> model.compile(optimizer="adam", loss="mse", correction_every=5)
    """

    def __new__(cls, *args, **kwargs):
        # Keras turns a Model subclass called with (inputs, outputs) into a
        # Functional one by rewriting the class's bases for the whole process,
        # which would break `class MyModel(TLNODEModel)` afterwards; functional
        # TLNODEModels get a class of their own instead.
        if cls is TLNODEModel and _functional_arguments(args, kwargs):
            return super().__new__(FunctionalTLNODEModel)
        return super().__new__(cls)

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        *,
        correction_optimizer: keras.optimizers.Optimizer | str | None = None,
        correction_every: int = 10,
        teacher: DormandPrinceTeacher | None = None,
        **kwargs,
    ) -> None:
        """Configures the model for training; Keras's `compile` arguments plus:

        Args:
            correction_optimizer: optimizer of the corrections; default
                `keras.optimizers.Adam(1e-2)`.
            correction_every: run the correction phase every this many steps, >= 1.
            teacher: the reference solver; default `DormandPrinceTeacher()`
                (rtol = atol = 1e-8, float64).
        """
        if isinstance(correction_every, bool) or not isinstance(correction_every, int) or correction_every < 1:
            raise ValueError(f"`correction_every` must be an int >= 1, got {correction_every!r}.")
        if teacher is not None and not isinstance(teacher, DormandPrinceTeacher):
            raise TypeError(f"`teacher` must be a DormandPrinceTeacher or None, got {type(teacher).__name__}.")
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        if correction_optimizer is None:
            correction_optimizer = keras.optimizers.Adam(DEFAULT_CORRECTION_LEARNING_RATE)
        self.correction_optimizer = keras.optimizers.get(correction_optimizer)
        self.correction_every = correction_every
        self.teacher = teacher or DormandPrinceTeacher()
        self._tl_metrics = {
            "remainder": keras.metrics.Mean(name="remainder"),
            "nfe": keras.metrics.Mean(name="nfe"),
            "correction_loss": keras.metrics.Mean(name="correction_loss"),
            "teacher_nfe": keras.metrics.Mean(name="teacher_nfe"),
            "teacher_failures": keras.metrics.Sum(name="teacher_failures"),
        }
        if self.built:
            self._build_optimizers()

    def get_compile_config(self) -> dict | None:
        config = super().get_compile_config()
        if config is not None:
            config.update(
                correction_optimizer=keras.saving.serialize_keras_object(self.correction_optimizer),
                correction_every=self.correction_every,
                teacher=self.teacher.get_config(),
            )
        return config

    def compile_from_config(self, config: dict) -> None:
        config = keras.saving.deserialize_keras_object(config)
        teacher = DormandPrinceTeacher(**config.pop("teacher"))
        self.compile(teacher=teacher, **config)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return super().metrics + list(getattr(self, "_tl_metrics", {}).values())

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with recorded_inputs() as inputs, tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        # Listed after the call, which creates a subclassed model's weights.
        ode_layers = tl_layers(self)
        remainder = tf.add_n([tf.zeros(())] + [tf.cast(term, tf.float32) for layer in ode_layers for term in layer.losses])
        corrected = [layer for layer in ode_layers if layer.correction is not None]
        correction_variables = _correction_variables(self)
        correction_ids = {id(v) for v in correction_variables}
        dynamics_variables = [v for v in self.trainable_variables if id(v) not in correction_ids]
        self._build_optimizers()
        if dynamics_variables:
            gradients = tape.gradient(loss, dynamics_variables)
            self.optimizer.apply_gradients(zip(gradients, dynamics_variables))

        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        # Keras scales the loss by 1/replicas under tf.distribute; the log shows it unscaled.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self._loss_tracker.update_state(loss * replicas, sample_weight=batch)
        self._tl_metrics["remainder"].update_state(remainder)
        self._tl_metrics["nfe"].update_state(float(sum(layer.nfe for layer in ode_layers)))
        if corrected and correction_variables:
            self._correction_phase(corrected, inputs, correction_variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _build_optimizers(self) -> None:
        """Creates both optimizers' state outside any traced step.

        The main optimizer is built on every trainable variable, as Keras builds
        it when it loads a checkpoint or a backup, so that saved states match;
        phase 1 then updates only the dynamics. Called from `compile` for built
        models and from the first traced step otherwise (a subclassed model's
        weights exist only once it has been called).
        """
        with tf.init_scope():
            if not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
            correction_variables = _correction_variables(self)
            if correction_variables and not self.correction_optimizer.built:
                self.correction_optimizer.build(correction_variables)

    def _correction_phase(
        self,
        layers: list[TaylorLagrangeODE],
        inputs: dict[TaylorLagrangeODE, tf.Tensor],
        variables: list[tf.Variable],
    ) -> None:
        """Every `correction_every` steps: one update of the corrections, or none if the teacher failed.

        Only the local work (teacher solves, gradients) sits inside `tf.cond`; the
        cross-replica reduction runs every step and the conditional update runs
        in cross-replica context, because under `tf.distribute` a synchronisation
        point inside control flow fails with a `merge_call` error.
        """
        due = tf.equal(self.optimizer.iterations % self.correction_every, 0)

        def fit() -> tuple:
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            with tf.GradientTape() as tape:
                fits = [_local_fit(layer, tf.stop_gradient(inputs[layer]), self.teacher) for layer in layers]
                loss = tf.add_n([fit[0] for fit in fits])
                # Scaled so that the optimizer's sum over replicas averages them.
                scaled = loss / replicas
            gradients = tape.gradient(scaled, variables)
            finite = [tf.reduce_all(tf.math.is_finite(g)) for g in gradients]
            ok = tf.reduce_all([fit[1] for fit in fits] + finite)
            nfe = tf.add_n([fit[2] for fit in fits])
            gradients = [tf.where(ok, g, tf.zeros_like(g)) for g in gradients]
            return tf.cast(loss, tf.float32), ok, tf.cast(nfe, tf.float32), gradients

        def skip() -> tuple:
            return tf.zeros(()), tf.constant(True), tf.zeros(()), [tf.zeros_like(v) for v in variables]

        loss, ok, teacher_nfe, gradients = tf.cond(due, fit, skip)
        context = tf.distribute.get_replica_context()
        failures = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(ok), tf.float32))
        apply = tf.logical_and(due, tf.equal(failures, 0.0))
        context.merge_call(self._apply_corrections, args=(apply, gradients, variables))

        self._tl_metrics["correction_loss"].update_state(loss, sample_weight=tf.cast(apply, tf.float32))
        self._tl_metrics["teacher_nfe"].update_state(teacher_nfe, sample_weight=tf.cast(due, tf.float32))
        self._tl_metrics["teacher_failures"].update_state(tf.cast(tf.logical_and(due, tf.logical_not(ok)), tf.float32))

    def _apply_corrections(
        self, strategy: tf.distribute.Strategy, apply: tf.Tensor, gradients: list, variables: list[tf.Variable]
    ) -> None:
        """Cross-replica: one correction-optimizer step if `apply`, else nothing.

        As in Keras's LossScaleOptimizer, the `tf.cond` sits in cross-replica
        context and its branch goes back to each replica to apply the gradients.
        """
        flag = strategy.experimental_local_results(apply)[0]

        def step() -> None:
            strategy.extended.call_for_each_replica(self._correction_step, args=(gradients, variables))

        tf.cond(flag, step, lambda: None)

    def _correction_step(self, gradients: list, variables: list[tf.Variable]) -> None:
        self.correction_optimizer.apply_gradients(zip(gradients, variables))


@keras.saving.register_keras_serializable(package="keras_tlnode", name="FunctionalTLNODEModel")
class FunctionalTLNODEModel(Functional, TLNODEModel):
    """A TLNODEModel built the functional way, `TLNODEModel(inputs, outputs)`."""

    def __init__(self, inputs, outputs, name: str | None = None, **kwargs):
        Functional.__init__(self, inputs, outputs, name=name, **kwargs)


def _functional_arguments(args: tuple, kwargs: dict) -> bool:
    return len(args) == 2 or (len(args) == 1 and "outputs" in kwargs) or ("inputs" in kwargs and "outputs" in kwargs)


def _local_fit(
    layer: TaylorLagrangeODE, x: tf.Tensor, teacher: DormandPrinceTeacher
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Mean squared gap between the layer's step and the teacher's solve, from every state of its rollout."""
    states, _ = rollout(lambda s, k: layer._step(s, layer._time(s, k)), x, layer.num_steps, return_trajectory=True)
    starts = tf.stop_gradient(states[:, :-1])
    batch, steps = tf.shape(starts)[0], layer.num_steps
    flat = tf.reshape(starts, tf.concat([[batch * steps], tf.shape(starts)[2:]], axis=0))
    times = None
    if layer.time_dependent:
        index = tf.tile(tf.range(steps), [batch])
        times = layer.t_initial + tf.cast(index, flat.dtype)[:, None] * layer.step_size
    target = teacher.solve(layer._field, flat, layer.step_size, times)
    # One step, but through the rollout's while loop: outside a loop, XLA's
    # constant analysis of the nested JVPs turns the inputs and weights into
    # compile-time constants and recompiles on every step (README, XLA).
    prediction, _ = rollout(lambda s, k: layer._step(s, times), flat, 1, return_trajectory=False)
    loss = tf.reduce_mean(tf.square(prediction - target.states))
    return loss, target.ok, target.nfe


def _correction_variables(model: keras.Model) -> list:
    """The trainable weights of every correction of the model's TL layers."""
    layers = [layer for layer in tl_layers(model) if layer.correction is not None]
    return [v for layer in layers for v in layer.correction.trainable_variables]
