"""Answer extraction and matching for generation benchmarks: lm-evaluation-harness 0.4.13's rules
as plain functions, applied with the options a benchmark spec's ``generation`` section names.

What they reproduce (read from lm-eval's ``filters/extraction.py`` and ``api/metrics.py``; the
parity tests compare against lm-eval itself):

* **Filters** (``regex_filter``): ``re.findall`` of the pattern; ``group_select`` picks one match
  (0 the first, -1 the last); a match with several groups keeps its first non-empty group; the
  result is stripped; no match gives the fallback ``[invalid]``. One greedy response per question,
  so lm-eval's ``take_first`` keeps it as it is.
* **exact_match** (``exact_match``): each of ``regexes_to_ignore``, in order, is removed
  (``re.sub``) from the filtered prediction *and* from the whole reference solution, then both are
  lower-cased (``ignore_case``), then compared. For GSM8K the reference loses everything up to its
  last ``"#### "``; the prediction keeps what the regexes leave, so ``"18.00"`` stays ``"18.00"``
  and does not equal ``"18"``.

The few-shot draws (lm-eval's seeded sampler) are prompt data: ``zhtune.data.prompts.seeded_draws``.
"""
from __future__ import annotations

import re
import string
from typing import Iterable, Sequence

FALLBACK = "[invalid]"  # lm-eval's RegexFilter output when nothing matches


def regex_filter(text: str, pattern: str, group_select: int = 0, fallback: str = FALLBACK) -> str:
    """One answer extracted from ``text`` as lm-eval's ``regex`` filter extracts it."""
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):  # several groups: the first that matched something
        match = next((group for group in match if group), fallback)
    return match.strip()


def normalize_for_match(text: str, regexes_to_ignore: Iterable[str] = (), ignore_case: bool = False,
                        ignore_punctuation: bool = False, ignore_numbers: bool = False) -> str:
    """``text`` as lm-eval's ``exact_match`` compares it."""
    for pattern in regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if ignore_numbers:
        text = text.translate(str.maketrans("", "", string.digits))
    # lm-eval compares numpy string arrays, which drop trailing NUL characters.
    return text.rstrip("\x00")


def exact_match(prediction: str, reference: str, regexes_to_ignore: Sequence[str] = (),
                ignore_case: bool = False, ignore_punctuation: bool = False,
                ignore_numbers: bool = False) -> bool:
    """lm-eval's ``exact_match`` of one filtered prediction against one reference."""
    options = dict(regexes_to_ignore=regexes_to_ignore, ignore_case=ignore_case,
                   ignore_punctuation=ignore_punctuation, ignore_numbers=ignore_numbers)
    return normalize_for_match(prediction, **options) == normalize_for_match(reference, **options)
