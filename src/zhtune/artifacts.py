"""Facts recorded with every artifact zhtune writes: when it was made and what bytes it holds.

One place for the timestamp format and the checksum, so that every record (model cache, prepared
data, adapter, evaluation summary, report) can be compared with every other.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_timestamp() -> str:
    """Now, in UTC, to the second: ``2026-11-30T08:00:00Z``."""
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime())


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
