"""The rules of lm-evaluation-harness 0.4.13's ``gsm8k`` task, written as plain functions.

What they reproduce (read from lm-eval's ``api/samplers.py``, ``api/task.py``,
``filters/extraction.py``, ``api/metrics.py``; the parity tests compare against lm-eval itself):

* **Few-shot draws** (``seeded_draws``): lm-eval's default sampler is one ``random.Random(1234)``
  per task; building the requests in document order, it calls ``sample(train, 5)`` once per test
  question, so every question gets its own 5 exemplars, in the order drawn. With ``--limit N``
  lm-eval builds only the first N questions, which get exactly the draws they get in a full run.
  zhtune keeps that property for any subset: the exemplars of test question *i* (its position in
  the test file) are the *i*-th draw of a full run, whichever other questions are evaluated.
  (lm-eval's ``--samples`` option instead draws for the chosen questions one after another; a
  subset that is not a prefix of the test set can therefore get other exemplars there.)
* **Filters** (``regex_filter``): ``re.findall`` of the pattern; ``group_select`` picks one match
  (0 the first, -1 the last); a match with several groups keeps its first non-empty group; the
  result is stripped; no match gives the fallback ``[invalid]``. One greedy response per question,
  so lm-eval's ``take_first`` keeps it as it is.
* **exact_match** (``exact_match``): each of ``regexes_to_ignore``, in order, is removed
  (``re.sub``) from the filtered prediction *and* from the whole reference solution, then both are
  lower-cased (``ignore_case``), then compared. For GSM8K the reference loses everything up to its
  last ``"#### "``; the prediction keeps what the regexes leave, so ``"18.00"`` stays ``"18.00"``
  and does not equal ``"18"``.
"""
from __future__ import annotations

import random
import re
import string
from typing import Iterable, Sequence

FALLBACK = "[invalid]"  # lm-eval's RegexFilter output when nothing matches


def seeded_draws(pool_size: int, shots: int, seed: int, count: int) -> list[list[int]]:
    """The few-shot indices (into the few-shot split, in drawn order) of the first ``count``
    evaluated documents: one ``random.Random(seed)``, one ``sample(pool, shots)`` per document.

    ``Random.sample`` picks positions from the pool's length only, so sampling ``range(pool_size)``
    gives the indices of exactly the documents lm-eval draws from its list of train documents.
    """
    if shots < 0 or count < 0:
        raise ValueError("shots and count must be >= 0")
    if shots == 0:
        return [[] for _ in range(count)]  # lm-eval does not draw at all for 0-shot
    if shots > pool_size:
        raise ValueError(f"{shots} shots requested from a few-shot split of {pool_size}")
    rnd = random.Random(seed)
    return [rnd.sample(range(pool_size), shots) for _ in range(count)]


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
