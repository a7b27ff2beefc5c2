"""Small file helpers shared by every stage: atomic writes and where things live."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _naming(err, path.parent) from None
    try:
        # mkstemp makes the file 0600; results are for sharing, so give them a normal file's mode.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from None
        raise
    return path


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` with the path it concerns (a failed write() names none): the CLI's one line names it
    (zhtune.failures)."""
    if err.filename is None:
        err.filename = str(path)
    return err


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``; a file that does not parse is an error naming the file and line."""
    from zhtune.errors import NotJSONError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise NotJSONError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line; a line that is not JSON is an error that
    names the file and the line."""
    from zhtune.errors import UserError

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON: {err.msg}") from None


def read_jsonl(path: str | Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def zhtune_home() -> Path:
    """Cache root for converted models and shared baselines (``ZHTUNE_HOME``, default ~/.cache/zhtune)."""
    return Path(os.environ.get("ZHTUNE_HOME", Path.home() / ".cache" / "zhtune")).expanduser()


def default_data_dir(explicit: str | Path | None = None) -> Path | None:
    """The local data folder: an explicit path, else ``ZHTUNE_DATA_DIR``, else None (use the hub).
    Absolute: a relative path means the folder it named when zhtune started (the CLI makes
    ``ZHTUNE_DATA_DIR`` absolute at start, ``resolve_start_paths``), wherever the work runs later."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get("ZHTUNE_DATA_DIR")
    return Path(env).expanduser().absolute() if env else None


def resolve_start_paths() -> None:
    """Make a relative ``ZHTUNE_DATA_DIR`` / ``ZHTUNE_HOME`` absolute, once, at start: worker
    processes and scripts started in another folder then read the same folders."""
    for name in ("ZHTUNE_DATA_DIR", "ZHTUNE_HOME"):
        value = os.environ.get(name)
        if value:
            os.environ[name] = str(Path(value).expanduser().absolute())


# ORG/NAME as the Hugging Face hub spells repository ids (models and datasets alike).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is spelled like a hub repository id (it may still be a local path)."""
    return bool(_HUB_ID.match(text))
