"""TLNODEModel with Keras's training callbacks, input pipelines and steps_per_execution.

Every test trains the same tiny model: a 2-state linear ODE (f_θ = Dense(2)),
one Taylor-Lagrange step of order 1 over duration = 0.05 with a small
MidpointCorrection, on 64 samples of the exact flow of a stable linear system.
With batch 16 an epoch is 4 steps, and with `correction_every=2` 2 of them also
run the correction phase (on main-optimizer iterations 2 and 4), each with
`correction_steps=2` updates on one teacher solve from `teacher_samples=8` of
the batch's 16 states (a draw that a resumed run has to repeat).

At Δt = 0.05 the order-1 Taylor-Lagrange step is already accurate to about
float32 round-off, so the correction gradients are ~1e-13: with Adam's default
ε = 1e-7 a correction step would move the correction weights by ~1e-9, too
little for a weight comparison to tell whether it ran. The correction
optimizer uses ε = 1e-16, which makes each correction step move them by about
its learning rate.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable

import child_process
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tlnode as kt

A = np.array([[-1.0, 2.0], [-2.0, -1.0]])  # eigenvalues -1 ± 2i: a stable spiral
T_FINAL = 0.05
SAMPLES = 64
BATCH = 16
STEPS_PER_EPOCH = SAMPLES // BATCH
CORRECTION_EVERY = 2
CORRECTION_STEPS = 2
TEACHER_SAMPLES = 8
EPOCHS = 4
LEARNING_RATE = 1e-2
CORRECTION_LEARNING_RATE = 5e-3  # differs from LEARNING_RATE, to tell the optimizers apart
CORRECTION_EPSILON = 1e-16  # see the module docstring


def _expm(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eig(matrix)
    return np.real(vectors @ np.diag(np.exp(values)) @ np.linalg.inv(vectors))


def _data(nan_batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (SAMPLES, 2)).astype("float32")
    y = (x @ _expm(A * T_FINAL).T).astype("float32")
    if nan_batch is not None:
        y[nan_batch * BATCH : (nan_batch + 1) * BATCH] = np.nan
    return x, y


def _model(seed: int = 0, steps_per_execution: int = 1) -> kt.TLNODEModel:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    ode = kt.TaylorLagrangeODE(
        keras.layers.Dense(2),
        order=1,
        duration=T_FINAL,
        correction=kt.MidpointCorrection(hidden_units=(4,)),
        remainder_weight=1e-2,
    )
    model = kt.TLNODEModel(inputs, ode(inputs))
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss="mse",
        correction_optimizer=keras.optimizers.Adam(CORRECTION_LEARNING_RATE, epsilon=CORRECTION_EPSILON),
        correction_every=CORRECTION_EVERY,
        correction_steps=CORRECTION_STEPS,
        teacher_samples=TEACHER_SAMPLES,
        steps_per_execution=steps_per_execution,
    )
    return model


def _fit(model: keras.Model, x, y=None, epochs: int = EPOCHS, **kwargs) -> keras.callbacks.History:
    if isinstance(x, np.ndarray):
        kwargs.setdefault("batch_size", BATCH)
    return model.fit(x, y, epochs=epochs, shuffle=False, verbose=0, **kwargs)


def _ode(model: keras.Model) -> kt.TaylorLagrangeODE:
    return next(layer for layer in model.layers if isinstance(layer, kt.TaylorLagrangeODE))


def _correction_weights(model: keras.Model) -> list[np.ndarray]:
    """The weights the correction phase fits (the trust trains with the dynamics)."""
    return [w.numpy() for w in _ode(model).correction.fitted_variables]


def _state(model: keras.Model) -> dict:
    """Everything a resumed run has to get back: weights and both optimizers' states."""
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "iterations": int(model.optimizer.iterations),
        "optimizer": [v.numpy() for v in model.optimizer.variables],
        "correction_iterations": int(model.correction_optimizer.iterations),
        "correction_optimizer": [v.numpy() for v in model.correction_optimizer.variables],
    }


def _assert_weights_close(actual: list, expected: list, atol: float = 1e-6) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=atol)


def _assert_optimizer_state_equal(actual: list, expected: list, name: str) -> None:
    assert len(actual) == len(expected), (
        f"{name}: {len(actual)} variables after the restore, {len(expected)} in the interrupted run"
    )
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7, err_msg=f"{name} variable {i}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The uninterrupted run, NumPy input and one step per execution, watched by three ModelCheckpoints
    (best-only `.keras`, every-epoch `.keras` and `.weights.h5`) and TensorBoard.

    One run serves the equivalence tests and the callback tests: the callbacks
    only read the model, and the runs compared with this one have none, so a
    callback that changed the training would fail those comparisons.
    """
    directory = tmp_path_factory.mktemp("checkpoints")
    paths = {name: directory / name for name in ("best.keras", "last.keras", "last.weights.h5")}
    model = _model()
    x, y = _data()
    snapshots = []
    callbacks = [
        keras.callbacks.ModelCheckpoint(paths["best.keras"], monitor="loss", save_best_only=True),
        keras.callbacks.ModelCheckpoint(paths["last.keras"]),
        keras.callbacks.ModelCheckpoint(paths["last.weights.h5"], save_weights_only=True),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights())),
    ]
    log_dir = tmp_path_factory.mktemp("tensorboard")
    if importlib.util.find_spec("tensorboard") is not None:  # else the TensorBoard test skips
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
    history = _fit(model, x, y, callbacks=callbacks)
    best = int(np.argmin(history.history["loss"]))
    return {
        "model": model,
        "paths": paths,
        "snapshots": snapshots,
        "best_weights": snapshots[best],
        "x": x,
        "log_dir": log_dir,
    }


@pytest.fixture(scope="module")
def reference(uninterrupted) -> dict:
    """The state of the uninterrupted run, which every equivalence test compares with."""
    model = uninterrupted["model"]
    state = _state(model)
    # The run really trained both parts, on the schedule the module docstring states.
    assert state["iterations"] == EPOCHS * STEPS_PER_EPOCH
    assert state["correction_iterations"] == EPOCHS * STEPS_PER_EPOCH // CORRECTION_EVERY * CORRECTION_STEPS
    initial = _correction_weights(_model())
    assert max(np.abs(a - b).max() for a, b in zip(_correction_weights(model), initial, strict=True)) > 1e-3
    return state


# --- ModelCheckpoint -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(uninterrupted, reference) -> dict:
    """The uninterrupted run's checkpoints; `reference` first checks that the run trained on schedule."""
    return uninterrupted


def _predict_with(weights: list, x: np.ndarray) -> np.ndarray:
    model = _model(seed=1)
    model.set_weights(weights)
    return model.predict(x, verbose=0)


def test_model_checkpoint_best_only_saves_the_best_epoch(checkpoints):
    path = checkpoints["paths"]["best.keras"]
    assert path.exists()
    fresh = _model(seed=1)
    fresh.load_weights(path)
    _assert_weights_close(fresh.get_weights(), checkpoints["best_weights"], atol=0)


def test_model_checkpoint_best_only_reloads_as_a_tlnode_model(checkpoints):
    x = checkpoints["x"]
    restored = keras.models.load_model(checkpoints["paths"]["best.keras"])
    assert isinstance(restored, kt.TLNODEModel)
    _assert_weights_close(restored.get_weights(), checkpoints["best_weights"], atol=0)
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), _predict_with(checkpoints["best_weights"], x), rtol=1e-6, atol=1e-7
    )


def test_model_checkpoint_reload_keeps_the_correction_settings(checkpoints):
    restored = keras.models.load_model(checkpoints["paths"]["last.keras"])
    assert restored.correction_every == CORRECTION_EVERY
    assert isinstance(restored.correction_optimizer, keras.optimizers.Adam)
    np.testing.assert_allclose(float(restored.correction_optimizer.learning_rate), CORRECTION_LEARNING_RATE)
    np.testing.assert_allclose(float(restored.optimizer.learning_rate), LEARNING_RATE)


def test_model_checkpoint_reload_keeps_both_optimizer_states(checkpoints):
    """Keras rebuilds `optimizer` on all trainable variables when it loads, and
    must find `correction_optimizer` built, or it skips their saved states."""
    model = checkpoints["model"]
    restored = keras.models.load_model(checkpoints["paths"]["last.keras"])
    assert int(restored.optimizer.iterations) == int(model.optimizer.iterations) == EPOCHS * STEPS_PER_EPOCH
    assert int(restored.correction_optimizer.iterations) == int(model.correction_optimizer.iterations)
    _assert_optimizer_state_equal(
        [v.numpy() for v in restored.optimizer.variables],
        [v.numpy() for v in model.optimizer.variables],
        "optimizer",
    )
    _assert_optimizer_state_equal(
        [v.numpy() for v in restored.correction_optimizer.variables],
        [v.numpy() for v in model.correction_optimizer.variables],
        "correction_optimizer",
    )


def test_model_checkpoint_weights_only_round_trip(checkpoints):
    model, x = checkpoints["model"], checkpoints["x"]
    path = checkpoints["paths"]["last.weights.h5"]
    assert path.exists()
    fresh = _model(seed=1)
    assert any(not np.allclose(a, b) for a, b in zip(fresh.get_weights(), model.get_weights(), strict=True))
    fresh.load_weights(path)
    _assert_weights_close(fresh.get_weights(), model.get_weights(), atol=0)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


# --- EarlyStopping, learning-rate callbacks, TensorBoard -----------------------------------------


def test_early_stopping_stops_training():
    x, y = _data()
    model = _model()
    # Only the first epoch can improve on +inf by more than min_delta.
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e3)
    history = _fit(model, x, y, callbacks=[stop])
    assert len(history.history["loss"]) == 2 < EPOCHS
    assert stop.stopped_epoch == 1
    assert int(model.optimizer.iterations) == 2 * STEPS_PER_EPOCH


@pytest.mark.parametrize(
    "make_callback",
    [
        pytest.param(
            lambda: keras.callbacks.LearningRateScheduler(lambda epoch, lr: LEARNING_RATE * 0.5**epoch), id="scheduler"
        ),
        # Every epoch after the first fails to improve by min_delta, and halves the rate.
        pytest.param(
            lambda: keras.callbacks.ReduceLROnPlateau(
                monitor="loss", factor=0.5, patience=0, min_delta=1e3, min_lr=0.0
            ),
            id="plateau",
        ),
    ],
)
def test_learning_rate_callbacks_act_on_the_main_optimizer_only(make_callback):
    x, y = _data()
    model = _model()
    rates = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: rates.append(
            (float(model.optimizer.learning_rate), float(model.correction_optimizer.learning_rate))
        )
    )
    _fit(model, x, y, epochs=3, callbacks=[make_callback(), record])
    main, correction = np.array(rates).T
    np.testing.assert_allclose(main, [LEARNING_RATE, LEARNING_RATE / 2, LEARNING_RATE / 4], rtol=1e-6)
    np.testing.assert_allclose(correction, [CORRECTION_LEARNING_RATE] * 3, rtol=1e-6)
    # The correction optimizer did run, at its own rate.
    assert int(model.correction_optimizer.iterations) == 3 * STEPS_PER_EPOCH // CORRECTION_EVERY * CORRECTION_STEPS


def test_tensorboard_writes_the_tl_metrics(uninterrupted):
    pytest.importorskip("tensorboard", reason="keras.callbacks.TensorBoard needs the tensorboard package")
    files = sorted((uninterrupted["log_dir"] / "train").glob("events.out.tfevents.*"))
    assert files
    scalars: dict[str, list[float]] = {}
    for record in tf.data.TFRecordDataset([str(f) for f in files]):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    tags = ("epoch_loss", "epoch_remainder", "epoch_correction_loss", "epoch_teacher_nfe", "epoch_teacher_failures")
    for tag in tags:
        assert len(scalars.get(tag, [])) == EPOCHS, (tag, sorted(scalars))
    assert all(v > 0 for v in scalars["epoch_teacher_nfe"])
    assert scalars["epoch_teacher_failures"] == [0.0] * EPOCHS


# --- TerminateOnNaN ------------------------------------------------------------------------------


def test_terminate_on_nan_stops_training_without_touching_the_corrections():
    # NaN targets in the first batch: its dynamics update is NaN; no correction step is due yet.
    x, y = _data(nan_batch=0)
    model = _model()
    initial = _correction_weights(model)
    history = _fit(model, x, y, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 < EPOCHS
    assert np.isnan(history.history["loss"][0])
    assert int(model.optimizer.iterations) == 1
    assert not np.isfinite(_ode(model).vector_field.get_weights()[0]).all()
    assert int(model.correction_optimizer.iterations) == 0
    _assert_weights_close(_correction_weights(model), initial, atol=0)


def nan_on_a_correction_step(marker: str) -> dict:
    """NaN targets in batch 1, the first step on which the correction phase is due; with TerminateOnNaN.

    The dynamics weights turn NaN on that step, before its correction phase, so
    the teacher sees a NaN vector field: the correction update must be skipped.
    The test below runs it in a subprocess, so that a teacher that never returns
    on a non-finite field fails that test instead of hanging the run; it touches
    `marker` when the fit starts.
    """
    x, y = _data(nan_batch=1)
    model = _model()
    initial = _correction_weights(model)
    open(marker, "w").close()
    history = _fit(model, x, y, callbacks=[keras.callbacks.TerminateOnNaN()])
    final = _correction_weights(model)
    return {
        "epochs": len(history.history["loss"]),
        "iterations": int(model.optimizer.iterations),
        "correction_iterations": int(model.correction_optimizer.iterations),
        "teacher_failures": float(history.history["teacher_failures"][0]),
        "corrections_finite": all(bool(np.isfinite(w).all()) for w in final),
        "corrections_unchanged": all(bool(np.array_equal(a, b)) for a, b in zip(final, initial, strict=True)),
    }


FIT_TIMEOUT = 15.0  # seconds from the start of the fit; a healthy one takes 2-3 s (about 5 s beside other tests)


@pytest.fixture(scope="module", autouse=True)
def nan_child(request, tmp_path_factory):
    """`nan_on_a_correction_step` for the test below, in a process of its own started with
    the module, so that it runs beside this module's other tests."""
    if not child_process.selected(request, test_nan_on_a_correction_step_skips_the_correction_update):
        yield None
        return
    directory = tmp_path_factory.mktemp("nan_on_a_correction_step")
    child = child_process.Child(directory, "nan_on_a_correction_step.py", str(directory / "fitting"))
    try:
        yield {"child": child, "started": time.time(), "marker": directory / "fitting"}
    finally:
        child.close()


def test_nan_on_a_correction_step_skips_the_correction_update(nan_child):
    child, marker = nan_child["child"], nan_child["marker"]
    process = child.process
    while process.poll() is None:
        # The child touches the marker when its fit starts.
        fit_start = marker.stat().st_mtime if marker.exists() else None
        if time.time() - (fit_start or nan_child["started"]) > (FIT_TIMEOUT if fit_start else 120.0):
            process.kill()
            process.wait()
            pytest.fail(f"fit() still running {FIT_TIMEOUT:.0f} s after it started: it hangs on the NaN dynamics")
        time.sleep(0.1)
    assert process.returncode == 0, child.stderr()[-3000:]
    result = json.loads(child.stdout().strip().splitlines()[-1])
    assert result["epochs"] == 1 < EPOCHS
    assert result["iterations"] == 2
    assert result["teacher_failures"] == 1.0
    assert result["correction_iterations"] == 0
    assert result["corrections_finite"]
    assert result["corrections_unchanged"]


# --- BackupAndRestore ----------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


class _InterruptAtEpochEnd(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch
        self.state: dict | None = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.state = _state(self.model)
            raise _Interrupted()


class _StateAtTrainBegin(keras.callbacks.Callback):
    """Listed after BackupAndRestore, it sees the state that callback restored."""

    def on_train_begin(self, logs=None):
        self.state = _state(self.model)


@pytest.fixture(scope="module")
def backup_runs(tmp_path_factory) -> dict:
    """A run interrupted at the end of epoch 1 of 4, then resumed from its backup by a fresh model."""
    backup_dir = str(tmp_path_factory.mktemp("backup"))
    x, y = _data()
    interrupt = _InterruptAtEpochEnd(1)
    with pytest.raises(_Interrupted):
        _fit(_model(), x, y, callbacks=[keras.callbacks.BackupAndRestore(backup_dir), interrupt])

    resumed = _model()
    restored = _StateAtTrainBegin()
    history = _fit(resumed, x, y, callbacks=[keras.callbacks.BackupAndRestore(backup_dir), restored])
    return {
        "interrupted": interrupt.state,
        "restored": restored.state,
        "final": _state(resumed),
        "epochs_run": history.epoch,
    }


def test_backup_and_restore_resumes_weights_and_epoch(backup_runs):
    assert backup_runs["epochs_run"] == [2, 3]
    assert backup_runs["interrupted"]["iterations"] == 2 * STEPS_PER_EPOCH
    _assert_weights_close(backup_runs["restored"]["weights"], backup_runs["interrupted"]["weights"], atol=0)


def test_backup_and_restore_restores_the_main_optimizer_and_phase_counter(backup_runs):
    """The main optimizer's iterations also schedule the correction phase."""
    restored, interrupted = backup_runs["restored"], backup_runs["interrupted"]
    assert restored["iterations"] == interrupted["iterations"]
    _assert_optimizer_state_equal(restored["optimizer"], interrupted["optimizer"], "optimizer")


def test_backup_and_restore_restores_the_correction_optimizer(backup_runs):
    restored, interrupted = backup_runs["restored"], backup_runs["interrupted"]
    assert interrupted["correction_iterations"] == 2 * STEPS_PER_EPOCH // CORRECTION_EVERY * CORRECTION_STEPS
    assert restored["correction_iterations"] == interrupted["correction_iterations"]
    _assert_optimizer_state_equal(
        restored["correction_optimizer"], interrupted["correction_optimizer"], "correction_optimizer"
    )


def test_backup_and_restore_matches_an_uninterrupted_run(backup_runs, reference):
    final = backup_runs["final"]
    assert final["iterations"] == reference["iterations"]
    assert final["correction_iterations"] == reference["correction_iterations"]
    _assert_weights_close(final["weights"], reference["weights"])


# --- keras_tlnode.BackupAndRestore: mid-epoch resume ------------------------------------------------


class _InterruptAtBatch(keras.callbacks.Callback):
    """Raises after batch `batch` of epoch `epoch`; listed after the backup, which has saved that batch."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            raise _Interrupted()


def _interrupt_and_resume(backup_dir: str, fit: Callable[[keras.Model, list], keras.callbacks.History], **backup):
    """`fit` interrupted in epoch 2 after its second batch, then resumed by a fresh model; what both leave."""
    with pytest.raises(_Interrupted):
        fit(_model(), [kt.BackupAndRestore(backup_dir, **backup), _InterruptAtBatch(2, 1)])
    resumed = _model()
    restored = _StateAtTrainBegin()
    history = fit(resumed, [kt.BackupAndRestore(backup_dir, **backup), restored])
    return {"restored": restored.state, "final": _state(resumed), "epochs_run": history.epoch}


def test_our_backup_resumes_mid_epoch_like_the_uninterrupted_run(tmp_path, reference):
    """Backed up after every batch: the resumed run skips epoch 2's first two batches and trains on the rest."""
    x, y = _data()
    run = _interrupt_and_resume(
        str(tmp_path), lambda model, callbacks: _fit(model, x, y, callbacks=callbacks), save_freq=1
    )
    assert run["epochs_run"] == [2, 3]
    assert run["restored"]["iterations"] == 2 * STEPS_PER_EPOCH + 2
    assert run["final"]["iterations"] == reference["iterations"]
    assert run["final"]["correction_iterations"] == reference["correction_iterations"]
    _assert_weights_close(run["final"]["weights"], reference["weights"], atol=1e-7)
    _assert_optimizer_state_equal(run["final"]["optimizer"], reference["optimizer"], "optimizer")
    assert not tmp_path.exists()  # deleted when training ended normally


def test_our_backup_resumes_a_stream_read_on_across_epochs(tmp_path, uninterrupted, reference):
    """With `steps_per_epoch` on a repeated dataset, `fit` reads each epoch on from the last one's
    iterator: epoch 2 of 3-batch epochs starts at batch 6 of the stream (batch 2 of the data), which a
    resume from the end of epoch 1 (save_freq="epoch") has to skip. Four such epochs train on the
    batches of the uninterrupted run's first three epochs, in the same order."""
    x, y = _data()
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()
    run = _interrupt_and_resume(
        str(tmp_path), lambda model, callbacks: _fit(model, stream, steps_per_epoch=3, callbacks=callbacks)
    )
    assert run["epochs_run"] == [2, 3]
    assert run["restored"]["iterations"] == 2 * 3
    assert run["final"]["iterations"] == 3 * STEPS_PER_EPOCH
    _assert_weights_close(run["final"]["weights"], uninterrupted["snapshots"][2], atol=1e-7)


def test_our_backup_survives_a_crash_while_saving(tmp_path, monkeypatch):
    """The state file names a complete backup at every moment: a save that dies half-way leaves the last one."""
    x, y = _data()
    interrupted = _model()
    with pytest.raises(_Interrupted):  # backed up after the first batch, then stopped
        _fit(interrupted, x, y, callbacks=[kt.BackupAndRestore(str(tmp_path), save_freq=1), _InterruptAtBatch(0, 0)])
    saved = interrupted.get_weights()

    def crash(path, **kwargs):
        with open(path, "w") as file:
            file.write("half a weights file")
        raise KeyboardInterrupt

    resumed = _model(seed=1)
    monkeypatch.setattr(resumed, "save_weights", crash)
    with pytest.raises(KeyboardInterrupt):  # resumes, trains the second batch, and dies backing it up
        _fit(resumed, x, y, callbacks=[kt.BackupAndRestore(str(tmp_path), save_freq=1)])
    assert int(resumed.optimizer.iterations) == 2  # what the crashed backup would have held differs
    assert any(not np.array_equal(a, b) for a, b in zip(resumed.get_weights(), saved, strict=True))
    fresh = _model(seed=1)
    restore = kt.BackupAndRestore(str(tmp_path))
    restore.set_model(fresh)
    restore.on_train_begin()
    _assert_weights_close(fresh.get_weights(), saved, atol=0)


# --- steps_per_execution and tf.data ----------------------------------------------------------------


@pytest.mark.parametrize("steps_per_execution", [3])
def test_steps_per_execution_matches_one_step_per_execution(steps_per_execution, reference):
    # 3 does not divide the 4 steps of an epoch, so the correction steps fall at varying positions
    # and an epoch ends inside an execution.
    model = _model(steps_per_execution=steps_per_execution)
    _fit(model, *_data())
    state = _state(model)
    assert state["iterations"] == reference["iterations"]
    assert state["correction_iterations"] == reference["correction_iterations"]
    _assert_weights_close(state["weights"], reference["weights"])


def test_tf_data_input_matches_numpy_input(reference):
    x, y = _data()
    model = _model()
    _fit(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))
    state = _state(model)
    assert state["iterations"] == reference["iterations"]
    assert state["correction_iterations"] == reference["correction_iterations"]
    _assert_weights_close(state["weights"], reference["weights"])
