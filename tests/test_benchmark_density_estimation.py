"""benchmarks/density_estimation.py: its data, the baseline's direction convention, the tight re-evaluation.

The full comparison (four methods trained per density) takes minutes; these
check the pieces it is built from against closed forms and against the package.
"""

import keras
import numpy as np
import pytest
from script_loader import load_benchmark

import keras_tlnode as kt


@pytest.fixture(scope="module")
def example():
    return load_benchmark("density_estimation")


@pytest.mark.parametrize("name", ["two_moons", "eight_gaussians", "checkerboard"])
def test_two_dimensional_densities_are_reproducible_and_bounded(example, name):
    config = {"train": 500, "test": 100}
    train, test = example.make_data(name, config, seed=0)
    assert train.shape == (500, 2) and test.shape == (100, 2) and train.dtype == np.float32
    np.testing.assert_array_equal(example.make_data(name, config, seed=0)[0], train)
    assert np.all(np.abs(train) < 4)


def test_checkerboard_lies_on_the_black_squares(example):
    x = example.checkerboard(np.random.default_rng(0), 2000)
    assert np.all((np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0)


def test_digits_are_dequantised_and_standardised(example):
    train, test = example.make_data("digits", {}, seed=0)
    assert train.shape[1] == test.shape[1] == 64 and len(train) + len(test) == 1797
    both = np.concatenate([train, test])
    np.testing.assert_allclose(both.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(both.std(axis=0), 1, atol=1e-4)
    assert len(np.unique(both[:, 10])) > 1000  # continuous: noise within each of the 17 levels


class Linear(keras.layers.Layer):
    """dz/dt = A z (contracting by default: A = [[-0.5, 1], [-1, -0.3]])."""

    def __init__(self, kernel=((-0.5, -1.0), (1.0, -0.3)), **kwargs):
        super().__init__(**kwargs)
        self.initial = np.array(kernel)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(2, 2), initializer=keras.initializers.Constant(self.initial))

    def call(self, inputs):
        z, _ = inputs
        return keras.ops.matmul(z, self.kernel)


def test_the_baseline_and_the_package_flow_agree_on_the_same_field(example):
    """tfp's FFJORD, given -f(z, 1 - t), integrates +f from the data as the package does: same log p(x)."""
    field = Linear()
    x = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    baseline = example.ffjord_distribution(field, 2, 1e-8, "exact").log_prob(x).numpy()
    flow = kt.ContinuousNormalizingFlow(field, method="rk4", num_steps=32)
    np.testing.assert_allclose(baseline, flow.log_prob(x), atol=1e-4)
    assert example.tight_nll(field, x, 2) == pytest.approx(-np.mean(baseline), abs=1e-5)


def test_time_to_accuracy_is_the_first_time_the_curve_reaches_the_target(example):
    curve = {"seconds": [0.0, 1.0, 2.0, 3.0], "test_nll": [3.0, 2.0, 1.5, 1.6]}
    assert example.time_to(curve, 1.55) == 2.0
    assert example.time_to(curve, 1.0) is None


def run_result(nll: float, tight: float, reaches_at: float) -> dict:
    """One method's result whose curve reaches `nll` at `reaches_at` seconds."""
    curve = {"seconds": [0.0, reaches_at, 2 * reaches_at], "test_nll": [9.0, nll, nll]}
    return {
        "test_nll": nll,
        "test_nll_per_dimension": nll,
        "tight_nll": tight,
        "nfe_per_training_step": 24.0,
        "train_seconds": 2 * reaches_at,
        "curve": curve,
    }


def test_gates_and_their_docs_tables(example):
    """Medians over seeds; the NLL gap per dimension on digits; no speed-up where TL-NODE never gets there."""
    methods = ["ffjord", "tl_node@8"]
    moons = [{"ffjord": run_result(2.0, 2.0, 10.0), "tl_node@8": run_result(2.01, 2.2, 1.0)} for _ in range(3)]
    digits = [{"ffjord": run_result(60.0, 60.0, 10.0), "tl_node@8": run_result(62.56, 63.2, 1.0)} for _ in range(3)]
    results = {"two_moons": moons, "digits": digits}
    gates = example.gates(results, methods)
    assert gates["two_moons"]["nll_gap"] == pytest.approx(0.01)
    assert gates["two_moons"]["speedup_to_accuracy"] == pytest.approx(10.0) and gates["two_moons"]["passes"]
    assert gates["digits"]["nll_gap"] == pytest.approx(2.56 / 64)  # 0.04 nats per dimension > 0.02
    assert gates["digits"]["speedup_to_accuracy"] == 0.0  # 62.56 never reaches the target, 60 + 0.05
    assert not gates["digits"]["passes"]
    report = {
        "results": results,
        "summary": {d: example.summarise(seeds, methods) for d, seeds in results.items()},
        "gates": gates,
    }
    blocks = example.common.DOC_TABLES["density_estimation"].blocks
    table = blocks["gates"](report).splitlines()
    assert table[2] == "| two_moons | +0.010 nats | 0.05 nats | 10.0x | 5x | holds | +0.200 nats |"
    assert table[3] == "| digits | +0.040 nats/dim | 0.02 nats/dim | 0.0x | 5x | fails | +0.050 nats/dim |"
    summary = blocks["summary"](report)
    assert summary.count("(medians over 3 seeds)") == 2 and "| TL-NODE, corrected (8 steps) | 2.010 |" in summary
    assert example.gates({"two_moons": moons}, ["tl_node@8", "rk4@8"]) == {}  # no baseline, no gate


def test_run_keys_name_the_method_and_its_step_count(example):
    assert example.label("rk4@2") == "RK4 (2 steps)" and example.label("ffjord") == "FFJORD, DormandPrince 1e-05"
    flow = example.build_model("uncorrected@4", 2, "exact", seed=0)
    assert flow.num_steps == 4 and flow.correction is None and flow.method == "taylor_lagrange"


def test_grid_mass_of_a_known_density(example):
    """An expanding linear flow's density is a narrow Gaussian, N(0, (P⁸)⁻¹(P⁸)⁻ᵀ) with P ≈ e^{A/8}, tr A = 0.8:
    its mass on [-4, 4]² (beyond 5 standard deviations) is 1 to the grid's error."""
    flow = kt.ContinuousNormalizingFlow(Linear(((0.5, -1.0), (1.0, 0.3))), method="rk4")
    flow.log_prob(np.zeros((1, 2), "float32"))
    measured = example.grid_mass(flow)
    assert measured["folds"] == 0 and measured["mass"] == pytest.approx(1.0, abs=1e-3)


def test_a_setting_the_flow_refuses_is_recorded_and_shown_as_rejected(example):
    """Hutchinson's trace (digits) with 2 Taylor steps: the flow raises, the run records why, the table says so."""
    data = example.make_data("digits", {}, seed=0)
    refused = example.run("tl_node@2", "digits", data, {"batch": 256, "steps": 10, "points": 2}, 0, "[1/1]")
    assert set(refused) == {"rejected"} and "`num_steps` must be >= 4" in refused["rejected"]
    rows = example.summarise([{"tl_node@2": refused}], ["tl_node@2"])
    assert rows["tl_node@2"]["label"] == "TL-NODE, corrected (2 steps): rejected by the flow"
    assert "| TL-NODE, corrected (2 steps): rejected by the flow | - |" in example.harness.markdown_table(
        rows, example.COLUMNS
    )
