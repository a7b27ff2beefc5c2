"""What the analysis needs to know about a benchmark, read from its spec (``zhtune.data.specs``).

A compared benchmark is named as in predictions.jsonl: the spec's name, with ``_cloze`` appended for
the cloze formulation of a multiple-choice benchmark. Everything benchmark-specific the analysis uses
(display title, language, kind, the accuracy chance gives) comes from the spec, so a benchmark added as
one YAML file needs no change here. A name without a spec (an older or foreign folder) still compares:
it gets its own name as title, English, multiple choice with unknown chance.
"""
from __future__ import annotations

from functools import lru_cache

from zhtune.data.specs import BenchmarkSpec, list_specs, load_spec
from zhtune.errors import UserError

CLOZE = "_cloze"


def spec_name(bench: str) -> str:
    """``ceval_cloze`` -> ``ceval``."""
    return bench.removesuffix(CLOZE)


def is_cloze(bench: str) -> bool:
    return bench.endswith(CLOZE)


@lru_cache(maxsize=None)
def spec_of(bench: str) -> BenchmarkSpec | None:
    try:
        return load_spec(spec_name(bench))
    except UserError:
        return None


def title(bench: str) -> str:
    """Display name: the spec's title, ``(cloze)`` added for the cloze formulation."""
    spec = spec_of(bench)
    name = spec.title if spec is not None else spec_name(bench)
    return f"{name} (cloze)" if is_cloze(bench) else name


def language(bench: str) -> str:
    spec = spec_of(bench)
    return spec.language if spec is not None else "en"


def is_generation(bench: str) -> bool:
    """Generative benchmarks (GSM8K) have one formulation, scored by exact match."""
    spec = spec_of(bench)
    return spec is not None and spec.kind == "generation"


def floor_accuracy(bench: str) -> float:
    """The accuracy a model without the ability gets: chance (1 / options) for multiple choice, 0 for
    generation; 0 when the number of options is unknown."""
    spec = spec_of(bench)
    if spec is None or spec.kind == "generation":
        return 0.0
    options = len(spec.files.columns.choices)
    return 1.0 / options if options else 0.0


def spec_order(bench: str) -> int:
    """Position in the specs' order (C-Eval, CMMLU, MMLU, GSM8K, then the rest)."""
    names = list_specs()
    return names.index(spec_name(bench)) if spec_name(bench) in names else len(names)


def order(bench: str) -> tuple[bool, int, str]:
    """Sort key of compared benchmarks: every letter (and generative) one in the specs' order, then
    the cloze ones."""
    return (is_cloze(bench), spec_order(bench), bench)
