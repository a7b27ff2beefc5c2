"""The standard harness prompts for C-Eval, CMMLU, MMLU and GSM8K, character for character.

Multiple choice (C-Eval, CMMLU, MMLU) is scored from the next token after the answer cue, so a
prompt is split in two: ``choice_prefix`` (the subject's description line and the solved few-shot
examples, the same for every question of a subject, so its KV cache can be shared) and
``choice_item`` (one question ending with the cue). The shots are the first n of the subject's dev
split (``benchmarks.few_shot_examples``), as the official C-Eval/CMMLU/MMLU scripts and
lm-evaluation-harness (``first_n``) take them; n = 0 leaves only the description line.

Choices made, and why:

- C-Eval: the official description ``以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。`` with the
  subject's Chinese name; items ``{question}\\nA. …\\nD. …\\n答案：{answer}`` (no space after the
  full-width colon, as in the C-Eval and CMMLU code). The dev ``explanation`` is not used (no CoT).
- CMMLU: its own description ``以下是关于{科目}的单项选择题，请直接给出正确答案的选项。``; items as C-Eval.
- MMLU: Hendrycks' ``The following are multiple choice questions (with answers) about {subject}.``
  with underscores as spaces; ``Answer: {answer}`` with one space, so an unsolved item ends with
  ``Answer:`` and the scorer appends `` A`` (see ``answer_continuation``).
- Question and choice texts are stripped of surrounding whitespace (lm-evaluation-harness does the
  same), so stray spaces or newlines in the CSV cells do not reach the model.
- GSM8K: ``Question: {q}\\nAnswer: {a}\\n\\n`` with the train solutions as written (calculator
  annotations ``<<…>>`` and the final ``#### N`` included: the model learns to end with ``#### N``);
  the test item ends ``Answer:``. The chain-of-thought variant uses the 8 exemplars of Wei et al.
  (2022), as lm-evaluation-harness ``gsm8k_cot`` does, written in the same ``Question:/Answer:``
  layout so that one item format and one set of stop strings serve both.
"""
from __future__ import annotations

from typing import Any, Sequence

from zhtune.data.benchmarks import LETTERS, Question, subject_info

CHOICE_BENCHMARKS = ("ceval", "cmmlu", "mmlu")
ANSWER_CUES = {"ceval": "答案：", "cmmlu": "答案：", "mmlu": "Answer:", "gsm8k": "Answer:"}

_DESCRIPTIONS = {
    "ceval": "以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n",
    "cmmlu": "以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n",
    "mmlu": "The following are multiple choice questions (with answers) about {name}.\n\n",
}

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
    if benchmark not in CHOICE_BENCHMARKS:
        raise ValueError(f"{benchmark!r} is not a multiple-choice benchmark ({', '.join(CHOICE_BENCHMARKS)})")


def answer_prefix(benchmark: str) -> str:
    """The cue an unsolved item ends with: ``答案：`` (C-Eval, CMMLU) or ``Answer:`` (MMLU, GSM8K)."""
    return ANSWER_CUES[benchmark]


def answer_continuation(benchmark: str, letter: str) -> str:
    """The text that follows the cue for a letter: ``A`` after ``答案：``, `` A`` after ``Answer:``.

    The scorer compares the next-token logits of these continuations' first tokens.
    """
    _check_choice(benchmark)
    return letter if benchmark in ("ceval", "cmmlu") else f" {letter}"


def description(benchmark: str, subject: str) -> str:
    """The subject's opening line (with its blank line): Chinese name for C-Eval and CMMLU."""
    _check_choice(benchmark)
    if benchmark == "mmlu":
        name = subject.replace("_", " ")
    else:
        name = subject_info(benchmark, subject).name_zh
    return _DESCRIPTIONS[benchmark].format(name=name)


def choice_item(benchmark: str, q: Question, with_answer: bool) -> str:
    """One question with its four options.

    ``with_answer=True``: a solved shot, ``…答案：A\\n\\n`` / ``…Answer: A\\n\\n``.
    ``with_answer=False``: the question to score, ending exactly with the cue (``答案：`` or
    ``Answer:``, no trailing space): the scorer appends the letter's token.
    """
    _check_choice(benchmark)
    if len(q.choices) != len(LETTERS):
        raise ValueError(f"{q.key}: {len(q.choices)} choices, expected 4")
    lines = [q.question.strip()] + [f"{letter}. {text.strip()}" for letter, text in zip(LETTERS, q.choices)]
    text = "\n".join(lines) + "\n" + answer_prefix(benchmark)
    if with_answer:
        if q.answer is None:
            raise ValueError(f"{q.key}: a few-shot example needs an answer")
        text += answer_continuation(benchmark, q.answer) + "\n\n"
    return text


def choice_prefix(benchmark: str, subject: str, shots: Sequence[Question]) -> str:
    """Description line plus the solved shots; the question to score (``choice_item``) follows it."""
    return description(benchmark, subject) + "".join(choice_item(benchmark, s, True) for s in shots)


def choice_prompt(benchmark: str, subject: str, shots: Sequence[Question], q: Question) -> str:
    """The whole prompt for one question: ``choice_prefix + choice_item(with_answer=False)``."""
    return choice_prefix(benchmark, subject, shots) + choice_item(benchmark, q, with_answer=False)


def _gsm8k_shot(question: str, answer: str) -> str:
    return f"Question: {question.strip()}\nAnswer: {answer.strip()}\n\n"


def gsm8k_prefix(shots: Sequence[Question], cot: bool = False) -> str:
    """Solved GSM8K examples: the given ``shots`` (first n of train), or with ``cot=True`` the 8
    chain-of-thought exemplars instead (``shots`` is then ignored)."""
    if cot:
        return "".join(_gsm8k_shot(q, a) for q, a in GSM8K_COT_EXEMPLARS)
    for s in shots:
        if s.answer is None:
            raise ValueError(f"{s.key}: a few-shot example needs an answer")
    return "".join(_gsm8k_shot(s.question, s.answer or "") for s in shots)


def gsm8k_item(q: Question) -> str:
    """The question to solve, ``Question: {q}\\nAnswer:``; the model writes the rest."""
    return f"Question: {q.question.strip()}\nAnswer:"


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
    cue = next((c for c in dict.fromkeys(ANSWER_CUES.values()) if prompt_text.endswith(c)), "")
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
