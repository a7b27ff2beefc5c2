"""The control probes reach the comparison: compare pairs ``zh_control`` / ``en_control`` exactly as it
pairs the seed-task probes (same per-text interval), because summary.json gives them the same shape."""
from __future__ import annotations

import pytest

from zhtune.analysis.forgetting import compare_runs
from zhtune.analysis.stats import paired_ratio_interval
from fixtures_eval import Cell, paired_predictions, write_eval_folder


def _probe(texts, lang, kind):
    chars = sum(c for c, _ in texts)
    return {"bits_per_char": sum(b for _, b in texts) / chars, "chars": chars, "tokens": chars,
            "texts": texts, "lang": lang, "kind": kind, "source": "x"}


def test_compare_pairs_control_probes_like_seed_probes(tmp_path):
    base, tuned = paired_predictions([Cell("ceval", "law", "Social Sciences", both=50, b=5, c=9, neither=136)])
    seed_b, seed_t = [[100, 500.0], [200, 1000.0], [50, 260.0]], [[100, 450.0], [200, 930.0], [50, 240.0]]
    ctrl_b, ctrl_t = [[120, 600.0], [80, 410.0], [60, 300.0]], [[120, 598.0], [80, 405.0], [60, 301.0]]
    ppl = lambda seed, ctrl: {"zh": _probe(seed, "zh", "seed_tasks"), "zh_control": _probe(ctrl, "zh", "control")}
    b = write_eval_folder(tmp_path / "b", base, perplexity=ppl(seed_b, ctrl_b))
    t = write_eval_folder(tmp_path / "t", tuned, perplexity=ppl(seed_t, ctrl_t))
    out = compare_runs(b, t).to_dict()["perplexity"]
    assert set(out) == {"zh", "zh_control"}
    for key, (tb, tt) in {"zh": (seed_b, seed_t), "zh_control": (ctrl_b, ctrl_t)}.items():
        ref = paired_ratio_interval([x for _, x in tb], [x for _, x in tt], [c for c, _ in tb])
        assert out[key]["texts"] == 3
        assert out[key]["change_low"] == pytest.approx(ref["low"]) and out[key]["p"] == pytest.approx(ref["p"])
    assert out["zh"]["verdict"] == "lower" and out["zh_control"]["verdict"] == "no significant change"
