"""Atomic writes: whole files only, nothing left behind, and a normal file mode."""
from __future__ import annotations

import json
import os
import stat

import pytest

from zhtune import io


def test_atomic_write_replaces_whole_file_with_umask_mode(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    io.atomic_write_json(path, {"a": 1})
    io.atomic_write_json(path, {"b": "中文"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": "中文"}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary files left
    # mkstemp's 0600 would hide results from the rest of a team on a shared server.
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~io._UMASK


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "rows.jsonl"
    io.atomic_write_jsonl(path, [{"i": 1}])

    def rows():
        yield {"i": 2}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        io.atomic_write_jsonl(path, rows())
    assert io.read_jsonl(path) == [{"i": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_artifact_facts(tmp_path):
    import hashlib
    import re

    from zhtune.artifacts import sha256_file, sha256_text, utc_timestamp
    from zhtune.io import is_hub_id

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_timestamp())
    blob = bytes(range(256)) * 40_000  # > one 4 MiB read block
    (tmp_path / "w.bin").write_bytes(blob)
    assert sha256_file(tmp_path / "w.bin", chunk=1 << 20) == hashlib.sha256(blob).hexdigest()
    assert sha256_text("中文") == hashlib.sha256("中文".encode()).hexdigest()
    assert is_hub_id("Qwen/Qwen2.5-7B-Instruct") and is_hub_id("BelleGroup/train_0.5M_CN")
    assert not is_hub_id("./models/x") and not is_hub_id("a/b/c") and not is_hub_id("plain")
