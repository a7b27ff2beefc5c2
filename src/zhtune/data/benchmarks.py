"""Benchmark questions from the official release layout or the hub, as one record type."""
from __future__ import annotations

from dataclasses import dataclass, field

BENCHMARKS = ("ceval", "cmmlu", "mmlu", "gsm8k")
CHINESE_BENCHMARKS = ("ceval", "cmmlu")
ENGLISH_BENCHMARKS = ("mmlu", "gsm8k")
LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    benchmark: str  # one of BENCHMARKS
    subject: str  # file stem without split suffix, e.g. "computer_network"; "main" for GSM8K
    category: str  # "STEM" | "Humanities" | "Social Sciences" | "Other" (GSM8K: "Math")
    split: str  # "dev" | "val" | "test" | "train"
    id: str  # stable within (benchmark, subject, split)
    question: str
    choices: tuple[str, ...] = field(default_factory=tuple)  # A-D texts; empty for GSM8K
    answer: str | None = None  # "A".."D"; GSM8K: the full solution ending "#### N"; None: unlabeled

    @property
    def key(self) -> str:
        """Identifies the question across runs (used to pair base and tuned predictions)."""
        return f"{self.benchmark}/{self.subject}/{self.split}/{self.id}"
