"""The expensive half of a test, in a child process started by its module's fixture.

pytest runs one test at a time in a worker, and tracing keeps one core busy: a
child started with the module works beside the module's other tests, and the
test then only collects its result. The child runs on the `keras_tlnode` under
test, with this directory importable (it can run a function of a test module).
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
PACKAGE_ROOT = Path(keras_tlnode.__file__).resolve().parent.parent


def selected(request: pytest.FixtureRequest, test: Callable) -> bool:
    """Whether this session runs `test`: a child for a deselected test is not started."""
    return any(getattr(item, "function", None) is test for item in request.session.items)


class Child:
    """`python -c script *args` started now, its stdout and stderr in files of `directory`."""

    def __init__(self, directory: Path, script: str, *args: str):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        self.stdout_path, self.stderr_path = directory / "stdout", directory / "stderr"
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script, *args], cwd=TESTS, env=env, stdout=stdout, stderr=stderr
            )

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        """Stops the child if it still runs (the test failed or was not reached)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
