"""The shipped CPU study (configs/cpu-study.yaml): its design holds together, its follow-up shares its
baseline, and the README's "What we found" numbers are the committed comparison's."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from zhtune.config import resolve_config
from zhtune.experiment import baseline_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def _followup_overrides() -> list[str]:
    """The follow-up command as the config's comments give it, parsed like a shell would."""
    text = (ROOT / "configs" / "cpu-study.yaml").read_text(encoding="utf-8")
    block = re.search(r"#\s+zhtune run cpu-study (.+?)\n#\s+(.+?--data-dir \S+)", text, re.S)
    assert block, "the follow-up command is missing from cpu-study.yaml's comments"
    words = shlex.split((block.group(1).rstrip("\\ ") + " " + block.group(2)))
    return [w for w in words if "=" in w and not w.startswith("--")]


def test_study_design_is_what_the_config_runs():
    cfg = resolve_config("cpu-study")
    assert cfg.eval.formulation == "both" and cfg.analysis.headline_formulation == "cloze"
    assert cfg.eval.benchmarks == ["ceval", "cmmlu", "mmlu", "gsm8k"] and cfg.eval.max_per_benchmark == 800
    assert cfg.data.train == ["belle/dev1K.json", "alpaca/alpaca_zh_demo.json"]
    assert cfg.analysis.gain_margin == cfg.analysis.forgetting_margin == 2.0
    assert cfg.train.probes.every_steps and cfg.model.name_or_path == "builtin:smollm2-135m-instruct"


def test_followup_reuses_the_study_baseline(tmp_path):
    study = resolve_config("cpu-study")
    overrides = _followup_overrides()
    followup = resolve_config("cpu-study", overrides=overrides)
    assert followup.data.replay.ratio > 0 and followup.eval.adapter_scales == [0.5, 1.0]
    assert followup.output.dir != study.output.dir
    assert baseline_fingerprint(followup, tmp_path) == baseline_fingerprint(study, tmp_path)
