"""Benchmarks as data: one YAML spec per benchmark, loaded and validated here.

Each file in ``zhtune/resources/benchmarks/<name>.yaml`` says everything zhtune needs to know about
one benchmark, in the manner of lm-evaluation-harness's task YAMLs: where its files are and how
they are laid out (``files``), which splits exist and which one is scored (``splits``), its
subjects and their categories (``subjects``), where it lives on the hub (``hub``), and how a
question is turned into a prompt in each **style** (``styles``: ``lm-eval`` reproduces
lm-evaluation-harness 0.4.13's built-in task, ``official`` the benchmark authors' own code).

A style holds up to three **formulations**:

- ``letter``: the options are shown, the model picks a letter; the continuations are
  ``target_delimiter + "A"`` ... (one token each, scored from the next-token logits).
- ``cloze``: the options are not shown; each option's text is a continuation of the question,
  scored by its log-likelihood (``acc``) and per character (``acc_norm``).
- ``generate``: the model writes an answer (GSM8K); stops and answer extraction are in
  ``BenchmarkSpec.generation``.

Templates are Jinja, rendered exactly as lm-eval renders its ``doc_to_text``: the item template sees
the question's fields (``question``, ``A``..``D``, ``choices``, ``answer``), the description sees
the subject (``subject``, ``subject_words`` = the name with spaces for underscores, ``name_en``,
``name_zh``). A prompt is ``description + shot_1 + fewshot_delimiter + ... + shot_n +
fewshot_delimiter + item``, a solved shot being ``item + target_delimiter + target``.

Adding a benchmark is adding one file here, or in a folder of your own named by the environment
variable ``ZHTUNE_BENCHMARK_PATH`` (folders separated by ``os.pathsep``, as lm-eval's
``--include_path``), plus a reader in ``zhtune.data.benchmarks`` only for a file format that none of
``csv`` / ``jsonl`` covers. The spec's ``kind`` chooses the scorer; nothing else names a benchmark.
"""
from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zhtune.errors import UserError

SPEC_PACKAGE = "zhtune.resources"
SPEC_FOLDER = "benchmarks"
STYLES = ("lm-eval", "official")
DEFAULT_STYLE = "lm-eval"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSpec(_Spec):
    """Where the benchmark is on the Hugging Face hub (read when no local data folder is given)."""
    repo: str = Field(description="Dataset id, e.g. 'ceval/ceval-exam'.")
    config: str = Field("{subject}", description="Hub config name; '{subject}' stands for the subject.")
    splits: dict[str, str] = Field(default_factory=dict,
                                   description="zhtune split -> hub split where they differ "
                                               "(MMLU 'val' is the hub's 'validation').")
    configs: dict[str, str] = Field(default_factory=dict,
                                    description="zhtune split -> hub config where it is not `config` "
                                                "(GSM8K 'test_socratic' is config 'socratic').")
    choices_column: str | None = Field(None, description="A column holding the options as one list "
                                                         "(cais/mmlu 'choices'); else `files.columns`.")
    answer_index: bool = Field(False, description="The answer column holds 0-3 instead of a letter.")


class ColumnSpec(_Spec):
    """Which file column holds what. For a headerless CSV, `names` are the columns in order."""
    question: str = Field(description="Column of the question text.")
    choices: list[str] = Field(default_factory=list, description="Columns of the options, in order.")
    answer: str = Field(description="Column of the gold answer (a letter, or GSM8K's solution).")
    id: str | None = Field(None, description="Column of the question id; None: the 0-based row.")
    names: list[str] | None = Field(None, description="Column names of a headerless file, in order.")


class FileSpec(_Spec):
    """The official release's file layout under ``<data_dir>/<benchmark>/``."""
    reader: Literal["csv", "jsonl"] = Field(description="File format (one reader per format).")
    path: str = Field(description="File of one subject's split, relative to the benchmark folder; "
                                  "'{split}' and '{subject}' are filled in.")
    header: bool = Field(True, description="CSV: the first row names the columns.")
    columns: ColumnSpec
    extra_columns: dict[str, list[str]] = Field(
        default_factory=dict, description="Further columns of a split's files, after the answer "
                                          "(C-Eval dev: explanation); `zhtune data download` writes them.")


class SplitSpec(_Spec):
    """The splits of the release, which one is scored and which one gives few-shot examples."""
    all: list[str] = Field(description="Every split of the release.")
    eval: str = Field(description="The split scored by default.")
    few_shot: str = Field(description="The split few-shot examples come from.")
    unlabeled: list[str] = Field(default_factory=list,
                                 description="Splits without answers by design (not an error).")
    unlabeled_message: str | None = Field(None, description="Why, said when one is asked to score.")

    @model_validator(mode="after")
    def _known(self) -> "SplitSpec":
        for name in (self.eval, self.few_shot, *self.unlabeled):
            if name not in self.all:
                raise ValueError(f"split {name!r} is not in all: {self.all}")
        return self


class SubjectSpec(_Spec):
    """One subject: names and its category (the authors' grouping)."""
    name_en: str = Field(description="English name.")
    name_zh: str = Field(description="Chinese name (C-Eval and CMMLU prompts use it).")
    category: str = Field(description="One of the spec's categories.")
    subcategory: str | None = Field(None, description="Fine-grained group (CMMLU, MMLU).")
    groups: list[str] = Field(default_factory=list,
                              description="Further aggregate groups the subject belongs to besides "
                                          "its category (CMMLU's 'China specific').")


class FormulationSpec(_Spec):
    """How one question becomes a prompt and what is scored after it."""
    description: str | None = Field(None, description="Opening text (Jinja, per subject); None: "
                                                      "the style's description.")
    template: str = Field(description="The question as text (Jinja, as lm-eval's doc_to_text).")
    choices: list[str] | Literal["options"] = Field(
        "options", description="The answer strings: letters, or 'options' = the option texts.")
    target: str | None = Field(None, description="A solved shot's answer (Jinja); None: the gold "
                                                 "entry of `choices`.")
    target_delimiter: str = Field(" ", description="Between the item and its answer (lm-eval's "
                                                   "default is one space).")
    fewshot_delimiter: str = Field("\n\n", description="After each solved shot.")
    answer_cue: str = Field(description="The text the item ends with (moved after the assistant "
                                        "turn's start when a chat template is used).")


class StyleSpec(_Spec):
    """A prompt style: what it reproduces, its formulations, few-shot selection, aggregation."""
    reproduces: str = Field(description="The code whose prompts and numbers this style reproduces.")
    description: str = Field("", description="Opening text per subject (Jinja).")
    letter: FormulationSpec | None = None
    cloze: FormulationSpec | None = None
    generate: FormulationSpec | None = None
    fewshot_sampler: Literal["first_n", "random"] = Field(
        "first_n", description="first_n: the first n of the few-shot split for every question; "
                               "random: see GenerationSpec.")
    aggregation: Literal["questions", "subjects"] = Field(
        "questions", description="The benchmark (and category) score: mean over questions, or mean "
                                 "of the subjects' accuracies (C-Eval and CMMLU papers).")
    category_overrides: dict[str, str] = Field(
        default_factory=dict, description="Subject -> category where this style groups differently "
                                          "(lm-eval puts MMLU anatomy in STEM).")

    def formulation(self, name: str) -> FormulationSpec | None:
        return getattr(self, name)


class RegexFilterSpec(_Spec):
    """One answer-extraction filter, as lm-eval's ``regex`` filter followed by ``take_first``."""
    regex: str = Field(description="Python regex searched with re.findall in the generation.")
    group_select: int = Field(0, description="Which match to keep: 0 the first, -1 the last.")
    fallback: str = Field("[invalid]", description="The result when nothing matches.")


class ExactMatchSpec(_Spec):
    """lm-eval's ``exact_match`` options: applied to the filtered prediction and the reference."""
    regexes_to_ignore: list[str] = Field(default_factory=list,
                                         description="Removed (re.sub) from both, in this order.")
    ignore_case: bool = Field(False, description="Lower-case both after the removals.")
    ignore_punctuation: bool = Field(False, description="Delete string.punctuation from both.")
    ignore_numbers: bool = Field(False, description="Delete the digits 0-9 from both.")


class ExemplarSpec(_Spec):
    """One solved example written into the spec (chain-of-thought exemplars)."""
    question: str = Field(description="The question, filled into the generate template.")
    answer: str = Field(description="The worked solution, filled into the generate target.")


class GenerationSpec(_Spec):
    """How a generated answer is stopped, extracted and scored, and how the shots are drawn.

    The prompt layout is the style's ``generate`` formulation; the reference an extracted answer is
    compared with is that formulation's ``target`` rendered for the question (GSM8K: the whole
    solution, which ``exact_match.regexes_to_ignore`` cut down to the final number).
    """
    until: list[str] = Field(description="Stop strings; the tokenizer's EOS is added to them. With a "
                                         "chat template the model family's stops are added too.")
    fewshot_seed: int = Field(1234, description="Seed of the random sampler (lm-eval's "
                                                "fewshot_random_seed); test question i gets the "
                                                "i-th draw of a run over the whole split.")
    strict: RegexFilterSpec = Field(description="lm-eval's 'strict-match' filter.")
    flexible: RegexFilterSpec = Field(description="lm-eval's 'flexible-extract' filter; its "
                                                  "exact_match is what 'accuracy' reports.")
    cot_strict: RegexFilterSpec | None = Field(
        None, description="'strict-match' for the chain-of-thought variant (eval.generation_cot), whose "
                          "exemplars end 'The answer is N.' (lm-eval gsm8k-cot's regex).")
    cot_exemplars: list[ExemplarSpec] = Field(
        default_factory=list, description="The fixed solved examples of the chain-of-thought variant "
                                          "(eval.generation_cot), in prompt order.")
    exact_match: ExactMatchSpec = Field(default_factory=ExactMatchSpec,
                                        description="How a filtered answer is compared with the reference.")


class BenchmarkSpec(_Spec):
    """Everything zhtune knows about one benchmark."""
    name: str = Field(description="Short name used in configs, keys and summaries ('ceval').")
    title: str = Field(description="Display name ('C-Eval').")
    language: Literal["zh", "en"] = Field(description="Chinese benchmarks count as gain, English as "
                                                      "forgetting.")
    kind: Literal["multiple_choice", "generation"] = Field(
        description="multiple_choice: scored by letters or option log-likelihoods; generation: greedy "
                    "generation, stopped, filtered and exact-matched as `generation` says.")
    files: FileSpec
    hub: HubSpec
    splits: SplitSpec
    categories: list[str] = Field(description="The categories of `subjects`, in display order.")
    extra_groups: list[str] = Field(default_factory=list,
                                    description="Groups beyond the categories (subjects' `groups`).")
    subjects: dict[str, SubjectSpec]
    styles: dict[str, StyleSpec]
    generation: GenerationSpec | None = Field(None, description="Required for kind generation.")

    @model_validator(mode="after")
    def _consistent(self) -> "BenchmarkSpec":
        for name, s in self.subjects.items():
            if s.category not in self.categories:
                raise ValueError(f"subject {name}: category {s.category!r} not in {self.categories}")
            for g in s.groups:
                if g not in self.extra_groups:
                    raise ValueError(f"subject {name}: group {g!r} not in extra_groups")
        if self.kind == "generation" and self.generation is None:
            raise ValueError("kind generation needs a generation section (stops, filters, exact_match)")
        missing = [s for s in STYLES if s not in self.styles]
        if missing:
            raise ValueError(f"styles {missing} missing (every benchmark has {list(STYLES)})")
        for style_name, style in self.styles.items():
            for subject, category in style.category_overrides.items():
                if subject not in self.subjects or category not in self.categories:
                    raise ValueError(f"style {style_name}: category_overrides {subject}: {category}")
            forms = [f for f in ("letter", "cloze", "generate") if style.formulation(f)]
            if not forms:
                raise ValueError(f"style {style_name}: no formulation (letter, cloze or generate)")
            for f in forms:
                form = style.formulation(f)
                if not form.template.endswith(form.answer_cue):
                    raise ValueError(f"style {style_name} {f}: template does not end with its "
                                     f"answer_cue {form.answer_cue!r}")
        return self

    # --------------------------------------------------------------- lookups
    def style(self, name: str) -> StyleSpec:
        if name not in self.styles:
            raise UserError(f"{self.name}: unknown style {name!r}; styles: {', '.join(self.styles)}")
        return self.styles[name]

    def formulation(self, style: str, formulation: str) -> FormulationSpec:
        form = self.style(style).formulation(formulation)
        if form is None:
            have = [f for f in ("letter", "cloze", "generate") if self.style(style).formulation(f)]
            raise UserError(f"{self.name}: style {style!r} has no {formulation!r} formulation "
                            f"(it has {', '.join(have)})")
        return form

    def category(self, subject: str, style: str = DEFAULT_STYLE) -> str:
        """The subject's category as ``style`` groups it."""
        override = self.styles[style].category_overrides.get(subject) if style in self.styles else None
        return override or self.subjects[subject].category

    def labeled(self, split: str) -> bool:
        return split not in self.splits.unlabeled


SPEC_PATH_ENV = "ZHTUNE_BENCHMARK_PATH"  # extra spec folders, os.pathsep-separated


def _spec_files():
    return resources.files(SPEC_PACKAGE).joinpath(SPEC_FOLDER)


@lru_cache(maxsize=None)
def _spec_sources(extra: str) -> dict[str, Any]:
    """Spec name -> file: the shipped specs, then those in the ``ZHTUNE_BENCHMARK_PATH`` folders. A
    name may be given once only, so a result can always be traced to one spec."""
    sources: dict[str, Any] = {p.name[:-5]: p for p in _spec_files().iterdir() if p.name.endswith(".yaml")}
    for folder in (Path(d).expanduser() for d in extra.split(os.pathsep) if d):
        if not folder.is_dir():
            raise UserError(f"{SPEC_PATH_ENV}: {folder} is not a folder of benchmark specs")
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in sources:
                raise UserError(f"{path}: a benchmark named {path.stem!r} is already defined "
                                f"({sources[path.stem]}); give this one another name")
            sources[path.stem] = path
    return sources


def _extra_path() -> str:
    return os.environ.get(SPEC_PATH_ENV, "")


def _format_error(name: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<top>"
        parts.append(f"{where}: {e['msg']}")
    return f"benchmark spec {name}.yaml: " + "; ".join(parts)


def parse_spec(text: str, source: str) -> BenchmarkSpec:
    """A spec from YAML text; errors name ``source`` and the offending key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"benchmark spec {source}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise UserError(f"benchmark spec {source}: expected a mapping at the top")
    try:
        return BenchmarkSpec.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_error(source.removesuffix(".yaml"), err)) from err


def list_specs() -> tuple[str, ...]:
    """Names of the benchmarks with a spec, in the order C-Eval, CMMLU, MMLU, GSM8K, then the rest."""
    return _list_specs(_extra_path())


@lru_cache(maxsize=None)
def _list_specs(extra: str) -> tuple[str, ...]:
    names = sorted(_spec_sources(extra))
    first = [n for n in ("ceval", "cmmlu", "mmlu", "gsm8k") if n in names]
    return tuple(first + [n for n in names if n not in first])


def load_spec(name: str) -> BenchmarkSpec:
    """The validated spec of a benchmark (cached)."""
    return _load_spec(name, _extra_path())


@lru_cache(maxsize=None)
def _load_spec(name: str, extra: str) -> BenchmarkSpec:
    sources = _spec_sources(extra)
    if name not in sources:
        raise UserError(f"unknown benchmark {name!r}; known: {', '.join(_list_specs(extra))}")
    text = sources[name].read_text(encoding="utf-8")
    spec = parse_spec(text, f"{name}.yaml")
    if spec.name != name:
        raise UserError(f"benchmark spec {sources[name]}: name is {spec.name!r}, expected {name!r}")
    return spec


def clear_spec_cache() -> None:
    """Forget the parsed specs (after a spec file changed in this process)."""
    for cached in (_spec_sources, _list_specs, _load_spec):
        cached.cache_clear()


# ----------------------------------------------------------------------------- rendering

@lru_cache(maxsize=None)
def _template(text: str):
    import jinja2

    # The settings lm-eval renders doc_to_text with: a missing field is an error, and a trailing
    # newline in a template is kept (Jinja drops it by default).
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(text)


def render(text: str, fields: dict[str, Any]) -> str:
    """A Jinja template filled with ``fields``."""
    return _template(text).render(**fields)
