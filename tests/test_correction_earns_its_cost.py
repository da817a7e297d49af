"""With the package defaults, the corrected layer is never less accurate than the same layer without correction.

Trained side by side as `benchmarks/systems_suite.py` trains them (`benchmarks/common.py`: same
data, initial f_θ, optimiser and steps) on three of its systems, against the exact flow: the
stiff linear system from a random start and from a start near the true field,
and a nonlinear limit cycle in a stiff region of its field.
"""

import numpy as np
import pytest
from script_loader import load_benchmark

STEPS = 1000  # measured: the ratios below hold from about 400 steps on; 1000 leaves a margin
PAIRS = 2048


@pytest.fixture(scope="module")
def suite():
    return load_benchmark("common")


def one_step_errors(suite, name: str) -> tuple[float, float]:
    system = suite.systems()[name]
    data = suite.make_data(system, PAIRS, seed=0)
    config = {"steps": STEPS}
    corrected = suite.run(system, "tl_node@1", data, config, 0, f"{name} corrected")
    uncorrected = suite.run(system, "uncorrected@1", data, config, 0, f"{name} uncorrected")
    assert 0.0 <= corrected["trust"] <= 1.0
    return corrected["one_step"], uncorrected["one_step"]


@pytest.mark.parametrize("name,factor", [("stiff_near", 5.0), ("stiff_random", 1.0), ("limit_cycle", 1.0)])
def test_corrected_is_at_least_as_accurate_as_uncorrected(suite, name, factor):
    corrected, uncorrected = one_step_errors(suite, name)
    assert np.isfinite(corrected)
    assert corrected * factor <= uncorrected, (corrected, uncorrected)
