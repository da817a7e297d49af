"""Training on several machines, tried on this one: N local workers, one killed mid-epoch, all restarted.

    python examples/multi_worker.py                  # 2 workers; worker 1 dies in epoch 2; resume; compare
    python examples/multi_worker.py --workers 3 --kill-after 0   # 3 workers, no failure

Each worker is a process of its own, as it would be on a machine of its own: it
sets `TF_CONFIG` (the cluster's addresses and its own index), creates a
`MultiWorkerMirroredStrategy` and trains the same `TLNODEModel` with
`model.fit` on the damped pendulum's flow; each global batch is split between
the workers, and the gradients are summed across them. Every worker passes
`keras_tlnode.BackupAndRestore` a directory they all see; only the chief (worker
0) writes to it.

With `--kill-after N` the last worker kills itself after N training steps
(SIGKILL: no cleanup, as when a machine fails). The others then wait in the
next all-reduce, so the launcher stops them and starts every worker again, as
a cluster manager would. The restarted workers load the chief's last backup and
resume inside the epoch where it was taken, skipping the batches already
trained on. The launcher then trains the same model again without failure and
prints how far apart the two runs' final weights are.

Quick mode (default): 2 epochs of 8 steps, backups every 4 steps, worker killed
after step 14 (so the run resumes at step 12, epoch 2, batch 4); about a
minute on 2 cores. --full: 10 epochs of 16 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import keras_tlnode

DT = 0.2  # time between an observation and the next
LEARNING_RATE = 3e-3
GLOBAL_BATCH = 32
SETTINGS = {  # samples, epochs, backup every this many steps
    "quick": (256, 2, 4),
    "full": (512, 10, 4),
}
ATTEMPT_TIMEOUT = 900  # seconds for one start of the cluster


# --- one worker -----------------------------------------------------------------------------


def tf_config(index: int, ports: list[int]) -> dict:
    """The cluster as `TF_CONFIG` describes it to worker `index`: every worker's address, and which one this is.

    On a real cluster the addresses are the machines' (`host:port`); worker 0
    is the chief, which writes the backups (a `"chief"` task may be named
    instead).
    """
    return {
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }


def pendulum(t: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """A damped pendulum (angle, angular velocity): the dynamics the model learns."""
    return tf.stack([x[:, 1], -9.81 * tf.sin(x[:, 0]) - 0.5 * x[:, 1]], axis=1)


def training_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """States of the pendulum and the states DT later: the same arrays on every worker.

    In random order already; `fit` then reads them in order (`shuffle=False`),
    so that every epoch's batches are the same in a restarted run (what an
    exact resume needs). The truth is tfp's DormandPrince in float64 at 1e-10.
    """
    x = np.random.default_rng(seed).uniform([-2.5, -4.0], [2.5, 4.0], (samples, 2))
    solver = tfp.math.ode.DormandPrince(rtol=1e-10, atol=1e-10)
    y = solver.solve(pendulum, 0.0, tf.constant(x), solution_times=[DT]).states[-1]
    return x.astype("float32"), y.numpy().astype("float32")


class _Die(keras.callbacks.Callback):
    """Kills this process, with no cleanup, after `step` training steps: a machine failing."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train_worker(index: int, ports: list[int], backup_dir: str, mode: str, seed: int, kill_after: int) -> dict:
    """Worker `index` of the cluster: trains the model with `fit` and returns what it ends with."""
    os.environ["TF_CONFIG"] = json.dumps(tf_config(index, ports))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    samples, epochs, backup_every = SETTINGS[mode]
    x, y = training_data(samples, seed)
    keras.utils.set_random_seed(seed)  # the same initial weights on every worker
    with strategy.scope():
        inputs = keras.Input((2,))
        field = keras.Sequential(
            [keras.layers.Dense(64, activation="tanh") for _ in range(2)] + [keras.layers.Dense(2)]
        )
        ode = keras_tlnode.TaylorLagrangeODE(field, duration=DT, correction=keras_tlnode.MidpointCorrection())
        model = keras_tlnode.TLNODEModel(inputs, ode(inputs))
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
    callbacks: list[keras.callbacks.Callback] = [keras_tlnode.BackupAndRestore(backup_dir, save_freq=backup_every)]
    if kill_after:
        callbacks.append(_Die(kill_after))
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=epochs, shuffle=False, callbacks=callbacks, verbose=0)
    return {
        "worker": index,
        "epochs_run": history.epoch,
        "loss": history.history["loss"],
        "steps": int(model.optimizer.iterations.numpy()),
        "train_seconds": time.perf_counter() - started,
        "weights": [w.tolist() for w in model.get_weights()],
    }


# --- the launcher ---------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` ports free on localhost now (a restarted cluster takes new ones)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_cluster(workers: int, backup_dir: str, directory: str, mode: str, seed: int, kill_after: int) -> dict:
    """Starts `workers` processes of this script and waits for all; once one fails, stops the rest.

    Returns each worker's result (None for a worker that did not finish) and
    the exit code of each worker that failed (negative: killed by that signal;
    None: stopped by the launcher), empty if none did.
    """
    ports = free_ports(workers)
    processes = []
    for index in range(workers):
        command = [sys.executable, os.path.abspath(__file__), "--worker", str(index)]
        command += ["--ports", ",".join(map(str, ports)), "--backup-dir", backup_dir, f"--{mode}"]
        command += ["--seed", str(seed), "--result", os.path.join(directory, f"worker{index}.json")]
        if kill_after and index == workers - 1:
            command += ["--kill-after", str(kill_after)]
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
    deadline = time.monotonic() + ATTEMPT_TIMEOUT
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        if any(p.returncode not in (None, 0) for p in processes):
            time.sleep(1.0)  # the others notice the loss within the coordination service's heartbeat
            break
        time.sleep(0.2)
    failed = {index: p.returncode for index, p in enumerate(processes) if p.returncode != 0}
    for process in processes:  # survivors of a failure would wait for the lost worker
        if process.poll() is None:
            process.kill()
        process.wait()
    results = []
    for index in range(workers):
        path = os.path.join(directory, f"worker{index}.json")
        results.append(json.load(open(path)) if not failed and os.path.exists(path) else None)
    return {"results": results, "failed": failed}


def backed_up_state(backup_dir: str) -> dict | None:
    """What the chief last backed up (the file BackupAndRestore keeps), for the progress lines."""
    path = os.path.join(backup_dir, "backup.json")
    return json.load(open(path)) if os.path.exists(path) else None


def train_cluster(workers: int, mode: str, seed: int, kill_after: int, directory: str) -> dict:
    """One training run on `workers` local workers, restarted (once) if a worker dies."""
    backup_dir = os.path.join(directory, "backup")
    started = time.perf_counter()
    attempt = start_cluster(workers, backup_dir, directory, mode, seed, kill_after)
    resumed_from, backup_files = None, None
    if attempt["failed"]:
        resumed_from, backup_files = backed_up_state(backup_dir), sorted(os.listdir(backup_dir))
        print(f"  workers failed, by exit code: {attempt['failed']}", flush=True)
        print(f"  the chief's last backup: {resumed_from}", flush=True)
        print(f"  restarting all {workers} workers", flush=True)
        attempt = start_cluster(workers, backup_dir, directory, mode, seed, kill_after=0)
        if attempt["failed"]:
            raise RuntimeError(f"the restarted cluster failed too: exit codes by worker {attempt['failed']}")
    results = attempt["results"]
    weights = [[np.array(w) for w in result["weights"]] for result in results]
    return {
        "seconds": time.perf_counter() - started,
        "resumed_from": resumed_from,
        "backup_files_at_failure": backup_files,
        "workers_max_weight_difference": max((max_difference(weights[0], other) for other in weights[1:]), default=0.0),
        "final_loss": results[0]["loss"][-1],
        "steps": results[0]["steps"],
        "epochs_run_after_restart": results[0]["epochs_run"],
        "weights": weights[0],
    }


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def default_kill_after(mode: str) -> int:
    """Three quarters into the second epoch: after a backup inside that epoch, before its end."""
    samples, _, _ = SETTINGS[mode]
    steps_per_epoch = samples // GLOBAL_BATCH
    return steps_per_epoch + 3 * steps_per_epoch // 4


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="2 epochs (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="10 epochs")
    parser.set_defaults(mode="quick")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (default: 2)")
    parser.add_argument(
        "--kill-after", type=int, help="the last worker dies after this many steps; 0: none (default: in epoch 2)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    # What the launcher passes to the workers it starts.
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--backup-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        ports = [int(port) for port in args.ports.split(",")]
        result = train_worker(args.worker, ports, args.backup_dir, args.mode, args.seed, args.kill_after or 0)
        with open(args.result, "w") as file:
            json.dump(result, file)
        return result

    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    samples, epochs, _ = SETTINGS[args.mode]
    total_steps = epochs * samples // GLOBAL_BATCH
    kill_after = default_kill_after(args.mode) if args.kill_after is None else args.kill_after
    if not 0 <= kill_after < total_steps:
        parser.error(f"--kill-after must be in [0, {total_steps}) (the run's steps; 0: no failure), got {kill_after}")
    versions = {module.__name__: module.__version__ for module in (tf, keras, keras_tlnode)}
    report = {"environment": {**versions, "cpu_count": os.cpu_count()}, "workers": args.workers, "mode": args.mode}
    with tempfile.TemporaryDirectory() as directory:
        label = f"worker {args.workers - 1} killed after step {kill_after}" if kill_after else "no failure"
        print(f"Training on {args.workers} local workers, {total_steps} steps ({label})", flush=True)
        run = train_cluster(args.workers, args.mode, args.seed, kill_after, os.path.join(directory, "run"))
        print(f"  done in {run['seconds']:.0f} s: final epoch's loss {run['final_loss']:.3g}", flush=True)
        if run["resumed_from"]:
            print("  (the epoch resumed mid-way logs the mean over the batches run after the restart)", flush=True)
        print(f"  the workers' weights agree to {run['workers_max_weight_difference']:.1e}", flush=True)
        report["run"] = {key: value for key, value in run.items() if key != "weights"}
        if kill_after:
            print(f"Training again on {args.workers} workers without failure, to compare", flush=True)
            clean = train_cluster(args.workers, args.mode, args.seed, 0, os.path.join(directory, "clean"))
            difference = max_difference(run["weights"], clean["weights"])
            print(f"  done in {clean['seconds']:.0f} s: final epoch's loss {clean['final_loss']:.3g}", flush=True)
            print(f"  the resumed run's weights differ from the uninterrupted run's by {difference:.1e}", flush=True)
            report["uninterrupted"] = {key: value for key, value in clean.items() if key != "weights"}
            report["resumed_vs_uninterrupted_max_weight_difference"] = difference
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
