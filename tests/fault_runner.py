"""The zhtune CLI with one fault injected, for the fault-matrix and resume tests (run as a script:
``python tests/fault_runner.py <zhtune arguments>``).

``ZHTUNE_TEST_FAULT="<kind>@<where>[#n]"``: at the n-th (default first) matching write of this
process, before it happens, ``kind`` strikes: ``sigkill`` / ``sigterm`` (the real signal, sent to this
process), or ``enospc`` (the write fails as on a full disk). ``where`` is a glob over the full path
of zhtune's atomic writes (zhtune.io.atomic_write_bytes: chunks, markers, manifests, results), or
``checkpoint``: a training checkpoint as the HF Trainer saves it (sigkill / sigterm strike just
after it is written; enospc leaves a torn checkpoint folder, as a real full disk does, and fails).
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal
import sys


def fault_env(fault: str | None = None) -> dict:
    """The environment to run this script under: one thread, unbuffered output, and ``fault`` (or
    none, whatever the calling environment holds) as ``ZHTUNE_TEST_FAULT``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("ZHTUNE_TEST_FAULT", None)
    if fault:
        env["ZHTUNE_TEST_FAULT"] = fault
    return env


def _strike(kind: str, path: str) -> None:
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before the next line
    elif kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    else:
        raise SystemExit(f"fault_runner: unknown fault {kind!r}")


def install(spec: str, setattr=setattr) -> None:
    """Install the fault ``spec``; ``setattr`` may be pytest's ``monkeypatch.setattr`` (undone after
    the test) when the fault is injected into the test's own process."""
    kind, _, rest = spec.partition("@")
    where, _, nth = rest.partition("#")
    nth = int(nth or 1)
    seen = 0

    def due(path: str) -> bool:
        nonlocal seen
        if where == "checkpoint" or not fnmatch.fnmatch(path, where):
            return False
        seen += 1
        return seen == nth

    import zhtune.io as zio

    write = zio.atomic_write_bytes

    def faulty_write(path, data):
        if due(str(path)):
            _strike(kind, str(path))
        return write(path, data)

    setattr(zio, "atomic_write_bytes", faulty_write)  # before any zhtune module binds the name
    if where != "checkpoint":
        return
    from pathlib import Path

    from transformers import Trainer

    save = Trainer._save_checkpoint

    def faulty_save(self, model, trial):
        nonlocal seen
        seen += 1
        if seen != nth:
            return save(self, model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if kind == "enospc":  # the weights half written, nothing after them
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")
            _strike(kind, str(folder / "adapter_model.safetensors"))
        save(self, model, trial)
        _strike(kind, str(folder))

    setattr(Trainer, "_save_checkpoint", faulty_save)


if __name__ == "__main__":
    if os.environ.get("ZHTUNE_TEST_FAULT"):
        install(os.environ["ZHTUNE_TEST_FAULT"])
    from zhtune.cli import main

    sys.argv[0] = "zhtune"
    main()
