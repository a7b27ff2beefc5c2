"""Pick MKL's math kernels on one thread, before torch runs them on several.

On the CPU, torch sends contiguous float unary ops (cos, sin, exp, log, sqrt, tanh, erf, ...) to
MKL's vector math library. Each intra-op thread calls it on its chunk of the tensor. MKL chooses a
function's kernel on the function's first call in the process. When that first call runs on
several threads at once, one thread can compute its whole chunk with a low-accuracy kernel
(pytorch/pytorch#188792; oneMKL 2024.2, as in torch's wheels). Later calls are accurate.

zhtune met it in the rotary embedding. In 6 of 117 fresh processes (measured), the cos of the first
training batch came out up to 1.5e-4 off in one thread's half of the tensor. That changed the first
step's loss in the 6th digit, and Adam carried the change into the adapter: a resumed run then
failed to match the uninterrupted one. The same can flip a near-tied letter in an evaluation's
first batch.

One call per function on a one-element tensor is too small to be split between threads. Made
before any model runs, it settles MKL's choice on this thread, and every later call is accurate.
"""
from __future__ import annotations

import torch

# The functions torch's CPU kernels hand to MKL (aten/src/ATen/cpu/vml.h), float and double.
VML_FUNCTIONS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1",
                 "log", "log10", "log1p", "log2", "sin", "sqrt", "tan", "tanh", "trunc")

_resolved = False


def resolve_math_kernels() -> None:
    """Call each of MKL's vector math functions once on one thread (see the module's docstring).
    Idempotent and cheap (well under a millisecond)."""
    global _resolved
    if _resolved:
        return
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_FUNCTIONS:
            getattr(torch, name)(x)
    _resolved = True
