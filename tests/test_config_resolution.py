"""One way to resolve a config for every command: a path or a shipped name, then flags, then overrides."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from zhtune.cli import app
from zhtune.config import ConfigError, config_path, load_config, resolve_config, shipped_config
from zhtune.io import read_json


def test_shipped_name_path_and_precedence(tmp_path):
    demo = resolve_config("demo-cpu")
    assert demo == load_config(shipped_config("demo-cpu"))
    assert config_path("demo-cpu") == shipped_config("demo-cpu")
    own = tmp_path / "demo-cpu"  # an existing file of that name wins over the shipped config
    own.write_text("train:\n  max_steps: 7\n")
    assert config_path(own) == own and resolve_config(own).train.max_steps == 7
    # flags over the file, overrides over the flags; None means "flag not given"
    cfg = resolve_config("demo-cpu", {"train.max_steps": 5, "lora.rank": None}, ["train.max_steps=9"])
    assert cfg.train.max_steps == 9 and cfg.lora.rank == demo.lora.rank
    assert resolve_config("demo-cpu", {"train.max_steps": 5}).train.max_steps == 5


def test_unknown_config_names_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="demo-cpu"):
        resolve_config("no-such-config")
    with pytest.raises(ConfigError, match="no such config file"):
        resolve_config(tmp_path / "missing.yaml")


def test_eval_accepts_a_shipped_config_name(tiny_qwen_dir, shared_data, tmp_path):
    """`zhtune eval --config demo-cpu` failed where `zhtune train --config demo-cpu` worked."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "eval", "--config", "demo-cpu", "--model", str(tiny_qwen_dir), "--data-dir", str(shared_data),
        "--output-dir", str(out), "--benchmarks", "mmlu", "--subjects", "astronomy", "--limit", "1",
        "--shots", "0", "--no-perplexity", "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    summary = read_json(out / "base" / "summary.json")
    assert summary["benchmarks"]["mmlu"]["n"] == 1
    assert summary["model"] == str(tiny_qwen_dir)  # the flag over the shipped config's model


def test_flag_defaults_come_from_the_schema():
    """A default is stated once, in the config schema: flag help reads it from there, and no command
    restates a number by hand (a changed schema default would leave the help wrong)."""
    import re
    from pathlib import Path

    from zhtune.config import EvalConfig, SweepConfig, flag_help

    assert flag_help("eval.shots").endswith(f"(default {EvalConfig().shots}).")
    assert flag_help("sweep.slurm.time_min").endswith(f"(default {SweepConfig().slurm.time_min}).")
    assert flag_help("eval.adapter_scales", "comma-separated").endswith("(comma-separated) (default 1).")
    assert flag_help("lora.rank").startswith("LoRA rank r; None: the family's") and "default" not in flag_help("lora.rank")[-12:]
    assert flag_help("train.precision").startswith("Autocast dtype")  # the Field description is the help
    commands = Path(__file__).resolve().parents[1] / "src" / "zhtune" / "commands"
    for path in commands.glob("*.py"):
        hand_written = re.findall(r"\(default:? \d[^)]*\)|letter \(default\)|\(default;", path.read_text(encoding="utf-8"))
        assert not hand_written, (path.name, hand_written)
    help_text = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "300"}).output
    assert f"(default {EvalConfig().batch_size})" in help_text


def _fields(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", field
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")


def test_every_config_field_documents_itself():
    """The schema is the one place a setting is explained: every field, nested ones included, has a
    description, and the flag bound to it shows exactly that text in --help."""
    from zhtune.config import ExperimentConfig, flag_help

    undocumented = [key for key, field in _fields(ExperimentConfig) if not (field.description or "").strip()]
    assert not undocumented, undocumented
    # flags of several commands, introspected through click: their help is the schema's
    import typer.main

    commands = typer.main.get_command(app).commands
    bound = {("train", "--lora-dropout"): "lora.dropout", ("train", "--max-steps"): "train.max_steps",
             ("prepare", "--max-length"): "data.max_length", ("eval", "--style"): "eval.style",
             ("eval", "--device"): "model.device", ("sweep", "--launcher"): "sweep.launcher",
             ("run", "--output-dir"): "output.dir"}
    for (command, flag), key in bound.items():
        param = next(p for p in commands[command].params if flag in getattr(p, "opts", ()))
        assert param.help.startswith(flag_help(key).split(" (default")[0].rstrip(".")), (command, flag)
    with pytest.raises(ValueError, match="no description"):
        from unittest import mock

        with mock.patch("zhtune.config.config_field") as field:
            field.return_value.description = None
            flag_help("eval.shots")


def test_flag_values_that_yaml_would_retype_stay_strings():
    """A model folder called "2024" or "null" is a path, not a number or None."""
    cfg = resolve_config(None, {"model.name_or_path": "2024", "output.dir": "null"})
    assert cfg.model.name_or_path == "2024" and cfg.output.dir == "null"
