"""MKL's vector math kernels are chosen on one thread before any model runs (zhtune.models.cpu_math).

The race itself (one fresh process in tens to hundreds) is shown by benchmarks/vml_first_call.py,
not here: a test that fails once in 70 runs proves nothing either way."""
from __future__ import annotations

import torch

from zhtune.models import cpu_math


def test_every_vml_function_is_called_once_per_dtype_on_one_element(monkeypatch):
    calls = []
    for name in cpu_math.VML_FUNCTIONS:
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda x, _n=name, _f=real: calls.append((_n, x.dtype, x.numel())) or _f(x))
    monkeypatch.setattr(cpu_math, "_resolved", False)

    cpu_math.resolve_math_kernels()
    expected = {(n, d, 1) for n in cpu_math.VML_FUNCTIONS for d in (torch.float32, torch.float64)}
    assert sorted(calls, key=str) == sorted(expected, key=str)
    # One element is below every intra-op grain size: the call cannot be split between threads.
    assert all(numel == 1 for _, _, numel in calls)

    cpu_math.resolve_math_kernels()  # once per process
    assert len(calls) == len(expected)


def test_load_model_resolves_them_before_the_weights_load(tiny_llama_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from zhtune.models.loading import load_model

    monkeypatch.setattr(cpu_math, "_resolved", False)
    seen = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: seen.append(cpu_math._resolved) or real(*a, **k))
    load_model(str(tiny_llama_dir))
    assert seen == [True]
