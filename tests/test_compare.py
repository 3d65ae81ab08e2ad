"""tagsearch compare: results side by side with a TF-IDF + LogisticRegression baseline."""

from __future__ import annotations

import json
import shutil

import pytest

from tagsearch.cli import main
from tagsearch.results import compare as compare_module
from tagsearch.results import folder as results
from tagsearch.results.compare import BASELINE_NAME, ENCODER_BASELINE_NAME
from test_retrain import shared_results


@pytest.fixture(scope="module")
def two_results(tmp_path_factory, tiny_csv):
    root = tmp_path_factory.mktemp("compare")
    folders = []
    for model in ("dense", "tfidf"):
        out = shared_results(model, tmp_path_factory, tiny_csv)[1]
        folders.append(shutil.copytree(out, root / "results" / f"run-{model}"))
    return root, folders


def rows_of(text: str) -> dict[str, list[str]]:
    """Table rows keyed by their first cell."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return {cells[0]: cells for cells in rows if cells[0] not in ("results", "---")}  # not headers, ---


def test_table_rows_match_metrics(two_results, tiny_bert, tmp_path, capsys, monkeypatch):
    """Both baselines, the encoder one on a tiny BERT built here (MiniLM would cost a minute)."""
    monkeypatch.setattr(compare_module, "DEFAULT_ENCODER", str(tiny_bert))
    _, folders = two_results
    out = tmp_path / "cmp.md"
    assert main(["compare", *map(str, folders), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    rows = rows_of(printed)
    assert set(rows) == {"run-dense", "run-tfidf", BASELINE_NAME, ENCODER_BASELINE_NAME}
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        row = rows[folder.name]
        assert row[1] == config["model"]
        assert row[3:5] == [metrics["metric"], f"{metrics['validation_value']:.4f}"]
        assert row[6:12] == [f"{metrics[k]:.4f}" for k in ("test_hamming_loss", "test_hamming_loss_no_tags",
                                                           "test_micro_f1", "test_macro_f1", "test_precision_at_1",
                                                           "test_recall_at_1")]
        assert row[12] == f"{config['parameters']:,}"
        assert f"lr={config['params']['lr']:.3g}" in row[14]
    for name in set(rows) - {"run-dense", "run-tfidf"}:
        baseline = rows[name]
        assert baseline[1] == "linear" and 0 < float(baseline[8]) <= 1 and baseline[14].startswith("C=")
        assert baseline[7] == rows["run-dense"][7]  # predicting no tag: one figure per test split
        assert 0 < float(baseline[10]) <= 1 and 0 < float(baseline[11]) <= 1  # P@1, R@1
    best = min(rows.values(), key=lambda r: float(r[4]))  # hamming_loss: lowest validation value wins
    assert f"Winner on validation hamming_loss: **{best[0]}**" in printed


def test_winner_is_chosen_on_validation_never_on_test(two_results, tmp_path, capsys):
    """Make the worse-on-validation network the best on test: the verdict must not move."""
    _, folders = two_results
    copies = [shutil.copytree(f, tmp_path / f.name) for f in folders]
    values = [json.loads((f / "metrics.json").read_text())["validation_value"] for f in copies]
    loser = copies[values.index(max(values))]
    metrics = json.loads((loser / "metrics.json").read_text())
    metrics.update(test_hamming_loss=0.0, test_micro_f1=1.0, test_macro_f1=1.0, test_precision_at_1=1.0)
    (loser / "metrics.json").write_text(json.dumps(metrics))
    winner = next(c for c in copies if c != loser)  # also: results from before P@1, R@1 and no-tag Hamming
    metrics = json.loads((winner / "metrics.json").read_text())
    for key in ("test_hamming_loss_no_tags", "test_precision_at_1", "test_recall_at_1"):
        del metrics[key]
    (winner / "metrics.json").write_text(json.dumps(metrics))
    for copy in copies:
        results.write_manifest(copy)  # edited on purpose: the manifest says so
    assert main(["compare", *map(str, copies), "--out", str(tmp_path / "c.md"), "--no-encoder-baseline"]) == 0
    printed = capsys.readouterr().out
    assert f"**{loser.name}**" not in printed
    row = rows_of(printed)[winner.name]
    assert [row[7], row[10], row[11]] == ["—"] * 3 and row[6] == f"{metrics['test_hamming_loss']:.4f}"


def test_default_dirs_and_missing_data(two_results, tmp_path, monkeypatch, capsys):
    """No arguments: every results/*/ with a config.json (temp dirs skipped); data gone → noted."""
    root, folders = two_results
    monkeypatch.chdir(tmp_path)
    for folder in folders:
        shutil.copytree(folder, tmp_path / "results" / folder.name)
    (tmp_path / "results" / ".run-x.tmp-123").mkdir()
    config_path = tmp_path / "results" / "run-dense" / "config.json"
    config = json.loads(config_path.read_text())
    config["data"]["path"] = str(tmp_path / "gone.csv")
    config["fingerprint"] = "0123456789abcdef"
    config_path.write_text(json.dumps(config))
    results.write_manifest(config_path.parent)  # edited on purpose: the manifest says so
    assert main(["compare", "--no-encoder-baseline"]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "results" / "compare.md").read_text() == printed
    rows = rows_of(printed)
    assert {"run-dense", "run-tfidf"} <= set(rows) and len(rows) == 3  # one baseline: the other data is gone
    assert "no baseline for gone.csv" in printed


def test_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compare"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no results directories") and err.count("\n") == 1
    (tmp_path / "half").mkdir()
    assert main(["compare", "half"]) == 2
    assert "config.json" in capsys.readouterr().err
