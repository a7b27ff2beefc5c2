"""`zhtune run`, `zhtune sweep` and `zhtune demo`: the whole experiment from one config."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from zhtune.config import flag_help

console = Console()


def print_headline(result) -> None:
    """The report's opening sentences, printed at the end of a run."""
    from zhtune.io import read_json

    report_json = result.report_dir / "report.json"
    if report_json.exists():
        report = read_json(report_json)
        for sentence in report.get("headline", []):
            console.print(f"  {sentence}")
    console.print(f"[bold green]report:[/] {result.report_dir / 'report.html'}")


def register(app: typer.Typer) -> None:
    # Long only because it declares this area's commands: their typer options are the signature,
    # and each body parses, calls one library function and prints.
    @app.command("run")
    def run_cmd(
        config: str = typer.Argument(..., help="Experiment YAML (or the name of a shipped config, e.g. demo-cpu)."),
        overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides, e.g. lora.rank=16 train.max_steps=50."),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Local data folder (official layout); default ZHTUNE_DATA_DIR, else the hub."),
        output_dir: Optional[str] = typer.Option(None, "--output-dir", help=flag_help("output.dir")),
        force: Optional[List[str]] = typer.Option(None, "--force", help="Redo a stage even if up to date (baseline, prepare, train, evaluate, compare, report, all). Repeatable."),
        report_to: Optional[str] = typer.Option(None, "--report-to", help=flag_help("tracking.backend")),
        nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help=flag_help("train.num_processes")),
        registration: Optional[str] = typer.Option(None, "--registration", help="The design's registration file (default: CONFIG's .registration.json beside it, when there is one)."),
        ignore_registration: bool = typer.Option(False, "--ignore-registration", help="Run a design that differs from its registration (recorded as such)."),
    ):
        """Baseline eval -> prepare -> LoRA training -> eval -> forgetting analysis -> report.

        Stages whose outputs exist and were made from the same settings are skipped; an interrupted
        run continues where it stopped when the same command is run again. A config with a
        registration (zhtune register) runs only as registered.
        """
        from zhtune.config import config_path, resolve_config
        from zhtune.experiment import run_experiment
        from zhtune.registration import check_registration

        from zhtune.distributed import is_main
        from zhtune.launch import should_launch

        extra = list(overrides or []) + ([f"output.dir={output_dir}"] if output_dir else [])
        extra += [f"tracking.backend={report_to}"] if report_to else []
        extra += [f"train.num_processes={nproc}"] if nproc else []
        cfg = resolve_config(config, overrides=extra)
        checked = check_registration(cfg, config_path(config), registration_file=registration,
                                     ignore_mismatch=ignore_registration)
        launcher = should_launch(cfg.train.num_processes)  # its rank 0 prints the summary
        t0 = time.time()
        result = run_experiment(cfg, data_dir=data_dir, force=tuple(force or ()), registration=checked)
        if launcher or not is_main():
            return
        console.print(f"ran: {', '.join(result.ran) or '-'}; up to date: {', '.join(result.skipped) or '-'}"
                      f" ({time.time() - t0:.0f} s)")
        print_headline(result)

    @app.command("sweep")
    def sweep_cmd(
        config: str = typer.Argument(..., help="Experiment YAML with a sweep.grid section (or a shipped config name)."),
        overrides: Optional[List[str]] = typer.Argument(None, help="Grid axes as key=v1,v2 (lora.rank=4,8,16) and plain overrides key=value."),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Local data folder; default ZHTUNE_DATA_DIR, else the hub."),
        output_dir: Optional[str] = typer.Option(None, "--output-dir", help=flag_help("output.dir")),
        workers: Optional[int] = typer.Option(None, "--workers", help=flag_help("sweep.workers")),
        devices: Optional[str] = typer.Option(None, "--devices", help=flag_help("sweep.devices", "comma-separated")),
        launcher: Optional[str] = typer.Option(None, "--launcher", help=flag_help("sweep.launcher")),
        address: Optional[str] = typer.Option(None, "--address", help=flag_help("sweep.address")),
        max_retries: Optional[int] = typer.Option(None, "--max-retries", help=flag_help("sweep.max_retries")),
        gpus: Optional[int] = typer.Option(None, "--gpus-per-point", help=flag_help("sweep.gpus_per_point")),
        cpus: Optional[int] = typer.Option(None, "--cpus-per-point", help=flag_help("sweep.cpus_per_point")),
        partition: Optional[str] = typer.Option(None, "--partition", help=flag_help("sweep.slurm.partition")),
        time_min: Optional[int] = typer.Option(None, "--time-min", help=flag_help("sweep.slurm.time_min")),
        report_to: Optional[str] = typer.Option(None, "--report-to", help=flag_help("tracking.backend")),
        nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help=flag_help("train.num_processes")),
        criterion: Optional[str] = typer.Option(None, "--criterion", help=flag_help("sweep.criterion")),
        registration: Optional[str] = typer.Option(None, "--registration", help="The design's registration file (default: CONFIG's .registration.json beside it, when there is one)."),
        ignore_registration: bool = typer.Option(False, "--ignore-registration", help="Run a design that differs from its registration (recorded as such)."),
    ):
        """Run a grid of LoRA settings (one shared baseline) and write results.csv/.md and a Pareto plot.

        Points run on this machine, on a Ray cluster (--launcher ray) or as a Slurm job array
        (--launcher slurm); the sweep folder must then be on a filesystem every node sees. Running
        the same command again finishes only what is missing. A config with a registration (zhtune
        register) runs only as registered: its grid included.
        """
        from zhtune.config import config_path, resolve_config
        from zhtune.registration import check_registration
        from zhtune.sweep import run_sweep, split_grid_overrides
        from zhtune.sweep.grid import with_grid

        grid, plain = split_grid_overrides(list(overrides or []))
        options = {"output.dir": output_dir, "sweep.launcher": launcher, "sweep.address": address,
                   "sweep.max_retries": max_retries, "sweep.gpus_per_point": gpus,
                   "sweep.cpus_per_point": cpus, "sweep.slurm.partition": partition,
                   "sweep.slurm.time_min": time_min, "tracking.backend": report_to,
                   "train.num_processes": nproc, "sweep.criterion": criterion}
        plain += [f"{key}={value}" for key, value in options.items() if value is not None]
        cfg = resolve_config(config, overrides=plain)
        # The design checked is the grid that runs: the config's axes and the command line's.
        checked = check_registration(with_grid(cfg, grid), config_path(config), registration_file=registration,
                                     ignore_mismatch=ignore_registration)
        try:
            summary = run_sweep(cfg, extra_grid=grid, data_dir=data_dir, workers=workers,
                                devices=devices.split(",") if devices else None, registration=checked)
        except KeyboardInterrupt:  # the sweep cancelled its jobs and said so
            raise typer.Exit(130)
        out = Path(cfg.output.dir)
        conclusion = (summary.get("grid") or {}).get("conclusion")
        if conclusion:  # the settings, intervals, pairs and factor effects are in results.md
            console.print(conclusion, markup=False)
        console.print(f"[bold green]results:[/] {out / 'results.md'}  {out / 'results.csv'}  {out / 'pareto.png'}  "
                      f"{out / 'learning_forgetting.png'}")
        if summary["failed"]:
            raise typer.Exit(1)

    @app.command("demo")
    def demo_cmd(
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Local data folder; default ZHTUNE_DATA_DIR, else the hub."),
        output_dir: str = typer.Option("runs/demo-cpu", "--output-dir", help="Where the demo writes its run."),
        qwen: bool = typer.Option(False, "--qwen", help="Use the built-in Qwen2.5-Coder-0.5B-Instruct instead of SmolLM2-135M."),
        report_to: Optional[str] = typer.Option(None, "--report-to", help=flag_help("tracking.backend")),
        overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides of configs/demo-cpu.yaml."),
    ):
        """The whole experiment at small scale on a CPU (about 10 minutes with the model pull)."""
        from zhtune.config import resolve_config
        from zhtune.experiment import run_experiment

        cfg = resolve_config("qwen-demo-cpu" if qwen else "demo-cpu",
                             {"output.dir": output_dir, "tracking.backend": report_to}, overrides)
        t0 = time.time()
        result = run_experiment(cfg, data_dir=data_dir)
        console.print(f"[bold]zhtune demo[/] finished in {time.time() - t0:.0f} s "
                      f"(ran: {', '.join(result.ran) or '-'})")
        print_headline(result)
