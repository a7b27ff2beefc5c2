"""One process, one device; precision auto per GPU generation. No GPU here: the device count and
compute capability are mocked, and the real decision code runs."""
from __future__ import annotations

import pytest
import torch

from zhtune.devices import auto_precision, multi_gpu_hint, pick_device
from zhtune.errors import UserError
from zhtune.models.loading import pick_dtype
from zhtune.train.trainer import resolve_precision


@pytest.fixture
def gpus(monkeypatch):
    """A machine with GPUs of the given compute capabilities (index -> (major, minor))."""
    state = {"current": 0, "set": []}

    def install(*capabilities):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])

        def capability(device=None):
            if isinstance(device, int):
                return capabilities[device]
            index = torch.device(device).index if device is not None else None
            return capabilities[state["current"] if index is None else index]

        def set_device(device):
            index = device if isinstance(device, int) else torch.device(device).index
            state["current"] = index
            state["set"].append(index)

        monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
        monkeypatch.setattr(torch.cuda, "set_device", set_device)
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        return state

    return install


@pytest.mark.parametrize("capability, want", [
    ((7, 0), "fp16"),  # V100: bf16 only emulated
    ((7, 5), "fp16"),  # T4, RTX 2080 Ti
    ((8, 0), "bf16"),  # A100
    ((8, 6), "bf16"),  # RTX 3090, A40
    ((9, 0), "bf16"),  # H100 / H200
])
def test_auto_precision_by_compute_capability(gpus, capability, want):
    gpus(capability)
    cuda = torch.device("cuda")
    assert auto_precision(cuda, training=True) == want
    assert resolve_precision("auto", cuda) == want
    assert pick_dtype("auto", cuda) == {"bf16": torch.bfloat16, "fp16": torch.float16}[want]
    # An explicit choice is kept.
    assert resolve_precision("fp32", cuda) == "fp32" and pick_dtype("float32", cuda) == torch.float32


def test_auto_precision_asks_the_named_gpu(gpus):
    gpus((9, 0), (7, 5))  # a mixed machine: cuda:1 is a T4
    assert auto_precision(torch.device("cuda:0"), training=True) == "bf16"
    assert auto_precision(torch.device("cuda:1"), training=True) == "fp16"
    assert pick_dtype("auto", torch.device("cuda:1")) == torch.float16


def test_cpu_precision_unchanged(monkeypatch):
    import zhtune.devices as devices

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(devices, "cpu_supports_bf16", lambda native=native: native)
        assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")  # training autocast
        assert pick_dtype("auto", cpu) == torch.float32  # weights and evaluation: fp32
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


def test_pick_device(gpus, monkeypatch):
    gpus((9, 0), (9, 0))
    assert pick_device("auto") == torch.device("cuda") and pick_device("cuda:1") == torch.device("cuda:1")
    assert pick_device("cpu") == torch.device("cpu")
    # Under a distributed launch each process takes the GPU of its local rank ...
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("cuda") == torch.device("cuda:1") and pick_device("auto") == torch.device("cuda:1")
    # ... and one named GPU for all of them is refused.
    with pytest.raises(UserError, match="names one GPU, but 2 processes"):
        pick_device("cuda:0")


def test_multi_gpu_hint(gpus, monkeypatch):
    gpus((9, 0), (9, 0), (9, 0), (9, 0))
    hint = multi_gpu_hint(torch.device("cuda:0"))
    assert "--nproc 4" in hint and "train.num_processes" in hint and "\n" not in hint
    assert multi_gpu_hint(torch.device("cpu")) is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert multi_gpu_hint(torch.device("cuda:0")) is None  # already using them
    gpus((9, 0))
    assert multi_gpu_hint(torch.device("cuda")) is None


def _args(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, **kw)


def test_one_process_trains_on_the_named_gpu_only(gpus, tmp_path):
    from accelerate import PartialState
    from transformers import TrainingArguments

    from zhtune.train.device_args import OneDeviceTrainingArguments

    state = gpus((9, 0), (9, 0), (9, 0), (9, 0))
    try:
        # What transformers does on its own: cuda:0 and every GPU counted -> nn.DataParallel.
        plain = _args(TrainingArguments, tmp_path)
        assert plain.n_gpu == 4 and plain.device == torch.device("cuda:0")
        for name, want in (("cuda:1", "cuda:1"), ("cuda:3", "cuda:3"), ("cuda", "cuda:0")):
            state["current"] = 0
            args = _args(OneDeviceTrainingArguments, tmp_path, zhtune_device=name)
            assert args.n_gpu == 1 and args.device == torch.device(want), name
            assert state["current"] == torch.device(want).index  # a bare "cuda" now means it
            assert PartialState().device == torch.device(want)  # where accelerate places things
            assert args.parallel_mode.name == "NOT_PARALLEL"
        cpu = _args(OneDeviceTrainingArguments, tmp_path, zhtune_device="cpu", use_cpu=True)
        assert cpu.n_gpu == 0 and cpu.device == torch.device("cpu")
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
