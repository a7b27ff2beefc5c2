"""The Qwen study (configs/qwen-study.yaml): registered before it ran, both seeds within the
registration, and its committed stages (docs/results/qwen-study/) what the config produces."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from zhtune.config import resolve_config
from zhtune.experiment import baseline_fingerprint
from zhtune.io import read_json
from zhtune.registration import check_registration, design_hash, registration_path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "qwen-study.yaml"
RESULTS = ROOT / "docs" / "results" / "qwen-study"
STUDY_DATA_DIR = Path("/work/shared/data")  # where the study ran: stage fingerprints name the data folder


def test_both_seeds_run_the_registered_design():
    reg = read_json(registration_path(CONFIG))
    for overrides in ([], ["train.seed=7", "output.dir=docs/results/qwen-study/seed7"]):
        cfg = resolve_config(str(CONFIG), overrides=overrides)
        record = check_registration(cfg, CONFIG)
        assert record["status"] == "matches" and record["differences"] == [], overrides
    assert reg["design_hash"] == design_hash(resolve_config(str(CONFIG)))
    other = resolve_config(str(CONFIG), overrides=["lora.rank=16"])
    with pytest.raises(Exception, match="lora.rank"):
        check_registration(other, CONFIG)


def test_registration_committed_before_the_first_stage_started():
    from zhtune.artifacts import run_git

    if run_git(["rev-parse", "--is-shallow-repository"], ROOT) != "false":
        pytest.skip("a shallow clone (or no git) does not hold the commit that registered the study")
    cfg = resolve_config(str(CONFIG))
    record = check_registration(cfg, CONFIG)
    marker = RESULTS / "baselines" / baseline_fingerprint(cfg, STUDY_DATA_DIR) / "stage-started.json"
    assert marker.is_file(), "the committed baseline stage is missing"
    started = read_json(marker)
    committed = datetime.fromisoformat(record["registration_commit_time"])
    assert record["registration_committed"] and committed < datetime.fromisoformat(started["started"])
    assert started["provenance"]["git_commit"] == record["registration_commit"]  # launched from it
    assert not started["provenance"]["git_dirty"]


def test_committed_baseline_is_the_registered_evaluation():
    """The baseline's questions: 450 per benchmark in cloze, and the four bits-per-character probes."""
    cfg = resolve_config(str(CONFIG))
    base = RESULTS / "baselines" / baseline_fingerprint(cfg, STUDY_DATA_DIR) / "base"
    summary = read_json(base / "summary.json")
    counts = {b: s["n"] for b, s in summary["benchmarks"].items()}
    assert counts == {"ceval_cloze": 450, "cmmlu_cloze": 450, "mmlu_cloze": 450}, counts
    assert set(summary["perplexity"]) == {"zh", "en", "zh_control", "en_control"}
    assert sum(1 for _ in (base / "predictions.jsonl").open(encoding="utf-8")) == 1350


@pytest.mark.parametrize("seed", [42, 7])
def test_each_seeds_comparison_follows_from_the_committed_predictions(seed):
    """The committed comparison of each seed is what the config's analysis gives from the committed
    baseline and adapter predictions, and the report states it."""
    from zhtune.analysis.forgetting import compare_runs
    from zhtune.analysis.sentences import headline_sentences

    cfg = resolve_config(str(CONFIG))
    base = RESULTS / "baselines" / baseline_fingerprint(cfg, STUDY_DATA_DIR) / "base"
    run = RESULTS / f"seed{seed}"
    committed = read_json(run / "compare" / "comparison.json")
    again = compare_runs(base.relative_to(ROOT), (run / "eval" / "qwen-study").relative_to(ROOT), cfg.analysis).to_dict()
    for figure in (again["chinese_gain"], again["pooled_including_floors"]["english_forgetting"]):
        name = "chinese_gain" if figure is again["chinese_gain"] else "english_forgetting"
        was = committed[name] or committed["pooled_including_floors"][name]
        for field in ("n", "change_points", "ci_low", "ci_high", "p_value", "verdict", "benchmarks"):
            assert figure[field] == was[field], (name, field)
    assert committed["english_forgetting"] is None and "mmlu_cloze" in committed["headline_excluded"]
    assert set(committed["perplexity"]) == {"zh", "en", "zh_control", "en_control"}
    lead = (run / "report" / "report.md").read_text(encoding="utf-8")
    for sentence in headline_sentences(committed):
        assert sentence in lead, sentence
    assert read_json(run / "experiment.json")["registration"]["status"] == "matches"


def test_committed_seed_spread_follows_from_the_two_comparisons(monkeypatch):
    """docs/results/qwen-study/seeds/seeds.json is what `zhtune seeds` gives from the two committed
    comparisons (their tuned evaluations are named relative to the repository root)."""
    from zhtune.analysis.seeds import seed_spread

    monkeypatch.chdir(ROOT)
    committed = read_json(RESULTS / "seeds" / "seeds.json")
    again = seed_spread([read_json(RESULTS / f"seed{s}" / "compare" / "comparison.json") for s in (42, 7)],
                        ["42", "7"])
    assert again["notes"] == [] and committed["sentences"] == again["sentences"]
    # No English headline (MMLU cloze at chance): MMLU's own spread gets a sentence instead.
    assert [x.split(":")[0] for x in committed["sentences"][:2]] == ["Chinese change", "MMLU (cloze)"]
    assert [f["figure"] for f in committed["figures"]] == [f["figure"] for f in again["figures"]]
    for was, now in zip(committed["figures"], again["figures"], strict=True):
        for field in ("range", "sd", "question_half_width"):
            assert now[field] == pytest.approx(was[field], abs=1e-9), (now["figure"], field)
        assert now["between_seeds"] == was["between_seeds"], now["figure"]
