"""`TLNODEModel`: the alternating TL-NODE training schedule inside `model.fit`.

Phase 1 (every step) fits the dynamics f_θ, and every other weight except the
corrections, to the compiled loss plus the layers' remainder penalties. Phase 2
(every `correction_every` steps) fits each correction Γ_φ, with f_θ frozen, so
that the layer's Taylor-Lagrange step matches a DormandPrince solve of the
current f_θ from the same states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

from keras_tlnode.compat import Functional, MultiWorkerFit, loss_tracker, multi_worker_logs
from keras_tlnode.layers import Spans, TaylorLagrangeODE, layers_of
from keras_tlnode.recording import RecordedCalls, recorded_calls
from keras_tlnode.teacher import DormandPrinceTeacher, Teacher
from keras_tlnode.validation import check_int, check_optional_int

# Measured on the known stiff system (eigenvalues -1000, -1; Δt = 0.002; 100 correction
# steps): Adam at 1e-4, 1e-3, 1e-2, 3e-2 made the step 5x, 370x, 3800x, 370000x more
# accurate than the uncorrected one; 1e-2 keeps a margin below the largest rate tried.
DEFAULT_CORRECTION_LEARNING_RATE = 1e-2
# The schedule: 4 updates from one teacher solve of 64 sampled states (a cost that does
# not grow with the batch), every 5 steps. In the committed results, at these defaults:
# on the stiff system started near the true field the corrected layer's one-step test
# MSE is 1.4e-3 against 2.8e-2 uncorrected (medians of 3 seeds,
# benchmarks/results/systems_suite_full.json); the fitted Γ_φ is within 1.05-4.9x of
# one fitted to convergence on the same f_θ on six systems
# (benchmarks/results/correction_limits_full.json); the correction phase takes 4-21%
# of a training step (benchmarks/results/benchmark_training_step.json). The schedules
# it was chosen over: docs/results.md, "The correction's settings".
DEFAULT_CORRECTION_EVERY = 5
DEFAULT_CORRECTION_STEPS = 4
DEFAULT_TEACHER_SAMPLES = 64


@keras.saving.register_keras_serializable(package="keras_tlnode")
class TLNODEModel(MultiWorkerFit, keras.Model):
    """A `keras.Model` whose `fit` alternates the two TL-NODE training phases.

    Build it like any Keras model (functional, `TLNODEModel(inputs, outputs)`, or
    by subclassing). Every `TaylorLagrangeODE` with a `MidpointCorrection`,
    however deeply nested, gets the correction phase; without any, the model
    trains like a plain `keras.Model`. The schedule and the Keras mechanisms
    it supports (callbacks, distribution, mixed precision, saving) are in
    docs/usage.md, "Alternating teacher training". The constructor is
    `keras.Model`'s; `compile` takes the schedule's settings.

    Phase 1, every step, fits the dynamics f_θ, and every other weight except
    the correction networks (each correction's trust included), to the
    compiled loss plus the layers' remainder penalties.

    Phase 2, every `correction_every` steps, uses local, one-step targets: from `teacher_samples` of the states
    x_k at which the layer's steps start on the batch (the states it actually
    received, then its own steps), the teacher solves dx/dt = f_θ(x) over Δt,
    and Γ_φ takes `correction_steps` steps of `correction_optimizer` on the mean
    squared difference between the layer's step from x_k, with the fitted
    correction at full strength, and that solution. Teacher targets are
    constants. A teacher solve that fails skips the updates and counts in
    `teacher_failures`. Phase 1 trains each correction's trust (see
    `MidpointCorrection`) with the dynamics, on the model's own loss. The
    states are drawn per step by a stateless draw keyed on the step number,
    so a resumed run (`BackupAndRestore`) repeats the draws of an
    uninterrupted one.

    Logged metrics, besides the compiled ones: `remainder` (the remainder penalty
    in the loss), `nfe` (f-evaluations per forward pass: every call of a TL layer),
    `correction_loss` (the teacher gap before the updates) and `teacher_nfe`
    (both averaged over the correction steps of the epoch only; 0 before the
    first), `teacher_failures` (count), `trust` (mean over the corrections; 1
    for a correction without trust, 0 logged for a model without corrections).
    Evaluation (`evaluate`, the `val_` logs of `fit`) reports the compiled
    metrics and `nfe` only: the others measure training.

    Example:

        >>> import keras, numpy as np, keras_tlnode
        >>> inputs = keras.Input((2,))
        >>> ode = keras_tlnode.TaylorLagrangeODE(
        ...     keras.layers.Dense(2), duration=0.1, remainder_weight=1e-2,
        ...     correction=keras_tlnode.MidpointCorrection(hidden_units=(8,)))
        >>> model = keras_tlnode.TLNODEModel(inputs, ode(inputs))
        >>> model.compile(optimizer="adam", loss="mse", correction_every=5)
        >>> x = np.zeros((8, 2), "float32")
        >>> sorted(model.fit(x, x, batch_size=4, epochs=1, verbose=0).history)
        ['correction_loss', 'loss', 'nfe', 'remainder', 'teacher_failures', 'teacher_nfe', 'trust']
    """

    def __new__(cls, *args, **kwargs):
        # Keras turns a Model subclass called with (inputs, outputs) into a
        # Functional one by rewriting the class's bases for the whole process,
        # which would break `class MyModel(TLNODEModel)` afterwards; functional
        # TLNODEModels get a class of their own instead, and a user's subclass
        # one that derives from both (see `_functional_class`).
        if _functional_arguments(args, kwargs) and not issubclass(cls, Functional):
            return super().__new__(_functional_class(cls))
        return super().__new__(cls)

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        *,
        correction_optimizer: keras.optimizers.Optimizer | str | None = None,
        correction_every: int = DEFAULT_CORRECTION_EVERY,
        correction_steps: int = DEFAULT_CORRECTION_STEPS,
        teacher_samples: int | None = DEFAULT_TEACHER_SAMPLES,
        teacher: Teacher | None = None,
        auto_scale_loss: bool = True,
        **kwargs,
    ) -> None:
        """Configures the model for training: Keras's `compile` arguments, plus the correction phase's.

        Every argument is saved in the `.keras` file's compile config, the
        teacher by its registered class (a registered subclass reloads as
        itself). The schedule's defaults were chosen by measurement
        (docs/results.md, "The correction's settings").

        Args:
            optimizer: Keras's: the optimizer of the dynamics and of every
                other weight but the correction networks.
            loss: Keras's.
            correction_optimizer: optimizer of the corrections; default
                `keras.optimizers.Adam(1e-2)`, chosen by measurement: on the
                known stiff system, 100 correction steps at learning rates
                1e-4, 1e-3, 1e-2 and 3e-2 made the step 5x, 370x, 3800x and
                370000x more accurate than the uncorrected one, and 1e-2 keeps
                a margin below the largest rate tried.
            correction_every: run the correction phase once every this many
                steps, an int >= 1 (default 5).
            correction_steps: updates of Γ_φ per teacher solve, on its cached
                targets, >= 1 (default 4).
            teacher_samples: solve from at most this many of the step starts
                (drawn per step, deterministically), >= 1 (default 64); None:
                all of them.
            teacher: the reference solver, a `DormandPrinceTeacher` or an
                `RK4Teacher` (or a subclass) created under the model's
                distribution strategy; default `DormandPrinceTeacher()`
                (rtol = atol = 1e-6, float64, XLA). `RK4Teacher()` traces and
                compiles faster, for non-stiff fields.
            auto_scale_loss: Keras's, applied to both optimizers: under the
                `mixed_float16` policy, each is wrapped in a
                `LossScaleOptimizer`.
            **kwargs: Keras's other `compile` arguments (`metrics`,
                `jit_compile`, `steps_per_execution`, ...).

        Raises:
            ValueError: for a `teacher` created under another distribution
                strategy than the model's (create it inside
                `strategy.scope()`), or an int argument out of range.
            TypeError: for an argument of the wrong type.
        """
        correction_every = check_int(correction_every, "correction_every")
        correction_steps = check_int(correction_steps, "correction_steps")
        teacher_samples = check_optional_int(teacher_samples, "teacher_samples")
        if teacher is not None and not isinstance(teacher, Teacher):
            raise TypeError(
                f"`teacher` must be a DormandPrinceTeacher or an RK4Teacher (or a subclass), or None, "
                f"got {type(teacher).__name__}."
            )
        if teacher is None:
            with self.distribute_strategy.scope():
                teacher = DormandPrinceTeacher()
        elif teacher.strategy is not self.distribute_strategy:
            # Its step counter would be one variable shared by every replica.
            raise ValueError(
                "`teacher` was created under another distribution strategy than the model; "
                "create it inside the model's `strategy.scope()`."
            )
        super().compile(optimizer=optimizer, loss=loss, auto_scale_loss=auto_scale_loss, **kwargs)
        if correction_optimizer is None:
            correction_optimizer = keras.optimizers.Adam(DEFAULT_CORRECTION_LEARNING_RATE)
        self.correction_optimizer = keras.optimizers.get(correction_optimizer)
        self.auto_scale_loss = auto_scale_loss
        if (
            auto_scale_loss
            and self.dtype_policy.name == "mixed_float16"
            and not isinstance(self.correction_optimizer, keras.optimizers.LossScaleOptimizer)
        ):
            # As Keras's compile does for the main optimizer: float16 gradients underflow unscaled.
            self.correction_optimizer = keras.optimizers.LossScaleOptimizer(self.correction_optimizer)
        self.correction_every = correction_every
        self.correction_steps = correction_steps
        self.teacher_samples = teacher_samples
        self.teacher = teacher
        self._tl_metrics = _TrainingMetrics()
        if self.built:
            self.build_optimizers()

    def get_compile_config(self) -> dict | None:
        config = super().get_compile_config()
        if config:  # Keras gives {} for a model that was never compiled
            config.update(
                correction_optimizer=keras.saving.serialize_keras_object(self.correction_optimizer),
                correction_every=self.correction_every,
                correction_steps=self.correction_steps,
                teacher_samples=self.teacher_samples,
                teacher=keras.saving.serialize_keras_object(self.teacher),
                auto_scale_loss=self.auto_scale_loss,
            )
        return config

    def compile_from_config(self, config: dict) -> None:
        teacher = config.pop("teacher")
        config = keras.saving.deserialize_keras_object(config)
        with self.distribute_strategy.scope():
            # A registered subclass comes back as itself; its step counter lives in the strategy.
            # keras_tlnode 0.1 saved the bare arguments of a DormandPrinceTeacher.
            teacher = (
                keras.saving.deserialize_keras_object(teacher)
                if "class_name" in teacher
                else DormandPrinceTeacher(**teacher)
            )
        self.compile(teacher=teacher, **config)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        own = getattr(self, "_tl_metrics", None)
        return super().metrics + ([] if own is None else own.logged)

    def test_step(self, data):
        with recorded_calls() as calls:
            super().test_step(data)  # the loss and the compiled metrics
        self._tl_metrics.nfe.update_state(_nfe(calls))
        # Keras logs every metric in `metrics`; those of training alone would read as zeros.
        training_only = {metric.name for metric in self._tl_metrics.training_only}
        return multi_worker_logs(
            {name: value for name, value in self.get_metrics_result().items() if name not in training_only}
        )

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, calls, ode_layers = self._dynamics_step(x, y, sample_weight)
        corrected = [layer for layer in ode_layers if layer.correction is not None and layer in calls.inputs]
        if corrected:
            self._tl_metrics.trust.update_state(tf.add_n([_trust(layer) for layer in corrected]) / len(corrected))
            if _correction_variables(corrected):
                # A shared layer's correction is fitted on the inputs of all of its calls.
                self._correction_phase(corrected, calls.inputs)
        return multi_worker_logs(self.compute_metrics(x, y, y_pred, sample_weight=sample_weight))

    def _dynamics_step(self, x, y, sample_weight) -> tuple:
        """Phase 1: one step of the main optimizer on every trainable weight but the correction networks.

        Returns the predictions, what the TL layers received and added to the
        loss, and the model's TL layers.
        """
        with recorded_calls() as calls, tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            # A LossScaleOptimizer (mixed precision) unscales the gradients it gets.
            scaled_loss = self.optimizer.scale_loss(loss)
        # Listed after the call, which creates a subclassed model's weights.
        ode_layers = layers_of(self, TaylorLagrangeODE)
        fitted = {id(v) for v in _correction_variables(ode_layers)}
        # The dynamics include each correction's trust, which the data fit.
        dynamics_variables = [v for v in self.trainable_variables if id(v) not in fitted]
        self.build_optimizers()
        if dynamics_variables:
            gradients = tape.gradient(scaled_loss, dynamics_variables)
            self.optimizer.apply_gradients(zip(gradients, dynamics_variables, strict=True))
        else:
            # Nothing but the corrections trains (known dynamics): the step count
            # that schedules the correction phase still has to advance.
            self.optimizer.iterations.assign_add(1)

        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        # Keras scales the loss by 1/replicas under tf.distribute; the log shows it unscaled.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        loss_tracker(self).update_state(loss * replicas, sample_weight=batch)
        self._tl_metrics.remainder.update_state(
            tf.add_n([tf.zeros(())] + [tf.cast(p, tf.float32) for p in calls.penalties])
        )
        self._tl_metrics.nfe.update_state(_nfe(calls))
        return y_pred, calls, ode_layers

    def build_optimizers(self) -> None:
        """Creates the state of both optimizers (`optimizer` and `correction_optimizer`) if not yet created.

        Call it before loading a checkpoint that holds optimizer state into a
        model that has not trained yet (as `BackupAndRestore` does): the
        correction optimizer is the model's own, and Keras builds only the main
        one. The main optimizer is built on every trainable variable, as Keras
        builds it when it loads a checkpoint, so that saved states match; phase 1
        then updates only the dynamics. `compile` calls it for built models and
        the first training step otherwise (a subclassed model's weights exist
        only once it has been called); it runs outside any traced step.
        """
        with tf.init_scope():
            if not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
            if not self.correction_optimizer.built:
                correction_variables = _correction_variables(layers_of(self, TaylorLagrangeODE))
                if correction_variables:
                    self.correction_optimizer.build(correction_variables)

    def _correction_phase(self, layers: list[TaylorLagrangeODE], inputs: dict[TaylorLagrangeODE, list[Spans]]) -> None:
        """Phase 2, every `correction_every` steps: one teacher solve, then `correction_steps` updates of Γ_φ on its targets.

        Only local work (teacher solves, gradients) sits inside `tf.cond`; the
        cross-replica reductions run every step and each conditional update runs
        in cross-replica context, because under `tf.distribute` a synchronisation
        point inside control flow fails with a `merge_call` error.
        """
        due = tf.equal(self.optimizer.iterations % self.correction_every, 0)
        step = tf.cast(self.optimizer.iterations, tf.int32)
        draws = [_CorrectionDraw.draw(layer, inputs[layer], self.teacher_samples, step) for layer in layers]

        def solve() -> tuple:
            problems = [draw(inputs[draw.layer]) for draw in draws]
            solutions = [self.teacher.solve(p.layer.derivative, p.states, p.step_size, p.times) for p in problems]
            ok = tf.reduce_all([s.ok for s in solutions])
            nfe = tf.add_n([tf.cast(s.nfe, tf.float32) for s in solutions])
            targets = [tf.where(ok, s.states, tf.zeros_like(s.states)) for s in solutions]
            return [p.states for p in problems], targets, ok, nfe

        def skip() -> tuple:
            zeros = [draw.zeros(inputs[draw.layer]) for draw in draws]
            return zeros, zeros, tf.constant(True), tf.zeros(())

        states, targets, ok, teacher_nfe = tf.cond(due, solve, skip)
        variables = _correction_variables(layers)
        problems = [draw.at(s) for draw, s in zip(draws, states, strict=True)]
        context = tf.distribute.get_replica_context()
        failures = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(ok), tf.float32))
        solved = tf.logical_and(due, tf.equal(failures, 0.0))
        # Traced once and called once per update: each trace of the Taylor-Lagrange
        # step and its gradient costs about as much as the rest of the phase, and
        # each trace of the optimizer's update about a quarter of it.
        correction_gradients = tf.function(
            lambda targets: self._correction_gradients(problems, targets, variables), autograph=False
        )

        def correction_update(gradients: list) -> None:
            self._correction_step(gradients, variables)

        if not tf.distribute.has_strategy():
            # A distribution strategy lifts a function called per replica out of the
            # conditional branch that calls it, with captures from the first branch only.
            correction_update = tf.function(correction_update, autograph=False)

        def update(apply: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            """One update of Γ_φ if `apply`; whether the next may run, and this one's loss."""
            loss, gradients = tf.cond(
                apply,
                lambda: correction_gradients(targets),
                lambda: (tf.zeros(()), [tf.zeros_like(v) for v in variables]),
            )
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
            bad = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
            apply = tf.logical_and(apply, tf.equal(bad, 0.0))
            gradients = [tf.where(apply, g, tf.zeros_like(g)) for g in gradients]
            context.merge_call(self._apply_corrections, args=(apply, gradients, correction_update))
            return apply, loss

        # The loss before any update: what the teacher found at this step.
        if tf.distribute.has_strategy():
            # Unrolled: under a strategy each update's reductions must sit outside control flow.
            apply, first_loss = update(solved)
            for _ in range(self.correction_steps - 1):
                apply, _ = update(apply)
        else:
            # One copy of the update in the graph, run only while the updates apply: the
            # unrolled copies, run as no-ops at every step between phases, cost about a
            # second of the first fit (Grappler) and ~0.4 ms of every step (measured at
            # the small size of benchmarks/cost.py).
            def body(k: tf.Tensor, apply: tf.Tensor, first_loss: tf.Tensor) -> tuple:
                apply, loss = update(apply)
                return k + 1, apply, tf.where(tf.equal(k, 0), loss, first_loss)

            _, _, first_loss = tf.while_loop(
                lambda k, apply, _: tf.logical_and(k < self.correction_steps, apply),
                body,
                (tf.constant(0), solved, tf.zeros(())),
                maximum_iterations=self.correction_steps,
            )

        # A skipped solve's loss may be NaN, which a zero sample weight would not keep out of the mean.
        logged = tf.logical_and(solved, tf.math.is_finite(first_loss))
        first_loss = tf.where(logged, first_loss, tf.zeros_like(first_loss))
        self._tl_metrics.correction_loss.update_state(first_loss, sample_weight=tf.cast(logged, tf.float32))
        self._tl_metrics.teacher_nfe.update_state(teacher_nfe, sample_weight=tf.cast(due, tf.float32))
        self._tl_metrics.teacher_failures.update_state(tf.cast(tf.logical_and(due, tf.logical_not(ok)), tf.float32))

    def _correction_gradients(
        self, problems: list[_CorrectionProblem], targets: list[tf.Tensor], variables: list[tf.Variable]
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss = tf.cast(tf.add_n([p.loss(target) for p, target in zip(problems, targets, strict=True)]), tf.float32)
            # Scaled so that the optimizer's sum over replicas averages them.
            scaled = self.correction_optimizer.scale_loss(loss / replicas)
        return loss, tape.gradient(scaled, variables)

    def _apply_corrections(
        self,
        strategy: tf.distribute.Strategy,
        apply: tf.Tensor,
        gradients: list,
        update: Callable[[list], None],
    ) -> None:
        """Cross-replica: one correction-optimizer step (`update`) if `apply`, else nothing.

        As in Keras's LossScaleOptimizer, the `tf.cond` sits in cross-replica
        context and its branch goes back to each replica to apply the gradients.
        """
        flag = strategy.experimental_local_results(apply)[0]
        # Each replica passes its own copy of the same update; one serves all of them.
        update = strategy.experimental_local_results(update)[0]

        def step() -> None:
            strategy.extended.call_for_each_replica(update, args=(gradients,))

        tf.cond(flag, step, lambda: None)

    def _correction_step(self, gradients: list, variables: list[tf.Variable]) -> None:
        self.correction_optimizer.apply_gradients(zip(gradients, variables, strict=True))


class _TrainingMetrics:
    """TLNODEModel's own metrics, which `compile` creates as Keras creates its compiled ones.

    Held in a plain object, out of Keras's attribute tracking: a tracked metric
    would be listed by `metrics` a second time, stay listed after a recompile,
    and cannot be added to a model that is already built.
    """

    def __init__(self) -> None:
        self.nfe = keras.metrics.Mean(name="nfe")
        self.remainder = keras.metrics.Mean(name="remainder")
        self.correction_loss = keras.metrics.Mean(name="correction_loss")
        self.teacher_nfe = keras.metrics.Mean(name="teacher_nfe")
        self.teacher_failures = keras.metrics.Sum(name="teacher_failures")
        self.trust = keras.metrics.Mean(name="trust")

    @property
    def logged(self) -> list[keras.metrics.Metric]:
        """In the order of the training logs."""
        return [self.remainder, self.nfe, self.correction_loss, self.teacher_nfe, self.teacher_failures, self.trust]

    @property
    def training_only(self) -> list[keras.metrics.Metric]:
        """Those that mean nothing in evaluation: all but `nfe`."""
        return [metric for metric in self.logged if metric is not self.nfe]


@keras.saving.register_keras_serializable(package="keras_tlnode", name="FunctionalTLNODEModel")
class FunctionalTLNODEModel(Functional, TLNODEModel):
    """A TLNODEModel built the functional way, `TLNODEModel(inputs, outputs)`."""

    def __init__(self, inputs, outputs, name: str | None = None, **kwargs):
        Functional.__init__(self, inputs, outputs, name=name, **kwargs)


_FUNCTIONAL_SUBCLASSES: dict[type, type] = {}


def _functional_class(cls: type) -> type:
    """The class of `cls(inputs, outputs)`: FunctionalTLNODEModel for TLNODEModel itself,
    else a subclass of both `cls` and FunctionalTLNODEModel, named like `cls`.

    The instance is a `cls` (its methods come first) built as a Functional model.
    It is saved under `cls`'s registered name, and a `.keras` file reloads it
    through `cls.from_config`, which comes back here.
    """
    if cls is TLNODEModel:
        return FunctionalTLNODEModel
    if cls not in _FUNCTIONAL_SUBCLASSES:
        attributes = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
        functional = type(cls.__name__, (cls, FunctionalTLNODEModel), attributes)
        registered = keras.saving.get_registered_name(cls)
        if registered != cls.__name__:
            package, _, name = registered.rpartition(">")
            keras.saving.register_keras_serializable(package=package, name=name)(functional)
            # The name keeps loading `cls`, whose from_config also builds subclassed models.
            keras.saving.get_custom_objects()[registered] = cls
        _FUNCTIONAL_SUBCLASSES[cls] = functional
    return _FUNCTIONAL_SUBCLASSES[cls]


def _functional_arguments(args: tuple, kwargs: dict) -> bool:
    return len(args) == 2 or (len(args) == 1 and "outputs" in kwargs) or ("inputs" in kwargs and "outputs" in kwargs)


class _CorrectionDraw(NamedTuple):
    """Which of one layer's step starts its correction is fitted on at this step.

    The step starts are those of every call of the layer (a shared layer has
    several), call after call. `picks` indexes at most `teacher_samples` of
    them (None: all of them), drawn by a stateless RNG keyed on the step
    number, so that a resumed run (BackupAndRestore) stays bit-equal to an
    uninterrupted one; `times` are the picked starts' times (time-dependent
    fields) or None, `sizes` their Δt where a call had per-sample durations or
    observation times, else None; `count` is the number of starts.
    """

    layer: TaylorLagrangeODE
    picks: tf.Tensor | None
    times: tf.Tensor | None
    sizes: tf.Tensor | None
    count: tf.Tensor

    @classmethod
    def draw(
        cls, layer: TaylorLagrangeODE, calls: list[Spans], samples: int | None, step: tf.Tensor
    ) -> _CorrectionDraw:
        sizes = [layer.step_sizes(spans) for spans in calls]
        uniform = [tf.shape(spans.states)[0] * layer.num_steps for spans in calls]
        count = tf.add_n([uniform[i] if size is None else tf.shape(size)[0] for i, size in enumerate(sizes)])
        picks = None
        if samples is not None:
            keys = tf.random.stateless_uniform(tf.reshape(count, [1]), seed=tf.stack([_SAMPLING_SEED, step]))
            picks = tf.argsort(keys)[:samples]
        times = None if not layer.time_dependent else tf.concat([layer.step_times(spans) for spans in calls], 0)
        all_sizes = None
        if any(size is not None for size in sizes):
            dtype = calls[0].states.dtype
            fills = [tf.fill(tf.stack([n, 1]), tf.constant(layer.step_size, dtype)) for n in uniform]
            all_sizes = tf.concat([fill if size is None else size for fill, size in zip(fills, sizes, strict=True)], 0)
        if picks is not None:
            times = None if times is None else tf.gather(times, picks)
            all_sizes = None if all_sizes is None else tf.gather(all_sizes, picks)
        return cls(layer, picks, times, all_sizes, count)

    def __call__(self, calls: list[Spans]) -> _CorrectionProblem:
        """The drawn step starts of the layer's rollouts of `calls` (this runs the rollouts)."""
        states = tf.concat([self.layer.step_starts(spans) for spans in calls], axis=0)
        return self.at(states if self.picks is None else tf.gather(states, self.picks))

    def zeros(self, calls: list[Spans]) -> tf.Tensor:
        """Zeros shaped like the drawn states, for a step without a teacher solve."""
        x = calls[0].states
        count = self.count if self.picks is None else tf.shape(self.picks)[0]
        return tf.zeros(tf.concat([[count], tf.shape(x)[1:]], axis=0), x.dtype)

    def at(self, states: tf.Tensor) -> _CorrectionProblem:
        return _CorrectionProblem(self.layer, states, self.times, self.sizes)


class _CorrectionProblem(NamedTuple):
    """The states one layer's correction is fitted on at this step, and its loss against targets."""

    layer: TaylorLagrangeODE
    states: tf.Tensor
    times: tf.Tensor | None
    sizes: tf.Tensor | None

    @property
    def step_size(self) -> float | tf.Tensor:
        """Each state's Δt `(n, 1)` with per-sample durations, else the layer's Δt."""
        return self.layer.step_size if self.sizes is None else self.sizes

    def loss(self, target: tf.Tensor) -> tf.Tensor:
        """Mean squared gap between the layer's step from `states`, at full correction, and `target`."""
        prediction, _ = self.layer.step(self.states, self.times, apply_trust=False, step_size=self.sizes)
        # In float32 at least: float16 squares of small gaps underflow.
        gap = tf.cast(prediction - target, tf.float32) if prediction.dtype == tf.float16 else prediction - target
        return tf.reduce_mean(tf.square(gap))


_SAMPLING_SEED = 20220115


def _nfe(calls: RecordedCalls) -> tf.Tensor:
    """f-evaluations of the forward pass: each call of a TL layer counts (a layer a model does not call does not).

    A call at T observation times makes T − 1 times the evaluations of a call over one span.
    """
    counts = [
        layer.nfe * tf.cast(1 if spans.times is None else tf.shape(spans.times)[1] - 1, tf.float32)
        for layer, inputs in calls.inputs.items()
        for spans in inputs
    ]
    return tf.add_n([tf.zeros(()), *counts])


def _correction_variables(layers: list[TaylorLagrangeODE]) -> list:
    """The weights the correction phase fits: each corrected layer's N_φ."""
    return [v for layer in layers if layer.correction is not None for v in layer.correction.fitted_variables]


def _trust(layer: TaylorLagrangeODE) -> tf.Tensor:
    """The share of its fitted correction that the layer applies (1 without a trust weight)."""
    correction = layer.correction
    if correction is None or not correction.trust:
        return tf.ones(())
    return tf.cast(correction.trust_weight, tf.float32)
