"""Batches of prepared rows: right padding, labels -100 on padding, restarting position ids.

No ``attention_mask`` is returned on purpose: transformers then derives a block-diagonal causal
mask from ``position_ids`` (one block per packed sample, see zhtune.data.sft), and right padding
never influences real tokens under a causal mask. Padding continues the last sample's positions, so
a batch of unpacked rows is not mistaken for packed data and keeps the plain causal path. ``row_tokens`` (real tokens per row) is consumed by the trainer to
count trained tokens and never reaches the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class PackedCollator:
    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(r["input_ids"]) for r in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, n) in enumerate(zip(rows, lengths)):
            input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
            position_ids[i, :n] = torch.as_tensor(row["position_ids"], dtype=torch.long)
            last = int(position_ids[i, n - 1]) if n else -1
            position_ids[i, n:] = torch.arange(last + 1, last + 1 + width - n)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                "row_tokens": torch.as_tensor(lengths, dtype=torch.long)}
