"""`zhtune register`: pre-register a study's design (zhtune.registration) before it runs."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    @app.command("register")
    def register_cmd(
        config: str = typer.Argument(..., help="Experiment YAML (or the name of a shipped config, e.g. qwen-study)."),
        overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides, as zhtune run takes them."),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Local data folder (counts the questions); default ZHTUNE_DATA_DIR, else the hub."),
        output: Optional[Path] = typer.Option(None, "--output", help="Registration file (default: CONFIG's name with .registration.json, beside it)."),
        allow_uncommitted: bool = typer.Option(False, "--allow-uncommitted", help="Register a config file that is not committed unchanged."),
    ):
        """Write the registration of a study's design: design hash, config checksum, git commit,
        time and the design figures (questions, detectable change, probability of "no change beyond
        the margin"). Commit it before `zhtune run`, which checks the run's design against it."""
        from zhtune.config import config_path, resolve_config
        from zhtune.registration import register as write_registration

        cfg = resolve_config(config, overrides=list(overrides or []))
        path, record = write_registration(cfg, config_path(config), data_dir=data_dir or cfg.data.data_dir,
                                          overrides=list(overrides or []), output=output,
                                          allow_uncommitted=allow_uncommitted)
        prov = record["provenance"]
        console.print(f"design {record['design_hash']} of {record['config_file']} at commit "
                      f"{prov['git_commit'] or '(no git)'}{' (dirty tree)' if prov['git_dirty'] else ''}")
        for lang, fig in record["design_figures"]["pooled"].items():
            rows = "; ".join(f"{100 * r['discordance']:.0f}% changed: detects {r['min_detectable_change']} points, "
                             f"P(no change beyond {fig['margin']:g}) {r['p_no_change_beyond_margin']:.2f}"
                             for r in fig["at_discordance"])
            console.print(f"  {lang}: {fig['n']:,} questions ({', '.join(fig['benchmarks'])}): {rows}")
        console.print(f"[bold green]wrote[/] {path}  (commit it before the run starts)")
