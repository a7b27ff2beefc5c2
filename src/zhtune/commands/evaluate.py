"""`zhtune eval`: C-Eval / CMMLU / MMLU / GSM8K and perplexity probes for a model and its adapters."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from zhtune.config import flag_help

from zhtune.commands import split_list
from zhtune.data.layout import compose_data_dir
from zhtune.errors import UserError

console = Console()

def _scales(text: str | None) -> list[float] | None:
    items = split_list(text)
    if items is None:
        return None
    try:
        return [float(t) for t in items]
    except ValueError:
        raise UserError(f"--adapter-scale: {text!r} is not a comma-separated list of numbers") from None


def _resolve_configs(config: str | None, flags: dict, eval_flags: dict, data_dir: str | None):
    """The model and eval sections: the config file's (or the defaults), then the flags."""
    from zhtune.config import resolve_config

    cfg = resolve_config(config, {**{f"model.{k}": v for k, v in flags.items()},
                                  **{f"eval.{k}": v for k, v in eval_flags.items()}})
    return cfg.model, cfg.eval, data_dir or cfg.data.data_dir


def print_results(out: Path, index: dict) -> None:
    from zhtune.io import read_json

    table = Table(title=f"zhtune eval -> {out}")
    for col in ("run", "benchmark", "accuracy", "± stderr", "n"):
        table.add_column(col, justify="left" if col in ("run", "benchmark") else "right")
    for run in index["runs"]:
        summary = read_json(out / run["dir"] / "summary.json")
        for b, entry in summary["benchmarks"].items():
            extra = (f" (strict {entry['accuracy_strict'] * 100:.1f})" if "accuracy_strict" in entry
                     else f" acc_norm (acc {entry['accuracy_unnormalized'] * 100:.1f})"
                     if "accuracy_unnormalized" in entry else "")
            table.add_row(run["label"], b, f"{entry['accuracy'] * 100:.1f}%{extra}",
                          f"{entry['stderr'] * 100:.1f}", str(entry["n"]))
        for lang, p in (summary.get("perplexity") or {}).items():
            if isinstance(p, dict):
                table.add_row(run["label"], f"bits/char {lang}", f"{p['bits_per_char']:.3f}", "",
                              str(p["chars"]))
        tp = summary["throughput"]
        if tp.get("questions_per_second"):
            table.add_row(run["label"], "throughput", f"{tp['questions_per_second']:.1f} q/s", "",
                          str(tp["questions"]))
    console.print(table)


def register(app: typer.Typer) -> None:
    # Long only because it declares this area's commands: their typer options are the signature,
    # and each body parses, calls one library function and prints.
    @app.command("eval")
    def eval_cmd(
        model: Optional[str] = typer.Option(
            None, "--model", "--model_path", "--base_model_path",
            help=flag_help("model.name_or_path")),
        adapter: Optional[List[str]] = typer.Option(
            None, "--adapter", "--lora_model_path",
            help="LoRA adapter folder (training output OUT or OUT/adapter). Repeatable: all are "
                 "loaded onto one base."),
        adapter_scale: Optional[str] = typer.Option(
            None, "--adapter-scale", "--adapter_scale",
            help=flag_help("eval.adapter_scales", "comma-separated: 0,0.5,1")),
        no_base: bool = typer.Option(False, "--no-base",
            help="With --adapter: skip evaluating the base model."),
        benchmarks: Optional[str] = typer.Option(
            None, "--benchmarks", help=flag_help("eval.benchmarks", "comma-separated")),
        subjects: Optional[str] = typer.Option(
            None, "--subjects", help=flag_help("eval.subjects", "comma-separated, any benchmark's")),
        limit: Optional[int] = typer.Option(
            None, "--limit", min=1, help=flag_help("eval.limit")),
        shots: Optional[int] = typer.Option(None, "--shots", min=0,
            help=flag_help("eval.shots")),
        generation_shots: Optional[int] = typer.Option(None, "--generation-shots", "--gsm8k-shots", "--gsm8k_shots", min=0,
            help=flag_help("eval.generation_shots")),
        generation_cot: Optional[bool] = typer.Option(None, "--generation-cot/--no-generation-cot",
            help=flag_help("eval.generation_cot")),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", "--batch_size", min=1,
            help=flag_help("eval.batch_size")),
        batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", min=1,
            help=flag_help("eval.batch_tokens")),
        dtype: Optional[str] = typer.Option(None, "--dtype",
            help=flag_help("model.dtype", "on the CPU evaluation allows only float32: docs/measurements.md")),
        device: Optional[str] = typer.Option(None, "--device", help=flag_help("model.device")),
        chat: Optional[bool] = typer.Option(None, "--chat/--no-chat",
            help=flag_help("eval.chat")),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "--max_new_tokens", min=1,
            help=flag_help("eval.max_new_tokens")),
        style: Optional[str] = typer.Option(None, "--style",
            help=flag_help("eval.style")),
        formulation: Optional[str] = typer.Option(None, "--formulation",
            help=flag_help("eval.formulation")),
        write_prompts: Optional[bool] = typer.Option(None, "--write-prompts/--no-write-prompts",
            help=flag_help("eval.write_prompts")),
        no_perplexity: bool = typer.Option(False, "--no-perplexity",
            help="Skip the zh/en bits-per-character probes."),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", "--data_dir",
            help=flag_help("data.data_dir")),
        ceval_path: Optional[str] = typer.Option(None, "--ceval_path", "--ceval-path",
            help="C-Eval folder (dev/ val/ test/) or a data folder holding ceval/."),
        mmlu_path: Optional[str] = typer.Option(None, "--mmlu_path", "--mmlu-path",
            help="MMLU folder (dev/ val/ test/) or a data folder holding mmlu/."),
        output_dir: str = typer.Option("runs/eval", "--output-dir", "--output_dir", "--results_dir",
            help="Where results go: OUT/<label>/summary.json, predictions.jsonl; OUT/index.json."),
        config: Optional[str] = typer.Option(None, "--config",
            help="Experiment YAML: its model and eval sections are used; flags override them."),
        trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code", "--trust_remote_code",
            help=flag_help("model.trust_remote_code")),
        quiet_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    ):
        """Evaluate a model (and LoRA adapters at several scales) on Chinese and English benchmarks."""
        from zhtune.eval.suite import run_eval
        from zhtune.io import default_data_dir

        out = Path(output_dir)
        model_flags = {"name_or_path": model, "dtype": dtype, "device": device,
                       "trust_remote_code": trust_remote_code}
        eval_flags = {"benchmarks": split_list(benchmarks), "subjects": split_list(subjects),
                      "limit": limit, "shots": shots, "generation_shots": generation_shots,
                      "generation_cot": generation_cot,
                      "batch_size": batch_size, "batch_tokens": batch_tokens, "chat": chat, "max_new_tokens": max_new_tokens,
                      "style": style, "formulation": formulation, "write_prompts": write_prompts,
                      "perplexity": False if no_perplexity else None,
                      "adapter_scales": _scales(adapter_scale)}
        paths = {"ceval": ceval_path, "mmlu": mmlu_path}
        if any(paths.values()) and not config and not benchmarks and default_data_dir(data_dir) is None:
            # The original script's usage: only the benchmarks given by path, nothing else to read.
            eval_flags["benchmarks"] = [b for b, p in paths.items() if p]
            eval_flags["perplexity"] = False
        model_cfg, eval_cfg, data = _resolve_configs(config, model_flags, eval_flags, data_dir)
        data = compose_data_dir(data, paths, out)  # --ceval_path and friends
        index = run_eval(model_cfg, eval_cfg, out, data_dir=data, adapters=list(adapter or []),
                         scales=eval_cfg.adapter_scales, include_base=not (no_base and adapter),
                         progress=not quiet_progress)
        from zhtune.distributed import is_main

        if is_main():  # under a distributed launch: once
            print_results(out, index)
