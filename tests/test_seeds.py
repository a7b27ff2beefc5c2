"""Seed-to-seed spread (zhtune seeds) on constructed replicates whose answers are known question by question."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fixtures_eval import Cell, _record, write_eval_folder
from test_forgetting import hand_mcnemar

from zhtune.analysis.forgetting import compare_many
from zhtune.analysis.seeds import seed_spread
from zhtune.errors import UserError

SETTINGS = {"benchmarks": ["ceval", "cmmlu", "mmlu"], "splits": {"ceval": "val", "cmmlu": "test", "mmlu": "test"},
            "shots": 0, "formulation": "cloze", "limit": None}
SUBJECTS = [("ceval", "law"), ("ceval", "physics"), ("cmmlu", "anatomy"), ("cmmlu", "history"),
            ("mmlu", "marketing"), ("mmlu", "virology")]
TRAINING = {"lora": {"rank": 8, "alpha": 32.0}, "train": {"seed": 42, "learning_rate": 2e-4},
            "output": {"dir": "runs/seed42"}}


def _predictions(correct: np.ndarray) -> list[dict]:
    rows, i = [], 0
    for bench, subject in SUBJECTS:
        cell = Cell(bench, subject, "Other")
        for j in range(100):
            rows.append(_record(cell, j, bool(correct[i])))
            i += 1
    return rows


def _perplexity(bits: np.ndarray) -> dict:
    return {"zh": {"bits_per_char": float(np.average(bits, weights=np.full(len(bits), 100))), "chars": 100 * len(bits),
                   "texts": [[100, float(b)] for b in bits]}}


def _replicates(tmp_path, flips=(0.08, 0.08), seeds=(42, 7), training_change=None, gains=(0.05, 0.10)):
    """A base evaluation and one tuned evaluation per seed; each seed flips its own random questions."""
    rng = np.random.default_rng(0)
    base = rng.random(600) < 0.4
    bits = rng.uniform(2.5, 3.5, 40)
    write_eval_folder(tmp_path / "base", _predictions(base), settings=SETTINGS, perplexity=_perplexity(bits))
    folders = []
    for k, (seed, flip, gain) in enumerate(zip(seeds, flips, gains, strict=True)):
        tuned = base ^ (rng.random(600) < flip)
        tuned[:200] |= rng.random(200) < gain  # C-Eval questions answered right after tuning
        train = tmp_path / f"run{k}" / "train"
        train.mkdir(parents=True)
        cfg = json.loads(json.dumps(TRAINING))
        cfg["train"]["seed"], cfg["output"]["dir"] = seed, f"runs/seed{seed}"
        if training_change and k == 1:
            cfg["lora"].update(training_change)
        (train / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
        folders.append(write_eval_folder(tmp_path / f"run{k}" / "eval", _predictions(tuned), settings=SETTINGS,
                                         adapter=str(train / "adapter"), adapter_scale=1.0,
                                         perplexity=_perplexity(bits * rng.uniform(0.9, 1.0, 40))))
    comparisons = [c.to_dict() for c in compare_many(tmp_path / "base", folders)]
    return comparisons, base, folders


def _correct(folder) -> np.ndarray:
    return np.array([json.loads(line)["correct"] for line in (folder / "predictions.jsonl").read_text().splitlines()])


def test_spread_and_paired_seed_comparison_match_hand_computation(tmp_path):
    comparisons, base, folders = _replicates(tmp_path)
    result = seed_spread(comparisons, ["42", "7"])
    figures = {f["figure"]: f for f in result["figures"]}
    a, b = _correct(folders[0]), _correct(folders[1])
    for bench, rows in (("ceval", slice(0, 200)), ("cmmlu", slice(200, 400)), ("mmlu", slice(400, 600))):
        f = figures[bench]
        est = [c["benchmarks"][bench]["change_points"] for c in comparisons]
        assert [s["estimate"] for s in f["seeds"]] == est
        assert f["range"] == pytest.approx(abs(est[0] - est[1]))
        assert f["sd"] == pytest.approx(abs(est[0] - est[1]) / math.sqrt(2))
        assert f["sd_upper_95"] == pytest.approx(f["sd"] / math.sqrt(0.000982069), rel=1e-5)
        between = f["between_seeds"][0]
        # Same base, so seed 7 - seed 42 on the same questions is exactly the difference of their changes.
        assert between["change"] == pytest.approx(est[1] - est[0])
        b_only, a_only = int((a[rows] & ~b[rows]).sum()), int((b[rows] & ~a[rows]).sum())
        assert between["discordant"] == a_only + b_only
        assert between["p"] == pytest.approx(hand_mcnemar(b_only, a_only))
        assert between["ci_low"] <= between["change"] <= between["ci_high"]
        assert (between["p"] < 0.05) == (between["ci_low"] > 0 or between["ci_high"] < 0)
    zh = figures["chinese_gain"]
    assert zh["between_seeds"][0]["change"] == pytest.approx(zh["seeds"][1]["estimate"] - zh["seeds"][0]["estimate"])
    en = figures["english_forgetting"]  # forgetting is base - tuned: the seeds' difference keeps that direction
    assert en["between_seeds"][0]["change"] == pytest.approx(en["seeds"][1]["estimate"] - en["seeds"][0]["estimate"])
    bits = figures["bits_zh"]["between_seeds"][0]
    tuned_bits = [json.loads((f / "summary.json").read_text())["perplexity"]["zh"]["texts"] for f in folders]
    ratio = sum(c * t for c, t in tuned_bits[1]) / sum(c * t for c, t in tuned_bits[0])
    assert bits["change"] == pytest.approx(100 * (ratio - 1))
    assert result["notes"] == []


def test_sentences_say_whether_the_questions_tell_the_seeds_apart(tmp_path):
    # No flips: the seeds differ only in C-Eval questions seed 7 learned (a third of the wrong ones).
    same, _, _ = _replicates(tmp_path / "same", flips=(0.0, 0.0), gains=(0.0, 0.33))
    result = seed_spread(same, ["42", "7"])
    zh = next(f for f in result["figures"] if f["figure"] == "chinese_gain")
    assert zh["between_seeds"][0]["p"] < 0.05 and zh["between_seeds"][0]["change"] > 0
    assert "differ by more than the questions explain" in result["sentences"][0]
    mmlu = next(f for f in result["figures"] if f["figure"] == "mmlu")
    assert mmlu["range"] == 0 and mmlu["between_seeds"][0]["p"] == 1.0
    noisy, _, _ = _replicates(tmp_path / "noisy", flips=(0.05, 0.05))
    en = next(s for s in seed_spread(noisy, ["42", "7"])["sentences"] if s.startswith("English"))
    assert "the questions do not tell them apart" in en and "Two seeds bound the seed SD only loosely" in en


def test_refuses_runs_that_are_not_replicates(tmp_path):
    comparisons, _, _ = _replicates(tmp_path / "rank", training_change={"rank": 16})
    with pytest.raises(UserError, match=r"training differs in lora\.rank \(only train\.seed may differ\)"):
        seed_spread(comparisons)
    with pytest.raises(UserError, match="at least two"):
        seed_spread(comparisons[:1])
    other = json.loads(json.dumps(comparisons[1]))
    other["base"]["dir"] = "elsewhere"
    with pytest.raises(UserError, match="its base evaluation differs"):
        seed_spread([comparisons[0], other])
    repeated, _, _ = _replicates(tmp_path / "repeat", seeds=(42, 42))
    assert any("repeat" in n for n in seed_spread(repeated)["notes"])


def test_unchecked_training_settings_are_a_note_not_silence(tmp_path):
    comparisons, _, _ = _replicates(tmp_path)
    (tmp_path / "run1" / "train" / "config.resolved.yaml").unlink()
    notes = seed_spread(comparisons)["notes"]
    assert len(notes) == 1 and "was not checked" in notes[0] and "run1" in notes[0]


def test_seeds_command_writes_json_and_markdown(tmp_path):
    from zhtune.cli import app

    comparisons, _, _ = _replicates(tmp_path)
    paths = []
    for seed, c in zip((42, 7), comparisons, strict=True):
        p = tmp_path / f"compare{seed}" / "comparison.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(c))
        paths.append(str(p.parent))
    out = tmp_path / "seeds"
    r = CliRunner().invoke(app, ["seeds", *paths, "--seed", "42", "--seed", "7", "--output-dir", str(out)])
    assert r.exit_code == 0, r.output
    written = json.loads((out / "seeds.json").read_text())
    assert written["seeds"] == ["42", "7"] and "git_commit" in written["provenance"]
    md = (out / "seeds.md").read_text()
    assert "| Chinese change: C-Eval + CMMLU" in md and "Two seeds bound" in md
    r = CliRunner().invoke(app, ["seeds", paths[0], "--seed", "42", "--seed", "7", "--output-dir", str(out)])
    assert isinstance(r.exception, UserError) and "at least two" in str(r.exception)
