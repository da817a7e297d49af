"""`TLNODEModel.fit` under `MultiWorkerMirroredStrategy`: two worker processes on localhost.

Both workers start with the module and run the same program (tests/programs/multi_worker_parity.py): the parity fit of
test_training.py (teacher_samples=None, so that the replicas' correction phase
sees what one process sees), then a plain `keras.Model`'s fit, the canary of
keras-team/keras#20585 (compat.py).
"""

from __future__ import annotations

import json

import child_process
import numpy as np
import pytest
from script_loader import load_example
from test_training import parity_fit

WORKERS = 2
TIMEOUT = 300


@pytest.fixture(scope="module")
def workers(request, tmp_path_factory) -> list[dict]:
    """Each worker's result, in task order."""
    ports = ",".join(str(port) for port in load_example("multi_worker").free_ports(WORKERS))
    children = [
        child_process.Child(tmp_path_factory.mktemp(f"worker{index}"), "multi_worker_parity.py", str(index), ports)
        for index in range(WORKERS)
    ]
    try:
        results = []
        for child in children:
            assert child.process.wait(timeout=TIMEOUT) == 0, child.stderr()[-3000:]
            results.append(json.loads(child.stdout().strip().splitlines()[-1]))
        yield results
    finally:
        for child in children:
            child.close()


def test_two_workers_train_like_one_process_on_the_same_global_batches(workers):
    single = parity_fit()
    for worker in workers:
        assert worker["replicas"] == WORKERS
        assert worker["correction_steps"] == single["correction_steps"] > 0
        for ours, theirs in zip(worker["weights"], single["weights"], strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        np.testing.assert_allclose(worker["loss"], single["loss"], rtol=1e-5)
        assert worker["logs"].keys() == single["logs"].keys()
        for name, values in single["logs"].items():
            np.testing.assert_allclose(worker["logs"][name], values, rtol=1e-4, atol=1e-9, err_msg=name)
        assert all(np.isfinite(worker["logs"]["correction_loss"]))


@pytest.mark.xfail(
    strict=True,
    reason="keras-team/keras#20585: Keras 3's fit fails under MultiWorkerMirroredStrategy. When this passes, "
    "Keras has fixed it: remove MultiWorkerFit and multi_worker_logs from keras_tlnode/compat.py.",
)
def test_canary_plain_keras_model_fits_under_multi_worker_strategy(workers):
    assert workers[0]["plain_keras_fit"] == "ok", workers[0]["plain_keras_fit"]
