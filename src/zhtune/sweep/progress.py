"""Sweep progress on the console: a line whenever a point changes state (queued, running on NODE,
retrying, done, failed, with its elapsed time) above a rich progress bar over the grid."""
from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from zhtune.sweep.point import PointJob

_STYLE = {"done": "green", "failed": "bold red", "retrying": "yellow", "running": "cyan"}


class SweepProgress:
    def __init__(self, total: int, console: Console | None = None):
        self.bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console or Console(stderr=True))
        self.task = self.bar.add_task("sweep", total=total)
        self.started: dict[str, float] = {}  # point -> when it first ran
        self.seen: dict[str, tuple] = {}  # point -> (attempt, pid) of the last "running" line

    def __enter__(self) -> "SweepProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def line(self, name: str, state: str, detail: str = "") -> None:
        elapsed = ""
        if name in self.started:
            elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - self.started[name]))
        style = _STYLE.get(state.split()[0], "")
        text = f"{escape(name):<28} [{style}]{escape(state)}[/]" if style else f"{escape(name):<28} {state}"
        self.bar.console.print(f"{text} {escape(detail)} {elapsed}".rstrip())

    def finished(self, name: str, state: str, detail: str = "") -> None:
        self.line(name, state, detail)
        self.bar.advance(self.task)

    def refresh(self, jobs: list[PointJob]) -> None:
        """A "running on NODE" line for each job whose worker has started since the last look."""
        for job in jobs:
            status = job.status()
            if not status or status.get("state") != "running":
                continue
            key = (job.attempt, status.get("pid"))
            if self.seen.get(job.name) != key:
                self.seen[job.name] = key
                self.started.setdefault(job.name, status.get("time", time.time()))
                attempt = f"(attempt {job.attempt})" if job.attempt > 1 else ""
                self.line(job.name, f"running on {status.get('node')}", attempt)
