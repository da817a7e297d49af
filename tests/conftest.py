"""Shared test setup, before TensorFlow is imported: quiet its C++ logging and, under
pytest-xdist, give each worker one thread per op pool.

xdist runs one worker per core; TensorFlow's default pools (one thread per core
each) then oversubscribe the cores: measured on 2 cores, two workers on the
training tests ran 7% faster with one thread each (79 s against 85 s).
Child processes started by the tests inherit the setting.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

# The programs that tests run in child processes (tests/programs/) are scripts: collecting
# them (`--doctest-modules` imports every module) would run them in the worker.
collect_ignore = ["programs"]


# The modules that take longest, and those whose fixtures start child processes
# (which then work beside the rest), run first, longest first: pytest-xdist
# hands whole files to the workers in collection order, and a long file
# started last keeps one worker busy while the other idles.
FIRST = (
    "test_xla_compilations.py",
    "test_export.py",
    "test_multi_worker.py",
    "test_training.py",
    "test_training_callbacks.py",
    "test_benchmark_systems_suite.py",
    "test_benchmark_benchmark.py",
    "test_correction_earns_its_cost.py",
    "test_keras_training_features.py",
    "test_subclassing.py",
    "test_tutorials.py",
    "test_benchmark_van_der_pol.py",
    "test_benchmark_classification.py",
    "test_benchmark_stiff_dynamics.py",
    "test_flow.py",
    "test_compat.py",
    "test_benchmark_correction_limits.py",
    "test_benchmark_irregular_series.py",
    "test_layers.py",
    "test_taylor.py",
    "test_spans.py",
    "test_adaptive.py",
    "test_package.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order inside a module and among the rest stays
