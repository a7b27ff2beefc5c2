"""zhtune's GSM8K (lm-eval style) against lm-evaluation-harness 0.4.13's own ``gsm8k`` task.

lm-eval builds its requests for the local data (its task YAML, our jsonl files injected as its
dataset; no model, no network): every one of the 1,319 test questions' context, ``until`` list and
drawn exemplars must equal zhtune's, 0-shot and 5-shot. Then lm-eval's whole scoring pipeline runs
on given generations, and both run a tiny random model: identical generations and scores.
"""
from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest
import torch

from zhtune.data.benchmarks import load_benchmark
from zhtune.data.prompts import generation_exemplars
from zhtune.eval import generation as G

lm_eval = pytest.importorskip("lm_eval")


def _task_yaml() -> dict:
    import yaml

    return yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())


def _make_task(data_dir: Path, num_fewshot: int = 5, generation_kwargs: dict | None = None):
    """lm-eval's gsm8k task reading our local files; every few-shot draw it makes is recorded in
    ``task.drawn`` (in document order)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    def local_dataset(**_):
        def rows(split):
            lines = (data_dir / "gsm8k" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            return datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])
        return datasets.DatasetDict({"train": rows("train"), "test": rows("test")})

    config = {**_task_yaml(), "custom_dataset": local_dataset, "num_fewshot": num_fewshot}
    if generation_kwargs:
        config["generation_kwargs"] = {**config["generation_kwargs"], **generation_kwargs}
    task = ConfigurableTask(config=config)
    task.set_fewshot_seed(1234)  # what lm_eval.simple_evaluate does (fewshot_random_seed=1234)
    task.drawn = []
    sample = task.sampler.sample

    def recording_sample(*args, **kwargs):
        docs = sample(*args, **kwargs)
        task.drawn.append([(d["question"], d["answer"]) for d in docs])
        return docs

    task.sampler.sample = recording_sample
    return task


def _requests(task, limit=None) -> list:
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    instances = sorted(task.instances, key=lambda inst: inst.doc_id)
    assert [inst.doc_id for inst in instances] == list(range(len(instances)))
    return instances


@pytest.fixture(scope="module")
def test_questions(shared_data):
    return load_benchmark("gsm8k", "test", shared_data)


@pytest.mark.parametrize("shots", [0, 5])
def test_every_context_until_and_exemplar_equals_lm_eval(shared_data, test_questions, shots):
    task = _make_task(shared_data, shots)
    instances = _requests(task)  # all 1,319 questions (about 10 s for 5-shot)
    assert len(instances) == len(test_questions) == 1319
    ours = G.generation_prompts(None, None, test_questions, shots=shots, data_dir=shared_data)
    theirs = [inst.args[0] for inst in instances]
    mismatched = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not mismatched, f"{len(mismatched)} contexts differ, first at question {mismatched[:1]}"
    assert all(inst.args[1]["until"] == ["Question:", "</s>", "<|im_end|>"] for inst in instances)
    exemplars = generation_exemplars(test_questions, shots, data_dir=shared_data)
    if shots:
        assert task.drawn == [[(s.question, s.answer) for s in ex] for ex in exemplars]
        assert len({tuple(d) for d in task.drawn}) == 1319  # a different draw for every question
    else:
        assert task.drawn == [] and exemplars == [[]] * 1319


def test_a_subset_gets_the_full_runs_exemplars(shared_data, test_questions):
    """lm-eval --limit N builds the first N questions, which draw as in a full run; zhtune gives
    any subset (a prefix or not) the full run's prompts."""
    full = [inst.args[0] for inst in _requests(_make_task(shared_data), limit=None)[:40]]
    limited = [inst.args[0] for inst in _requests(_make_task(shared_data), limit=12)]
    assert limited == full[:12]
    assert G.generation_prompts(None, None, test_questions[:12], data_dir=shared_data) == limited
    picks = [31, 2, 17]
    assert G.generation_prompts(None, None, [test_questions[i] for i in picks], data_dir=shared_data) == \
        [full[i] for i in picks]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_stop_strings_equal_lm_eval_with_eos(kind, shared_data):
    from lm_eval.models.utils import handle_stop_sequences

    from zhtune.testing import build_tokenizer

    tokenizer = build_tokenizer(kind, shared_data)
    for eos in (tokenizer.eos_token, "<|endoftext|>"):  # the tiny tokenizers' EOS, a base Qwen's
        tokenizer.eos_token = eos
        # HFLM.generate_until: until + decode(eos_token_id) with special tokens kept
        want = handle_stop_sequences(deepcopy(_task_yaml()["generation_kwargs"]["until"]),
                                     eos=tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False))
        assert G.generation_stops("gsm8k", tokenizer) == want


class _ScriptedLM:
    """An lm-eval LM whose generations are given: lm-eval's own filters and metric score them."""

    def __new__(cls, by_context: dict[str, str]):
        from lm_eval.api.model import LM

        class Scripted(LM):
            def generate_until(self, requests, disable_tqdm=False):
                return [by_context[r.args[0]] for r in requests]

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return Scripted()


def _samples_by_doc(results) -> dict[int, dict[str, tuple[str, bool]]]:
    """doc_id -> filter name -> (filtered answer, exact_match) from lm-eval's logged samples."""
    out: dict[int, dict] = {}
    for s in results["samples"]["gsm8k"]:
        out.setdefault(s["doc_id"], {})[s["filter"]] = (s["filtered_resps"][0], bool(s["exact_match"]))
    return out


def _ours(pred) -> dict[str, tuple[str, bool]]:
    return {"strict-match": (pred.extracted_strict, pred.correct_strict),
            "flexible-extract": (pred.extracted_flexible, pred.correct)}


def test_lm_eval_pipeline_scores_generations_as_zhtune(shared_data, test_questions):
    from lm_eval.evaluator import evaluate

    from test_generation import TRICKY

    n = len(TRICKY)
    golds = [q.answer.rsplit("#### ", 1)[1] for q in test_questions[:n]]
    # The tricky shapes, around each question's own gold number.
    generations = [t[0].replace("18", gold) for t, gold in zip(TRICKY, golds)]
    task = _make_task(shared_data, 0)
    contexts = G.generation_prompts(None, None, test_questions[:n], shots=0, data_dir=shared_data)
    results = evaluate(lm=_ScriptedLM(dict(zip(contexts, generations))), task_dict={"gsm8k": task},
                       limit=n, log_samples=True, bootstrap_iters=0)
    theirs = _samples_by_doc(results)
    ours = [_ours(G.score_generation(q, g)) for q, g in zip(test_questions[:n], generations)]
    assert ours == [theirs[i] for i in range(n)]
    assert {ok for o in ours for _, ok in o.values()} == {True, False}  # both outcomes occur


def _sharp(model):
    """Larger random weights: the greedy text then depends on the prompt (a flat random model
    repeats one token), so a wrong prompt, stop or decoding shows up in the text."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_tiny_model_generates_and_scores_as_lm_eval(kind, shared_data, test_questions, request):
    """Greedy, 5-shot, 3 questions: lm-eval's HFLM (batch size 1) and zhtune give the same texts,
    extracted answers and exact_match."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue("tiny_llama_dir" if kind == "llama" else "tiny_qwen_dir")
    model = _sharp(AutoModelForCausalLM.from_pretrained(folder))
    n, new_tokens = 3, 16
    ours = G.evaluate_generation(model, AutoTokenizer.from_pretrained(folder), None, test_questions[:n],
                            shots=5, data_dir=shared_data, batch_size=n, max_new_tokens=new_tokens,
                            progress=False)
    task = _make_task(shared_data, 5, generation_kwargs={"max_gen_toks": new_tokens})
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(folder), batch_size=1)
    results = evaluate(lm=lm, task_dict={"gsm8k": task}, limit=n, log_samples=True, bootstrap_iters=0)
    generations = {s["doc_id"]: s["resps"][0][0] for s in results["samples"]["gsm8k"]}
    assert [p.generation for p in ours] == [generations[i] for i in range(n)]
    assert len({p.generation for p in ours}) == n and all(p.generation for p in ours)
    theirs = _samples_by_doc(results)
    assert [_ours(p) for p in ours] == [theirs[i] for i in range(n)]
