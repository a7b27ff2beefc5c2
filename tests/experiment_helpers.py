"""A tiny experiment config shared by the run, sweep and original-command tests."""
from __future__ import annotations

from pathlib import Path


def tiny_config(model_dir: Path, out: Path, cache: Path, **extra) -> dict:
    raw = {
        "name": "tiny",
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": ["belle/dev1K.json"], "sample_size": 48, "max_length": 128, "val_size": 0.1},
        "lora": {"rank": 4, "alpha": 8},
        "train": {"max_steps": 6, "batch_size": 4, "save_steps": 2, "logging_steps": 1,
                  "learning_rate": 1e-3, "report_to": []},
        "eval": {"benchmarks": ["ceval", "mmlu", "gsm8k"], "shots": 0, "generation_shots": 0, "limit": 1,
                 "max_new_tokens": 8, "batch_size": 8, "perplexity_chars": 1500},
        "analysis": {"forgetting_margin": 2.0},
        "output": {"dir": str(out), "baseline_cache": str(cache)},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        raw[section][name] = value
    return raw
