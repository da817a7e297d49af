"""Loads a tutorial of examples/ or a script of benchmarks/ as a module, for their tests."""

import importlib.util
import pathlib
import sys
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(folder: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name: str) -> ModuleType:
    """`examples/<name>.py` as a module: a tutorial imports nothing of the repository but keras_tlnode."""
    return _load("examples", name)


def load_benchmark(name: str) -> ModuleType:
    """`benchmarks/<name>.py` as a module; the benchmarks import their shared `harness` and `common` as siblings."""
    benchmarks = str(ROOT / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    return _load("benchmarks", name)
