"""Parity with lm-evaluation-harness 0.4.13 (a dev dependency), string for string and prediction
for prediction.

lm-eval builds its requests for the local data without running a model: ``datasets.load_dataset``
is answered from the local CSV files (``zhtune.data.lmeval_local``: the csv module, not zhtune's
readers, in the column layout of the hub datasets lm-eval's tasks name), then
``task.build_all_requests`` gives every (context, continuation) pair. zhtune's prompts for the
same questions must be equal to them, character for character.

Scope: every subject of C-Eval (val), CMMLU (test) and MMLU (test), 0-shot and 5-shot, the first
``PARITY_PER_SUBJECT`` questions of each subject (lm-eval renders ~100 questions a second here, so
all 27k questions take minutes; set ``ZHTUNE_PARITY_ALL=1`` to check every question).
"""
from __future__ import annotations

import os
from functools import lru_cache

import pytest

from zhtune.data import benchmarks as B
from zhtune.data import prompts as P

lm_eval = pytest.importorskip("lm_eval")
datasets = pytest.importorskip("datasets")

PER_SUBJECT = None if os.environ.get("ZHTUNE_PARITY_ALL") else int(os.environ.get("PARITY_PER_SUBJECT", 8))
LETTERS = ["A", "B", "C", "D"]
# (zhtune benchmark, lm-eval group, lm-eval task name of a subject)
LETTER_TASKS = {"ceval": ("ceval-valid", "ceval-valid_{}"), "cmmlu": ("cmmlu", "cmmlu_{}"),
                "mmlu": ("mmlu", "mmlu_{}")}


@pytest.fixture(scope="module")
def lm_tasks(shared_data):
    """lm-eval's tasks over the local data: ``load(group) -> {task name: task}``."""
    from lm_eval.tasks import TaskManager

    from zhtune.data.lmeval_local import lm_eval_tasks

    manager = TaskManager()

    @lru_cache(maxsize=None)
    def load(group: str) -> dict:
        return lm_eval_tasks(group, shared_data, manager)

    return load


def lm_requests(task, shots: int) -> dict[int, tuple[str, list[str]]]:
    """doc id -> (context, continuations) of lm-eval's loglikelihood requests."""
    task.set_config(key="num_fewshot", value=shots)
    task.build_all_requests(limit=PER_SUBJECT, rank=0, world_size=1)
    out: dict[int, tuple[str, list[str]]] = {}
    for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        context, continuation = inst.args
        ctx, conts = out.setdefault(inst.doc_id, (context, []))
        assert ctx == context  # one context per question
        conts.append(continuation)
    return out


def zhtune_requests(data_dir, benchmark: str, subject: str, shots: int, formulation: str):
    questions = B.load_benchmark(benchmark, data_dir=data_dir, subjects=[subject])[:PER_SUBJECT]
    examples = B.few_shot_examples(benchmark, subject, shots, data_dir=data_dir)
    return {i: (P.choice_prompt(benchmark, subject, examples, q, "lm-eval", formulation),
                P.continuations(benchmark, q, "lm-eval", formulation))
            for i, q in enumerate(questions)}


def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at character {i}: lm-eval {a[max(0, i - 40):i + 40]!r} vs zhtune {b[max(0, i - 40):i + 40]!r}"


def _compare(theirs: dict, ours: dict, where: str) -> int:
    assert sorted(theirs) == sorted(ours), f"{where}: lm-eval has {len(theirs)} questions, zhtune {len(ours)}"
    for doc_id, (context, conts) in theirs.items():
        our_context, our_conts = ours[doc_id]
        assert our_context == context, f"{where} question {doc_id}: {_first_difference(context, our_context)}"
        assert our_conts == conts, f"{where} question {doc_id}: continuations {conts} vs {our_conts}"
    return len(theirs)


@pytest.mark.parametrize("shots", [0, 5])
@pytest.mark.parametrize("benchmark", ["ceval", "cmmlu", "mmlu"])
def test_letter_prompts_equal_lm_eval(lm_tasks, shared_data, benchmark, shots):
    group, task_name = LETTER_TASKS[benchmark]
    tasks = lm_tasks(group)
    subjects = B.list_subjects(benchmark, shared_data)
    checked = 0
    for subject in subjects:
        theirs = lm_requests(tasks[task_name.format(subject)], shots)
        ours = zhtune_requests(shared_data, benchmark, subject, shots, "letter")
        checked += _compare(theirs, ours, f"{benchmark}/{subject} {shots}-shot")
    assert len(subjects) == len(B.known_subjects(benchmark))  # every subject was checked
    assert checked >= len(subjects) * min(PER_SUBJECT or 1, 5)


@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu_cloze_equals_mmlu_continuation(lm_tasks, shared_data, shots):
    tasks = lm_tasks("mmlu_continuation")
    for subject in B.list_subjects("mmlu", shared_data):
        theirs = lm_requests(tasks[f"mmlu_{subject}_continuation"], shots)
        ours = zhtune_requests(shared_data, "mmlu", subject, shots, "cloze")
        _compare(theirs, ours, f"mmlu_continuation/{subject} {shots}-shot")


# ----------------------------------------------------------------------------- predictions

PREDICTION_SUBJECTS = {"ceval": ["high_school_geography", "computer_network"],
                       "cmmlu": ["anatomy"], "mmlu": ["abstract_algebra"]}


@pytest.fixture(scope="module")
def sharp_tiny(tiny_llama_dir):
    from test_choice import load_sharp

    return load_sharp(tiny_llama_dir)


def _lm_predictions(lm, task, shots: int):
    """(acc prediction, acc_norm prediction) per doc, from lm-eval's own log-likelihoods."""
    task.set_config(key="num_fewshot", value=shots)
    task.build_all_requests(limit=4, rank=0, world_size=1)
    instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))
    results = lm.loglikelihood(instances, disable_tqdm=True)
    by_doc: dict[int, list[tuple[float, str]]] = {}
    for inst, (ll, _) in zip(instances, results):
        by_doc.setdefault(inst.doc_id, []).append((ll, inst.args[1]))
    out = {}
    for doc_id, scored in by_doc.items():
        doc = task.eval_docs[doc_id]
        lengths = [len(c) for c in task.doc_to_choice(doc)]
        lls = [ll for ll, _ in scored]
        out[doc_id] = (max(range(4), key=lambda k: lls[k]),
                       max(range(4), key=lambda k: lls[k] / lengths[k]), lls)
    return out


@pytest.mark.parametrize("shots", [0, 5])
def test_predictions_equal_lm_eval_on_a_tiny_model(lm_tasks, shared_data, sharp_tiny, shots):
    from lm_eval.models.huggingface import HFLM

    from zhtune.eval.choice import score_choice, score_cloze

    model, tok = sharp_tiny
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=4096)
    compared = 0
    for benchmark, subjects in PREDICTION_SUBJECTS.items():
        group, task_name = LETTER_TASKS[benchmark]
        for subject in subjects:
            theirs = _lm_predictions(lm, lm_tasks(group)[task_name.format(subject)], shots)
            qs = B.load_benchmark(benchmark, data_dir=shared_data, subjects=[subject])[:4]
            ours = score_choice(model, tok, qs, shots=shots, data_dir=shared_data, progress=False)
            assert [LETTERS.index(p.pred) for p in ours] == [theirs[i][0] for i in range(len(qs))], \
                (benchmark, subject)
            compared += len(qs)
    # Cloze: MMLU against mmlu_continuation, acc and acc_norm, and the log-likelihoods themselves.
    tasks = lm_tasks("mmlu_continuation")
    picked = set()
    for subject in ("abstract_algebra", "anatomy"):
        theirs = _lm_predictions(lm, tasks[f"mmlu_{subject}_continuation"], shots)
        qs = B.load_benchmark("mmlu", data_dir=shared_data, subjects=[subject])[:4]
        ours = score_cloze(model, tok, qs, shots=shots, data_dir=shared_data, progress=False)
        for i, p in enumerate(ours):
            assert LETTERS.index(p.pred) == theirs[i][0] and LETTERS.index(p.pred_norm) == theirs[i][1]
            assert p.loglikelihoods == pytest.approx(theirs[i][2], abs=2e-3)
            picked.add(p.pred)
        compared += len(qs)
    assert compared == 4 * 6
    assert len(picked) > 1, "the sharpened model should not always pick the same option"
