"""Shared test setup, before TensorFlow is imported: quiet its C++ logging and, under
pytest-xdist, give each worker one thread per op pool.

xdist runs one worker per core; TensorFlow's default pools (one thread per core
each) then oversubscribe the cores: measured on 2 cores, two workers on the
training tests ran 7% faster with one thread each (79 s against 85 s).
Child processes started by the tests inherit the setting.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

# The programs that tests run in child processes (tests/programs/) are scripts: collecting
# them (`--doctest-modules` imports every module) would run them in the worker.
collect_ignore = ["programs"]


# pytest-xdist (`--dist=loadfile`) hands whole files to the workers in collection
# order, so a long file started last keeps one worker busy while the other idles.
# The files run longest first, by the durations measured in the last recorded run
# (tests/durations.json; record anew with `python -m pytest --record-durations`);
# a file not yet measured counts as the longest, so it cannot be the long tail.
# Measured on 2 cores (2026-12-07): collection order 9:38, the hand-made order this
# replaced 8:49-10:29, `--dist=worksteal` (xdist's balancing of single tests) 11:08,
# as module fixtures then run once per worker that takes a share of the file.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser):
    parser.addoption(
        "--record-durations",
        action="store_true",
        help="write each test file's total duration (setup, call, teardown) to tests/durations.json",
    )


def pytest_collection_modifyitems(items):
    durations = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    longest = max(durations.values(), default=0.0)
    # Stable: the order inside a file stays.
    items.sort(key=lambda item: -durations.get(item.path.name, longest + 1))


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report):
    name = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    _measured[name] = _measured.get(name, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    # Under xdist the controller receives every worker's reports; a worker writes nothing.
    if session.config.getoption("record_durations") and not hasattr(session.config, "workerinput"):
        rounded = {name: round(seconds, 1) for name, seconds in sorted(_measured.items())}
        DURATIONS.write_text(json.dumps(rounded, indent=1) + "\n")
