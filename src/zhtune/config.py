"""One experiment, one YAML file: the schema, loading, dotted overrides and the resolved copy.

Every section is a plain pydantic model with ``extra="forbid"`` so that a typo (``lora.rnak``) is an
error that names the key and the file instead of a silently ignored setting.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from zhtune.errors import UserError
from zhtune.io import atomic_write_text


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message names the key and the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    # A local folder, a hub id, "modelscope:ORG/NAME", a .gguf file or "builtin:NAME".
    name_or_path: str = "builtin:smollm2-135m-instruct"
    revision: str | None = None
    family: str | None = None  # None: detected from config.json
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    trust_remote_code: bool = False


class ReplayConfig(_Section):
    # Fraction of the training mix drawn from English instructions (0 = no replay).
    ratio: float = Field(0.0, ge=0.0, lt=1.0)
    source: str = "alpaca/alpaca_en_demo.json"


class DataConfig(_Section):
    # Where local benchmark and instruction files live; ZHTUNE_DATA_DIR when None.
    data_dir: str | None = None
    # Training sources: files (relative to data_dir or absolute), folders, or hub ids.
    train: list[str] = Field(default_factory=lambda: ["belle/dev1K.json"])
    sample_size: int | None = Field(None, gt=0)  # seeded sample, as --belle_sample_size
    max_length: int = Field(512, gt=8)
    val_size: float = Field(0.05, ge=0.0, lt=1.0)  # held-out fraction for validation loss
    packing: bool = True
    chat_format: bool = True  # use the family's chat format; False: plain instruction template
    seed: int = 42
    replay: ReplayConfig = Field(default_factory=ReplayConfig)


class LoraConfig(_Section):
    # None: the model family's documented default (Qwen r=8, alpha=32; Llama r=16, alpha=32).
    rank: int | None = Field(None, gt=0)
    alpha: float | None = Field(None, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # A preset ("all", "attention", "mlp") or explicit module names.
    targets: str | list[str] = "all"
    use_rslora: bool = False
    use_dora: bool = False

    @field_validator("targets")
    @classmethod
    def _targets_not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty target list trains nothing; use a preset such as 'all'")
        return v


class ProbeConfig(_Section):
    every_steps: int | None = Field(None, gt=0)  # None: no probes during training
    ceval_questions: int = Field(40, ge=0)
    mmlu_questions: int = Field(40, ge=0)
    # Questions per benchmark, any benchmark with a spec ({cmmlu: 40, mmlu: 40}); None: C-Eval
    # ceval_questions and MMLU mmlu_questions.
    benchmarks: dict[str, int] | None = None
    perplexity_chars: int = Field(4000, ge=0)
    keep_best: bool = False  # keep the checkpoint with the best zh-gain / en-loss trade-off
    min_english_retention: float | None = Field(None, gt=0.0, le=1.0)  # stop early below this


class TrainConfig(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float | None = Field(None, gt=0)  # None: the family's default
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast dtype of the training matmuls (weights and optimizer stay as "
        "loaded). auto: bf16 on GPUs with bf16 and on CPUs with avx512_bf16 or AMX, fp16 on older "
        "GPUs, fp32 otherwise. fp16 needs a GPU.")
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(50, gt=0)
    save_total_limit: int = Field(2, gt=0)
    eval_steps: int | None = Field(None, gt=0)  # validation loss every N steps (None: save_steps)
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    deepspeed: str | None = None  # path to a DeepSpeed JSON config
    seed: int = 42
    probes: ProbeConfig = Field(default_factory=ProbeConfig)


def _known_benchmark(name: str) -> str:
    """Each benchmark is checked on its own, so an error names the bad element (eval.benchmarks.0)."""
    from zhtune.data.specs import list_specs

    if name not in list_specs():
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(list_specs())}")
    return name


class EvalConfig(_Section):
    # Any benchmark with a spec in zhtune/resources/benchmarks/ (ceval, cmmlu, mmlu, gsm8k).
    benchmarks: list[Annotated[str, AfterValidator(_known_benchmark)]] = Field(
        default_factory=lambda: ["ceval", "cmmlu", "mmlu", "gsm8k"])
    # Prompt style: "lm-eval" reproduces lm-evaluation-harness 0.4.13's tasks, "official" the
    # benchmark authors' code and their aggregation (C-Eval and CMMLU: mean of subject accuracies).
    style: Literal["lm-eval", "official"] = "lm-eval"
    # Multiple choice: "letter" (options shown, next-token letter), "cloze" (each option's text by
    # log-likelihood; headline acc_norm), or "both" (cloze results under "<benchmark>_cloze").
    formulation: Literal["letter", "cloze", "both"] = "letter"
    write_prompts: bool = False  # prompts.jsonl: the exact context and continuations per question
    subjects: list[str] | None = None
    shots: int = Field(5, ge=0)
    gsm8k_shots: int = Field(5, ge=0)
    gsm8k_cot: bool = False  # the 8-shot chain-of-thought exemplars instead of train[:n]
    limit: int | None = Field(None, gt=0)  # per subject (GSM8K: in all), deterministic
    # At most N questions per benchmark, taken round-robin over subjects (every category stays
    # represented); for quick runs such as the CPU demo. None: no cap.
    max_per_benchmark: int | None = Field(None, gt=0)
    batch_size: int = Field(8, gt=0, description=(
        "GSM8K generation and bits per character: sequences per forward pass."))
    batch_tokens: int = Field(4096, gt=0, description=(
        "Multiple choice: question tokens per forward pass, padding included (the few-shot prefix is "
        "shared, not counted). Bounds memory whatever the prompt length; halved on out-of-memory."))
    chat: bool = False  # wrap prompts in the model's chat template
    max_new_tokens: int = Field(256, gt=0)
    perplexity: bool = True
    perplexity_chars: int = Field(20000, ge=0)
    control_probes: bool = Field(True, description=(
        "Also score bits per character on a different-genre control text per language (the question "
        "text of C-Eval test and MMLU val, never scored as benchmarks; perplexity_chars characters each), "
        "so that a change on the seed-task probes can be told from genre adaptation."))
    adapter_scales: list[float] = Field(default_factory=lambda: [1.0])


class AnalysisConfig(_Section):
    forgetting_margin: float = Field(2.0, ge=0.0, le=100.0, description=(
        "Forgetting margin in points of accuracy: English (and each English benchmark) is called 'no "
        "forgetting beyond the margin' when the one-sided 95% upper bound of forgetting (the 90% two-sided "
        "interval's bound, a TOST at alpha 0.05) is below it."))
    gain_margin: float = Field(2.0, ge=0.0, le=100.0, description=(
        "Gain margin in points of accuracy: Chinese (and each Chinese benchmark) is called 'no gain beyond "
        "the margin' when the one-sided 95% upper bound of the gain is below it."))
    headline_formulation: Literal["auto", "letter", "cloze"] = Field("auto", description=(
        "Formulation of the pooled Chinese/English headline figures when the runs have both: letter (the "
        "published one), cloze (for small models at chance on letters), or auto (letter where evaluated). The "
        "other formulation is reported too, as the secondary analysis."))
    # Accepted loss of English accuracy (points) when recommending an adapter scale.
    english_tolerance: float = Field(1.0, ge=0.0)


class OutputConfig(_Section):
    dir: str = "runs/experiment"
    # Baselines are cached here and shared between runs with the same model and eval settings.
    baseline_cache: str | None = None  # None: ZHTUNE_HOME/baselines


class SlurmConfig(_Section):
    # "slurm" submits with sbatch (through submitit); "local" runs the same job array as processes
    # on this machine, to try a config before queueing it.
    cluster: Literal["slurm", "local"] = "slurm"
    partition: str | None = None
    time_min: int = Field(24 * 60, gt=0)  # wall-clock limit of one grid point's job
    mem_gb: int | None = Field(None, gt=0)
    array_parallelism: int = Field(64, gt=0)  # grid points running at once
    additional: dict[str, Any] = Field(default_factory=dict)  # more sbatch options: {account: x, qos: y}


class SweepConfig(_Section):
    # Dotted key -> values; the sweep runs the Cartesian product, e.g. {"lora.rank": [4, 8]}.
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    # Where grid points run: this machine ("local"), a Ray cluster, or a Slurm job array.
    launcher: Literal["local", "ray", "slurm"] = "local"
    workers: int = Field(1, gt=0)  # local: runs at a time (processes)
    devices: list[str] | None = None  # local: one worker per device, e.g. ["cuda:0", "cuda:1"]
    address: str | None = None  # ray: "auto", "HOST:PORT"; None: RAY_ADDRESS, else Ray on this machine
    # None: 1 where the cluster has GPUs (Ray: counted; Slurm: assumed, 0 with slurm.cluster=local)
    gpus_per_point: int | None = Field(None, ge=0)
    cpus_per_point: int = Field(1, gt=0)
    # A point whose worker or job died (killed, node lost) starts again from its last checkpoint
    # this many times before it is reported as failed.
    max_retries: int = Field(2, ge=0)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class ExperimentConfig(_Section):
    name: str = "experiment"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)


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
    return str(value)


def config_field(key: str):
    """The schema's field (pydantic FieldInfo) for a dotted config key, e.g. "eval.shots"."""
    model: type[BaseModel] = ExperimentConfig
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # nested sections are plain _Section classes
    return model.model_fields[name]


def flag_help(key: str, text: str | None = None) -> str:
    """The help of the command-line flag for config field ``key`` (dotted, e.g. "eval.shots"): the
    field's description (else ``text``) and the schema's default, so that a default is stated once, in
    the schema. A field whose default is None gets no default here: ``text`` says what None means."""
    field = config_field(key)
    description = field.description or text
    if description is None:
        raise ValueError(f"{key}: no description in the schema and no help text given")
    default = field.get_default(call_default_factory=True)
    if default is None:
        return description
    def show(v: Any) -> str:
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, list):
            return ",".join(show(x) for x in v) if v else "none"
        return f"{v:g}" if isinstance(v, float) else str(v)

    return f"{description} (default {show(default)})."
