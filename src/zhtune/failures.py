"""Environmental failures as one line: what happened, to which path, and the fix.

The CLI passes every exception that reaches it through ``environment_message``; one it recognises
(disk full, read-only or missing folder, permission denied, also when a library wrapped the OS error
in its own exception: torch.save, safetensors) becomes ``error: <message>`` and exit status 2
instead of a traceback. Nothing is left that a rerun would take as done: results are written to a
temporary file and renamed (``zhtune.io``), chunks and checkpoints are committed last, and a
checkpoint without its final file is removed on resume.

``safetensors_problem`` checks a safetensors file's structure (header, and the size its header
promises) without reading the tensors: how a truncated cached model or checkpoint is found.
"""
from __future__ import annotations

import errno
import json
import re
import struct
from pathlib import Path

_FIXES = {
    errno.ENOSPC: ("no space left on device", "free space there (or point the output folder / "
                   "ZHTUNE_HOME at a larger disk) and run the same command again"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota and run the same command again"),
    errno.EROFS: ("read-only file system", "write to a writable folder (--output-dir, output.dir, "
                  "ZHTUNE_HOME)"),
    errno.EACCES: ("permission denied", "make it writable for you (chmod / chown) or write elsewhere"),
    errno.EPERM: ("operation not permitted", "make it writable for you or write elsewhere"),
    errno.ENOENT: ("no such file or folder", "check the path (was the folder removed or unmounted "
                   "while zhtune ran?) and run the same command again"),
    errno.ENOTDIR: ("a file where a folder was expected", "remove or rename that file"),
}
# The same failures after a library wrapped them in its own exception type and message.
_WRAPPED = [
    (re.compile(r"No space left on device|os error 28|StorageFull", re.I), errno.ENOSPC),
    (re.compile(r"Disk quota exceeded|os error 122", re.I), errno.EDQUOT),
    (re.compile(r"Read-only file system|os error 30", re.I), errno.EROFS),
    (re.compile(r"Permission denied|os error 13", re.I), errno.EACCES),
]


def environment_message(exc: BaseException) -> str | None:
    """One line for an environmental failure (naming the path and the fix), else None."""
    code, path = None, None
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FIXES:
            code, path = e.errno, e.filename
            break
    if code is None:
        text = " ".join(str(e) for e in _chain(exc))
        if isinstance(exc, OSError) or "PytorchStreamWriter failed writing" in text \
                or type(exc).__name__ == "SafetensorError":
            code = next((c for pattern, c in _WRAPPED if pattern.search(text)), None)
            if code is None and "PytorchStreamWriter failed writing" in text:
                code = errno.ENOSPC  # torch.save's only message for a failed write; the usual cause
        path = _path_in(text)
    if code is None:
        return None
    what, fix = _FIXES[code]
    return f"{path or '(path not reported)'}: {what}; {fix}"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _path_in(text: str) -> str | None:
    found = re.search(r"(/[^\s'\"]+)", text)
    return found.group(1) if found else None


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (truncated, or not safetensors), else None.
    Reads only the header: the 8-byte length, the JSON table, and the data size it promises."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, too short for a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                return f"header of {n} bytes in a file of {size} bytes (truncated or not safetensors)"
            table = json.loads(f.read(n))
    except OSError as err:
        return f"cannot read ({err.strerror})"
    except (ValueError, UnicodeDecodeError):
        return "header is not valid JSON (damaged or not safetensors)"
    ends = [v["data_offsets"][1] for k, v in table.items() if k != "__metadata__" and isinstance(v, dict)]
    want = 8 + n + max(ends, default=0)
    if size < want:
        return f"truncated: {size} bytes, its header promises {want}"
    return None
