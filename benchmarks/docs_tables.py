"""The results tables of docs/, generated from the committed JSON of the scripts that measured them.

A generated table sits in a document between `<!-- results:SCRIPT.BLOCK -->`
and `<!-- /results:SCRIPT.BLOCK -->`: `common.DOC_TABLES[SCRIPT]` names the
results SCRIPT committed (under benchmarks/results/) and the function that
renders BLOCK from them (the paper's claims, drawn from several scripts'
results, are rendered here). No script is imported. Nothing between the
markers is written by hand, and tests/test_docs_tables.py fails when a
document differs from what its results generate.

Usage:
    python benchmarks/docs_tables.py            # rewrite every generated block
    python benchmarks/docs_tables.py --check    # list the blocks that differ, exit 1 if any
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import common

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
RESULTS_DIR = os.path.join("benchmarks", "results")
# The documents that hold generated blocks.
DOCUMENTS = ("docs/results.md", "docs/benchmarks.md")  # the README links to them and holds no table
MARKER = re.compile(r"<!-- results:([\w.]+) -->")


def load_results(paths: str | dict[str, str], root: str = ROOT) -> dict:
    """A script's committed results: one report, or {name: report} when `paths` names several."""
    if isinstance(paths, dict):
        return {name: load_results(path, root) for name, path in paths.items()}
    with open(os.path.join(root, RESULTS_DIR, paths)) as handle:
        return json.load(handle)


def block(name: str, root: str = ROOT) -> str:
    """The generated content of block `SCRIPT.BLOCK`, from SCRIPT's committed results under `root`."""
    script_name, _, block_name = name.partition(".")
    if script_name not in TABLES:
        raise ValueError(f"unknown block {name!r}: no script's results named {script_name!r}; known: {sorted(TABLES)}")
    tables = TABLES[script_name]
    if block_name not in tables.blocks:
        raise ValueError(f"unknown block {name!r}: {script_name} generates {sorted(tables.blocks)}")
    return tables.blocks[block_name](load_results(tables.results, root))


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with the block `name` between its markers replaced by `content`."""
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if end not in text:
        raise ValueError(f"block {name!r} has no closing marker {end}")
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{content}\n{end}{rest.split(end, 1)[1]}"


def generate(text: str, root: str = ROOT) -> str:
    """`text` with every generated block it holds filled from the committed results."""
    for name in dict.fromkeys(MARKER.findall(text)):
        text = replace_block(text, name, block(name, root))
    return text


def documents(root: str = ROOT) -> dict[str, tuple[str, str]]:
    """{path: (the document as it is, as generated from the committed results)}."""
    found = {}
    for path in DOCUMENTS:
        with open(os.path.join(root, path)) as handle:
            text = handle.read()
        found[path] = (text, generate(text, root))
    return found


# ---------------------------------------------------------------- the paper's claims


def met(held: bool) -> str:
    return "yes" if held else "no"


def stiff_names(stiff: dict) -> tuple[dict, dict]:
    """stiff_dynamics.py's methods and comparisons under its current names: the committed full run
    predates the rename of its baseline from `dopri5` to `dopri`."""
    methods = {("dopri" if key == "dopri5" else key): value for key, value in stiff["methods"].items()}
    ratios = {key.replace("dopri5", "dopri"): value for key, value in stiff["comparisons"].items()}
    return methods, ratios


def stiff_claims(stiff: dict, step: dict) -> list[tuple[str, str, str]]:
    """The stiff system's claims, from stiff_dynamics.py --full and benchmark part (d)."""
    methods, ratios = stiff_names(stiff)
    settings = step["training_step"]["settings"].values()
    # Each method at its own fastest setting (graph or XLA, steps per execution).
    best = min(s["dopri"] for s in settings) / min(s["tl_node"] for s in settings)
    tl, dp, rk4 = methods["tl_node"], methods["dopri"], methods["rk4"]
    fastest = max(ratios["train_speedup_vs_dopri"], ratios["step_speedup_vs_dopri"], best)
    return [
        (
            "stiff system: trains >= 20x faster than the DormandPrince-trained NODE",
            f"{ratios['train_speedup_vs_dopri']:.1f}x wall-clock, {ratios['step_speedup_vs_dopri']:.1f}x per step; "
            f"one training step {best:.1f}x cheaper at the best setting of each (benchmark part (d))",
            met(fastest >= 20),
        ),
        (
            "stiff system: test error <= 1.2x the baseline's",
            f"{ratios['one_step_mse_tl_node_over_dopri']:.2f}x (one-step MSE {tl['one_step_mse']:.1e} "
            f"vs {dp['one_step_mse']:.1e})",
            met(ratios["one_step_mse_tl_node_over_dopri"] <= 1.2),
        ),
        (
            "stiff system: test error >= 5x lower than RK4's and Taylor 2's at the same Δt",
            f"{ratios['one_step_mse_rk4_over_tl_node']:.0f}x and {ratios['one_step_mse_taylor2_over_tl_node']:.0f}x lower",
            met(min(ratios["one_step_mse_rk4_over_tl_node"], ratios["one_step_mse_taylor2_over_tl_node"]) >= 5),
        ),
        (
            "stiff system: 2000-step rollout no worse than RK4's",
            f"{tl['rollout_rel_l2']:.3f} vs {rk4['rollout_rel_l2']:.3f}; the baseline {dp['rollout_rel_l2']:.3f}",
            met(tl["rollout_rel_l2"] <= rk4["rollout_rel_l2"]),
        ),
    ]


def correction_claim(suite: dict, digits: dict) -> tuple[str, str, str]:
    """Corrected against the same layer uncorrected, on the systems suite and the digits."""
    ratios = {}
    for name, entry in suite["systems"].items():
        corrected, plain = (entry["summary"][key]["one_step"]["median"] for key in ("tl_node@1", "uncorrected@1"))
        ratios[name] = plain / corrected if corrected and plain else float("nan")
    worse = [name for name, ratio in ratios.items() if not ratio > 1]
    methods = digits["methods"]
    points = 100 * (methods["tl_node"]["accuracy"] - methods["taylor2"]["accuracy"])
    measured = (
        f"better one-step error on {len(ratios) - len(worse)} of the suite's {len(ratios)} systems "
        f"(medians of 3 seeds{'; not on ' + ', '.join(worse) if worse else ''}); digits {points:+.1f} points"
    )
    return (
        "the corrected layer never less accurate than the same layer uncorrected (package defaults)",
        measured,
        met(not worse and points >= 0),
    )


def classification_claims(digits: dict) -> list[tuple[str, str, str]]:
    """The digits classifier's claims, from classification.py --full."""
    methods, ratios = digits["methods"], digits["comparisons"]
    tl, dp = methods["tl_node"], methods["dopri"]
    others = {key: method["nfe"] for key, method in methods.items() if key != "tl_node"}
    fewer = sorted(f"{method['label']} {method['nfe']:.0f}" for key, method in methods.items() if key != "tl_node")
    return [
        (
            "classification: accuracy within 0.5 points of the baseline",
            f"{ratios['accuracy_points_vs_dopri']:+.1f} points ({tl['accuracy']:.1%} vs {dp['accuracy']:.1%}, "
            f"{digits['config']['test_examples']} test digits)",
            met(ratios["accuracy_points_vs_dopri"] >= -0.5),
        ),
        (
            "classification: trained >= 10x faster",
            f"{ratios['step_speedup_vs_dopri']:.1f}x per step, {ratios['train_speedup_vs_dopri']:.1f}x wall-clock",
            "per step only"
            if ratios["step_speedup_vs_dopri"] >= 10 > ratios["train_speedup_vs_dopri"]
            else met(ratios["train_speedup_vs_dopri"] >= 10),
        ),
        (
            "classification: fewest f-evaluations per solve",
            f"{tl['nfe']:.0f}; " + ", ".join(fewer),
            met(tl["nfe"] <= min(others.values())),
        ),
    ]


def inference_claims(stiff: dict, digits: dict, latency: dict) -> list[tuple[str, str, str]]:
    """Inference: f-evaluations, and speed against the baseline at matched accuracy and as trained."""
    matched = [field["matched"]["speedup"] for field in latency["inference"].values() if field["matched"]["reached"]]
    stiff_ratio = stiff_names(stiff)[1]["predict_speedup_vs_dopri"]
    digits_ratio = digits["comparisons"]["eval_speedup_vs_dopri"]
    nfe = stiff["methods"]["tl_node"]["nfe"]
    return [
        ("inference: an order-1 prediction costs <= 4 f-evaluations", f"{nfe:.0f}", met(nfe <= 4)),
        (
            "inference: >= 10x faster than the baseline",
            f"{min(matched):.1f}-{max(matched):.1f}x at matched accuracy ({len(matched)} fields, benchmark part (b)); "
            f"{stiff_ratio:.1f}x (stiff) and {digits_ratio:.1f}x (digits) against the trained baselines",
            met(min(matched + [stiff_ratio, digits_ratio]) >= 10),
        ),
    ]


def claims_block(results: dict) -> str:
    """The paper's claims against this package's committed measurements."""
    rows = [
        *stiff_claims(results["stiff"], results["training_step"]),
        correction_claim(results["suite"], results["digits"]),
        *classification_claims(results["digits"]),
        *inference_claims(results["stiff"], results["digits"], results["latency"]),
    ]
    lines = ["| claim | measured here | met |", "| --- | --- | --- |"]
    lines += [f"| {claim} | {measured} | {held} |" for claim, measured, held in rows]
    return "\n".join(lines)


CLAIMS_RESULTS = {
    "stiff": "stiff_dynamics_full.json",
    "digits": "classification_full.json",
    "suite": "systems_suite_full.json",
    "training_step": "benchmark_training_step.json",
    "latency": "benchmark_latency.json",
}
# Every generated block, by the name in its markers.
TABLES = {**common.DOC_TABLES, "docs_tables": common.DocTables(CLAIMS_RESULTS, {"claims": claims_block})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report the documents that differ")
    args = parser.parse_args(argv)
    stale = []
    for path, (text, generated) in documents().items():
        if text == generated:
            continue
        stale.append(path)
        if not args.check:
            with open(os.path.join(ROOT, path), "w") as handle:
                handle.write(generated)
        print(f"{'differs' if args.check else 'updated'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
