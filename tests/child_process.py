"""Child processes of the tests: the programs of tests/programs/, run as files.

`Child`: the expensive half of a test, in a child process started by its
module's fixture. pytest runs one test at a time in a worker, and tracing keeps
one core busy: a child started with the module works beside the module's other
tests, and the test then only collects its result. A child runs on the
`keras_tlnode` under test, with this directory importable (a program can run a
function of a test module).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import keras_tlnode

TESTS = Path(__file__).resolve().parent
PROGRAMS = TESTS / "programs"
PACKAGE_ROOT = Path(keras_tlnode.__file__).resolve().parent.parent


def command(program: str, *args: str) -> list[str]:
    """`python tests/programs/<program> *args`."""
    return [sys.executable, str(PROGRAMS / program), *args]


def environment(**variables: str) -> dict[str, str]:
    """This process's environment and `variables`, with the `keras_tlnode` under test and this directory importable."""
    env = {**os.environ, **variables}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return env


def selected(request: pytest.FixtureRequest, test: Callable) -> bool:
    """Whether this session runs `test`: a child for a deselected test is not started."""
    return any(getattr(item, "function", None) is test for item in request.session.items)


class Child:
    """`python tests/programs/<program> *args` started now, its stdout and stderr in files of `directory`."""

    def __init__(self, directory: Path, program: str, *args: str):
        env = environment(TF_CPP_MIN_LOG_LEVEL="3")
        self.stdout_path, self.stderr_path = directory / "stdout", directory / "stderr"
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(command(program, *args), cwd=TESTS, env=env, stdout=stdout, stderr=stderr)

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        """Stops the child if it still runs (the test failed or was not reached)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
