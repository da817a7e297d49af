"""XLA compiles a Taylor-Lagrange training and prediction step once (issue 11), counted from XLA's own log.

Before, from order 2 on, XLA's constant analysis demanded the states and weights
as compile-time constants, so `fit` compiled again at every step. Counting needs
XLA's compilation log (`TF_CPP_VMODULE`), which is read when TensorFlow loads:
the training runs in a child process (tests/programs/xla_training.py).
"""

from __future__ import annotations

import collections
import re
import subprocess

import child_process
import pytest

STEPS = 8  # a recompiling step would be counted 8 times


def compilations(cases: list[str]) -> dict[str, collections.Counter]:
    """Per case, how often XLA compiled each function (XLA logs every compilation with a running count)."""
    env = child_process.environment(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="device_compilation_profiler=1")
    run = subprocess.run(
        child_process.command("xla_training.py", str(STEPS), *cases),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    # XLA logs to the same stream as the case markers, after them: each
    # compilation belongs to the case marked last.
    counts: dict[str, collections.Counter] = {}
    case = None
    for line in run.stderr.splitlines():
        if line.startswith("CASE "):
            case = line.split()[1]
        elif match := re.search(r"Compiled (\S+) (\d+) times", line):
            counts.setdefault(case, collections.Counter())[match[1]] = int(match[2])
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("DONE")] == cases
    return counts


ORDERS = (1, 2, 3)
# Each order meets two of the three fields, and each field an order: the time-dependent field, which
# concatenates, at both (the case that recompiled); tanh at order 2 and GELU (erf's rule) at order 3;
# a corrected TLNODEModel, whose correction phase steps from the teacher's states, at order 2; and a
# corrected flow (the time-dependent field, the steps' exact log-determinants) at its default order 1.
KINDS = {1: ("flow",), 2: ("tanh", "forced", "corrected"), 3: ("gelu", "forced")}


@pytest.fixture(scope="module")
def counts() -> dict[str, collections.Counter]:
    """Every case of every order in one child process (one TensorFlow start)."""
    return compilations([f"{order}-{kind}" for order in ORDERS for kind in KINDS[order]])


@pytest.mark.parametrize("order", ORDERS)
def test_xla_training_compiles_once(order, counts):
    for kind in KINDS[order]:
        found = counts.get(f"{order}-{kind}", collections.Counter())
        steps = {name: count for name, count in found.items() if "step_on_data" in name}
        # One training and one prediction function, each compiled once over
        # its steps (and as many prediction batches, on new inputs).
        assert len(steps) == 2, (kind, found)
        assert set(steps.values()) == {1}, (kind, found)
