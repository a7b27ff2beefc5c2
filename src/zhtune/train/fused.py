"""Memory-lean training pieces: the loss on labelled positions only, and a fused LoRA linear.

Where the memory of a LoRA step goes (SmolLM2-135M, 2 packed rows of 512 tokens, fp32, measured
with ``torch.autograd.graph.saved_tensors_hooks``; docs in README "Training speed and memory"):

* **LoRA dropout**, 1.2 GB: PEFT computes ``lora_B(lora_A(dropout(x)))`` per adapted layer, and
  autograd keeps, for each of the 7 layers, a float dropout mask *and* the dropped-out copy of
  ``x`` — although q/k/v (and gate/up) share one input. ``LoraLinearFunction`` keeps the shared
  input once (a reference, no copy), a 1-byte mask, and the rank-r activations.
* **Logits over the whole vocabulary**, 0.4 GB: HF computes ``lm_head`` at every position
  (49,152 x 1,024 floats), then ``log_softmax`` keeps another copy for the backward pass, although
  a third of the positions (the prompts) have no target. ``linear_cross_entropy`` takes the hidden
  states at the labelled positions only and runs head + cross-entropy in chunks, computing the
  gradient of the hidden states chunk by chunk in the forward pass (the head is frozen), so no
  (positions x vocabulary) tensor outlives a chunk.

Both compute exactly what PEFT / HF compute (tests/test_fused.py: same loss to 1e-5, same
gradients), in the autocast dtype when autocast is on.
"""
from __future__ import annotations

import contextlib
import types

import torch

IGNORE_INDEX = -100
# Bytes of logits (and their softmax) one chunk of the loss may hold, per device type: rows per
# chunk = budget / (vocabulary x bytes per logit), so Qwen's 152k vocabulary gets fewer rows than
# SmolLM2's 49k and the same memory. Each chunk reads the whole head matrix, so chunks should not be
# tiny either: on a GPU the budget is larger (a 7B model's step holds GBs anyway, and a matmul of
# a few rows would leave it idle). CPU: 32 MB, SmolLM2 170 rows in fp32; CUDA: 512 MB, Qwen2.5-7B
# 441 rows under bf16 autocast.
CHUNK_BYTES = {"cpu": 2**25, "cuda": 2**29}


def compute_dtype(device_type: str, fallback: torch.dtype) -> torch.dtype:
    """The dtype matmuls run in here: autocast's when it is on, else the tensors' own."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return fallback


# ---------------------------------------------------------------------------------------------
# Loss on labelled positions


def shifted_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, targets): position t predicts labels[t + 1]; ``keep`` marks positions with a target.

    ``keep`` is (batch, length) bool, ``targets`` the kept targets in row-major order — the order
    of ``hidden[keep]``.
    """
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    keep = nxt != IGNORE_INDEX
    return keep, nxt[keep]


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), chunked; the head ``weight`` must be frozen.

    The gradient w.r.t. ``hidden`` is computed in the forward pass, chunk by chunk (softmax minus
    one-hot, times the head), so only one chunk of logits exists at a time and nothing of
    vocabulary size is kept for backward. Matmuls run in the autocast dtype when autocast is on
    (as HF's head does); the softmax and the loss are always fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, need_grad: bool):
        dtype = compute_dtype(hidden.device.type, hidden.dtype)
        w = weight.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if need_grad else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk].to(dtype), targets[start:start + chunk]
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_grad:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                grad[start:start + chunk] = (probs.to(dtype) @ w).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None


def chunk_rows(vocab: int, device_type: str, dtype: torch.dtype) -> int:
    """Rows of one loss chunk: ``CHUNK_BYTES`` over what a row of logits takes in
    ``LinearCrossEntropy`` (fp32 logits, plus the matmul's output and the softmax's cast in
    ``dtype`` when that is not fp32)."""
    per_logit = 4 + (0 if dtype == torch.float32 else 2 * torch.finfo(dtype).bits // 8)
    return max(1, CHUNK_BYTES.get(device_type, CHUNK_BYTES["cpu"]) // (vocab * per_logit))


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` (N x vocab) against ``targets`` (N,)."""
    if weight.requires_grad:
        raise ValueError("linear_cross_entropy needs a frozen output head")
    device = hidden.device.type
    chunk = chunk or chunk_rows(weight.shape[0], device, compute_dtype(device, hidden.dtype))
    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk, need_grad)


def labelled_loss(model, head: torch.nn.Linear, inputs: dict, labels: torch.Tensor,
                  head_autocast) -> tuple[torch.Tensor, int, object]:
    """(summed loss, labelled positions, model outputs): the model runs without its head.

    ``logits_to_keep`` as an all-False mask selects no position for the head (transformers >= 5
    takes a (batch, length) bool mask there), and the head itself is not run on that empty
    selection (``_headless``); ``hidden_states[-1]`` is the final-norm output that the head would
    have read. Calling the model itself (not its inner decoder) keeps DDP and accelerate's
    autocast wrapper in the path.
    """
    keep, targets = shifted_targets(labels)
    with _headless(head):
        outputs = model(**inputs, logits_to_keep=torch.zeros_like(keep), output_hidden_states=True)
    hidden = outputs.hidden_states[-1][keep]
    with head_autocast:
        loss = linear_cross_entropy(hidden, head.weight, targets)
    return loss, int(targets.numel()), outputs


@contextlib.contextmanager
def _headless(head: torch.nn.Linear):
    """Inside, ``head`` returns empty logits without reading its weight: run on no positions,
    autocast would still cast the whole matrix to bf16 and autograd keep that copy for the
    backward pass (SmolLM2: 54 MB per step, for nothing)."""
    own = head.__dict__.get("forward")  # an instance-level forward (accelerate's hooks) comes back
    head.forward = lambda h: h.new_empty(*h.shape[:-1], head.out_features)
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def supports_labelled_loss(model) -> bool:
    """Heads this loss reproduces exactly: a plain bias-free linear, no logit soft-capping."""
    head = model.get_output_embeddings()
    cfg = getattr(model, "config", None)
    return (isinstance(head, torch.nn.Linear) and head.bias is None and not head.weight.requires_grad
            and getattr(cfg, "final_logit_softcapping", None) is None)


# ---------------------------------------------------------------------------------------------
# Fused LoRA linear


def _dropped_of_65536(p: float) -> int:
    """The dropout rate the masks realise, in units of 2^-16 (|error| <= 7.6e-6)."""
    return round(p * 65536)


def keep_probability(p: float) -> float:
    """P(keep) of ``dropout_mask``: 1 - p with p rounded to a multiple of 2^-16."""
    return 1.0 - _dropped_of_65536(p) / 65536


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A bool keep-mask of x's shape (1 byte per element; PEFT's float mask takes 4).

    Drawn as 16-bit integers, four from each 64-bit random number: on the CPU, ``bernoulli_``
    calls the generator once per element and took 12% of a bf16 training step (SmolLM2), this
    a third of that. P(keep) is ``keep_probability(p)``."""
    n = x.numel()
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    return (words.view(torch.int16)[:n] >= _dropped_of_65536(p) - 32768).view(x.shape)


def _as_factor(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bool mask as 0/1 in ``dtype``, to multiply by. Read as bytes first: on the CPU, a product
    with a bool tensor converts it element by element (3x slower than uint8 -> float plus a float
    product; measured, SmolLM2's [1024, 576] and [1024, 1536] in fp32 and bf16)."""
    return mask.view(torch.uint8).to(dtype)


class _LastCast:
    """The input of the previous LoRA layer in the compute dtype: q, k and v (and gate and up) read
    one tensor, which is then cast once instead of three (twice) times, and the cast copy is what
    their backward passes keep (shared, and half the size of an fp32 input under bf16)."""

    source: torch.Tensor | None = None
    version = -1
    cast: torch.Tensor | None = None

    @classmethod
    def get(cls, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if x.dtype == dtype:
            return x
        if x.is_inference():  # no version counter to tell a changed tensor by; nothing is saved
            return x.to(dtype)
        if not (cls.source is x and cls.version == x._version and cls.cast.dtype == dtype):
            cls.source, cls.version, cls.cast = x, x._version, x.to(dtype)
        return cls.cast


class LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s * (drop(x) A^T) B^T with a frozen W, b; trains A and B.

    Saved for backward: ``x`` in the compute dtype (q/k/v share one copy, see ``_LastCast``), the
    bool dropout mask and ``drop(x) A^T`` (rank r). ``drop(x)`` is rebuilt from them in the
    backward pass instead of being stored; the dropout's 1 / P(keep) is applied on the rank-r side.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float):
        dtype = compute_dtype(x.device.type, x.dtype)
        xc = _LastCast.get(x, dtype).reshape(-1, x.shape[-1])
        mask = dropout_mask(xc, p) if p > 0 else None
        a = (xc * _as_factor(mask, dtype) if mask is not None else xc) @ lora_a.to(dtype).t()
        if mask is not None:
            a.mul_(1.0 / keep_probability(p))
        w = weight.to(dtype)
        y = xc @ w.t() if bias is None else torch.addmm(bias.to(dtype), xc, w.t())
        y.addmm_(a, lora_b.to(dtype).t(), alpha=scaling)
        ctx.save_for_backward(xc, weight, lora_a, lora_b, mask, a)
        ctx.scaling, ctx.p, ctx.dtype, ctx.x_meta = scaling, p, dtype, (x.shape, x.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        xc, weight, lora_a, lora_b, mask, a = ctx.saved_tensors
        s, p, dtype = ctx.scaling, ctx.p, ctx.dtype
        x_shape, x_dtype = ctx.x_meta
        gy = grad_y.reshape(-1, grad_y.shape[-1]).to(dtype)
        a_w, b_w = lora_a.to(dtype), lora_b.to(dtype)
        ga = (gy @ b_w) * s  # gradient at the rank-r activations
        grad_b = ((gy.t() @ a) * s).to(lora_b.dtype) if ctx.needs_input_grad[4] else None
        grad_a = grad_x = None
        factor = _as_factor(mask, dtype) if mask is not None else None
        if ctx.needs_input_grad[3]:
            if mask is None:
                grad_a = (ga.t() @ xc).to(lora_a.dtype)
            else:
                grad_a = (ga.t() @ (xc * factor)).mul_(1.0 / keep_probability(p)).to(lora_a.dtype)
        if ctx.needs_input_grad[0]:
            gx = gy @ weight.to(dtype)
            if mask is None:
                gx.addmm_(ga, a_w)
            else:
                gx.add_((ga @ a_w).mul_(factor), alpha=1.0 / keep_probability(p))
            grad_x = gx.view(x_shape).to(x_dtype)
        return grad_x, None, None, grad_a, grad_b, None, None


def _vanilla(layer) -> bool:
    """One active adapter without a variant (DoRA...) on a frozen ``nn.Linear``: exactly that class,
    so a quantised base (bitsandbytes ``Linear4bit`` / ``Linear8bitLt``, QLoRA) is not one."""
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    base = layer.base_layer
    return (len(active) == 1 and active[0] not in layer.lora_variant
            and type(base) is torch.nn.Linear and not base.weight.requires_grad
            and (base.bias is None or not base.bias.requires_grad))


def _fused_lora_forward(self, x, *args, **kwargs):
    """peft.tuners.lora.Linear.forward for the plain case; anything else takes PEFT's own path."""
    if args or kwargs or self.disable_adapters or self.merged or not _vanilla(self):
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer
    name = next(a for a in self.active_adapters if a in self.lora_A)
    drop = self.lora_dropout[name]
    p = drop.p if isinstance(drop, torch.nn.Dropout) and self.training else 0.0
    return LoraLinearFunction.apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                    self.lora_B[name].weight, float(self.scaling[name]), p)


def fuse_lora_layers(model) -> int:
    """Route every PEFT LoRA ``Linear`` of ``model`` through ``LoraLinearFunction``; returns how many.

    The modules, parameters and state dict stay PEFT's (saving, loading, merging, scaling are
    unchanged); only the instance's ``forward`` is replaced, and it falls back to PEFT's own for
    anything but one active vanilla adapter on a frozen ``nn.Linear``. PEFT wraps a quantised base
    layer (QLoRA) in its own classes (``peft.tuners.lora.bnb``), which are not touched here.
    """
    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLinear):
            module.forward = types.MethodType(_fused_lora_forward, module)
            n += 1
    return n


def store_frozen_weights_in(model, dtype: torch.dtype) -> int:
    """Keep the frozen base weights (and biases) of the fused LoRA layers in ``dtype``; returns how
    many layers. For training under ``dtype`` autocast, which rounds them to ``dtype`` in every
    matmul anyway: the same products, without the casts (forward and backward, every step) and
    with half the memory. Evaluation inside training without autocast (the probes) then sees the
    weights as trained: rounded. Layers left to PEFT's own path are not touched.

    The other frozen tensors are copied out of the checkpoint file: a model loaded from
    safetensors reads its weights from the mapped file, and while any tensor points into it, the
    pages read for the conversion stay resident (SmolLM2: 430 MB of fp32 weights beside their
    214 MB bf16 copies; the copies of the embeddings and norms are 113 MB)."""
    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and _vanilla(module) and module.base_layer.weight.dtype != dtype:
            base = module.base_layer
            base.weight.data = base.weight.data.to(dtype)
            if base.bias is not None:
                base.bias.data = base.bias.data.to(dtype)
            n += 1
    if n:
        for tensor in [*model.parameters(), *model.buffers()]:
            if not tensor.requires_grad and tensor.dtype != dtype:
                tensor.data = tensor.data.clone()
    return n
