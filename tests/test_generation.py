"""GSM8K generation: lm-eval's answer scoring, stop strings, and batched greedy == one-by-one greedy."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from zhtune.data.benchmarks import Question
from zhtune.data.specs import load_spec
from zhtune.eval import generation as G
from zhtune.eval.generation import cut_at_stop, generate_greedy, score_generation
from zhtune.data.prompts import seeded_draws
from zhtune.eval.answer_filters import exact_match, regex_filter

# ----------------------------------------------------------------------------- lm-eval's scoring

SOLUTION = "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"

# (generation, strict-match output, strict correct, flexible-extract output, flexible correct),
# all scored against SOLUTION as lm-eval 0.4.13 scores them (checked against lm-eval below).
TRICKY = [
    (" 9 * 2 = 18\n#### 18", "18", True, "18", True),
    (" so\n####18", "[invalid]", False, "18", True),  # strict-match needs the space
    (" so\n#### $18", "[invalid]", False, "$18", True),  # '$' is not in the strict pattern
    (" The answer is 18.", "[invalid]", False, "18.", True),  # '.$' is ignored, not the words
    (" #### 18.00", "18.00", False, "18.00", False),  # no numeric comparison: 18.00 != 18
    (" 18.00", "[invalid]", False, "18.00", False),
    (" #### 18.\n\nmore", "18.", True, "18.", True),
    (" #### 1,8", "1,8", True, "1,8", True),  # commas are ignored wherever they are
    (" #### 18 and later #### 19", "18", True, "19", False),  # strict: first; flexible: last
    (" It is 18 dollars, not 17", "[invalid]", False, "17", False),
    (" #### -18", "-18", False, "-18", False),
    (" 1 8", "[invalid]", False, "8", False),  # single digits match the second group only
    (" ...", "[invalid]", False, "...", False),
    (" 18,", "[invalid]", False, "18,", True),
    ("", "[invalid]", False, "[invalid]", False),
    (" THE ANSWER IS #### 18", "18", True, "18", True),
]


def _lm_eval_scores(generation: str, solution: str) -> tuple[str, bool, str, bool]:
    """The generation through lm-eval's own filters and exact_match, configured from its gsm8k.yaml."""
    from pathlib import Path

    import lm_eval
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    task = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    metric = {k: v for k, v in task["metric_list"][0].items()
              if k not in ("metric", "aggregation", "higher_is_better")}
    out = []
    for pipeline in task["filter_list"]:
        regex = {k: v for k, v in pipeline["filter"][0].items() if k != "function"}
        filtered = list(TakeFirstFilter().apply(RegexFilter(**regex).apply([[generation]], [None]), [None]))[0]
        score = exact_match_hf_evaluate(predictions=[filtered], references=[solution], **metric)
        out += [filtered, bool(score["exact_match"])]
    return tuple(out)


@pytest.mark.parametrize("generation, strict, strict_ok, flexible, flexible_ok", TRICKY)
def test_scoring_equals_lm_eval(generation, strict, strict_ok, flexible, flexible_ok):
    q = Question("gsm8k", "main", "Math", "test", "0", "How much?", (), SOLUTION)
    p = score_generation(q, generation)
    ours = (p.extracted_strict, p.correct_strict, p.extracted_flexible, p.correct)
    assert ours == (strict, strict_ok, flexible, flexible_ok)
    assert ours == _lm_eval_scores(generation, SOLUTION)
    assert p.gold == "18"


def test_cot_strict_match_reads_the_answer_is():
    """--gsm8k-cot exemplars end 'The answer is N.': strict-match uses lm-eval gsm8k-cot's regex,
    quirks included (its final '.' is any character, so a bare 'is 18' keeps only '1')."""
    q = Question("gsm8k", "main", "Math", "test", "0", "How much?", (), SOLUTION)
    assert (score_generation(q, " So 18. The answer is 18.", cot=True).extracted_strict,
            score_generation(q, " So 18. The answer is 18.", cot=True).correct_strict) == ("18", True)
    assert score_generation(q, " The answer is 18", cot=True).extracted_strict == "1"
    assert score_generation(q, " The answer is 18.").extracted_strict == "[invalid]"  # not in n-shot


@pytest.mark.parametrize("solution", ["x\n#### 1,234", "#### -3", "a #### 5 #### 6", "#### 72\n",
                                      "#### 7.50", "no marker 12"])
def test_reference_normalisation_equals_lm_eval(solution):
    for generation in (" #### 1234", " #### -3", " #### 6", " #### 72", " 7.5", " 12", " #### 5 #### 6"):
        q = Question("gsm8k", "main", "Math", "test", "0", "?", (), solution)
        p = score_generation(q, generation)
        assert (p.extracted_strict, p.correct_strict, p.extracted_flexible, p.correct) == \
            _lm_eval_scores(generation, solution)


@pytest.mark.parametrize("options", [
    dict(regexes_to_ignore=[",", r"\$", "(?s).*#### ", r"\.$"], ignore_case=True),
    dict(ignore_punctuation=True), dict(ignore_numbers=True), dict(ignore_case=False),
])
def test_exact_match_options_equal_lm_eval(options):
    from lm_eval.api.metrics import exact_match_hf_evaluate

    pairs = [("Abc", "abc"), ("1,000", "1000"), ("a.b", "ab"), ("x1", "x2"), ("18\x00", "18"),
             ("18.\n", "18"), ("$5", "5"), ("#### 4", "4"), ("4 ", "4")]
    for prediction, reference in pairs:
        want = exact_match_hf_evaluate(predictions=[prediction], references=[reference], **options)
        assert exact_match(prediction, reference, **options) == bool(want["exact_match"]), \
            (prediction, reference)


def test_regex_filter_groups_and_fallback():
    assert regex_filter("a 12 b 345", r"(\d+)", 0) == "12"
    assert regex_filter("a 12 b 345", r"(\d+)", -1) == "345"
    assert regex_filter("x 7", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1) == "7"  # the second group
    assert regex_filter("nothing", r"(\d+)", 0) == "[invalid]"
    assert regex_filter("nothing", r"(\d+)", 0, fallback="?") == "?"


def test_seeded_draws_equal_lm_eval_sampler():
    from lm_eval.api.samplers import ContextSampler

    docs = [{"i": i} for i in range(50)]
    sampler = ContextSampler(docs, rnd=None)
    sampler.set_rnd(1234)
    theirs = [[d["i"] for d in sampler.sample(5)] for _ in range(30)]
    assert seeded_draws(50, 5, 1234, 30) == theirs
    assert len({tuple(d) for d in theirs}) == 30  # every question its own draw
    assert seeded_draws(50, 0, 1234, 3) == [[], [], []]
    assert seeded_draws(50, 5, 1234, 10) == theirs[:10]  # a prefix is drawn the same
    with pytest.raises(ValueError):
        seeded_draws(4, 5, 1234, 1)


def test_spec_holds_lm_eval_gsm8k_task():
    from pathlib import Path

    import lm_eval
    import yaml

    task = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    rules = load_spec("gsm8k").generation
    assert rules.until == task["generation_kwargs"]["until"]
    strict, flexible = (p["filter"] for p in task["filter_list"])
    assert (rules.strict.regex, rules.strict.group_select) == (strict[0]["regex_pattern"], 0)
    assert (rules.flexible.regex, rules.flexible.group_select) == \
        (flexible[0]["regex_pattern"], flexible[0]["group_select"])
    assert [f["function"] for f in strict + flexible] == ["regex", "take_first"] * 2
    metric = task["metric_list"][0]
    assert rules.exact_match.regexes_to_ignore == metric["regexes_to_ignore"]
    assert (rules.exact_match.ignore_case, rules.exact_match.ignore_punctuation) == \
        (metric["ignore_case"], metric["ignore_punctuation"])
    form = load_spec("gsm8k").formulation("lm-eval", "generate")
    assert (form.target_delimiter, form.fewshot_delimiter) == (" ", "\n\n")  # lm-eval's defaults
    assert task["num_fewshot"] == 5 and "fewshot_config" not in task  # default sampler, seed 1234
    assert rules.fewshot_seed == 1234


def test_cut_at_stop():
    text = " 5 + 3 = 8\n#### 8\n\nQuestion: next one<|im_end|>"
    assert cut_at_stop(text, ["Question:", "<|im_end|>"]) == " 5 + 3 = 8\n#### 8\n\n"
    assert cut_at_stop(text, ["<|im_end|>", "Question:"]) == " 5 + 3 = 8\n#### 8\n\n"  # earliest wins
    assert cut_at_stop(text, ["nowhere"]) == text
    assert cut_at_stop("abc", ["", "c"]) == "ab"


# ----------------------------------------------------------------------------- generation

def _sharp_model(path):
    """The tiny model with larger random weights: its greedy output depends strongly on the prompt,
    so a padding or position bug changes the text instead of hiding in a flat distribution."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval(), tokenizer


PREFIX = "Question: Natalia sold clips to 48 of her friends.\nAnswer: 48 + 24 = 72\n#### 72\n\n" * 3
PROMPTS = [PREFIX + f"Question: {q}\nAnswer:" for q in [
    "How many?",
    "小明有5个苹果，吃了2个，还剩几个？ And a much longer question with many more words in it",
    "The capital of France is",
    "x",
    "Weng earns $12 an hour for babysitting. How much did she earn?",
]]


def _hf_greedy(model, tokenizer, prompt, n):
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("share_prefix", [True, False])
def test_batched_greedy_equals_one_by_one(tiny_model_dir, share_prefix, monkeypatch):
    model, tokenizer = _sharp_model(tiny_model_dir)
    model.generation_config.eos_token_id = None  # no EOS: every sequence runs the full 12 tokens
    monkeypatch.setattr(G, "_eos_ids", lambda model, tokenizer: set())
    kw = dict(stop_strings=[], max_new_tokens=12, progress=False)
    batched = generate_greedy(model, tokenizer, PROMPTS, batch_size=3, share_prefix=share_prefix, **kw)
    single = [generate_greedy(model, tokenizer, [p], batch_size=1, share_prefix=False, **kw)[0]
              for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) == len(PROMPTS)  # the outputs really depend on the prompt
    # and both agree with transformers' own greedy decoding
    reference = [tokenizer.decode(_hf_greedy(model, tokenizer, p, 12), skip_special_tokens=True)
                 for p in PROMPTS]
    assert batched == reference


@pytest.mark.parametrize("batch_size", [8, 2])
def test_stop_strings_cut_each_sequence(tiny_model_dir, batch_size):
    model, tokenizer = _sharp_model(tiny_model_dir)
    full = generate_greedy(model, tokenizer, PROMPTS, stop_strings=[], max_new_tokens=16,
                           batch_size=1, progress=False)
    # A stop string taken from the middle of one generation: that sequence is cut there, any
    # other that happens to contain it too, the rest run on unchanged.
    half = len(full[0]) // 2
    stop = next(full[0][i:i + 2] for i in range(half, len(full[0]) - 1) if full[0][i:i + 2].strip())
    cut = generate_greedy(model, tokenizer, PROMPTS, stop_strings=[stop], max_new_tokens=16,
                          batch_size=batch_size, progress=False)
    assert cut == [cut_at_stop(t, [stop]) for t in full]
    assert len(cut[0]) < len(full[0])
    assert all(stop not in t for t in cut)


def test_eos_token_ends_a_sequence(tiny_model_dir):
    model, tokenizer = _sharp_model(tiny_model_dir)
    tokens = _hf_greedy(model, tokenizer, PROMPTS[0], 10)
    eos = tokens[4]  # pretend the 5th generated token is the model's EOS
    model.generation_config.eos_token_id = eos
    out = generate_greedy(model, tokenizer, PROMPTS[:1], stop_strings=[], max_new_tokens=10,
                          progress=False)
    assert out[0] == tokenizer.decode(tokens[:tokens.index(eos)], skip_special_tokens=True)


def _force_token(model, token_id: int, at_call: int):
    """Make the ``at_call``-th forward pass (1 = the prefill) pick ``token_id``."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if len(calls) == at_call:
            output.logits[..., token_id] = 1e4
        return output

    return model.register_forward_hook(hook)


def test_special_tokens_stop_as_text_and_are_dropped(tiny_qwen_dir):
    """As lm-eval's HF backend (batch size 1): a special token spelled as a stop string ends the
    generation, and special tokens are not part of the returned text."""
    model, tokenizer = _sharp_model(tiny_qwen_dir)
    kw = dict(max_new_tokens=6, share_prefix=False, progress=False)
    plain = _hf_greedy(model, tokenizer, PROMPTS[0], 2)
    im_end, im_start = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>"))
    assert im_end not in plain and im_start not in plain
    hook = _force_token(model, im_end, at_call=3)  # the 3rd generated token is <|im_end|>
    try:
        stopped = generate_greedy(model, tokenizer, PROMPTS[:1], stop_strings=["<|im_end|>"], **kw)
    finally:
        hook.remove()
    assert stopped == [tokenizer.decode(plain, skip_special_tokens=True)]
    hook = _force_token(model, im_start, at_call=3)  # not a stop: generation goes on without it
    try:
        kept = generate_greedy(model, tokenizer, PROMPTS[:1], stop_strings=["<|im_end|>"], **kw)[0]
    finally:
        hook.remove()
    assert "<|im_start|>" not in kept and kept.startswith(stopped[0]) and len(kept) > len(stopped[0])


def test_finished_sequences_leave_the_batch(tiny_llama_dir):
    model, tokenizer = _sharp_model(tiny_llama_dir)
    full = generate_greedy(model, tokenizer, PROMPTS, stop_strings=[], max_new_tokens=12,
                           batch_size=8, progress=False)
    stop = full[1][:3]  # sequence 1 stops within its first few tokens
    batch_sizes = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        generate_greedy(model, tokenizer, PROMPTS, stop_strings=[stop], max_new_tokens=12,
                        batch_size=8, progress=False, share_prefix=False)
    finally:
        hook.remove()
    assert batch_sizes[0] == len(PROMPTS)  # the prefill
    assert min(batch_sizes) < len(PROMPTS)  # the stopped sequence no longer computes
    assert batch_sizes == sorted(batch_sizes, reverse=True)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_continuous_batching_equals_one_by_one(tiny_model_dir, share_prefix, monkeypatch):
    """Prompts join a running batch as others finish, the cache is compacted, outputs unchanged."""
    model, tokenizer = _sharp_model(tiny_model_dir)
    prompts = PROMPTS + [PREFIX + f"Question: {n} apples and {n + 1} pears?\nAnswer:" for n in range(5)]
    full = [generate_greedy(model, tokenizer, [p], stop_strings=[], max_new_tokens=14,
                            share_prefix=False, progress=False)[0] for p in prompts]
    # Stops that end the sequences after different numbers of tokens.
    stops = sorted({full[i][2 + i:4 + i] for i in (0, 3, 6) if full[i][2 + i:4 + i].strip()})
    expected = [cut_at_stop(t, stops) for t in full]
    assert len({len(t) for t in expected}) > 2
    monkeypatch.setattr(G, "COMPACT_MIN_COLUMNS", 1)  # compact whenever a column falls free
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        out = generate_greedy(model, tokenizer, prompts, stop_strings=stops, max_new_tokens=14,
                              batch_size=3, share_prefix=share_prefix, progress=False)
    finally:
        hook.remove()
    assert out == expected
    first_step = next(i for i, s in enumerate(shapes) if s[1] == 1)
    assert any(s[1] > 1 for s in shapes[first_step:])  # a prompt joined a running batch
    assert max(s[0] for s in shapes) <= 3


def test_max_new_tokens_and_empty_input(tiny_qwen_dir):
    model, tokenizer = _sharp_model(tiny_qwen_dir)
    assert generate_greedy(model, tokenizer, [], stop_strings=[], progress=False) == []
    short = generate_greedy(model, tokenizer, PROMPTS[:2], stop_strings=[], max_new_tokens=3,
                            progress=False)
    longer = generate_greedy(model, tokenizer, PROMPTS[:2], stop_strings=[], max_new_tokens=6,
                             progress=False)
    for a, b in zip(short, longer):
        assert b.startswith(a) and len(b) > len(a)
    assert len(tokenizer(short[0], add_special_tokens=False)["input_ids"]) <= 4


# ----------------------------------------------------------------------------- GSM8K

def test_gsm8k_prompts_use_lm_eval_seeded_exemplars(tiny_qwen_dir, shared_data):
    from transformers import AutoTokenizer

    from zhtune.data.benchmarks import load_benchmark
    from zhtune.data.prompts import generation_exemplars
    from zhtune.models.families import get_family

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    train = load_benchmark("gsm8k", "train", shared_data)
    test = load_benchmark("gsm8k", "test", shared_data)
    q = test[0]
    shots = generation_exemplars([q], 2, data_dir=shared_data)[0]
    assert shots == [train[j] for j in seeded_draws(len(train), 2, 1234, 1)[0]]
    prompt = G.generation_prompts(tokenizer, None, [q], shots=2, data_dir=shared_data)[0]
    assert prompt == "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots) + \
        f"Question: {q.question}\nAnswer:"
    # A subset gets the exemplars a full run gives: test question i, the i-th draw.
    full = generation_exemplars(test[:8], 5, data_dir=shared_data)
    assert generation_exemplars([test[7], test[3]], 5, data_dir=shared_data) == [full[7], full[3]]
    assert len({tuple(s.key for s in x) for x in full}) == 8
    with pytest.raises(ValueError, match="not a question"):
        generation_exemplars([replace(q, id="999999")], 5, data_dir=shared_data)
    cot = G.generation_prompts(tokenizer, None, [q], shots=5, cot=True, data_dir=shared_data)[0]
    assert cot.count("The answer is") == 8 and cot.endswith(f"Question: {q.question}\nAnswer:")
    family = get_family("qwen2-instruct")
    chat = G.generation_prompts(tokenizer, family, [q], shots=0, chat=True, data_dir=shared_data)[0]
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\nAnswer:")


def test_gsm8k_first_n_sampler(monkeypatch, shared_data):
    from zhtune.data import prompts as P
    from zhtune.data.benchmarks import few_shot_examples, load_benchmark

    from zhtune.data.specs import load_spec

    spec = load_spec("gsm8k")  # the spec as a benchmark with lm-eval's first_n sampler would write it
    styles = {k: v.model_copy(update={"fewshot_sampler": "first_n"}) for k, v in spec.styles.items()}
    first_n = spec.model_copy(update={"styles": styles})
    monkeypatch.setattr(P, "load_spec", lambda name: first_n if name == "gsm8k" else load_spec(name))
    test = load_benchmark("gsm8k", "test", shared_data)
    first = few_shot_examples("gsm8k", "main", 3, data_dir=shared_data)
    assert P.generation_exemplars(test[5:7], 3, data_dir=shared_data) == [first, first]


def test_gsm8k_stops_are_until_and_eos_only(tiny_qwen_dir):
    from transformers import AutoTokenizer

    from zhtune.models.families import get_family

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    family = get_family("qwen2-instruct")
    assert G.generation_stops("gsm8k", tokenizer, family) == ["Question:", "</s>", "<|im_end|>"]  # EOS <|im_end|>
    tokenizer.eos_token = "<|endoftext|>"  # a base Qwen's EOS is added, as lm-eval adds it
    assert G.generation_stops("gsm8k", tokenizer, family) == ["Question:", "</s>", "<|im_end|>", "<|endoftext|>"]
    for name, family_stop in (("llama2", "### Instruction:"), ("llama2-chat", "[INST]")):
        family = get_family(name)
        assert family_stop in family.stop_strings
        assert family_stop not in G.generation_stops("gsm8k", tokenizer, family)  # lm-eval keeps such text
        # In a chat template the family's turn ends stop too.
        assert family_stop in G.generation_stops("gsm8k", tokenizer, family, chat=True)


@pytest.mark.parametrize("chat", [False, True])
def test_evaluate_gsm8k_end_to_end(tiny_model_dir, shared_data, chat):
    from zhtune.data.benchmarks import load_benchmark
    from zhtune.models.loading import load_model

    lm = load_model(str(tiny_model_dir))
    questions = load_benchmark("gsm8k", "test", shared_data)[:3]
    preds = G.evaluate_generation(lm.model, lm.tokenizer, lm.family, questions, shots=2,
                             data_dir=shared_data, batch_size=2, max_new_tokens=8, chat=chat,
                             progress=False)
    assert [p.question for p in preds] == questions
    assert [p.gold for p in preds] == [q.answer.rsplit("#### ", 1)[1] for q in questions]
    rules = load_spec("gsm8k").generation
    for p in preds:
        assert "Question:" not in p.generation
        assert p.extracted_flexible == regex_filter(p.generation, rules.flexible.regex, -1)
        assert p.correct == exact_match(p.extracted_flexible, p.question.answer,
                                        **rules.exact_match.model_dump())


def test_evaluate_gsm8k_scores_what_was_generated(monkeypatch, shared_data):
    from zhtune.data.benchmarks import load_benchmark

    questions = load_benchmark("gsm8k", "test", shared_data)[:3]
    golds = [q.answer.rsplit("#### ", 1)[1] for q in questions]
    seen = {}

    def fake_generate(model, tokenizer, prompts, *, stop_strings, **kw):
        seen["prompts"], seen["stops"] = prompts, stop_strings
        return [f" so\n#### {golds[0]}", f" it is {golds[1]} dollars", " no idea"]

    monkeypatch.setattr(G, "generate_greedy", fake_generate)
    preds = G.evaluate_generation(None, None, None, questions, shots=0, data_dir=shared_data,
                             progress=False)
    assert [(p.correct_strict, p.correct) for p in preds] == [(True, True), (False, True), (False, False)]
    assert seen["prompts"][1] == f"Question: {questions[1].question}\nAnswer:"
    assert seen["stops"] == ["Question:", "</s>", "<|im_end|>"]  # no tokenizer: no EOS to add


def test_out_of_memory_halves_the_batch_and_keeps_it(tiny_llama_dir, caplog):
    """An accelerator that holds at most 2 sequences: the batch of 5 fails once and is halved to 2,
    the smaller batch is kept (no further out-of-memory), and the text is that of a run that fits."""
    model, tokenizer = _sharp_model(tiny_llama_dir)
    kw = dict(stop_strings=[], max_new_tokens=8, progress=False)
    expected = generate_greedy(model, tokenizer, PROMPTS, batch_size=5, **kw)
    real_forward, rows, failures = model.forward, [], []

    def small_accelerator(*args, **kwargs):
        n = kwargs["input_ids"].shape[0]
        if n > 2:
            failures.append(n)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        rows.append(n)
        return real_forward(*args, **kwargs)

    model.forward = small_accelerator
    with caplog.at_level("WARNING"):
        got = generate_greedy(model, tokenizer, PROMPTS, batch_size=5, **kw)
    assert got == expected
    assert failures == [5]  # one failure: later batches start at the halved size
    assert max(rows) == 2 and rows.count(2) > len(PROMPTS)  # kept at 2, and used at 2
    limits = [r.getMessage().split()[-2] for r in caplog.records if "out of memory" in r.getMessage()]
    assert limits == ["2"]


def test_out_of_memory_with_one_sequence_is_raised(tiny_llama_dir):
    model, tokenizer = _sharp_model(tiny_llama_dir)

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    model.forward = no_memory
    with pytest.raises(torch.OutOfMemoryError):
        generate_greedy(model, tokenizer, PROMPTS[:3], stop_strings=[], max_new_tokens=4, batch_size=4,
                        share_prefix=False, progress=False)
