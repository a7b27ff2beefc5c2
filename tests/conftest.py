"""Shared fixtures: the real data folder and tiny random Llama / Qwen2 models built once per run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("ZHTUNE_DATA_DIR"):  # as the CLI does at start: tests chdir and start subprocesses
    os.environ["ZHTUNE_DATA_DIR"] = str(Path(os.environ["ZHTUNE_DATA_DIR"]).expanduser().absolute())


def data_dir() -> Path:
    """ZHTUNE_DATA_DIR, else ../shared/data beside the checkout; absolute, because tests run
    commands from other folders (a relative ZHTUNE_DATA_DIR names a folder from where pytest started)."""
    env = os.environ.get("ZHTUNE_DATA_DIR")
    path = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    return path.absolute()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if not (path / "ceval").is_dir():
        pytest.fail(f"real data not found at {path}; set ZHTUNE_DATA_DIR")
    # Absolute, for every command a test starts (subprocesses inherit it), whoever set it how.
    os.environ["ZHTUNE_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, shared_data) -> Path:
    from zhtune.testing import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"), shared_data)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory, shared_data) -> Path:
    from zhtune.testing import build_tiny_model

    return build_tiny_model("qwen2", tmp_path_factory.mktemp("tiny-qwen2"), shared_data)


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model_dir(request, tiny_llama_dir, tiny_qwen_dir) -> Path:
    return tiny_llama_dir if request.param == "llama" else tiny_qwen_dir


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: tiny models on a shared 2-core machine stall on
    thread synchronisation with more."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_autocast_left_on():
    """A test that leaves autocast on (e.g. by entering one autocast object twice) would make every
    later test compute in bf16: fail the test that did it, not the ones after it."""
    import torch

    yield
    leaked = torch.is_autocast_enabled("cpu")
    torch.set_autocast_enabled("cpu", False)
    assert not leaked, "this test left CPU autocast enabled"
