"""The results tables of docs/ are what the committed JSON generates (benchmarks/docs_tables.py)."""

import json
import shutil

import pytest
from script_loader import load_benchmark


@pytest.fixture(scope="module")
def tables():
    return load_benchmark("docs_tables")


def test_every_generated_block_is_the_committed_results(tables):
    for path, (text, generated) in tables.documents().items():
        assert text == generated, f"{path}: regenerate its tables with python benchmarks/docs_tables.py"


def test_each_document_holds_generated_blocks(tables):
    for path, (text, _) in tables.documents().items():
        assert tables.MARKER.search(text), path


def copy_of_the_repository(tables, tmp_path) -> None:
    for path in tables.DOCUMENTS:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{tables.ROOT}/{path}", tmp_path / path)
    shutil.copytree(f"{tables.ROOT}/{tables.RESULTS_DIR}", tmp_path / tables.RESULTS_DIR)


def test_a_number_edited_by_hand_is_caught(tables, tmp_path):
    copy_of_the_repository(tables, tmp_path)
    document = tmp_path / "docs/results.md"
    text = document.read_text()
    block = text.split("<!-- results:systems_suite.summary -->")[1].split("<!-- /results:")[0]
    row = next(line for line in block.splitlines() if line.startswith("| stiff_random"))
    edited = row.replace(" / ", " / 9", 1)
    document.write_text(text.replace(row, edited))
    text, generated = tables.documents(str(tmp_path))["docs/results.md"]
    assert edited in text and row in generated and edited not in generated


def test_a_changed_result_changes_the_document(tables, tmp_path):
    copy_of_the_repository(tables, tmp_path)
    path = tmp_path / tables.RESULTS_DIR / "correction_limits_full.json"
    report = json.loads(path.read_text())
    system = next(iter(report["systems"]))
    report["systems"][system]["median"]["rk4"] = 1.234e-9
    path.write_text(json.dumps(report))
    _, generated = tables.documents(str(tmp_path))["docs/results.md"]
    assert "1.2e-09" in generated.split("<!-- results:correction_limits.decomposition -->")[1]


def test_replace_block_rewrites_only_between_the_markers(tables):
    text = "a\n<!-- results:x.summary -->\nold\n<!-- /results:x.summary -->\nb\n"
    assert tables.replace_block(text, "x.summary", "new") == (
        "a\n<!-- results:x.summary -->\nnew\n<!-- /results:x.summary -->\nb\n"
    )
    with pytest.raises(ValueError, match=r"x\.gates"):
        tables.replace_block("<!-- results:x.gates -->", "x.gates", "new")


def test_an_unknown_block_is_named(tables):
    with pytest.raises(ValueError, match=r"unknown block 'systems_suite\.nonsense'"):
        tables.block("systems_suite.nonsense")
