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

GSM8K: the style's ``generate`` formulation (lm-eval's ``gsm8k`` task): items
``Question: {question}\\nAnswer:``, solved shots ``item + " " + solution + "\\n\\n"`` with the train
solutions as written (calculator annotations ``<<…>>`` and the final ``#### N`` included), nothing
stripped. Which train solutions each test question gets is ``gsm8k_exemplars`` (lm-eval's seeded
random draws, a different 5 per question). The chain-of-thought variant (zhtune's own, not the
layout of lm-eval's ``gsm8k-cot``) puts the 8 exemplars of Wei et al. (2022) in the same layout.
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

# Wei et al. 2022, "Chain-of-Thought Prompting Elicits Reasoning in Large Language Models", table 20:
# the 8 exemplars lm-evaluation-harness uses for gsm8k_cot. Each answer ends "The answer is N."
GSM8K_COT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
     "are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there "
     "must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
     "parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have "
     "left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
     "lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny "
     "20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
     "does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more "
     "toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, "
     "from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 "
     "= 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
     "How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After "
     "losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
     "23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
)


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


def _gsm8k_form(style: str) -> FormulationSpec:
    return formulation_spec("gsm8k", style, "generate")


def _gsm8k_style(style: str):
    return load_spec("gsm8k").style(style)


def _gsm8k_fields(question: str, answer: str | None) -> dict:
    return {"question": question, "answer": answer}


def gsm8k_item(q: Question, style: str = DEFAULT_STYLE) -> str:
    """The question to solve, ``Question: {question}\\nAnswer:``; the model writes the rest."""
    return render(_gsm8k_form(style).template, _gsm8k_fields(q.question, q.answer))


def gsm8k_target(q: Question, style: str = DEFAULT_STYLE) -> str:
    """A question's solution as a shot's answer, and the reference exact_match compares with."""
    if q.answer is None:
        raise ValueError(f"{q.key}: no solution")
    return render(_gsm8k_form(style).target, _gsm8k_fields(q.question, q.answer))


def _gsm8k_shot(question: str, answer: str, style: str) -> str:
    form = _gsm8k_form(style)
    fields = _gsm8k_fields(question, answer)
    return (render(form.template, fields) + form.target_delimiter + render(form.target, fields)
            + form.fewshot_delimiter)


def gsm8k_prefix(shots: Sequence[Question], cot: bool = False, style: str = DEFAULT_STYLE) -> str:
    """The style's description, then the solved ``shots`` in the order given; with ``cot=True``
    the 8 chain-of-thought exemplars instead (``shots`` is then ignored)."""
    form = _gsm8k_form(style)
    description = form.description if form.description is not None else _gsm8k_style(style).description
    if cot:
        return description + "".join(_gsm8k_shot(q, a, style) for q, a in GSM8K_COT_EXEMPLARS)
    for s in shots:
        if s.answer is None:
            raise ValueError(f"{s.key}: a few-shot example needs an answer")
    return description + "".join(_gsm8k_shot(s.question, s.answer or "", style) for s in shots)


def gsm8k_exemplars(questions: Sequence[Question], shots: int, style: str = DEFAULT_STYLE,
                    data_dir=None) -> list[list[Question]]:
    """The solved train examples each question is shown, in prompt order.

    ``first_n`` style: the first ``shots`` of train for every question. ``random`` (lm-eval's
    default sampler): question *i* of the test file gets the *i*-th seeded draw of a run over the
    whole test file, so a subset (``--limit``, a cap) sees the prompts a full run would, exactly as
    lm-eval's ``--limit`` does (``zhtune.eval.gsm8k_lmeval.seeded_draws``).
    """
    from zhtune.data.benchmarks import load_benchmark
    from zhtune.data.specs import load_spec
    from zhtune.eval.gsm8k_lmeval import seeded_draws

    if shots == 0 or not questions:
        return [[] for _ in questions]
    spec = load_spec("gsm8k")
    pool = load_benchmark("gsm8k", spec.splits.few_shot, data_dir=data_dir)
    if shots > len(pool):
        raise ValueError(f"{shots} GSM8K shots requested; the {spec.splits.few_shot} split has {len(pool)}")
    if _gsm8k_style(style).fewshot_sampler == "first_n":
        return [list(pool[:shots]) for _ in questions]
    index: dict[str, dict[str, int]] = {}  # split -> question key -> position in the file
    positions = []
    for q in questions:
        if q.split not in index:
            split = load_benchmark("gsm8k", q.split, data_dir=data_dir)
            index[q.split] = {x.key: i for i, x in enumerate(split)}
        if q.key not in index[q.split]:
            raise ValueError(f"{q.key} is not a question of the GSM8K {q.split} split")
        positions.append(index[q.split][q.key])
    draws = seeded_draws(len(pool), shots, spec.generation.fewshot_seed, max(positions) + 1)
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
