"""Prompts as the benchmark specs write them, character for character.

Multiple choice (C-Eval, CMMLU, MMLU) is scored from what follows the answer cue, so a prompt is
split in two: ``choice_prefix`` (the subject's description and the solved few-shot examples, the
same for every question of a subject, so its KV cache can be shared) and ``choice_item`` (one
question ending with the cue). The text comes from the benchmark's spec
(``zhtune/resources/benchmarks/<name>.yaml``) for a **style** and a **formulation**:

- style ``lm-eval`` (the default) reproduces lm-evaluation-harness 0.4.13's ``ceval-valid``,
  ``cmmlu`` and ``mmlu`` tasks: the question stripped (``question.strip()``), options as they are in
  the file, a solved shot ``…答案： A`` (the target delimiter is one space), the continuations scored
  `` A``..`` D``; style ``official`` the C-Eval / CMMLU / Hendrycks repositories' own code
  (nothing stripped; ``答案：A`` and ``题目：…答案是：A`` without a space for C-Eval and CMMLU).
- formulation ``letter`` shows the options and scores the letters; ``cloze`` shows only the
  question and scores each option's text (MMLU's is lm-eval's ``mmlu_continuation``).

A prompt is ``description + (shot + target_delimiter + target + fewshot_delimiter) * n + item``;
the shots are the first n of the subject's few-shot split (lm-eval's ``first_n`` sampler), n = 0
leaves only the description.

Generation benchmarks (GSM8K): the style's ``generate`` formulation (lm-eval's ``gsm8k`` task):
items ``Question: {question}\\nAnswer:``, solved shots ``item + " " + solution + "\\n\\n"`` with the
train solutions as written (calculator annotations ``<<…>>`` and the final ``#### N`` included),
nothing stripped. Which solutions each question gets is ``generation_exemplars`` (lm-eval's seeded
random draws, a different 5 per question). The chain-of-thought variant (zhtune's own, not the
layout of lm-eval's ``gsm8k-cot``) puts the spec's ``generation.cot_exemplars`` (GSM8K: the 8 of Wei
et al. 2022) in the same layout.
"""
from __future__ import annotations

from typing import Any, Sequence

from zhtune.data.benchmarks import BENCHMARKS, LETTERS, Question, is_multiple_choice, subject_info
from zhtune.data.specs import DEFAULT_STYLE, FormulationSpec, load_spec, render


def _cues() -> tuple[str, ...]:
    forms = (f for b in BENCHMARKS for style in load_spec(b).styles.values()
             for f in (style.letter, style.cloze, style.generate) if f is not None)
    # Longest first, so that a cue ending with another one is recognised whole.
    return tuple(sorted({f.answer_cue for f in forms}, key=len, reverse=True))


# Every answer cue of every spec (wrap_chat moves the one a prompt ends with after the chat turn).
ALL_ANSWER_CUES = _cues()

def _check_choice(benchmark: str) -> None:
    if not is_multiple_choice(benchmark):
        raise ValueError(f"{benchmark!r} is not a multiple-choice benchmark")


def formulation_spec(benchmark: str, style: str = DEFAULT_STYLE,
                     formulation: str = "letter") -> FormulationSpec:
    """The spec's item template, choices and delimiters for a style and formulation."""
    return load_spec(benchmark).formulation(style, formulation)


def answer_prefix(benchmark: str, style: str = DEFAULT_STYLE) -> str:
    """The cue an unsolved item ends with (``答案：``, ``答案是：``, ``Answer:``)."""
    form = "generate" if load_spec(benchmark).kind == "generation" else "letter"
    return formulation_spec(benchmark, style, form).answer_cue


def answer_continuation(benchmark: str, letter: str, style: str = DEFAULT_STYLE) -> str:
    """The scored text after the cue for a letter: target delimiter + letter (`` A`` in lm-eval
    style, ``A`` in C-Eval's and CMMLU's official style)."""
    _check_choice(benchmark)
    return formulation_spec(benchmark, style, "letter").target_delimiter + letter


def _fields(q: Question) -> dict[str, Any]:
    """What an item template can use: the columns as lm-eval's docs have them."""
    return {"question": q.question, "choices": list(q.choices), "answer": q.answer,
            **dict(zip(LETTERS, q.choices))}


def description(benchmark: str, subject: str, style: str = DEFAULT_STYLE,
                formulation: str = "letter") -> str:
    """The subject's opening text (with its blank line), from the spec."""
    _check_choice(benchmark)
    spec = load_spec(benchmark)
    info = subject_info(benchmark, subject)
    text = spec.formulation(style, formulation).description
    if text is None:
        text = spec.style(style).description
    return render(text, {"subject": subject, "subject_words": subject.replace("_", " "),
                         "name_en": info.name_en, "name_zh": info.name_zh})


def choice_strings(benchmark: str, q: Question, style: str = DEFAULT_STYLE,
                   formulation: str = "letter") -> list[str]:
    """The answer strings (letters, or the option texts for cloze), without the delimiter."""
    form = formulation_spec(benchmark, style, formulation)
    return list(q.choices) if form.choices == "options" else list(form.choices)


def continuations(benchmark: str, q: Question, style: str = DEFAULT_STYLE,
                  formulation: str = "letter") -> list[str]:
    """The exact strings scored after the item: target delimiter + each answer string."""
    form = formulation_spec(benchmark, style, formulation)
    return [form.target_delimiter + c for c in choice_strings(benchmark, q, style, formulation)]


def choice_item(benchmark: str, q: Question, with_answer: bool, style: str = DEFAULT_STYLE,
                formulation: str = "letter") -> str:
    """One question as the style writes it.

    ``with_answer=True``: a solved shot, item + target delimiter + gold answer + few-shot delimiter
    (``…答案： A\\n\\n`` in lm-eval style). ``with_answer=False``: the question to score, ending
    exactly with the cue: the scorer appends the continuations.
    """
    _check_choice(benchmark)
    if len(q.choices) != len(LETTERS):
        raise ValueError(f"{q.key}: {len(q.choices)} choices, expected 4")
    form = formulation_spec(benchmark, style, formulation)
    text = render(form.template, _fields(q))
    if with_answer:
        if q.answer is None:
            raise ValueError(f"{q.key}: a few-shot example needs an answer")
        gold = choice_strings(benchmark, q, style, formulation)[LETTERS.index(q.answer)]
        text += form.target_delimiter + gold + form.fewshot_delimiter
    return text


def choice_prefix(benchmark: str, subject: str, shots: Sequence[Question], style: str = DEFAULT_STYLE,
                  formulation: str = "letter") -> str:
    """Description plus the solved shots; the question to score (``choice_item``) follows it."""
    return description(benchmark, subject, style, formulation) + "".join(
        choice_item(benchmark, s, True, style, formulation) for s in shots)


def choice_prompt(benchmark: str, subject: str, shots: Sequence[Question], q: Question,
                  style: str = DEFAULT_STYLE, formulation: str = "letter") -> str:
    """The whole prompt for one question: ``choice_prefix + choice_item(with_answer=False)``."""
    return (choice_prefix(benchmark, subject, shots, style, formulation)
            + choice_item(benchmark, q, False, style, formulation))


def _generate_form(benchmark: str, style: str) -> FormulationSpec:
    return formulation_spec(benchmark, style, "generate")


def _generate_fields(question: str, answer: str | None) -> dict:
    return {"question": question, "answer": answer}


def generation_item(q: Question, style: str = DEFAULT_STYLE) -> str:
    """The question to solve (GSM8K: ``Question: {question}\\nAnswer:``); the model writes the rest."""
    return render(_generate_form(q.benchmark, style).template, _generate_fields(q.question, q.answer))


def generation_target(q: Question, style: str = DEFAULT_STYLE) -> str:
    """A question's solution as a shot's answer, and the reference exact_match compares with."""
    if q.answer is None:
        raise ValueError(f"{q.key}: no solution")
    return render(_generate_form(q.benchmark, style).target, _generate_fields(q.question, q.answer))


def _generate_shot(benchmark: str, question: str, answer: str, style: str) -> str:
    form = _generate_form(benchmark, style)
    fields = _generate_fields(question, answer)
    return (render(form.template, fields) + form.target_delimiter + render(form.target, fields)
            + form.fewshot_delimiter)


def generation_prefix(benchmark: str, shots: Sequence[Question], cot: bool = False,
                      style: str = DEFAULT_STYLE) -> str:
    """The style's description, then the solved ``shots`` in the order given; with ``cot=True``
    the spec's chain-of-thought exemplars instead (``shots`` is then ignored)."""
    spec = load_spec(benchmark)
    form = _generate_form(benchmark, style)
    description = form.description if form.description is not None else spec.style(style).description
    if cot:
        exemplars = spec.generation.cot_exemplars if spec.generation else []
        if not exemplars:
            raise ValueError(f"{benchmark}: its spec has no chain-of-thought exemplars (generation.cot_exemplars)")
        return description + "".join(_generate_shot(benchmark, e.question, e.answer, style) for e in exemplars)
    for s in shots:
        if s.answer is None:
            raise ValueError(f"{s.key}: a few-shot example needs an answer")
    return description + "".join(_generate_shot(benchmark, s.question, s.answer or "", style) for s in shots)


def seeded_draws(pool_size: int, shots: int, seed: int, count: int) -> list[list[int]]:
    """The few-shot indices (into the few-shot split, in drawn order) of the first ``count``
    evaluated documents, as lm-evaluation-harness 0.4.13's default sampler draws them: one
    ``random.Random(seed)`` per task, one ``sample(pool, shots)`` per document in document order.

    ``Random.sample`` picks positions from the pool's length only, so sampling ``range(pool_size)``
    gives the indices of exactly the documents lm-eval draws from its list of train documents. With
    ``--limit N`` lm-eval builds only the first N documents, which get exactly the draws they get in
    a full run; zhtune keeps that for any subset (question *i* of the file gets the *i*-th draw).
    """
    import random

    if shots < 0 or count < 0:
        raise ValueError("shots and count must be >= 0")
    if shots == 0:
        return [[] for _ in range(count)]  # lm-eval does not draw at all for 0-shot
    if shots > pool_size:
        raise ValueError(f"{shots} shots requested from a few-shot split of {pool_size}")
    rnd = random.Random(seed)
    return [rnd.sample(range(pool_size), shots) for _ in range(count)]


def generation_exemplars(questions: Sequence[Question], shots: int, style: str = DEFAULT_STYLE,
                         data_dir=None) -> list[list[Question]]:
    """The solved few-shot examples each question of a generation benchmark is shown, in prompt order.

    ``first_n`` style: the first ``shots`` of the few-shot split for every question. ``random``
    (lm-eval's default sampler): question *i* of its split gets the *i*-th seeded draw of a run over
    the whole split (``seeded_draws``), so a subset (``--limit``, a cap) sees the prompts a full run
    would, exactly as lm-eval's ``--limit`` does.
    """
    from zhtune.data.benchmarks import load_benchmark

    if shots == 0 or not questions:
        return [[] for _ in questions]
    benchmark = questions[0].benchmark
    if any(q.benchmark != benchmark for q in questions):
        raise ValueError("generation_exemplars: the questions come from more than one benchmark")
    spec = load_spec(benchmark)
    pool = load_benchmark(benchmark, spec.splits.few_shot, data_dir=data_dir)
    if shots > len(pool):
        raise ValueError(f"{shots} {spec.title} shots requested; the {spec.splits.few_shot} split has {len(pool)}")
    if spec.style(style).fewshot_sampler == "first_n":
        return [list(pool[:shots]) for _ in questions]
    index: dict[str, dict[str, int]] = {}  # split -> question key -> position in the file
    positions = []
    for q in questions:
        if q.split not in index:
            split = load_benchmark(benchmark, q.split, data_dir=data_dir)
            index[q.split] = {x.key: i for i, x in enumerate(split)}
        if q.key not in index[q.split]:
            raise ValueError(f"{q.key} is not a question of the {spec.title} {q.split} split")
        positions.append(index[q.split][q.key])
    seed = spec.generation.fewshot_seed if spec.generation else 1234
    draws = seeded_draws(len(pool), shots, seed, max(positions) + 1)
    return [[pool[j] for j in draws[i]] for i in positions]


def wrap_chat(tokenizer: Any, family: Any, prompt_text: str) -> str:
    """A harness prompt in an instruct model's chat format, with the next token still the answer.

    The whole few-shot prompt (description, shots, the question) becomes the user turn; the answer
    cue it ends with (``答案：`` / ``Answer:``) is moved after the generation prompt, so the assistant
    turn opens with the cue and the next token is the letter (or the start of the GSM8K solution).
    A model family without a chat format gets ``prompt_text`` unchanged.

    The result is text: it may begin with the BOS token's text (Llama-style templates), so tokenize
    it with ``add_special_tokens=False``.
    """
    from zhtune.models.families import ensure_chat_template

    if not ensure_chat_template(tokenizer, family):
        return prompt_text
    cue = next((c for c in ALL_ANSWER_CUES if prompt_text.endswith(c)), "")
    body = prompt_text[: len(prompt_text) - len(cue)].rstrip() if cue else prompt_text
    messages = [{"role": "user", "content": body}]
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return chat + cue


# ----------------------------------------------------------------------------- tokens

def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a whole prompt: the tokenizer's BOS is added unless the text already has it
    (chat templates often write it themselves)."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all of ``seqs`` share."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n
