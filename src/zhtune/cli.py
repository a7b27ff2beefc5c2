"""The ``zhtune`` command line. Each area registers its own commands from ``zhtune.commands``."""
from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from zhtune import __version__

app = typer.Typer(
    name="zhtune",
    help="Teach a Llama or Qwen model Chinese with LoRA, and show with evidence what it forgot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

# Modules under zhtune.commands; each defines register(app).
COMMAND_MODULES = ["models", "data", "train", "evaluate", "analysis", "run", "export", "register"]


def _version(value: bool):
    if value:
        typer.echo(f"zhtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv: debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=verbose > 1)], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "datasets"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _register_all():
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"zhtune.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"zhtune.commands.{name}":
                continue  # area not built yet
            raise
        module.register(app)


_register_all()


def _error(message: str, code: int = 2):
    from rich.markup import escape  # messages hold [brackets]: extras, lists, regexes

    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # one line, unwrapped
    sys.exit(code)


def main():
    from zhtune.errors import UserError
    from zhtune.failures import environment_message
    from zhtune.io import resolve_start_paths
    from zhtune.stopping import Stopped, install_handlers

    resolve_start_paths()  # relative ZHTUNE_DATA_DIR / ZHTUNE_HOME: as named at start
    install_handlers()  # SIGTERM / SIGINT: stop cleanly, keeping what is finished
    try:
        app()
    except UserError as err:
        _error(str(err))
    except Stopped as stop:
        console.print(f"[bold yellow]zhtune:[/] {stop}", soft_wrap=True)
        sys.exit(128 + stop.signum)
    except Exception as err:  # an environmental failure is one line; anything else a traceback
        message = environment_message(err)
        if message is None:
            raise
        _error(message)


if __name__ == "__main__":
    main()
