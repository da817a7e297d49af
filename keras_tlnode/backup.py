"""`BackupAndRestore`: resume an interrupted `fit` where it stopped, mid-epoch and across workers.

Keras 3's own `BackupAndRestore` restores the epoch only (a run killed
mid-epoch repeats the epoch's first batches), and under
`MultiWorkerMirroredStrategy` every worker writes the same files. This one
backs up after any batch, lets only the chief write, and makes every worker
restore the same state and skip the batches already trained on, so that the
resumed run continues the interrupted one step for step.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf

from keras_tlnode.compat import set_initial_epoch
from keras_tlnode.training import TLNODEModel
from keras_tlnode.validation import check_bool, check_int

STATE_FILE = "backup.json"


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the training state and resumes an interrupted `fit` exactly where it stopped.

    At the end of every epoch, and every `save_freq` batches if it is an int,
    the chief worker (`strategy.extended.should_checkpoint`; the only process
    without a multi-worker strategy) saves the model's weights and both
    optimizers' states, the epoch, and how far it has read into the data. The
    weights go to a new file, then `backup.json`, which names it, is replaced
    in one rename: a process killed while saving leaves the previous backup
    whole. When `fit` starts and `backup_dir` holds a backup, every worker
    loads it (for a `TLNODEModel`, after `build_optimizers`), `fit` starts at
    the backed-up epoch, and the run resumes inside the epoch it stopped in:
    the calls of the train function for the batches already trained on read
    their batches without training, so each later step sees the batch and
    step number it would have seen without the interruption.

    The resumed run matches the uninterrupted one when each epoch reads its
    data in the same order on every run: `shuffle=False`, or a `tf.data`
    pipeline shuffled with a fixed seed. The epoch that resumes mid-way logs
    metrics averaged over the batches run after the restart only. Like
    Keras's own `BackupAndRestore`, it needs a model built before `fit`.
    docs/usage.md, "When a worker dies", shows it with several workers.

    Args:
        backup_dir: directory of the backup, visible to every worker (a shared
            file system or a `tf.io.gfile` URL such as `gs://...`); it is
            created when first needed. Use one directory per training run.
        save_freq: `"epoch"` to back up at the end of every epoch only, or an
            int n >= 1 to back up every n batches as well.
        delete_checkpoint: whether to delete the backup when training ends
            normally (an interrupted run keeps it).

    Raises:
        ValueError: for a `backup_dir` that is not a non-empty string, or an
            int `save_freq` below 1; when `fit` starts, for a model that is not
            built, or a backup that stopped after a batch which the run's
            `steps_per_execution` cannot reach (resume with the run's own).
        TypeError: for a `save_freq` that is neither "epoch" nor an int.

    Example:

        >>> import tempfile, keras, numpy as np, keras_tlnode
        >>> inputs = keras.Input((2,))
        >>> model = keras_tlnode.TLNODEModel(
        ...     inputs, keras_tlnode.TaylorLagrangeODE(keras.layers.Dense(2), duration=0.1)(inputs))
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x = np.zeros((8, 2), "float32")
        >>> backup = keras_tlnode.BackupAndRestore(tempfile.mkdtemp(), save_freq=1)
        >>> model.fit(x, x, batch_size=4, epochs=2, callbacks=[backup], verbose=0).epoch
        [0, 1]
    """

    def __init__(self, backup_dir: str, save_freq: str | int = "epoch", delete_checkpoint: bool = True):
        super().__init__()
        if not isinstance(backup_dir, str) or not backup_dir:
            raise ValueError(f"`backup_dir` must be a non-empty path, got {backup_dir!r}.")
        if save_freq != "epoch" and (not isinstance(save_freq, int) or isinstance(save_freq, bool)):
            raise TypeError(f'`save_freq` must be "epoch" or an int >= 1, got {save_freq!r}.')
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        # Batches between backups inside an epoch; None: at the epochs' ends only.
        self._save_every = None if save_freq == "epoch" else check_int(save_freq, "save_freq")
        self.delete_checkpoint = check_bool(delete_checkpoint, "delete_checkpoint")
        self._reader: _ResumingReader | None = None
        self._epoch = 0
        self._batches_done = 0
        self._batches_since_save = 0
        self._pending_epoch_end: int | None = None

    # --- the callback --------------------------------------------------------------

    def on_train_begin(self, logs=None) -> None:
        model = self.model
        if not model.built:
            raise ValueError(
                "BackupAndRestore needs a built model before `fit`: build it, or call it on a batch, first."
            )
        state = self._read_state()
        if state is not None:
            if state["batch"] % model.steps_per_execution:
                raise ValueError(
                    f"The backup in {self.backup_dir!r} stopped after batch {state['batch']} of its epoch, which "
                    f"`steps_per_execution={model.steps_per_execution}` cannot reach: resume with the run's own "
                    "`steps_per_execution`."
                )
            self._restore(state)
        skip_first, skip_batches = (0, 0) if state is None else (state["position"] - state["batch"], state["batch"])
        self._reader = _ResumingReader.install(model, skip_first, skip_batches, self._before_read)
        self._epoch = 0 if state is None else state["epoch"]
        self._pending_epoch_end = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        # `fit` has read the resumed epoch; a later `fit` of this model starts afresh.
        set_initial_epoch(self.model, None)
        self._epoch, self._batches_done, self._batches_since_save = epoch, 0, 0

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self._reader is None or self._reader.skipped_last_call:
            return
        done = batch + 1
        self._batches_since_save += done - self._batches_done
        self._batches_done = done
        # The epoch's last batch is backed up with the epoch's end.
        if (
            self._save_every is not None
            and self._batches_since_save >= self._save_every
            and done != self.params.get("steps")
        ):
            self._batches_since_save = 0
            self._save(self._epoch, done, self._reader.position)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if epoch + 1 >= self.params.get("epochs", epoch + 1):
            self._save(epoch + 1, 0, 0)
        else:
            # Whether the next epoch reads on from this epoch's iterator (as `fit`
            # does with `steps_per_epoch`) shows only when it starts reading.
            self._pending_epoch_end = epoch + 1

    def on_train_end(self, logs=None) -> None:
        if self._reader is not None:
            self._reader.uninstall(self.model)
            self._reader = None
        if self._pending_epoch_end is not None:
            # Stopped early (EarlyStopping): nothing reads on from here.
            self._save(self._pending_epoch_end, 0, 0)
        if self.delete_checkpoint and self._is_chief() and tf.io.gfile.exists(self.backup_dir):
            tf.io.gfile.rmtree(self.backup_dir)

    def _before_read(self, continues: bool, position: int) -> None:
        """Before each read: the deferred backup of the previous epoch's end, now that it shows whether
        this epoch reads on from that epoch's iterator."""
        if self._pending_epoch_end is not None:
            self._save(self._pending_epoch_end, 0, position if continues else 0)
            self._pending_epoch_end = None

    # --- the backup ------------------------------------------------------------------

    def _is_chief(self) -> bool:
        return bool(self.model.distribute_strategy.extended.should_checkpoint)

    def _state_path(self) -> str:
        return posixpath.join(self.backup_dir, STATE_FILE)

    def _read_state(self) -> dict | None:
        if not tf.io.gfile.exists(self._state_path()):
            return None
        with tf.io.gfile.GFile(self._state_path(), "r") as file:
            return json.load(file)

    def _restore(self, state: dict) -> None:
        """Loads the backed-up weights and optimizer states, and makes `fit` start at the backed-up epoch."""
        model = self.model
        if isinstance(model, TLNODEModel):
            model.build_optimizers()
        elif model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(posixpath.join(self.backup_dir, state["weights"]))
        set_initial_epoch(self.model, state["epoch"])

    def _save(self, epoch: int, batch: int, position: int) -> None:
        """Backs up after `batch` batches of `epoch`, `position` batches into the data iterator; the chief only.

        The weights go to a new file first, then the state file naming it
        replaces the old one in one rename, and only then is the old weights
        file removed: at every moment the state file names a complete backup.
        """
        if not self._is_chief():
            return
        tf.io.gfile.makedirs(self.backup_dir)
        previous = self._read_state()
        weights = f"weights-{uuid.uuid4().hex}.weights.h5"
        self.model.save_weights(posixpath.join(self.backup_dir, weights))
        state = {"weights": weights, "epoch": epoch, "batch": batch, "position": position}
        partial = self._state_path() + ".partial"
        with tf.io.gfile.GFile(partial, "w") as file:
            json.dump(state, file)
        tf.io.gfile.rename(partial, self._state_path(), overwrite=True)
        if previous is not None:
            tf.io.gfile.remove(posixpath.join(self.backup_dir, previous["weights"]))


class _ResumingReader:
    """Stands in for `model.train_function`: counts the batches each call reads, and skips the backed-up ones.

    Why a stand-in: Keras's `fit` can start at an epoch (`initial_epoch`) but
    not inside one, and has no public hook between the data iterator and the
    train function. `train_function` is the attribute `fit` calls, set by the
    public `make_train_function` before `on_train_begin`; wrapping it (and
    putting it back in `on_train_end`, or at the next `fit` after a crash) is
    the one place a callback can skip batches without owning the data.

    `fit` calls `train_function(iterator)` once per `steps_per_execution`
    batches; each call reads that many batches from `iterator`. After a
    restore, the first `skip_calls` calls read their batches without training,
    so that `fit`'s batch numbering, the callbacks' and the data stay aligned,
    and the first call also reads `skip_first` batches that earlier epochs
    drew from the same iterator.
    """

    def __init__(
        self,
        train_function: Callable,
        steps_per_execution: int,
        skip_first: int,
        skip_batches: int,
        before_read: Callable[[bool, int], None],
    ):
        self.train_function = train_function
        self.steps_per_execution = steps_per_execution
        self.skip_first = skip_first
        self.skip_calls = skip_batches // steps_per_execution
        self.before_read = before_read
        self.iterator: Iterator | None = None
        self.position = 0
        self.skipped_last_call = False

    @classmethod
    def install(
        cls,
        model: keras.Model,
        skip_first: int,
        skip_batches: int,
        before_read: Callable[[bool, int], None],
    ) -> _ResumingReader:
        """Puts a reader in place of `model.train_function` (set by `fit` before `on_train_begin`)."""
        train_function = model.train_function
        if isinstance(train_function, cls):  # left by a `fit` that raised
            train_function = train_function.train_function
        reader = cls(train_function, int(model.steps_per_execution), skip_first, skip_batches, before_read)
        model.train_function = reader
        return reader

    def uninstall(self, model: keras.Model) -> None:
        if model.train_function is self:
            model.train_function = self.train_function

    def __call__(self, iterator: Iterator):
        if iterator is not self.iterator:
            continues, self.iterator = False, iterator
            self.position = 0
        else:
            continues = True
        self.before_read(continues, self.position)
        for _ in range(self.skip_first):
            next(iterator)
        self.position += self.skip_first
        self.skip_first = 0
        self.position += self.steps_per_execution
        self.skipped_last_call = self.skip_calls > 0
        if self.skipped_last_call:
            self.skip_calls -= 1
            for _ in range(self.steps_per_execution):
                next(iterator)
            return {}
        return self.train_function(iterator)
