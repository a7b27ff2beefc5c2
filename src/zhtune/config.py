"""One experiment, one YAML file: the schema, loading, dotted overrides and the resolved copy.

Every section is a plain pydantic model with ``extra="forbid"`` so that a typo (``lora.rnak``) is an
error that names the key and the file instead of a silently ignored setting.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from zhtune.errors import UserError
from zhtune.io import atomic_write_text


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message names the key and the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = Field("builtin:smollm2-135m-instruct", description=(
        "Base model: a local folder, a hub id, modelscope:ORG/NAME, a .gguf file or builtin:NAME."))
    revision: str | None = Field(None, description="Hub / ModelScope revision (branch, tag or commit).")
    family: str | None = Field(None, description=(
        "Model family record (chat format, stops, LoRA defaults); None: detected from config.json."))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype the weights are loaded in; auto: bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on the CPU.")
    device: str = Field("auto", description="Device of this process: auto, cpu, cuda, cuda:1 or mps.")
    trust_remote_code: bool = Field(False, description=(
        "Run Python code shipped with the checkpoint (off: only architectures transformers knows)."))
    quantization: Literal["none", "nf4", "int8"] = Field(
        "none", description="Store the base model's linear layers quantised by bitsandbytes (QLoRA): "
        "nf4 (4-bit NormalFloat, double quantisation, a 7B model in ~5 GB) or int8 (LLM.int8, ~8 GB); "
        "the LoRA adapter trains in full precision on top. Needs `pip install 'zhtune[qlora]'`. "
        "Applies to training and evaluation alike (an adapter also evaluates on the unquantised "
        "base: set none there). See docs/gpu-memory.md.")


class ReplayConfig(_Section):
    ratio: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Fraction of the training mix drawn from English instructions (0: no replay)."))
    source: str = Field("alpaca/alpaca_en_demo.json", description=(
        "English instruction file for replay, relative to the data folder or absolute."))


class DataConfig(_Section):
    data_dir: str | None = Field(None, description=(
        "Local folder of benchmark and instruction files in the official release layout; None: "
        "ZHTUNE_DATA_DIR, else the hub."))
    train: list[str] = Field(default_factory=lambda: ["belle/dev1K.json"], description=(
        "Training sources: files (relative to the data folder or absolute), folders, or hub ids."))
    sample_size: int | None = Field(None, gt=0, description=(
        "Seeded sample of the instruction records (as --belle_sample_size); None: all."))
    max_length: int = Field(512, gt=8, description="Tokens per sample / packed row.")
    val_size: float = Field(0.05, ge=0.0, lt=1.0, description="Held-out fraction for the validation loss.")
    packing: bool = Field(True, description="Pack several samples into one row (attention stays per sample).")
    chat_format: bool = Field(True, description=(
        "Format samples in the family's chat format; off: the plain instruction template."))
    seed: int = Field(42, description="Seed of the sample, the shuffle and the validation split.")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="English replay mixed into training.")


class LoraConfig(_Section):
    rank: int | None = Field(None, gt=0, description=(
        "LoRA rank r; None: the family's documented default (Qwen 8, Llama 16)."))
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; None: the family's default (32).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: str | list[str] = Field("all", description=(
        "Modules that get adapters: a preset (all, attention, mlp) or explicit module names."))
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA); slower, plain PEFT path.")

    @field_validator("targets")
    @classmethod
    def _targets_not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty target list trains nothing; use a preset such as 'all'")
        return v


class ProbeConfig(_Section):
    every_steps: int | None = Field(None, gt=0, description=(
        "Run the forgetting probes every N optimizer steps; None: no probes during training."))
    ceval_questions: int = Field(40, ge=0, description="C-Eval probe questions (when benchmarks is None).")
    mmlu_questions: int = Field(40, ge=0, description="MMLU probe questions (when benchmarks is None).")
    benchmarks: dict[str, int] | None = Field(None, description=(
        "Probe questions per benchmark, any benchmark with a spec ({cmmlu: 40, mmlu: 40}); None: "
        "ceval_questions of C-Eval and mmlu_questions of MMLU."))
    perplexity_chars: int = Field(4000, ge=0, description="Characters of held-out zh / en text for the bits-per-character probe.")
    keep_best: bool = Field(False, description="Keep the checkpoint with the best Chinese-gain / English-loss trade-off.")
    min_english_retention: float | None = Field(None, gt=0.0, le=1.0, description=(
        "Stop training early when English probe accuracy falls below this fraction of the base's; None: never."))


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0, description="Training epochs.")
    max_steps: int = Field(-1, description="Optimizer steps; overrides epochs when > 0.")
    batch_size: int = Field(4, gt=0, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate; None: the family's default.")
    lr_scheduler: str = Field("cosine", description="HF Trainer learning-rate schedule (cosine, linear, constant, ...).")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of the steps spent warming the learning rate up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the LoRA weights.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(False, description=(
        "Recompute activations in the backward pass: less memory, about a third more compute."))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast dtype of the training matmuls (weights and optimizer stay as "
        "loaded). auto: bf16 on GPUs with bf16 and on CPUs with avx512_bf16 or AMX, fp16 on older "
        "GPUs, fp32 otherwise. fp16 needs a GPU.")
    logging_steps: int = Field(5, gt=0, description="Log the training loss every N steps.")
    save_steps: int = Field(50, gt=0, description="Checkpoint every N steps (the unit of resuming).")
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept; older ones are removed.")
    eval_steps: int | None = Field(None, gt=0, description="Validation loss every N steps; None: save_steps.")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"], description=(
        "Training-loss loggers passed to the HF Trainer (tensorboard, wandb, mlflow, none)."))
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json); GPUs only.")
    num_processes: int = Field(1, ge=1, description=(
        "Processes to train (and evaluate, in zhtune run) with, one per GPU: above 1, zhtune starts "
        "torchrun itself. 1 trains on the single device model.device names."))
    seed: int = Field(42, description="Seed of the LoRA initialisation, dropout and data order.")
    probes: ProbeConfig = Field(default_factory=ProbeConfig, description="Forgetting probes during training.")


def _known_benchmark(name: str) -> str:
    """Each benchmark is checked on its own, so an error names the bad element (eval.benchmarks.0)."""
    from zhtune.data.specs import list_specs

    if name not in list_specs():
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(list_specs())}")
    return name


class EvalConfig(_Section):
    benchmarks: list[Annotated[str, AfterValidator(_known_benchmark)]] = Field(
        default_factory=lambda: ["ceval", "cmmlu", "mmlu", "gsm8k"], description=(
            "Benchmarks to evaluate: any with a spec in zhtune/resources/benchmarks/."))
    style: Literal["lm-eval", "official"] = Field("lm-eval", description=(
        "Prompt style: lm-eval (lm-evaluation-harness 0.4.13's tasks, character for character) or "
        "official (the benchmark authors' prompts and aggregation)."))
    formulation: Literal["letter", "cloze", "both"] = Field("letter", description=(
        "Multiple choice: letter (options shown, next-token letter), cloze (each option's text by "
        "log-likelihood; headline acc_norm) or both (cloze under '<benchmark>_cloze')."))
    write_prompts: bool = Field(False, description="Write prompts.jsonl: the exact context and continuations per question.")
    subjects: list[str] | None = Field(None, description="Only these subjects; None: all.")
    shots: int = Field(5, ge=0, description="Few-shot examples for multiple-choice benchmarks.")
    generation_shots: int = Field(5, ge=0, validation_alias=AliasChoices("generation_shots", "gsm8k_shots"),
                                  description="Few-shot examples for generation benchmarks (GSM8K).")
    generation_cot: bool = Field(False, validation_alias=AliasChoices("generation_cot", "gsm8k_cot"), description=(
        "Generation benchmarks: the spec's chain-of-thought exemplars (GSM8K: Wei et al.'s 8) instead "
        "of seeded few-shot draws."))
    limit: int | None = Field(None, gt=0, description=(
        "First N questions per subject (a generation benchmark: in all), deterministic; None: all."))
    max_per_benchmark: int | None = Field(None, gt=0, description=(
        "At most N questions per benchmark, round-robin over subjects so every category stays "
        "represented (quick runs such as the CPU demo); None: no cap."))
    batch_size: int = Field(8, gt=0, description=(
        "GSM8K generation and bits per character: sequences per forward pass."))
    batch_tokens: int = Field(4096, gt=0, description=(
        "Multiple choice: question tokens per forward pass, padding included (the few-shot prefix is "
        "shared, not counted). Bounds memory whatever the prompt length; halved on out-of-memory."))
    chat: bool = Field(False, description="Wrap prompts in the model's chat template.")
    max_new_tokens: int = Field(256, gt=0, description="Generation length of generation benchmarks.")
    perplexity: bool = Field(True, description="Measure bits per character on held-out zh / en text.")
    perplexity_chars: int = Field(20000, ge=0, description="Characters of held-out text per language.")
    control_probes: bool = Field(True, description=(
        "Also score bits per character on a different-genre control text per language (the question "
        "text of C-Eval test and MMLU val, never scored as benchmarks; perplexity_chars characters each), "
        "so that a change on the seed-task probes can be told from genre adaptation."))
    adapter_scales: list[float] = Field(default_factory=lambda: [1.0], description=(
        "LoRA scales to evaluate each adapter at, e.g. [0, 0.5, 1]."))


class AnalysisConfig(_Section):
    forgetting_margin: float = Field(2.0, ge=0.0, le=100.0, description=(
        "Forgetting margin in points of accuracy: English (and each English benchmark) is called 'no "
        "forgetting beyond the margin' when the one-sided 95% upper bound of forgetting (the 90% two-sided "
        "interval's bound: a one-sided non-inferiority test at alpha 0.05) is below it."))
    gain_margin: float = Field(2.0, ge=0.0, le=100.0, description=(
        "Equivalence margin for Chinese, in points of accuracy: Chinese (and each Chinese benchmark) is "
        "called 'equivalent within the margin' when both one-sided 95% bounds of the change lie inside "
        "plus or minus it (two one-sided tests); a significant change is 'improved' or 'declined'."))
    headline_formulation: Literal["auto", "letter", "cloze"] = Field("auto", description=(
        "Formulation of the pooled Chinese/English headline figures when the runs have both: letter (the "
        "published one), cloze (for small models at chance on letters), or auto (letter where evaluated). The "
        "other formulation is reported too, as the secondary analysis."))
    english_tolerance: float = Field(1.0, ge=0.0, description=(
        "Accepted loss of English accuracy (points) when recommending an adapter scale."))


class OutputConfig(_Section):
    dir: str = Field("runs/experiment", description="The run's output folder.")
    baseline_cache: str | None = Field(None, description=(
        "Where baselines are cached, shared by runs with the same model and eval settings; None: "
        "ZHTUNE_HOME/baselines."))


class SlurmConfig(_Section):
    cluster: Literal["slurm", "local"] = Field("slurm", description=(
        "slurm submits with sbatch (through submitit); local runs the same job array as processes on "
        "this machine, to try a config before queueing it."))
    partition: str | None = Field(None, description="Slurm partition; None: the cluster's default.")
    time_min: int = Field(24 * 60, gt=0, description="Slurm: time limit of one point's job, minutes.")
    mem_gb: int | None = Field(None, gt=0, description="Slurm: memory per job, GB; None: the partition's default.")
    array_parallelism: int = Field(64, gt=0, description="Slurm: grid points running at once.")
    additional: dict[str, Any] = Field(default_factory=dict, description=(
        "More sbatch options, e.g. {account: x, qos: y}."))


class SweepConfig(_Section):
    grid: dict[str, list[Any]] = Field(default_factory=dict, description=(
        "Dotted key -> values; the sweep runs the Cartesian product, e.g. {lora.rank: [4, 8]}."))
    launcher: Literal["local", "ray", "slurm"] = Field("local", description=(
        "Where points run: local (this machine), ray (a Ray cluster) or slurm (a job array)."))
    workers: int = Field(1, gt=0, description="Local: runs at a time, each in its own process.")
    devices: list[str] | None = Field(None, description=(
        "Local: one worker per device, e.g. [cuda:0, cuda:1]; None: workers share the config's device."))
    address: str | None = Field(None, description=(
        "Ray: auto or HOST:PORT; None: RAY_ADDRESS, else Ray on this machine."))
    gpus_per_point: int | None = Field(None, ge=0, description=(
        "GPUs per point; None: one per training process (train.num_processes) where the cluster has "
        "GPUs (Ray: counted; Slurm: assumed, 0 with slurm.cluster=local)."))
    cpus_per_point: int = Field(1, gt=0, description="Ray / Slurm: CPUs per point.")
    max_retries: int = Field(2, ge=0, description=(
        "Restarts (from the last checkpoint) of a point whose worker or job died, before it is reported failed."))
    criterion: Literal["chinese_gain", "english_forgetting"] = Field("chinese_gain", description=(
        "What 'best' means when the sweep compares its settings with each other (paired, on the same "
        "questions): the most Chinese gain or the least English forgetting. A best setting is named only "
        "when it beats every other beyond the margin (analysis.gain_margin / analysis.forgetting_margin) "
        "with the multiplicity over the grid controlled; otherwise the settings that cannot be told apart "
        "are listed."))
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="Slurm job settings.")


class TrackingConfig(_Section):
    backend: Literal["none", "tensorboard", "mlflow", "wandb"] = Field("none", description=(
        "Where the whole experiment is logged: the resolved config and fingerprints, every evaluation's "
        "accuracies, the comparison's changes, intervals and verdicts, the report; a sweep as one parent "
        "run with a run per grid point. none: nothing (no tracker is imported)."))
    project: str | None = Field(None, description=(
        "MLflow experiment or W&B project the runs go to; None: zhtune."))
    uri: str | None = Field(None, description=(
        "MLflow: tracking URI (sqlite:///mlflow.db, http://HOST:5000); None: MLFLOW_TRACKING_URI, else "
        "MLflow's default. W&B: folder for its run files (None: the output folder). TensorBoard: log "
        "folder (None: OUT/tensorboard)."))


class ExperimentConfig(_Section):
    name: str = Field("experiment", description="The experiment's name (report title).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data and the data folder.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="The LoRA adapter.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training run.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Benchmarks, prompts and scoring.")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig, description="The comparison's margins and headline.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where results go.")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="The LoRA grid and where it runs.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking (MLflow, W&B, TensorBoard).")


def _parse_value(text: str) -> Any:
    """An override's value as YAML would read it: ``16`` -> 16, ``[q_proj,v_proj]`` -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str] | None, source: str = "<command line>") -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy)."""
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} is not of the form key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {key!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(raw: dict, source: str = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
    if overrides:
        source = f"{source} (with overrides {' '.join(overrides)})"
    return config_from_dict(apply_overrides(raw, overrides, source), source)


def config_to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")


def save_resolved(cfg: BaseModel | dict, out_dir: str | Path, name: str = "config.resolved.yaml") -> Path:
    """Write the fully resolved config (a config, or a dict in the experiment config's shape) next to a
    command's outputs: ``zhtune <command> --config OUT/config.resolved.yaml`` repeats the run."""
    path = Path(out_dir) / name
    text = yaml.safe_dump(cfg if isinstance(cfg, dict) else config_to_dict(cfg), sort_keys=False,
                          allow_unicode=True)
    atomic_write_text(path, text)
    return path


# ----------------------------------------------------------------------------------------------
# One way for every command to get its config: a path or a shipped name, then flags, then overrides.

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_config(name: str) -> Path:
    """A config shipped with zhtune (``zhtune/configs/NAME.yaml``), e.g. ``demo-cpu``."""
    path = SHIPPED_CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
        raise ConfigError(f"{name}: no such config file, and no shipped config of that name; shipped: {shipped}")
    return path


def config_path(config: str | Path) -> Path:
    """``--config`` as given: an existing file wins; a bare name (no suffix, no folder) is a shipped config."""
    path = Path(config)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    return shipped_config(str(config))


def resolve_config(config: str | Path | None, flags: dict[str, Any] | None = None,
                   overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a command runs with: the file or shipped config (or the defaults), then the
    command's flags (``{"train.max_steps": 20}``; None means "not given"), then ``key=value`` overrides,
    each later one winning."""
    flag_overrides = [f"{key}={_override_text(value)}" for key, value in (flags or {}).items()
                      if value is not None]
    path = config_path(config) if config is not None else None
    return load_config(path, flag_overrides + list(overrides or []))


def _override_text(value: Any) -> str:
    """A flag's value as override text that parses back to the same value (lists, paths, bools)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, dict, bool)) or value is None:
        return json.dumps(value if not isinstance(value, tuple) else list(value), ensure_ascii=False)
    if isinstance(value, str) and _parse_value(value) != value:  # "null", "123", "a: b" stay strings
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def config_field(key: str):
    """The schema's field (pydantic FieldInfo) for a dotted config key, e.g. "eval.shots"."""
    model: type[BaseModel] = ExperimentConfig
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # nested sections are plain _Section classes
    return model.model_fields[name]


def flag_help(key: str, usage: str | None = None) -> str:
    """The help of the command-line flag for config field ``key`` (dotted, e.g. "eval.shots"): the
    field's description, then ``usage`` (how the flag spells a value, e.g. "comma-separated"), then the
    schema's default, so that what a setting means and its default are stated once, in the schema."""
    field = config_field(key)
    if not field.description:
        raise ValueError(f"{key}: the config schema gives this field no description")
    text = field.description.rstrip(".") + (f" ({usage})" if usage else "")
    default = field.get_default(call_default_factory=True)
    if default is None:
        return text + "."

    def show(v: Any) -> str:
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, list):
            return ",".join(show(x) for x in v) if v else "none"
        return f"{v:g}" if isinstance(v, float) else str(v)

    return f"{text} (default {show(default)})."
