"""The HF Trainer as zhtune trains with it: loss on labelled positions, counted tokens, the training
arguments from the config, the precision for the device, and the log and progress callbacks."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from zhtune.config import ExperimentConfig
from zhtune.devices import auto_precision, cpu_supports_bf16  # noqa: F401 (cpu_supports_bf16: its old home)
from zhtune.errors import UserError
from zhtune.io import atomic_write_jsonl


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
        return torch.autocast(self.args.device.type, dtype=autocast_dtype(self.precision))


def autocast_dtype(precision: str) -> torch.dtype:
    """The autocast dtype of a resolved ``train.precision`` other than fp32 (bf16 or fp16)."""
    return torch.bfloat16 if precision == "bf16" else torch.float16


def resolve_precision(requested: str, device: torch.device) -> str:
    """``train.precision`` -> fp32 | bf16 | fp16 for this device (see TrainConfig.precision);
    auto is decided by ``zhtune.devices.auto_precision``."""
    if requested == "fp16" and device.type != "cuda":
        raise UserError(f"train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on {device.type}")
    if requested != "auto":
        return requested
    return auto_precision(device, training=True)


def build_training_args(cfg: ExperimentConfig, out: Path, learning_rate: float, has_eval: bool,
                        precision: str, device: torch.device):
    from zhtune.train.device_args import OneDeviceTrainingArguments

    t = cfg.train
    report_to = [r for r in t.report_to if r not in ("tensorboard", "none")]
    return OneDeviceTrainingArguments(
        zhtune_device=str(device),  # one process, one device: no nn.DataParallel (device_args)
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


def deepspeed_path(spec: str) -> Path:
    """``train.deepspeed``: a JSON path, or the name of a shipped one (``zero2``, ``zero3``)."""
    path = Path(spec).expanduser()
    shipped = Path(__file__).resolve().parents[1] / "configs" / "deepspeed" / f"{spec}.json"
    if not path.exists() and shipped.exists():
        path = shipped
    if not path.exists():
        raise UserError(f"train.deepspeed: {spec} does not exist (shipped: zero2, zero3)")
    return path


def zero_stage(spec: str | None) -> int | None:
    """The ZeRO stage of ``train.deepspeed`` (None: no DeepSpeed, or no stage given)."""
    if not spec:
        return None
    import json

    path = deepspeed_path(spec)
    try:
        stage = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {}).get("stage")
    except ValueError as err:
        raise UserError(f"train.deepspeed: {path} is not valid JSON ({err})") from None
    return stage if isinstance(stage, int) else None


def deepspeed_config(spec: str | None) -> str | None:
    """``train.deepspeed`` as the path the Trainer reads (DeepSpeed must be installed)."""
    if not spec:
        return None
    path = deepspeed_path(spec)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise UserError("train.deepspeed is set but DeepSpeed is not installed "
                        "(pip install deepspeed; it needs CUDA GPUs)") from None
    return str(path)
