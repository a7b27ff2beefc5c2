"""The HF TrainingArguments of a process that trains on exactly one device.

transformers 5.x, in a process outside a distributed launch, takes ``cuda:0`` and counts every
visible GPU in ``n_gpu`` (``TrainingArguments._setup_devices``); the Trainer then wraps the model in
``nn.DataParallel`` when ``n_gpu > 1`` (``Trainer._wrap_model``). DataParallel's replicas copy the
bound ``forward`` methods zhtune installs on layer instances (``train/fused.py``,
``train/fused_mlp.py``), so the replicas on GPUs 1..N would compute with cuda:0's weights, and a
configured ``model.device: cuda:1`` would be ignored. Here the process keeps ``n_gpu = 1`` and the
device the config names; several GPUs are used through a distributed launch (``--nproc``), where
transformers already gives each process the GPU of its local rank and ``n_gpu = 1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import TrainingArguments


@dataclass
class OneDeviceTrainingArguments(TrainingArguments):
    zhtune_device: str | None = field(default=None, metadata={
        "help": "The one device a non-distributed process trains on (zhtune.devices.pick_device)."})

    @cached_property
    def _setup_devices(self) -> torch.device:
        device = super()._setup_devices
        from accelerate.utils import DistributedType

        state = self.distributed_state
        distributed = state is not None and state.distributed_type != DistributedType.NO
        if distributed or self.zhtune_device is None:
            return device
        wanted = torch.device(self.zhtune_device)
        if wanted.type != "cuda":
            return device
        if wanted.index is None:
            wanted = torch.device("cuda", torch.cuda.current_device())
        self._n_gpu = 1  # no nn.DataParallel over the other visible GPUs
        torch.cuda.set_device(wanted)  # what a bare "cuda" means from here on (accelerate's device)
        if state is not None:
            state.device = wanted  # the Accelerator places the model and batches here
        return wanted
