"""`zhtune data check` and `zhtune data download`: a local data folder in the official layout.

The work is in ``zhtune.data.benchmarks`` (reading, checking) and ``zhtune.data.download`` (the hub
into the official layout); these commands parse, call and print.
"""
from __future__ import annotations

from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from zhtune.commands import split_list
from zhtune.data.download import DEFAULT_BELLE, download_data, planned_steps


# ----------------------------------------------------------------------------- printing a check


def print_report(report, console: Console, max_problems: int = 50) -> None:
    table = Table(title=f"data in {report.data_dir}")
    for name, justify in (("benchmark", "left"), ("split", "left"), ("subjects", "right"),
                          ("questions", "right"), ("labeled", "right")):
        table.add_column(name, justify=justify)
    for c in report.counts:
        table.add_row(c.benchmark, c.split, f"{c.subjects:,}", f"{c.rows:,}", f"{c.labeled:,}")
    console.print(table)
    if report.checksums_verified:
        console.print(f"checksums verified: {report.checksums_verified:,} files")
    for title, items, style in (("warnings", report.warnings, "yellow"), ("errors", report.errors, "red")):
        if items:
            console.print(f"[bold {style}]{title} ({len(items):,}):[/]")
            for item in items[:max_problems]:
                console.print(f"  {item}", markup=False, highlight=False)
            if len(items) > max_problems:
                console.print(f"  ... and {len(items) - max_problems:,} more")
    console.print("[bold green]no errors[/]" if report.ok else f"[bold red]{len(report.errors):,} error(s)[/]")


# ----------------------------------------------------------------------------- commands


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Benchmark and instruction data: check a local folder, download from the hub.",
                           no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("check")
    def check_cmd(
        data_dir: Optional[str] = typer.Argument(None, help="Data folder in the official layout (default: ZHTUNE_DATA_DIR)."),
        json_out: Optional[str] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
        max_problems: int = typer.Option(50, "--max-problems", "--max_problems", help="Print at most this many errors and warnings each."),
    ):
        """Count subjects and questions per benchmark and split, and list every problem (exit code 1 on errors)."""
        from zhtune.data.check import check_data_dir
        from zhtune.errors import UserError
        from zhtune.io import atomic_write_json, default_data_dir

        root = default_data_dir(data_dir)
        if root is None:
            raise UserError("no data folder: pass DIR or set ZHTUNE_DATA_DIR")
        report = check_data_dir(root)
        print_report(report, Console(), max_problems)
        if json_out:
            atomic_write_json(json_out, report.to_dict())
        if not report.ok:
            raise typer.Exit(1)

    @data_app.command("download")
    def download_cmd(
        output_dir: str = typer.Option(..., "--output-dir", "--output_dir", "-o", help="Folder to write (created if missing); becomes a --data-dir."),
        benchmarks: Optional[List[str]] = typer.Option(None, "--benchmarks", "--benchmark", help="Benchmarks to fetch (repeat or comma-separate): ceval, cmmlu, mmlu, gsm8k. Default: all."),
        belle_sample_size: int = typer.Option(50000, "--belle-sample-size", "--belle_sample_size", help="Records in the seeded BELLE sample (0: none)."),
        belle_dataset: str = typer.Option(DEFAULT_BELLE, "--belle-dataset", "--belle_dataset", help="Hub id of the BELLE instruction set to sample."),
        seed: int = typer.Option(42, "--seed", help="Seed of the BELLE sample."),
    ):
        """Fetch the benchmarks from the hub into the official release layout, plus a seeded BELLE sample.

        Writes DIR/MANIFEST.json with sources, revisions, counts and sha256s, then checks the folder.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from zhtune.data.benchmarks import BENCHMARKS
        from zhtune.data.check import check_data_dir

        chosen = split_list(benchmarks) or list(BENCHMARKS)
        console = Console()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True)) as progress:
            task = progress.add_task("download", total=planned_steps(
                [b for b in chosen if b in BENCHMARKS], belle_sample_size > 0))

            def step(what: str) -> None:
                progress.update(task, description=what)
                progress.advance(task)

            manifest = download_data(output_dir, chosen, belle_sample_size, belle_dataset, seed, step)
        console.print(f"wrote {len(manifest['files']):,} files and MANIFEST.json to {output_dir}")
        report = check_data_dir(output_dir)
        print_report(report, console)
        if not report.ok:
            raise typer.Exit(1)
