"""LoRA fine-tuning with PEFT and the HF Trainer: resumable, one writer, adapter appears when done.

Output folder (docs/ARCHITECTURE.md): ``adapter/`` (only once training finished: written to
``.adapter.partial`` and renamed), ``checkpoints/checkpoint-N/`` (HF Trainer: weights, optimizer,
scheduler, RNG), ``train_log.jsonl``, ``runs/`` (TensorBoard), ``config.resolved.yaml`` and
``data/`` when the dataset was prepared on the fly.

Resume: running the same command again continues from the newest *complete* checkpoint. The HF
Trainer writes ``trainer_state.json`` last, so a checkpoint folder without a valid one was being
written when the process died; such folders are removed. Checkpoints made with other settings are
refused rather than silently mixed in (``checkpoints/zhtune_run.json`` holds the fingerprint).

Several processes (``accelerate launch``, DeepSpeed via ``train.deepspeed``): every process runs
the same code; only the main process writes the log, the adapter and the metadata.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, set_seed

from zhtune import __version__
from zhtune.artifacts import utc_timestamp
from zhtune.config import ExperimentConfig, ModelConfig, config_to_dict, fingerprint, save_resolved
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_jsonl, default_data_dir, read_json

log = logging.getLogger(__name__)

ADAPTER_META = "zhtune_adapter.json"
RUN_FILE = "zhtune_run.json"
_CKPT_PREFIX = "checkpoint-"


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_is_complete(path: Path) -> bool:
    """True if the HF Trainer finished writing ``path`` (trainer_state.json is written last)."""
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    has_weights = any((path / n).exists() for n in (
        "adapter_model.safetensors", "model.safetensors", "adapter_model.bin"))
    has_optimizer = (path / "optimizer.pt").exists() or any(path.glob("global_step*"))
    return has_weights and has_optimizer


def _step(path: Path) -> int:
    try:
        return int(path.name[len(_CKPT_PREFIX):])
    except ValueError:
        return -1


def latest_checkpoint(ckpt_dir: Path, remove_incomplete: bool = False) -> Path | None:
    """The newest complete checkpoint; incomplete ones are deleted when ``remove_incomplete``."""
    if not ckpt_dir.is_dir():
        return None
    found = None
    for path in sorted(ckpt_dir.glob(f"{_CKPT_PREFIX}*"), key=_step, reverse=True):
        if _step(path) < 0 or not path.is_dir():
            continue
        if checkpoint_is_complete(path):
            found = found or path
        elif remove_incomplete:
            log.warning("removing incomplete checkpoint %s (the run was stopped while writing it)",
                        path)
            shutil.rmtree(path, ignore_errors=True)
    return found


def run_fingerprint(cfg: ExperimentConfig, dataset_fp: str) -> str:
    """What decides the trained weights: resuming is refused when it changes."""
    train = cfg.train.model_dump(exclude={"report_to", "logging_steps", "save_steps",
                                          "save_total_limit", "probes", "deepspeed",
                                          "gradient_checkpointing", "eval_steps"})
    model = cfg.model.model_dump(exclude={"device"})
    return fingerprint("train", model, config_to_dict(cfg.lora), train, dataset_fp)


# ---------------------------------------------------------------------------------------------
# Callbacks and trainer


class JsonlLogCallback(TrainerCallback):
    """Appends every log entry to ``train_log.jsonl`` (main process only)."""

    def __init__(self, path: Path, resume_step: int | None, is_main: bool):
        self.path = path
        if is_main:
            # A resumed run logs again from its checkpoint: keep only what came before it.
            kept = []
            if resume_step is not None and path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # the last line of a killed run may be cut short
                    if entry.get("step", 0) <= resume_step:
                        kept.append(entry)
            atomic_write_jsonl(path, kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, "epoch": state.epoch, **logs,
                 "num_input_tokens_seen": state.num_input_tokens_seen, "time": time.time()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()


class RichProgressCallback(TrainerCallback):
    """A live rich progress bar: step, latest loss, trained tokens/s, elapsed and remaining time.

    Main process only, and only when stderr is a terminal (as the evaluators' bars: logs, pipes
    and tests stay quiet; ``train_log.jsonl`` has every number anyway).
    """

    def __init__(self, console=None):
        self.console = console
        self.progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.console import Console

        console = self.console or Console(stderr=True)
        if not state.is_world_process_zero or not console.is_terminal:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tokens/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False)
        self.task = self.progress.add_task("training", total=state.max_steps,
                                           completed=state.global_step, loss="-", speed="-")
        # tokens/s of this session: a resumed run starts counting where it resumed
        self.start = (time.perf_counter(), state.num_input_tokens_seen, state.global_step)
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if not self.progress:
            return
        t0, tokens0, _ = self.start
        seconds = time.perf_counter() - t0
        speed = (state.num_input_tokens_seen - tokens0) / seconds if seconds > 0 else 0.0
        self.progress.update(self.task, completed=state.global_step, speed=f"{speed:,.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.stop()
            self.progress = None


class ZhtuneTrainer(Trainer):
    """The HF Trainer with two changes.

    * The loss is computed on labelled positions only (``zhtune.train.fused``): the model runs
      without its head, and head + cross-entropy run chunked on the positions that have a target.
      Same value and gradients as HF's loss, without (positions x vocabulary) logits in memory.
      Off under DeepSpeed (ZeRO-3 partitions the head weight outside the forward pass) and for
      heads it does not reproduce (bias, soft-capping).
    * Real (non-padding) tokens trained on are counted in ``state.num_input_tokens_seen``.
    """

    def __init__(self, *args, precision: str = "fp32", **kwargs):
        super().__init__(*args, **kwargs)
        from zhtune.train.fused import supports_labelled_loss

        self.precision = precision
        self.labelled_loss = (not self.args.deepspeed
                              and supports_labelled_loss(self.accelerator.unwrap_model(self.model)))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_tokens = inputs.pop("row_tokens", None)
        if row_tokens is not None and model.training:
            n = row_tokens.sum().reshape(1).to(self.args.device)
            if self.args.world_size > 1:
                n = self.accelerator.gather(n)
            self.state.num_input_tokens_seen += int(n.sum().item())
        if not self.labelled_loss or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        from zhtune.train.fused import labelled_loss

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        loss, n_labelled, outputs = labelled_loss(model, head, inputs, labels, self._head_autocast())
        # Normalised as HF's causal-LM loss: by the labelled tokens of the whole accumulated batch
        # when the Trainer passes that count (it then skips its own division by the accumulation
        # steps), else a mean over this batch.
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss
        else:
            loss = loss / max(n_labelled, 1)
        return (loss, outputs) if return_outputs else loss

    def _head_autocast(self):
        """The head runs in the training precision, as it does inside the model's forward pass."""
        import contextlib

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.args.device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Settings


def lora_settings(cfg: ExperimentConfig, family) -> dict:
    """Rank / alpha / learning rate with the family's documented defaults filled in."""
    return {
        "rank": cfg.lora.rank or family.lora_rank,
        "alpha": cfg.lora.alpha or family.lora_alpha,
        "dropout": cfg.lora.dropout,
        "use_rslora": cfg.lora.use_rslora,
        "use_dora": cfg.lora.use_dora,
        "learning_rate": cfg.train.learning_rate or family.learning_rate,
    }


def build_peft_model(model, cfg: ExperimentConfig, settings: dict, fused: bool = True):
    """Wrap ``model`` with LoRA adapters as configured; returns (peft model, target module names).

    ``fused``: LoRA layers run through ``zhtune.train.fused.LoraLinearFunction`` (same result,
    a third of PEFT's activation memory); the adapter and its state dict are PEFT's either way.

    Also turns the KV cache off: packed rows rely on the block-diagonal mask that transformers
    derives from ``position_ids``, and it only does so when no cache is in use (with the cache on,
    packed samples would attend to each other). A cache is wasted memory in training anyway.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from zhtune.models.targets import resolve_lora_targets

    model.config.use_cache = False
    targets = resolve_lora_targets(model, cfg.lora.targets)
    peft_cfg = PeftLoraConfig(r=settings["rank"], lora_alpha=settings["alpha"],
                              lora_dropout=settings["dropout"], target_modules=targets,
                              use_rslora=settings["use_rslora"], use_dora=settings["use_dora"],
                              bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, peft_cfg)
    if fused:
        from zhtune.train.fused import fuse_lora_layers

        fuse_lora_layers(peft_model)
    return peft_model, targets


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """True if the CPU multiplies bf16 natively (avx512_bf16 or AMX): then bf16 autocast pays off."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False  # not Linux: no way to tell, so the safe choice
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(requested: str, device: torch.device) -> str:
    """``train.precision`` -> fp32 | bf16 | fp16 for this device (see TrainConfig.precision)."""
    if requested == "fp16" and device.type != "cuda":
        raise UserError(f"train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on {device.type}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def build_training_args(cfg: ExperimentConfig, out: Path, learning_rate: float, has_eval: bool,
                        precision: str, device: torch.device):
    from transformers import TrainingArguments

    t = cfg.train
    report_to = [r for r in t.report_to if r not in ("tensorboard", "none")]
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps or t.save_steps,
        prediction_loss_only=True,  # never keep eval logits (vocab x tokens) in memory
        report_to=report_to or "none",
        seed=t.seed,
        data_seed=t.seed,
        bf16=precision == "bf16",  # autocast, on the CPU too; weights stay as loaded
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        remove_unused_columns=False,  # the collator needs position_ids and row_tokens
        label_names=["labels"],
        dataloader_num_workers=0,
        deepspeed=deepspeed_config(t.deepspeed),
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
    )


def deepspeed_config(spec: str | None) -> str | None:
    """``train.deepspeed``: a JSON path, or the name of a shipped one (``zero2``, ``zero3``)."""
    if not spec:
        return None
    path = Path(spec).expanduser()
    shipped = Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / f"{spec}.json"
    if not path.exists() and shipped.exists():
        path = shipped
    if not path.exists():
        raise UserError(f"train.deepspeed: {spec} does not exist (shipped: zero2, zero3)")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise UserError("train.deepspeed is set but DeepSpeed is not installed "
                        "(pip install deepspeed; it needs CUDA GPUs)") from None
    return str(path)


# glibc's M_MMAP_THRESHOLD (malloc.h). Allocations at least this large get their own mapping.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 512 * 1024


def return_freed_memory_to_os() -> bool:
    """Make glibc give every freed tensor of >= 512 KB back to the OS at once (Linux, CPU training).

    By default glibc raises its mmap threshold to the size of the largest block freed so far (up to
    32 MB), so after the first step every activation (1-6 MB each here) lives in the heap, where
    the freed ones fragment and stay in RSS: SmolLM2's steady-state peak was 4.0 GB for 2.7 GB of
    live tensors (measured; README, "Training speed and memory"). A fixed threshold keeps each
    large tensor in its own mapping, returned when freed, for the cost of fresh zeroed pages per
    allocation. Process-wide, which suits a training process; returns False where not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False


def _device_and_dtype(model_cfg: ModelConfig) -> tuple[torch.device, torch.dtype]:
    from zhtune.models.loading import pick_device, pick_dtype

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        device = torch.device("cpu")
    else:
        device = pick_device(model_cfg.device)
    return device, pick_dtype(model_cfg.dtype, device)


# ---------------------------------------------------------------------------------------------
# Training


def train_lora(cfg: ExperimentConfig, out_dir: str | Path, *, dataset_dir: str | Path | None = None,
               data_dir: str | Path | None = None, resume: bool = True) -> dict:
    """Fine-tune ``cfg.model`` with LoRA on a prepared dataset (or prepare one into OUT/data).

    Returns the run's metrics: train_runtime, train_loss, eval_loss, trainable_params,
    total_params, train_tokens, tokens_per_second, loss_first, loss_last, steps, resumed_from.
    """
    from transformers import PrinterCallback

    from zhtune.data.sft import (check_compatible, load_prepared, load_tokenizer_and_family,
                                 prepare_dataset, tokenizer_fingerprint)
    from zhtune.models.families import ensure_chat_template
    from zhtune.models.loading import load_model
    from zhtune.train.collator import PackedCollator

    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = default_data_dir(data_dir or cfg.data.data_dir)
    device, _ = _device_and_dtype(cfg.model)
    precision = resolve_precision(cfg.train.precision, device)

    # The dataset first (cheap: no weights), so that bad data fails before a model is loaded.
    tokenizer, family, _ = load_tokenizer_and_family(cfg.model)
    tok_fp = tokenizer_fingerprint(tokenizer)
    settings = lora_settings(cfg, family)
    has_eval_guess = cfg.data.val_size > 0
    args = build_training_args(cfg, out, settings["learning_rate"], has_eval_guess, precision,
                               device)
    is_main = args.process_index == 0
    lock = _lock_output(out) if is_main else None  # held until this function returns
    if dataset_dir is None:
        dataset_dir = out / "data"
        with args.main_process_first(desc="prepare data"):
            prepare_dataset(cfg, dataset_dir, data_dir=data_dir, tokenizer=tokenizer, family=family,
                            show_progress=is_main)
    manifest = check_compatible(dataset_dir, tokenizer, family, cfg.model.name_or_path, tok_fp)
    train_ds, val_ds = load_prepared(dataset_dir)
    if (val_ds is not None) != has_eval_guess:
        args = build_training_args(cfg, out, settings["learning_rate"], val_ds is not None,
                                   precision, device)
    run_fp = run_fingerprint(cfg, manifest["settings_fingerprint"])

    adapter_dir, ckpt_dir = out / "adapter", out / "checkpoints"
    if resume and (adapter_dir / ADAPTER_META).exists():
        meta = read_json(adapter_dir / ADAPTER_META)
        if meta.get("run_fingerprint") == run_fp:
            log.info("%s already holds the finished adapter for these settings", adapter_dir)
            return meta["metrics"]
        raise UserError(f"{adapter_dir} holds an adapter trained with other settings; use another "
                        f"--output-dir, or delete it to train again")
    last = None
    with args.main_process_first(desc="find checkpoint"):
        if is_main:
            if not resume:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            run_file = ckpt_dir / RUN_FILE
            if run_file.exists() and read_json(run_file).get("run_fingerprint") != run_fp:
                raise UserError(f"{ckpt_dir} holds checkpoints of a run with other settings; use "
                                f"another --output-dir, or delete {ckpt_dir} to start over")
            latest_checkpoint(ckpt_dir, remove_incomplete=True)
            atomic_write_json(run_file, {"run_fingerprint": run_fp, "config": config_to_dict(cfg)})
            save_resolved(cfg, out)
        if resume:
            last = latest_checkpoint(ckpt_dir)
    resume_step = _step(last) if last else None
    if last:
        log.info("resuming from %s", last)

    # The model. Each process loads it onto its own device.
    if args.device.type == "cpu":
        return_freed_memory_to_os()  # before the model and the first activations are allocated
    model_cfg = cfg.model.model_copy(update={"device": str(args.device)})
    loaded = load_model(model_cfg, for_training=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    if manifest["template"] == "chat":
        ensure_chat_template(tokenizer, family)  # the adapter's tokenizer speaks the trained format
    set_seed(cfg.train.seed)  # LoRA A matrices are drawn at random: same seed, same start
    model, targets = build_peft_model(model, cfg, settings, fused=not cfg.train.deepspeed)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA r=%s alpha=%s on %s: %d trainable of %d parameters (%.3f%%), %s", settings["rank"],
             settings["alpha"], ",".join(targets), trainable, total, 100 * trainable / total,
             precision)

    callbacks: list[TrainerCallback] = [JsonlLogCallback(out / "train_log.jsonl", resume_step, is_main),
                                        RichProgressCallback()]
    if "tensorboard" in cfg.train.report_to:
        from transformers.integrations import TensorBoardCallback

        tensorboard = TensorBoardCallback()  # writes on the main process only
        tensorboard.logging_dir = str(out / "runs")  # not under checkpoints/
        callbacks.append(tensorboard)
    probe_cb = _probe_callback(cfg, tokenizer, family, out, data_dir)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = ZhtuneTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                            data_collator=PackedCollator(pad_id), processing_class=tokenizer,
                            callbacks=callbacks, precision=precision)
    trainer.remove_callback(PrinterCallback)
    if probe_cb is not None:
        probe_cb.bind(trainer)  # probe metrics go through trainer.log: train_log.jsonl, TensorBoard
    tokens_before = 0
    if last:
        tokens_before = read_json(last / "trainer_state.json").get("num_input_tokens_seen", 0)
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    # Throughput of the training steps: HF's train_runtime also counts the evaluations it ran.
    eval_seconds = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history
                       if "eval_runtime" in e and e.get("step", 0) > (resume_step or 0))
    train_seconds = max((result.metrics.get("train_runtime") or 0.0) - eval_seconds, 1e-9)
    eval_metrics = {}
    if val_ds is not None:
        last_eval = [e for e in trainer.state.log_history if "eval_loss" in e]
        if last_eval and last_eval[-1].get("step") == trainer.state.global_step:
            eval_metrics = last_eval[-1]  # already evaluated at the final step
        else:
            eval_metrics = trainer.evaluate()

    state = trainer.state
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    session_tokens = state.num_input_tokens_seen - tokens_before
    metrics = {
        "train_runtime": result.metrics.get("train_runtime"),
        "train_loss": result.metrics.get("train_loss"),
        "eval_loss": eval_metrics.get("eval_loss"),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "steps": state.global_step,
        "epochs": state.epoch,
        "trainable_params": trainable,
        "total_params": total,
        "train_tokens": state.num_input_tokens_seen,
        "tokens_per_second": session_tokens / train_seconds,  # trained (non-padding) tokens
        "eval_seconds": round(eval_seconds, 2),
        "resumed_from": resume_step,
        "wall_time_s": round(time.time() - t_start, 2),
        "device": str(args.device),
        "precision": precision,
        "world_size": args.world_size,
    }
    meta = {
        "base_model": cfg.model.name_or_path,
        "revision": cfg.model.revision,
        "base_model_path": str(loaded.path),
        "family": family.name,
        "template": manifest["template"],
        "lora": {**settings, "targets": targets},
        "trainable_params": trainable,
        "total_params": total,
        "train_tokens": state.num_input_tokens_seen,
        "train_runtime": metrics["train_runtime"],
        "wall_time_s": metrics["wall_time_s"],
        "dataset": {"dir": str(dataset_dir), "settings_fingerprint": manifest["settings_fingerprint"],
                    "tokenizer_fingerprint": tok_fp, "counts": manifest["counts"]},
        "run_fingerprint": run_fp,
        "metrics": metrics,
        "config": config_to_dict(cfg),
        "created": utc_timestamp(),
        "zhtune_version": __version__,
    }
    _save_adapter(trainer, tokenizer, adapter_dir, meta, is_main)
    if lock is not None:
        lock.close()
    if is_main:
        log.info("adapter saved to %s (loss %s -> %s, eval loss %s, %.0f tokens/s)", adapter_dir,
                 metrics["loss_first"], metrics["loss_last"], metrics["eval_loss"],
                 metrics["tokens_per_second"])
    return metrics


def _lock_output(out: Path):
    """An exclusive lock on OUT: two runs writing one folder would interleave logs and checkpoints.

    ``flock`` is released by the kernel when the process dies, so a killed run never leaves a
    stale lock behind. Returns the open lock file (close it to release); None where unsupported.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    f = open(out / ".train.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"{out} is being written by another `zhtune train` process; wait for it "
                        f"to finish or use another --output-dir") from None
    return f


def _save_adapter(trainer: Trainer, tokenizer, adapter_dir: Path, meta: dict, is_main: bool) -> None:
    """Write the adapter to a temporary folder, then rename: ``adapter/`` is always complete."""
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.partial")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every process takes part (DeepSpeed ZeRO-3 gathers); main writes
    if is_main:
        tokenizer.save_pretrained(str(tmp))
        (tmp / "training_args.bin").unlink(missing_ok=True)
        atomic_write_json(tmp / ADAPTER_META, meta)
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        tmp.rename(adapter_dir)
    trainer.accelerator.wait_for_everyone()


def _probe_callback(cfg: ExperimentConfig, tokenizer, family, out: Path, data_dir: Path | None):
    """C-Eval / MMLU / bits-per-char probes during training (zhtune.train.probes), if asked for."""
    p = cfg.train.probes
    if not p.every_steps:
        return None
    try:
        from zhtune.train.probes import ForgettingProbeCallback, build_probe_set
    except ImportError as err:
        log.warning("train.probes.every_steps is set but the probes are unavailable (%s); "
                    "training without them", err)
        return None
    probes = build_probe_set(data_dir, ceval_questions=p.ceval_questions,
                             mmlu_questions=p.mmlu_questions, perplexity_chars=p.perplexity_chars,
                             shots=cfg.eval.shots, questions=p.benchmarks, style=cfg.eval.style)
    return ForgettingProbeCallback(probes, tokenizer, family, every_steps=p.every_steps, out_dir=out,
                                   keep_best=p.keep_best,
                                   min_english_retention=p.min_english_retention,
                                   batch_size=cfg.eval.batch_size)


# ---------------------------------------------------------------------------------------------
# Merge


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, *, base_model: str | None = None,
                  dtype: str = "auto") -> Path:
    """Fold a LoRA adapter into its base model and save a full model (safetensors + tokenizer).

    ``dtype="auto"`` keeps the base checkpoint's own dtype (float32 if it does not say).
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from zhtune.models.loading import load_model
    from zhtune.models.sources import resolve_model

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise UserError(f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json)")
    meta = read_json(adapter_dir / ADAPTER_META) if (adapter_dir / ADAPTER_META).exists() else {}
    spec = base_model or meta.get("base_model") or read_json(
        adapter_dir / "adapter_config.json").get("base_model_name_or_path")
    if not spec:
        raise UserError(f"{adapter_dir}: the base model is not recorded; pass --base-model")
    revision = meta.get("revision") if not base_model else None
    if dtype == "auto":
        base_cfg = read_json(Path(resolve_model(spec, revision=revision)) / "config.json")
        saved = base_cfg.get("dtype") or base_cfg.get("torch_dtype")
        dtype = saved if saved in ("float32", "bfloat16", "float16") else "float32"
    loaded = load_model(ModelConfig(name_or_path=spec, revision=revision, family=meta.get("family"),
                                    dtype=dtype, device="cpu"))
    merged = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    tmp = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(tmp))
    atomic_write_json(tmp / "zhtune_merged.json", {
        "adapter": str(adapter_dir.resolve()), "base_model": spec, "family": meta.get("family"),
        "dtype": dtype, "created": utc_timestamp(),
        "zhtune_version": __version__})
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(output_dir)
    log.info("merged %s into %s -> %s", adapter_dir, spec, output_dir)
    return output_dir
