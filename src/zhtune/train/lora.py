"""LoRA fine-tuning with PEFT and the HF Trainer: the training recipe, in the steps it reads as.

``train_lora`` is the recipe: set up the run (device, precision, tokenizer, a lock on OUT), the data,
the checkpoints to resume from, the model with its adapter, the trainer; train; save. Each step is
one short function below; the trainer itself is in ``zhtune.train.trainer``, checkpoint rules in
``zhtune.train.checkpoints``.

Output folder (docs/ARCHITECTURE.md): ``adapter/`` (only once training finished: written to
``.adapter.partial`` and renamed), ``checkpoints/checkpoint-N/`` (HF Trainer: weights, optimizer,
scheduler, RNG), ``train_log.jsonl``, ``runs/`` (TensorBoard), ``config.resolved.yaml`` and
``data/`` when the dataset was prepared on the fly.

Several processes (``accelerate launch``, DeepSpeed via ``train.deepspeed``): every process runs
the same code; only the main process writes the log, the adapter and the metadata.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, set_seed

from zhtune import __version__
from zhtune.artifacts import ADAPTER_META, utc_timestamp
from zhtune.config import ExperimentConfig, ModelConfig, config_to_dict, save_resolved
from zhtune.devices import multi_gpu_hint
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, default_data_dir, read_json
from zhtune.train.checkpoints import (RUN_FILE, checkpoint_step, latest_checkpoint, lock_output, run_fingerprint,
                                      stop_on_signal_callback)
from zhtune.train.trainer import (JsonlLogCallback, RichProgressCallback, ZhtuneTrainer, autocast_dtype,
                                  build_training_args, resolve_precision)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The recipe: train_lora and its steps, in the order they run


@dataclass
class TrainingRun:
    """What the steps share: the settings, where they write, and this process's place in the job."""
    cfg: ExperimentConfig
    out: Path
    data_dir: Path | None
    device: torch.device
    precision: str
    tokenizer: Any
    family: Any
    settings: dict  # lora_settings(): rank, alpha, dropout, learning rate
    args: Any  # transformers.TrainingArguments
    is_main: bool
    lock: Any = None  # held until the run ends (lock_output)
    started: float = field(default_factory=time.time)


@dataclass
class TrainingModel:
    model: Any  # the PEFT model
    loaded: Any  # zhtune.models.loading.LoadedModel: where the base weights came from
    targets: list[str]
    trainable: int
    total: int


@dataclass
class TrainingData:
    dir: Path
    manifest: dict
    train: Any
    validation: Any
    tokenizer_fingerprint: str
    run_fingerprint: str


def train_lora(cfg: ExperimentConfig, out_dir: str | Path, *, dataset_dir: str | Path | None = None,
               data_dir: str | Path | None = None, resume: bool = True) -> dict:
    """Fine-tune ``cfg.model`` with LoRA on a prepared dataset (or prepare one into OUT/data).

    Returns the run's metrics: train_runtime, train_loss, eval_loss, trainable_params,
    total_params, train_tokens, tokens_per_second, loss_first, loss_last, steps, resumed_from.
    """
    from zhtune.launch import should_launch

    if should_launch(cfg.train.num_processes):  # --nproc N: torchrun, this same training
        return train_in_processes(cfg, Path(out_dir), dataset_dir, data_dir, resume)
    run = setup_run(cfg, out_dir, data_dir)
    try:
        data = setup_data(run, dataset_dir)  # before any weights: bad data fails fast
        finished = finished_adapter(run, data, resume)
        if finished is not None:
            return finished
        last = setup_checkpoints(run, data, resume)
        model = setup_model(run, data)
        trainer = build_trainer(run, model.model, data, last)
        result, seconds = train(trainer, last)
        metrics = training_metrics(run, trainer, data, model, result, seconds, last)
        save(run, trainer, data, model, metrics)
        return metrics
    finally:
        if run.lock is not None:
            run.lock.close()


def train_in_processes(cfg: ExperimentConfig, out: Path, dataset_dir, data_dir, resume: bool) -> dict:
    """``train.num_processes`` > 1: `zhtune train` with this config under torchrun; its metrics."""
    from zhtune.launch import launch

    out.mkdir(parents=True, exist_ok=True)
    config = save_resolved(cfg, out)
    args = ["train", "--config", str(config), "--output-dir", str(out)]
    args += ["--dataset", str(dataset_dir)] if dataset_dir else []
    args += ["--data-dir", str(data_dir)] if data_dir else []
    args += [] if resume else ["--no-resume"]
    launch(cfg.train.num_processes, args)
    return read_json(out / "adapter" / ADAPTER_META)["metrics"]


def setup_run(cfg: ExperimentConfig, out_dir: str | Path, data_dir: str | Path | None) -> TrainingRun:
    """Device, precision, tokenizer and family (no weights yet), training arguments, the lock on OUT."""
    from zhtune.models.loading import load_tokenizer_and_family

    from zhtune.train.probes import check_probes_supported
    from zhtune.train.trainer import zero_stage

    check_probes_supported(bool(cfg.train.probes.every_steps), zero_stage(cfg.train.deepspeed))
    if cfg.model.quantization != "none" and cfg.train.deepspeed:
        raise UserError("model.quantization (QLoRA) and train.deepspeed do not combine here; "
                        "use one of them")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device, _ = _device_and_dtype(cfg.model)
    precision = resolve_precision(cfg.train.precision, device)
    tokenizer, family, _ = load_tokenizer_and_family(cfg.model)
    settings = lora_settings(cfg, family)
    # Whether there is a validation split is known once the data is there; val_size decides it
    # unless a prepared dataset says otherwise (setup_data rebuilds the arguments then).
    args = build_training_args(cfg, out, settings["learning_rate"], cfg.data.val_size > 0, precision, device)
    is_main = args.process_index == 0
    hint = multi_gpu_hint(device)
    if hint and is_main:
        log.warning(hint)
    return TrainingRun(cfg=cfg, out=out, data_dir=default_data_dir(data_dir or cfg.data.data_dir), device=device,
                       precision=precision, tokenizer=tokenizer, family=family, settings=settings, args=args,
                       is_main=is_main, lock=lock_output(out) if is_main else None)


def setup_data(run: TrainingRun, dataset_dir: str | Path | None) -> TrainingData:
    """The prepared dataset (prepared into OUT/data first when none is given), checked against the
    tokenizer and family it will be trained with."""
    from zhtune.data.sft import check_compatible, load_prepared, prepare_dataset, tokenizer_fingerprint

    tok_fp = tokenizer_fingerprint(run.tokenizer)
    if dataset_dir is None:
        dataset_dir = run.out / "data"
        with run.args.main_process_first(desc="prepare data"):
            prepare_dataset(run.cfg, dataset_dir, data_dir=run.data_dir, tokenizer=run.tokenizer, family=run.family,
                            show_progress=run.is_main)
    manifest = check_compatible(dataset_dir, run.tokenizer, run.family, run.cfg.model.name_or_path, tok_fp)
    train_ds, val_ds = load_prepared(dataset_dir)
    if (val_ds is not None) != (run.cfg.data.val_size > 0):
        run.args = build_training_args(run.cfg, run.out, run.settings["learning_rate"], val_ds is not None,
                                       run.precision, run.device)
    return TrainingData(dir=Path(dataset_dir), manifest=manifest, train=train_ds, validation=val_ds,
                        tokenizer_fingerprint=tok_fp,
                        run_fingerprint=run_fingerprint(run.cfg, manifest["settings_fingerprint"]))


def finished_adapter(run: TrainingRun, data: TrainingData, resume: bool) -> dict | None:
    """The metrics of an adapter already trained with these settings (nothing to do), else None.
    An adapter of other settings is never overwritten."""
    meta_path = run.out / "adapter" / ADAPTER_META
    if not resume or not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if meta.get("run_fingerprint") == data.run_fingerprint:
        log.info("%s already holds the finished adapter for these settings", meta_path.parent)
        return meta["metrics"]
    raise UserError(f"{meta_path.parent} holds an adapter trained with other settings; use another "
                    f"--output-dir, or delete it to train again")


def setup_checkpoints(run: TrainingRun, data: TrainingData, resume: bool) -> Path | None:
    """The newest complete checkpoint of this run to resume from (None: start). The main process
    removes incomplete checkpoints and refuses checkpoints of other settings."""
    ckpt_dir = run.out / "checkpoints"
    last = None
    with run.args.main_process_first(desc="find checkpoint"):
        if run.is_main:
            if not resume:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            run_file = ckpt_dir / RUN_FILE
            if run_file.exists() and read_json(run_file).get("run_fingerprint") != data.run_fingerprint:
                raise UserError(f"{ckpt_dir} holds checkpoints of a run with other settings; use "
                                f"another --output-dir, or delete {ckpt_dir} to start over")
            latest_checkpoint(ckpt_dir, remove_incomplete=True)
            atomic_write_json(run_file, {"run_fingerprint": data.run_fingerprint, "config": config_to_dict(run.cfg)})
            save_resolved(run.cfg, run.out)
        if resume:
            last = latest_checkpoint(ckpt_dir)
    if last:
        log.info("resuming from %s", last)
    return last


def setup_model(run: TrainingRun, data: TrainingData) -> TrainingModel:
    """The base model on this process's device, wrapped with LoRA."""
    from zhtune.models.families import ensure_chat_template
    from zhtune.models.loading import load_model

    loaded = load_model(run.cfg.model.model_copy(update={"device": str(run.args.device)}), for_training=True)
    run.tokenizer = loaded.tokenizer
    quantized = run.cfg.model.quantization != "none"
    if quantized:  # QLoRA: PEFT's preparation of a 4-/8-bit base (zhtune.models.quantization)
        from zhtune.models.quantization import prepare_for_training

        loaded.model = prepare_for_training(loaded.model)
    if data.manifest["template"] == "chat":
        ensure_chat_template(run.tokenizer, run.family)  # the adapter's tokenizer speaks the trained format
    set_seed(run.cfg.train.seed)  # LoRA A matrices are drawn at random: same seed, same start
    fused = not run.cfg.train.deepspeed
    model, targets = build_peft_model(loaded.model, run.cfg, run.settings, fused=fused)
    if fused and run.precision != "fp32" and not quantized:
        from zhtune.train.fused import store_frozen_weights_in

        store_frozen_weights_in(model, autocast_dtype(run.precision))
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA r=%s alpha=%s on %s: %d trainable of %d parameters (%.3f%%), %s", run.settings["rank"],
             run.settings["alpha"], ",".join(targets), trainable, total, 100 * trainable / total, run.precision)
    return TrainingModel(model=model, loaded=loaded, targets=targets, trainable=trainable, total=total)


def build_trainer(run: TrainingRun, model, data: TrainingData, last: Path | None) -> ZhtuneTrainer:
    """The trainer with zhtune's callbacks: train_log.jsonl, the progress bar, TensorBoard, probes."""
    from transformers import PrinterCallback

    from zhtune.train.collator import PackedCollator

    resume_step = checkpoint_step(last) if last else None
    callbacks: list[TrainerCallback] = [JsonlLogCallback(run.out / "train_log.jsonl", resume_step, run.is_main),
                                        RichProgressCallback(), stop_on_signal_callback()]
    if "tensorboard" in run.cfg.train.report_to:
        from transformers.integrations import TensorBoardCallback

        tensorboard = TensorBoardCallback()  # writes on the main process only
        tensorboard.logging_dir = str(run.out / "runs")  # not under checkpoints/
        callbacks.append(tensorboard)
    tokenizer = run.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = ZhtuneTrainer(model=model, args=run.args, train_dataset=data.train, eval_dataset=data.validation,
                            data_collator=PackedCollator(pad_id), processing_class=tokenizer,
                            callbacks=callbacks, precision=run.precision)
    trainer.remove_callback(PrinterCallback)
    probe_cb = _probe_callback(run.cfg, tokenizer, run.family, run.out, run.data_dir)
    if probe_cb is not None:
        probe_cb.bind(trainer)  # probe metrics go through trainer.log: train_log.jsonl, TensorBoard
    return trainer


def train(trainer: ZhtuneTrainer, last: Path | None) -> tuple[Any, dict]:
    """Run (or resume) training; returns HF's result and this session's share of the work: seconds in
    evaluations and in training steps (HF's train_runtime counts both), tokens seen before it."""
    # Read now: the checkpoint may be rotated away (save_total_limit) before training ends.
    from zhtune.stopping import Stopped, deferred, pending

    tokens_before = read_json(last / "trainer_state.json").get("num_input_tokens_seen", 0) if last else 0
    with deferred():  # SIGTERM / SIGINT: a checkpoint at the current step, then Stopped
        result = trainer.train(resume_from_checkpoint=str(last) if last else None)
        if pending() is not None:
            raise Stopped(pending(), f"checkpoint saved at step {trainer.state.global_step}")
    log.info("process %d of %d: training ended at step %d", trainer.args.process_index,
             trainer.args.world_size, trainer.state.global_step)
    resume_step = checkpoint_step(last) if last else 0
    eval_seconds = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history
                       if "eval_runtime" in e and e.get("step", 0) > resume_step)
    train_seconds = max((result.metrics.get("train_runtime") or 0.0) - eval_seconds, 1e-9)
    return result, {"train": train_seconds, "eval": eval_seconds, "tokens_before": tokens_before}


def training_metrics(run: TrainingRun, trainer: ZhtuneTrainer, data: TrainingData, model: TrainingModel, result,
                     seconds: dict, last: Path | None) -> dict:
    """The run's numbers, with a final validation loss (evaluated now unless the last step did)."""
    eval_metrics = {}
    if data.validation is not None:
        last_eval = [e for e in trainer.state.log_history if "eval_loss" in e]
        if last_eval and last_eval[-1].get("step") == trainer.state.global_step:
            eval_metrics = last_eval[-1]  # already evaluated at the final step
        else:
            eval_metrics = trainer.evaluate()
    state = trainer.state
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    return {
        "train_runtime": result.metrics.get("train_runtime"),
        "train_loss": result.metrics.get("train_loss"),
        "eval_loss": eval_metrics.get("eval_loss"),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "steps": state.global_step,
        "epochs": state.epoch,
        "trainable_params": model.trainable,
        "total_params": model.total,
        "train_tokens": state.num_input_tokens_seen,
        "tokens_per_second": (state.num_input_tokens_seen - seconds["tokens_before"]) / seconds["train"],  # real tokens
        "eval_seconds": round(seconds["eval"], 2),
        "resumed_from": checkpoint_step(last) if last else None,
        "wall_time_s": round(time.time() - run.started, 2),
        "device": str(run.args.device),
        "precision": run.precision,
        "world_size": run.args.world_size,
    }


def save(run: TrainingRun, trainer: ZhtuneTrainer, data: TrainingData, model: TrainingModel,
         metrics: dict) -> None:
    """The adapter with its metadata (zhtune_adapter.json): what it was trained from, and how."""
    cfg = run.cfg
    meta = {
        "base_model": cfg.model.name_or_path,
        "revision": cfg.model.revision,
        "base_model_path": str(model.loaded.path),
        "family": run.family.name,
        "template": data.manifest["template"],
        "lora": {**run.settings, "targets": model.targets},
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "train_tokens": metrics["train_tokens"],
        "train_runtime": metrics["train_runtime"],
        "wall_time_s": metrics["wall_time_s"],
        "dataset": {"dir": str(data.dir), "settings_fingerprint": data.manifest["settings_fingerprint"],
                    "tokenizer_fingerprint": data.tokenizer_fingerprint, "counts": data.manifest["counts"]},
        "run_fingerprint": data.run_fingerprint,
        "metrics": metrics,
        "config": config_to_dict(cfg),
        "created": utc_timestamp(),
        "zhtune_version": __version__,
    }
    adapter_dir = run.out / "adapter"
    _save_adapter(trainer, run.tokenizer, adapter_dir, meta, run.is_main)
    if run.is_main:
        log.info("adapter saved to %s (loss %s -> %s, eval loss %s, %.0f tokens/s)", adapter_dir,
                 metrics["loss_first"], metrics["loss_last"], metrics["eval_loss"], metrics["tokens_per_second"])


# ---------------------------------------------------------------------------------------------
# Helpers of the steps


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
    a third of PEFT's activation memory; layers on a bitsandbytes 4-/8-bit base keep PEFT's own),
    gated MLPs through ``zhtune.train.fused_mlp`` (one saved tensor fewer) and packed rows through
    ``zhtune.train.packed_attention`` (one causal attention per sample instead of a masked one over
    the whole row); the adapter and its state dict are PEFT's either way.

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
        from zhtune.train.fused_mlp import fuse_gated_mlps
        from zhtune.train.packed_attention import use_packed_attention

        fuse_lora_layers(peft_model)
        fuse_gated_mlps(peft_model)
        use_packed_attention(model)
    return peft_model, targets


def _device_and_dtype(model_cfg: ModelConfig) -> tuple[torch.device, torch.dtype]:
    from zhtune.models.loading import pick_device, pick_dtype

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        device = torch.device("cpu")
    else:
        device = pick_device(model_cfg.device)
    return device, pick_dtype(model_cfg.dtype, device)


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
