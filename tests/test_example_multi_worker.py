"""examples/multi_worker.py: the cluster it describes, its flags, and (on request) a worker killed mid-epoch.

The run itself starts a cluster of two TensorFlow processes three times (about two
minutes on 2 cores), too long for the default suite, which already trains on
two workers in test_multi_worker.py. It runs with
`python -m pytest -m fault_tolerance`.
"""

import pytest
from script_loader import load_example


def test_tf_config_names_every_worker_and_this_one():
    multi_worker = load_example("multi_worker")
    config = multi_worker.tf_config(1, [1111, 2222, 3333])
    assert config["cluster"] == {"worker": ["localhost:1111", "localhost:2222", "localhost:3333"]}
    assert config["task"] == {"type": "worker", "index": 1}


def test_the_default_failure_falls_after_a_backup_inside_the_second_epoch():
    multi_worker = load_example("multi_worker")
    for mode, (samples, epochs, backup_every) in multi_worker.SETTINGS.items():
        steps_per_epoch = samples // multi_worker.GLOBAL_BATCH
        kill_after = multi_worker.default_kill_after(mode)
        batch = kill_after - steps_per_epoch
        assert epochs >= 2 and 0 < batch < steps_per_epoch and batch >= backup_every


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--workers", "0"], "--workers must be >= 1"), (["--kill-after", "16"], "--kill-after must be in")],
)
def test_bad_flags_are_rejected_naming_the_flag(flags, message, capsys):
    multi_worker = load_example("multi_worker")
    with pytest.raises(SystemExit):
        multi_worker.main(flags)
    assert message in capsys.readouterr().err


@pytest.mark.fault_tolerance
def test_a_worker_killed_mid_epoch_resumes_to_the_uninterrupted_weights():
    """Worker 1 of 2 dies after step 14; both restart from the chief's backup at step 12 (epoch 2, batch 4)."""
    multi_worker = load_example("multi_worker")
    report = multi_worker.main(["--quick"])
    run = report["run"]
    assert run["resumed_from"]["epoch"] == 1 and run["resumed_from"]["batch"] == 4
    # One writer: the state file and the one weights file it names, nothing left by a second writer.
    assert run["backup_files_at_failure"] == sorted(["backup.json", run["resumed_from"]["weights"]])
    assert run["epochs_run_after_restart"] == [1]
    assert run["steps"] == report["uninterrupted"]["steps"] == 16
    assert run["workers_max_weight_difference"] <= 1e-6
    assert report["resumed_vs_uninterrupted_max_weight_difference"] <= 1e-5
