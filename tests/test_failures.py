"""Environmental failures as one line (zhtune.failures) and the checks behind them."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from safetensors.torch import save_file

from zhtune.failures import environment_message, safetensors_problem
from zhtune.io import atomic_write_json


def test_disk_full_write_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write() names no file

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as err:
        atomic_write_json(tmp_path / "out" / "summary.json", {"a": 1})
    assert err.value.filename == str(tmp_path / "out" / "summary.json")
    assert list((tmp_path / "out").iterdir()) == []  # no temporary file, no summary
    line = environment_message(err.value)
    assert line.startswith(f"{tmp_path / 'out' / 'summary.json'}: no space left on device; free space")
    assert "\n" not in line


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied"),
                                         (errno.ENOENT, "no such file or folder")])
def test_os_errors(code, words, tmp_path):
    err = OSError(code, os.strerror(code), str(tmp_path / "x"))
    assert environment_message(err).startswith(f"{tmp_path / 'x'}: {words}; ")


def test_wrapped_and_unrelated_errors():
    wrapped = RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed "
                           "writing file data/3: file write failed")
    assert "no space left on device" in environment_message(wrapped)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/ckpt/optimizer.pt")
        except OSError as inner:
            raise ValueError("saving failed") from inner
    except ValueError as outer:
        assert environment_message(outer).startswith("/ckpt/optimizer.pt: no space left")
    assert environment_message(ValueError("a bug")) is None
    assert environment_message(OSError(errno.EBADF, "bad fd")) is None


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(path))
    assert safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in safetensors_problem(path)
    path.write_bytes(data[:5])
    assert "too short" in safetensors_problem(path)
    path.write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{{{{")
    assert "not valid JSON" in safetensors_problem(path)


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    from zhtune.models.sources import SOURCE_RECORD, build_cache_entry

    builds = []

    def build(work, model_dir):
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text("{}")
        save_file({"w": torch.ones(8, 8)}, str(model_dir / "model.safetensors"))
        builds.append(1)
        return {"spec": "test"}

    entry = tmp_path / "models" / "entry"
    build_cache_entry(entry, build)
    build_cache_entry(entry, build)
    assert len(builds) == 1 and (entry / SOURCE_RECORD).is_file()
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short after it was cached
    build_cache_entry(entry, build)
    assert len(builds) == 2 and safetensors_problem(weights) is None


def test_truncated_local_model_is_named(tmp_path):
    from zhtune.errors import UserError
    from zhtune.models.sources import check_model_folder

    (tmp_path / "config.json").write_text("{}")
    save_file({"w": torch.ones(8, 8)}, str(tmp_path / "model.safetensors"))
    check_model_folder(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(UserError, match=r"model.safetensors: truncated: .*pull or copy the model again"):
        check_model_folder(tmp_path)
