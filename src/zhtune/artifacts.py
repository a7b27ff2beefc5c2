"""What zhtune writes beside its outputs, in one place: when a thing was made, what bytes it holds,
which code made it (provenance), which stage finished with which settings (the skip rule), the
settings a command resolved, the index of a multi-run evaluation folder, and the adapter metadata
file's name.

Every record (model cache, prepared data, adapter, evaluation summary, report) uses the same
timestamp format and checksum, so each can be compared with every other.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from zhtune.io import atomic_write_json, read_json

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
ADAPTER_META = "zhtune_adapter.json"  # beside every adapter: what it was trained from, and how


def utc_timestamp() -> str:
    """Now, in UTC, to the second: ``2026-11-30T08:00:00Z``."""
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime())


# ----------------------------------------------------------------------------- provenance
def run_git(args: list[str], cwd: Path) -> str | None:
    """``git ARGS`` in ``cwd``: its stripped output, or None (no git, not a checkout, an error)."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(path: str | Path | None = None) -> dict:
    """The git commit of the checkout holding ``path`` (default: the running zhtune package) and
    whether the code differs from that commit: ``{"git_commit": sha | None, "git_dirty": bool |
    None}``. Both None when the code is not in a git checkout, e.g. a wheel installed in a virtual
    environment that itself sits inside some repository: ``path`` must be tracked by the checkout git
    finds, else that checkout is not the code's. The code is the folder holding ``path`` (the
    package, its shipped configs included) and the checkout's ``pyproject.toml`` (the dependencies):
    outputs committed elsewhere in the repository (``docs/results``), which a resumed run itself
    rewrites, and the documentation do not make it dirty. Untracked files do not count either
    (caches); a new module only changes a result once a tracked file imports it."""
    here = Path(path) if path is not None else Path(__file__).resolve()
    folder = here if here.is_dir() else here.parent
    if not folder.is_dir() or run_git(["ls-files", "--error-unmatch", here.name if here.is_file() else "."],
                                   folder) is None:
        return {"git_commit": None, "git_dirty": None}
    commit = run_git(["rev-parse", "HEAD"], folder)
    if commit is None:  # a repository without commits
        return {"git_commit": None, "git_dirty": None}
    status = run_git(["status", "--porcelain", "--untracked-files=no", "--", ".", ":/pyproject.toml"], folder)
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def provenance() -> dict:
    """Which code made an output: ``{"zhtune_version", "git_commit", "git_dirty"}`` (see
    :func:`git_state`). Every summary.json, comparison.json, report and stage marker records it."""
    from zhtune import __version__

    return {"zhtune_version": __version__, **git_state()}


def fingerprint(*parts: Any) -> str:
    """A short stable hash of plain data (configs, file lists): the settings a stage's markers and
    an evaluation's summary record, to decide whether work is redone or runs are comparable."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks so that multi-GB weights never sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- stage markers
# The one rule for skipping work (docs/ARCHITECTURE.md, "What is skipped"): a folder whose finished
# marker holds the fingerprint of the settings about to be used is up to date. A folder started with
# other settings is wiped before the stage runs; one started with the same settings is kept, so that
# resumable work (training checkpoints) continues.
STAGE_STARTED = "stage-started.json"
STAGE_FINISHED = "stage-finished.json"


def stage_is_current(stage_dir: Path, fp: str) -> bool:
    """True if ``stage_dir`` holds a finished marker with fingerprint ``fp`` (the stage is skipped)."""
    finished = Path(stage_dir) / STAGE_FINISHED
    return finished.exists() and read_json(finished).get("fingerprint") == fp


def begin_stage(stage_dir: Path, name: str, fp: str, *, force: bool = False) -> None:
    """Make ``stage_dir`` ready for a stage run with fingerprint ``fp`` and mark it started. A stage
    resumed with the same settings keeps its first start (time and code) and adds this one to
    ``resumed``: an output's record says when, and from which commit, its work began."""
    started = stage_dir / STAGE_STARTED
    now = {"started": utc_timestamp(), "provenance": provenance()}
    earlier = read_json(started) if started.exists() else None
    if stage_dir.exists() and (force or earlier is None or earlier.get("fingerprint") != fp):
        shutil.rmtree(stage_dir)
        earlier = None
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / STAGE_FINISHED).unlink(missing_ok=True)
    record = {"stage": name, "fingerprint": fp, **now}
    if earlier is not None:
        record = {**earlier, "resumed": [*earlier.get("resumed", []), now]}
    atomic_write_json(started, record)


def finish_stage(stage_dir: Path, name: str, fp: str, seconds: float) -> None:
    from zhtune import __version__

    atomic_write_json(stage_dir / STAGE_FINISHED, {"stage": name, "fingerprint": fp, "seconds": seconds,
                                                   "zhtune_version": __version__,
                                                   "finished": utc_timestamp(), "provenance": provenance()})


# ----------------------------------------------------------------------------- resolved settings
def write_resolved_settings(out: str | Path, command: str, **settings) -> Path:
    """A command's resolved settings next to its outputs: ``OUT/<command>.resolved.json`` (commands
    driven by an experiment config write ``config.resolved.yaml`` instead: zhtune.config.save_resolved)."""
    from zhtune import __version__

    return atomic_write_json(Path(out) / f"{command}.resolved.json", {
        "command": command, **{k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()},
        "zhtune_version": __version__})


# ----------------------------------------------------------------------------- evaluation index
# A multi-run evaluation folder's index.json: {"model": ..., "runs": [{"label", "dir", "adapter",
# "adapter_scale", "settings_fingerprint"}, ...], "labels": [the runs' labels, in order]}.
EVAL_INDEX = "index.json"


def write_eval_index(folder: str | Path, model: str, runs: list[dict]) -> dict:
    """Write ``FOLDER/index.json``; returns what was written."""
    index = {"model": model, "runs": runs, "labels": [r["label"] for r in runs]}
    atomic_write_json(Path(folder) / EVAL_INDEX, index)
    return index


def read_eval_index(folder: str | Path) -> list[dict]:
    """The runs an index.json lists, each with ``label`` and ``dir`` (default: the label). Also reads
    the older forms ``{"runs": ["base", ...]}`` and ``{"labels": [...]}``."""
    from zhtune.errors import UserError

    path = Path(folder) / EVAL_INDEX
    try:
        index = read_json(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    entries = index.get("runs", index.get("labels")) if isinstance(index, dict) else index
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected a non-empty 'runs' list")
    runs = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"label": entry}
        if not isinstance(entry, dict) or "label" not in entry:
            raise UserError(f"{path}: run #{i + 1} has no label: {entry!r}")
        dir_ = entry.get("dir") or entry.get("folder") or entry.get("path") or entry["label"]
        runs.append({**entry, "label": str(entry["label"]), "dir": str(dir_)})
    return runs


# ----------------------------------------------------------------------------- adapters
def resolve_adapter_dir(path: str | Path) -> Path:
    """The adapter folder for a training output folder ``OUT`` or the adapter folder ``OUT/adapter``."""
    from zhtune.errors import UserError

    p = Path(path).expanduser()
    for candidate in (p, p / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            if not (candidate / "adapter_model.safetensors").is_file():
                raise UserError(f"{candidate}: no adapter_model.safetensors (only safetensors "
                                f"adapter weights are loaded)")
            from zhtune.failures import safetensors_problem

            problem = safetensors_problem(candidate / "adapter_model.safetensors")
            if problem:
                raise UserError(f"{candidate / 'adapter_model.safetensors'}: {problem}; train it again "
                                f"(delete {candidate}; in `zhtune run`: --force train)")
            return candidate
    if not p.exists():
        raise UserError(f"{path}: no such adapter folder")
    raise UserError(f"{path}: no adapter_config.json here or in {p / 'adapter'} "
                    f"(expected a LoRA adapter folder or a `zhtune train` output folder)")


def read_adapter_meta(path: str | Path) -> dict:
    """What zhtune recorded about an adapter (``zhtune_adapter.json``) in an adapter folder or a
    training output folder; {} for an adapter zhtune did not train (or none there yet)."""
    p = Path(path).expanduser()
    for candidate in (p, p / "adapter"):
        if (candidate / ADAPTER_META).is_file():
            return read_json(candidate / ADAPTER_META)
    return {}


# ----------------------------------------------------------------------------- committed chunks
# The skip rule one level down, for work that resumes inside a stage (an evaluation): the work is
# cut into named chunks (a subject, N questions of a generation benchmark), each committed as one
# file written atomically under FOLDER/chunks/ once it is finished. FOLDER/chunks/stage-started.json
# holds the fingerprint of the settings the chunks were made with: a rerun with the same fingerprint
# reads the committed chunks back and computes only the missing ones; one with another fingerprint
# is refused (never mixed). A chunk file that does not parse was damaged after it was committed; it
# is dropped and computed again. The folder is removed once the finished result is written.
CHUNKS_DIR = "chunks"


def open_chunks(folder: str | Path, fp: str, what: str) -> Path:
    """``FOLDER/chunks`` ready for work with fingerprint ``fp``: the committed chunks are kept when
    they were made with ``fp``; a folder of another fingerprint is a UserError naming the fix."""
    from zhtune.errors import UserError

    chunks = Path(folder) / CHUNKS_DIR
    started = chunks / STAGE_STARTED
    if chunks.exists():
        try:
            other = read_json(started).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            other = None  # no readable marker: nothing was committed under it (it is written first)
        if other is None:
            shutil.rmtree(chunks)
        elif other != fp:
            raise UserError(f"{chunks}: a partial {what} made with other settings or another model "
                            f"(fingerprint {other}, now {fp}); delete {chunks} to start it over, or "
                            f"write to another output folder")
    if not started.exists():
        atomic_write_json(started, {"what": what, "fingerprint": fp})
    return chunks


def _chunk_path(chunks: Path, name: str) -> Path:
    return chunks / (name.replace("/", "__") + ".json")


def read_chunk(chunks: Path, name: str) -> Any | None:
    """A committed chunk's payload, or None (not committed yet, or damaged: then it is removed)."""
    import logging

    path = _chunk_path(chunks, name)
    if not path.is_file():
        return None
    try:
        return read_json(path)["payload"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        logging.getLogger(__name__).warning("%s: damaged (%s); computing this chunk again", path, err)
        path.unlink(missing_ok=True)
        return None


def commit_chunk(chunks: Path, name: str, payload: Any) -> None:
    """Commit a finished chunk (atomically: a chunk file is either whole or absent)."""
    atomic_write_json(_chunk_path(chunks, name), {"chunk": name, "payload": payload})


def close_chunks(folder: str | Path) -> None:
    """Remove ``FOLDER/chunks`` once the finished result that holds them is written."""
    shutil.rmtree(Path(folder) / CHUNKS_DIR, ignore_errors=True)
