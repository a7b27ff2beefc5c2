"""`zhtune models pull | list | info`: fetch and convert models, see what is cached, inspect one.

``pull --output-dir models meta-llama/Llama-2-7b-hf`` also copies the folder to
``models/meta-llama/Llama-2-7b-hf``, the layout the original project's ``download_model.py`` made.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def _spec(name: Optional[str], model_name_or_path: Optional[str]) -> str:
    from zhtune.errors import UserError

    if name and model_name_or_path and name != model_name_or_path:
        raise UserError(f"two models given: {name!r} and --model-name-or-path {model_name_or_path!r}")
    spec = name or model_name_or_path
    if not spec:
        raise UserError("no model given: pass NAME (or --model-name-or-path), e.g. builtin:smollm2-135m-instruct")
    return spec


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def register(app: typer.Typer) -> None:
    # Long only because it declares this area's commands: their typer options are the signature,
    # and each body parses, calls one library function and prints.
    models_app = typer.Typer(help="Models: download and convert (pull), list the cache, inspect one (info).",
                             no_args_is_help=True)
    app.add_typer(models_app, name="models")

    name_help = ("A local folder, a hub id ORG/NAME, modelscope:ORG/NAME, a .gguf file, or "
                 "builtin:smollm2-135m-instruct / builtin:qwen2.5-coder-0.5b-instruct.")

    @models_app.command("pull")
    def pull_cmd(
        name: Optional[str] = typer.Argument(None, help=name_help),
        model_name_or_path: Optional[str] = typer.Option(
            None, "--model-name-or-path", "--model_name_or_path", help="The model, as NAME (original spelling)."),
        output_dir: Optional[Path] = typer.Option(
            None, "--output-dir", "--output_dir",
            help="Also copy the model to OUTPUT_DIR/<ORG/NAME> (built-ins: OUTPUT_DIR/NAME)."),
        revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit to pin."),
        cache_dir: Optional[Path] = typer.Option(
            None, "--cache-dir", "--cache_dir", help="Converted-model cache (default: ZHTUNE_HOME/models)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing copy in --output-dir."),
    ):
        """Download (and for GGUF / built-ins, convert once) a model; print its local folder.

        stdout gets only the folder (the copy with --output-dir), so MODEL=$(zhtune models pull X) works.
        """
        from zhtune.models.catalog import pull_model

        spec = _spec(name, model_name_or_path)
        path, copy = pull_model(spec, output_dir, revision, cache_dir, force)
        console = Console(stderr=True)
        console.print(f"[green]ready[/] {spec}", soft_wrap=True)
        if copy is not None:
            console.print(f"cached at {path}, copied to {copy}", soft_wrap=True)
        typer.echo(str(copy or path))

    @models_app.command("list")
    def list_cmd(
        cache_dir: Optional[Path] = typer.Option(
            None, "--cache-dir", "--cache_dir", help="Converted-model cache (default: ZHTUNE_HOME/models)."),
        hub: bool = typer.Option(True, "--hub/--no-hub", help="Also list models in the Hugging Face cache."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    ):
        """The built-in models (cached or not) and every model in the caches, with sizes."""
        from zhtune.models.catalog import list_models

        listing = list_models(cache_dir, include_hub=hub)
        builtins, cached = listing["builtins"], listing["cached"]
        if as_json:
            typer.echo(json.dumps({"builtins": builtins, "cached": cached}, indent=2, ensure_ascii=False))
            return
        console = Console()
        table = Table(title="Built-in models")
        for col in ("name", "cached", "description"):
            table.add_column(col)
        for b in builtins:
            table.add_row(b["name"], "yes" if b["cached"] else "no", b["description"])
        console.print(table)
        table = Table(title="Cached models")
        for col in ("model", "cache", "size", "path"):
            table.add_column(col)
        for c in cached:
            table.add_row(c["spec"], c["source"], human_size(c["size_bytes"]), c["path"])
        console.print(table if cached else "no cached models yet (zhtune models pull NAME)")

    @models_app.command("info")
    def info_cmd(
        name: Optional[str] = typer.Argument(None, help=name_help),
        model_name_or_path: Optional[str] = typer.Option(
            None, "--model-name-or-path", "--model_name_or_path", help="The model, as NAME (original spelling)."),
        revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit to pin."),
        family: Optional[str] = typer.Option(
            None, "--family", help="Override the detected family (llama2, llama2-chat, llama3, llama, qwen2, qwen2-instruct)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ):
        """Load a model (CPU) and show its family, parameter count, linear layers and LoRA defaults."""
        from zhtune.models.catalog import model_info

        info = model_info(_spec(name, model_name_or_path), revision, family)
        if as_json:
            typer.echo(json.dumps(info, indent=2, ensure_ascii=False))
            return
        table = Table(title=info["name"], show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in info.items():
            if key == "parameters":
                value = f"{value:,} ({value / 1e6:.1f}M)"
            elif isinstance(value, list):
                value = ", ".join(value)
            elif isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            table.add_row(key, str(value))
        Console().print(table)
