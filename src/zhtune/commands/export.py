"""`zhtune export`: a model or a LoRA adapter as GGUF (f16, q8_0) with an Ollama Modelfile."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        source: str = typer.Argument(..., help=(
            "A LoRA adapter folder (merged into its base first), or a model: a folder, a hub id, "
            "modelscope:ORG/NAME, a .gguf file or builtin:NAME.")),
        output_dir: Path = typer.Option(..., "--output-dir", "--output_dir",
                                        help="Where model-<type>.gguf (or adapter-<type>.gguf), Modelfile and export.json go."),
        outtype: str = typer.Option("f16,q8_0", "--outtype",
                                    help="Comma-separated GGUF types: f16, q8_0 (norms and biases stay F32)."),
        adapter_only: bool = typer.Option(False, "--adapter-only", help=(
            "Write the LoRA adapter alone as a llama.cpp LoRA GGUF (llama-cli --lora, Ollama ADAPTER), "
            "for the base model's own GGUF.")),
        base_model: Optional[str] = typer.Option(None, "--base-model", "--base_model",
                                                 help="The adapter's base model, when its folder does not record it."),
        base_gguf: Optional[str] = typer.Option(None, "--base-gguf", help=(
            "With --adapter-only: the base model's GGUF that the Modelfile's FROM names "
            "(e.g. one written by zhtune export BASE).")),
        name: Optional[str] = typer.Option(None, "--name", help="general.name in the GGUF (default: the model's name)."),
    ):
        """Write GGUF files for llama.cpp and Ollama, and a Modelfile with the family's chat template
        and stop strings. See docs/export.md."""
        from zhtune.models.export import export_gguf

        types = tuple(t.strip() for t in outtype.split(",") if t.strip())
        record = export_gguf(source, output_dir, outtypes=types, adapter_only=adapter_only,
                             base_model=base_model, base_gguf=base_gguf, name=name)
        console = Console()
        for f in record["files"]:
            console.print(f"[bold green]wrote[/] {f['file']} ({f['bytes'] / 2**20:.1f} MiB)", soft_wrap=True)
        console.print(f"[bold green]wrote[/] {record['modelfile']}", soft_wrap=True)
        if adapter_only and not base_gguf:
            console.print("The Modelfile's FROM says BASE.gguf: export the base model "
                          f"(zhtune export {record['base_model']} --output-dir DIR) and put its path there.",
                          soft_wrap=True)
