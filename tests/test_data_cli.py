"""`zhtune data check` and `zhtune data download` (hub replaced by in-memory datasets)."""
from __future__ import annotations

import hashlib
import json
import re

import datasets
import pytest
from typer.testing import CliRunner

from test_benchmarks import FakeHub
from zhtune.cli import app
from zhtune.data import download as data_cmd
from zhtune.data import benchmarks as B
from zhtune.data.check import check_data_dir

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    B.clear_cache()
    monkeypatch.delenv("ZHTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    yield
    B.clear_cache()


def _table(output: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """(benchmark, split) -> (subjects, questions, labeled) from the printed table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) == 5 and cells[0] in B.BENCHMARKS:
            rows[(cells[0], cells[1])] = tuple(cells[2:])
    return rows


def test_check_real_data(shared_data):
    result = runner.invoke(app, ["data", "check", str(shared_data)])
    assert result.exit_code == 0, result.output
    table = _table(result.output)
    assert table[("ceval", "val")] == ("52", "1,346", "1,346")
    assert table[("ceval", "test")] == ("52", "12,342", "0")
    assert table[("cmmlu", "test")] == ("67", "11,582", "11,582")
    assert table[("mmlu", "test")] == ("57", "14,042", "14,042")
    assert table[("gsm8k", "test")] == ("1", "1,319", "1,319")
    assert "no errors" in result.output and "checksums verified: 474 files" in result.output


def test_check_broken_folder_exits_1(tmp_path):
    bad = tmp_path / "mmlu" / "test" / "anatomy_test.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("q,a,b,c,d,A\nq,a,b,c,d,Z\n,a,b,c,d,B\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 1
    assert "2 error(s)" in result.output and "row 2 (line 2): answer 'Z'" in result.output
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["ok"] is False and len(report["errors"]) == 2
    assert report["counts"] == [{"benchmark": "mmlu", "split": "test", "subjects": 1, "rows": 1, "labeled": 1}]


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub(script_repos={"haonan-li/cmmlu"})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    monkeypatch.setattr(data_cmd, "hub_commit", lambda repo: f"sha-of-{repo}")
    return hub


def test_download_layout_reads_back_identically(tmp_path, fake_hub):
    out = tmp_path / "data"
    result = runner.invoke(app, ["data", "download", "--output_dir", str(out), "--belle_sample_size", "10",
                                 "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "no errors" in result.output

    # the official names and formats
    assert (out / "ceval/val/computer_network_val.csv").read_text(encoding="utf-8").startswith(
        "id,question,A,B,C,D,answer\n0,")
    assert (out / "ceval/dev/law_dev.csv").read_text(encoding="utf-8").startswith(
        "id,question,A,B,C,D,answer,explanation\n")
    assert (out / "ceval/test/law_test.csv").read_text(encoding="utf-8").startswith("id,question,A,B,C,D\n")
    assert (out / "cmmlu/test/arts.csv").read_text(encoding="utf-8").startswith(",Question,A,B,C,D,Answer\n0,")
    assert (out / "mmlu/val/anatomy_val.csv").read_text(encoding="utf-8").startswith('"anatomy validation ""q0"",\nnext"')
    assert len(list((out / "mmlu/test").glob("*_test.csv"))) == 57
    assert sorted(p.name for p in (out / "gsm8k").iterdir()) == ["test.jsonl", "test_socratic.jsonl", "train.jsonl"]
    assert ("cais/mmlu", "anatomy", "validation", "sha-of-cais/mmlu") in fake_hub.calls  # pinned revision

    # everything reads back through the local readers exactly as through the hub readers
    for benchmark in B.BENCHMARKS:
        for split in B.SPLITS[benchmark]:
            labeled = (benchmark, split) not in B.UNLABELED_SPLITS
            local = B.load_benchmark(benchmark, split, data_dir=out, require_answers=labeled)
            hub = B.load_benchmark(benchmark, split, data_dir=None, require_answers=labeled)
            assert local == hub and local, (benchmark, split)

    manifest = json.loads((out / "MANIFEST.json").read_text(encoding="utf-8"))
    assert manifest["settings"]["belle_sample_size"] == 10 and manifest["settings"]["seed"] == 3
    assert manifest["sources"]["mmlu"]["revision"] == "sha-of-cais/mmlu"
    assert manifest["sources"]["cmmlu"]["revisions_read"] == ["refs/convert/parquet"]
    assert manifest["sources"]["ceval"]["splits"]["val"] == {"files": 52, "rows": 156}
    assert manifest["sources"]["gsm8k"]["splits"]["test_socratic"]["rows"] == 5
    for rel, meta in manifest["files"].items():
        data = (out / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"] and len(data) == meta["bytes"]
    assert len(manifest["files"]) == 52 * 3 + 67 * 2 + 57 * 3 + 3 + 1

    belle = [json.loads(line) for line in (out / "belle/train_0.5M_CN.jsonl").read_text(encoding="utf-8").splitlines()]
    info = manifest["sources"]["belle"]
    assert len(belle) + info["skipped_empty"] == 10 and info["available"] == 30
    assert all(set(r) == {"instruction", "input", "output"} and r["output"] for r in belle)
    assert check_data_dir(out).checksums_verified == len(manifest["files"])


def test_belle_sample_is_seeded(tmp_path, fake_hub):
    def sample(seed, name):
        data_cmd.download_data(tmp_path / name, ["gsm8k"], belle_sample_size=12, seed=seed)
        return (tmp_path / name / "belle/train_0.5M_CN.jsonl").read_text(encoding="utf-8")

    assert sample(1, "a") == sample(1, "b")
    assert sample(1, "a") != sample(2, "c")


def test_download_rejects_bad_options(tmp_path, fake_hub):
    result = runner.invoke(app, ["data", "download", "--output-dir", str(tmp_path), "--benchmarks", "ceval,arc",
                                 "--belle-sample-size", "0"])
    assert result.exit_code != 0 and "arc" in str(result.exception)
    assert fake_hub.calls == []
