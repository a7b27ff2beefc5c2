"""`zhtune prepare`, `zhtune train` and `zhtune merge`: data for SFT, LoRA training, merged models."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from zhtune.config import flag_help

console = Console()


def _config(config: str | None, overrides: list[str], flags: dict[str, object]):
    """The experiment config: file (or a shipped config's name, or defaults), then flags, then
    ``key=value`` overrides."""
    from zhtune.config import resolve_config

    return resolve_config(config, flags, overrides)


def _counts_table(manifest: dict, out: Path) -> Table:
    c = manifest["counts"]
    report = manifest["data_report"]
    table = Table(title=f"zhtune prepare -> {out}")
    table.add_column("", justify="left")
    table.add_column("train", justify="right")
    table.add_column("validation", justify="right")
    table.add_row("records in", str(c["records_in"]["train"]), str(c["records_in"]["validation"]))
    for reason in ("prompt_too_long", "no_labels"):
        table.add_row(f"dropped: {reason}", str(c["dropped"]["train"][reason]),
                      str(c["dropped"]["validation"][reason]))
    table.add_row("truncated (tail cut)", str(c["truncated"]["train"]), str(c["truncated"]["validation"]))
    table.add_row("samples out", str(c["samples_out"]["train"]), str(c["samples_out"]["validation"]))
    table.add_row("rows" + (" (packed)" if manifest["packing"] else ""), str(c["rows"]["train"]),
                  str(c["rows"]["validation"]))
    table.add_row("tokens", str(c["tokens"]["train"]), str(c["tokens"]["validation"]))
    table.add_row("labelled tokens", str(c["label_tokens"]["train"]), str(c["label_tokens"]["validation"]))
    rc = report["counts"]
    table.caption = (f"read {rc.get('read', 0)}, bad {report['bad_records']}, empty output "
                     f"{rc.get('empty_output', 0)}, duplicates {rc.get('duplicates', 0)}, not sampled "
                     f"{rc.get('not_sampled', 0)}, English replay {rc.get('replay', 0)}; "
                     f"family {manifest['family']}, template {manifest['template']}, "
                     f"max_length {manifest['max_length']}")
    return table


def register(app: typer.Typer) -> None:
    # Long only because it declares this area's commands: their typer options are the signature,
    # and each body parses, calls one library function and prints.
    @app.command("prepare")
    def prepare_cmd(
        overrides: Optional[List[str]] = typer.Argument(
            None, help="Dotted config overrides, e.g. data.max_length=384 data.sample_size=50000."),
        config: Optional[str] = typer.Option(
            None, "--config", help="Experiment YAML (or a shipped config's name); its model and data sections are used."),
        model: Optional[str] = typer.Option(
            None, "--model", "--model_name_or_path", "--model-name-or-path",
            help=flag_help("model.name_or_path")),
        data_dir: Optional[str] = typer.Option(
            None, "--data-dir", "--data_dir", help=flag_help("data.data_dir")),
        output_dir: Optional[str] = typer.Option(
            None, "--output-dir", "--output_dir", help="Folder for the prepared dataset (default: OUTPUT.DIR/data)."),
        max_length: Optional[int] = typer.Option(
            None, "--max-length", "--max_length", min=9, help=flag_help("data.max_length")),
        sample_size: Optional[int] = typer.Option(
            None, "--sample-size", "--belle_sample_size", min=1, help=flag_help("data.sample_size")),
        packing: Optional[bool] = typer.Option(
            None, "--packing/--no-packing", help=flag_help("data.packing")),
    ):
        """Turn instruction data into token ids with prompt-masked labels for one model's tokenizer."""
        from zhtune.data.sft import prepare_dataset

        cfg = _config(config, overrides, {"model.name_or_path": model, "data.data_dir": data_dir,
                                          "data.max_length": max_length, "data.sample_size": sample_size,
                                          "data.packing": packing})
        out = Path(output_dir) if output_dir else Path(cfg.output.dir) / "data"
        manifest = prepare_dataset(cfg, out, data_dir=cfg.data.data_dir)
        console.print(_counts_table(manifest, out))
        for warning in manifest["data_report"]["warnings"]:
            console.print(f"[yellow]warning:[/] {warning}")

    @app.command("train")
    def train_cmd(
        overrides: Optional[List[str]] = typer.Argument(
            None, help="Dotted config overrides, e.g. lora.targets=attention train.max_steps=100."),
        config: Optional[str] = typer.Option(
            None, "--config", help="Experiment YAML (or a shipped config's name); flags and overrides win over it."),
        model: Optional[str] = typer.Option(
            None, "--model", "--model_path", "--model_name_or_path",
            help=flag_help("model.name_or_path")),
        dataset: Optional[str] = typer.Option(
            None, "--dataset", "--dataset_path",
            help="Prepared dataset folder (zhtune prepare); default: prepare on the fly into OUT/data."),
        data_dir: Optional[str] = typer.Option(
            None, "--data-dir", "--data_dir", help=flag_help("data.data_dir")),
        output_dir: Optional[str] = typer.Option(
            None, "--output-dir", "--output_dir", help="Training output folder (default: OUTPUT.DIR/train)."),
        lora_rank: Optional[int] = typer.Option(None, "--lora-rank", "--lora_rank", min=1, help=flag_help("lora.rank")),
        lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", "--lora_alpha", help=flag_help("lora.alpha")),
        lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", "--lora_dropout", help=flag_help("lora.dropout")),
        lora_targets: Optional[str] = typer.Option(None, "--lora-targets", "--lora_target", help=flag_help("lora.targets", "comma-separated names")),
        epochs: Optional[float] = typer.Option(None, "--epochs", "--num_epochs", "--num-epochs", help=flag_help("train.epochs")),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", "--max_steps", help=flag_help("train.max_steps")),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", "--batch_size", min=1, help=flag_help("train.batch_size")),
        gradient_accumulation_steps: Optional[int] = typer.Option(
            None, "--gradient-accumulation-steps", "--gradient_accumulation_steps", min=1, help=flag_help("train.gradient_accumulation_steps")),
        learning_rate: Optional[float] = typer.Option(None, "--learning-rate", "--learning_rate", help=flag_help("train.learning_rate")),
        deepspeed: Optional[str] = typer.Option(None, "--deepspeed", help=flag_help("train.deepspeed")),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the last complete checkpoint in OUT (default) or start over."),
        nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help=flag_help("train.num_processes")),
    ):
        """Fine-tune a model with LoRA (PEFT + HF Trainer). Several GPUs: --nproc N (or under
        `torchrun` / `accelerate launch`)."""
        from zhtune.distributed import is_main
        from zhtune.launch import should_launch
        from zhtune.train.lora import train_lora

        cfg = _config(config, overrides, {
            "model.name_or_path": model, "data.data_dir": data_dir, "lora.rank": lora_rank,
            "lora.alpha": lora_alpha, "lora.dropout": lora_dropout, "lora.targets": lora_targets,
            "train.epochs": epochs, "train.max_steps": max_steps, "train.batch_size": batch_size,
            "train.gradient_accumulation_steps": gradient_accumulation_steps,
            "train.learning_rate": learning_rate, "train.deepspeed": deepspeed, "train.num_processes": nproc})
        out = Path(output_dir) if output_dir else Path(cfg.output.dir) / "train"
        launcher = should_launch(cfg.train.num_processes)  # its processes print the table
        metrics = train_lora(cfg, out, dataset_dir=dataset, data_dir=cfg.data.data_dir, resume=resume)
        if is_main() and not launcher:
            table = Table(title=f"zhtune train -> {out / 'adapter'}")
            table.add_column("metric")
            table.add_column("value", justify="right")
            for key, value in metrics.items():
                table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
            console.print(table)

    @app.command("merge")
    def merge_cmd(
        adapter: str = typer.Option(..., "--adapter", "--lora_model_path", help="Adapter folder (OUT/adapter, or the training OUT)."),
        output_dir: str = typer.Option(..., "--output-dir", "--output_dir", help="Where the merged model (safetensors + tokenizer) goes."),
        base_model: Optional[str] = typer.Option(None, "--base-model", "--base_model_path", help="Base model (default: the one recorded in the adapter)."),
        dtype: str = typer.Option("auto", "--dtype", help="auto (the base checkpoint's dtype), float32, bfloat16 or float16."),
    ):
        """Fold a LoRA adapter into its base model and save the full model."""
        from zhtune.errors import UserError
        from zhtune.models.merge import merge_adapter

        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        path = Path(adapter)
        if not (path / "adapter_config.json").exists() and (path / "adapter" / "adapter_config.json").exists():
            path = path / "adapter"
        out = merge_adapter(path, output_dir, base_model=base_model, dtype=dtype)
        console.print(f"[bold green]merged model:[/] {out}")
