"""The eval suite: summary/predictions format, limits and subjects, adapters and LoRA scales."""
from __future__ import annotations

import math

import pytest
import torch

from zhtune.artifacts import resolve_adapter_dir
from zhtune.config import EvalConfig, ModelConfig
from zhtune.errors import UserError
from zhtune.eval.adapters import adapter_names, attach_adapters, scale_label, use_adapter
from zhtune.eval.suite import evaluate_model, load_questions, run_eval, write_eval_output
from zhtune.io import read_json, read_jsonl
from zhtune.models.loading import load_model

SUBJECTS = ["computer_network", "logic", "abstract_algebra", "astronomy"]


def small_eval(**kw) -> EvalConfig:
    base = dict(benchmarks=["ceval", "mmlu"], subjects=SUBJECTS, limit=2, shots=1,
                batch_size=4, perplexity=False)
    return EvalConfig(**{**base, **kw})


def make_adapter(base_dir, out_dir, seed: int):
    """A training-output-like folder OUT/adapter with random (non-zero) LoRA A and B weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)  # B != 0, so the adapter changes outputs
    get_peft_model(model, cfg).save_pretrained(out_dir / "adapter")
    return out_dir


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_llama_dir, root / "zh-a", 1), make_adapter(tiny_llama_dir, root / "zh-b", 2)]


def probs_of(folder):
    return {r["key"]: r["probs"] for r in read_jsonl(folder / "predictions.jsonl")}


def test_summary_structure(tiny_llama_dir, shared_data, tmp_path):
    loaded = load_model(str(tiny_llama_dir))
    cfg = small_eval(benchmarks=["ceval", "mmlu", "gsm8k"], max_new_tokens=8, perplexity=True,
                     perplexity_chars=300)
    result = evaluate_model(loaded.model, loaded.tokenizer, loaded.family, cfg, shared_data,
                            meta={"model": "tiny"}, progress=False)
    s = result.summary
    assert s["model"] == "tiny" and s["adapter"] is None and s["family"] == loaded.family.name
    assert s["settings"]["splits"] == {"ceval": "val", "mmlu": "test", "gsm8k": "test"}
    assert s["settings"]["shots"] == 1 and s["settings"]["limit"] == 2
    for b in ("ceval", "mmlu"):
        entry = s["benchmarks"][b]
        assert entry["n"] == 4  # 2 subjects x limit 2
        assert sum(v["n"] for v in entry["subjects"].values()) == entry["n"]
        assert sum(v["n"] for v in entry["categories"].values()) == entry["n"]
        assert set(entry["categories"]) <= {"STEM", "Humanities", "Social Sciences", "Other"}
        p = entry["accuracy"]
        assert entry["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / entry["n"]))
        for sub in entry["subjects"].values():
            assert sub["category"] in entry["categories"]
    gsm = s["benchmarks"]["gsm8k"]
    assert gsm["n"] == 2 and {"accuracy_strict", "accuracy_flexible"} <= set(gsm)
    # the seed-task probes and, on by default, the control probes, every entry the same shape
    assert set(s["perplexity"]) == {"zh", "en", "zh_control", "en_control"}
    for probe, entry in s["perplexity"].items():
        assert set(entry) == {"bits_per_char", "chars", "tokens", "texts", "lang", "kind", "source"}
        assert entry["chars"] == 300 == sum(c for c, _ in entry["texts"]) and entry["bits_per_char"] > 0
        assert entry["lang"] == probe[:2]
        assert entry["kind"] == ("control" if probe.endswith("_control") else "seed_tasks")
        assert entry["bits_per_char"] == pytest.approx(sum(b for _, b in entry["texts"]) / 300, rel=1e-3)
    assert s["perplexity"]["zh_control"]["bits_per_char"] != s["perplexity"]["zh"]["bits_per_char"]
    assert s["provenance"]["zhtune_version"] == s["zhtune_version"]
    assert s["throughput"]["questions"] == 10 == len(result.predictions)

    rows = result.predictions
    mc = [r for r in rows if r["benchmark"] != "gsm8k"]
    assert all(set(r["probs"]) == {"A", "B", "C", "D"} and r["correct"] == (r["pred"] == r["gold"])
               for r in mc)
    assert [r["key"] for r in mc][:2] == ["ceval/computer_network/val/0", "ceval/computer_network/val/1"]
    assert {"generation", "extracted_strict", "extracted_flexible", "correct_strict"} <= set(rows[-1])
    correct_ceval = [r["correct"] for r in rows if r["benchmark"] == "ceval"]
    assert s["benchmarks"]["ceval"]["accuracy"] == sum(correct_ceval) / 4

    out = write_eval_output(result, tmp_path / "run")
    assert read_json(out / "summary.json")["settings_fingerprint"] == s["settings_fingerprint"]
    assert len(read_jsonl(out / "predictions.jsonl")) == 10


def test_control_probes_can_be_turned_off(tiny_llama_dir, shared_data):
    from zhtune.eval.suite import _perplexity

    loaded = load_model(str(tiny_llama_dir))
    on = _perplexity(loaded.model, loaded.tokenizer, small_eval(perplexity_chars=200), shared_data)
    off = _perplexity(loaded.model, loaded.tokenizer,
                      small_eval(perplexity_chars=200, control_probes=False), shared_data)
    assert set(off) == {"zh", "en"} and off["zh"] == on["zh"] and off["en"] == on["en"]


def test_cloze_and_prompts_file(tiny_llama_dir, shared_data, tmp_path):
    """formulation both: letter results under "ceval", cloze under "ceval_cloze" (same entry schema,
    acc_norm the headline), one prompts.jsonl line per question and formulation."""
    loaded = load_model(str(tiny_llama_dir))
    cfg = small_eval(benchmarks=["ceval", "mmlu", "gsm8k"], formulation="both", write_prompts=True,
                     max_new_tokens=4, generation_shots=1)
    result = evaluate_model(loaded.model, loaded.tokenizer, loaded.family, cfg, shared_data, progress=False)
    s = result.summary
    assert list(s["benchmarks"]) == ["ceval", "ceval_cloze", "mmlu", "mmlu_cloze", "gsm8k"]
    assert s["style"] == "lm-eval" and s["settings"]["formulation"] == "both"
    cloze = s["benchmarks"]["ceval_cloze"]
    assert {"accuracy", "n", "stderr", "categories", "subjects"} <= set(cloze)
    assert cloze["metric"] == "acc_norm" and cloze["accuracy"] == cloze["accuracy_norm"]
    rows = [r for r in result.predictions if r["benchmark"] == "ceval_cloze"]
    assert [r["key"] for r in rows][:1] == ["ceval_cloze/computer_network/val/0"]
    assert cloze["accuracy"] == sum(r["correct"] for r in rows) / 4
    assert cloze["accuracy_unnormalized"] == sum(r["correct_unnormalized"] for r in rows) / 4
    out = write_eval_output(result, tmp_path / "run")
    prompts = read_jsonl(out / "prompts.jsonl")
    assert len(prompts) == 4 + 4 + 4 + 4 + 2
    by_key = {(p["key"]): p for p in prompts}
    letter = by_key["mmlu/abstract_algebra/test/0"]
    assert letter["context"].startswith("The following are multiple choice questions (with answers) "
                                        "about abstract algebra.\n\n")
    assert letter["context"].endswith("\nAnswer:") and letter["continuations"] == [" A", " B", " C", " D"]
    cl = by_key["mmlu_cloze/abstract_algebra/test/0"]
    assert cl["context"].endswith("Question: Find the degree for the given field extension Q(sqrt(2), "
                                  "sqrt(3), sqrt(18)) over Q.\nAnswer:")
    assert cl["continuations"] == [" 0", " 4", " 2", " 6"]
    gsm = [p for p in prompts if p["benchmark"] == "gsm8k"]
    assert gsm[0]["context"].endswith("\nAnswer:") and "Question:" in gsm[0]["until"]


def test_official_style_averages_subjects_and_adds_china_specific(tiny_llama_dir, shared_data):
    loaded = load_model(str(tiny_llama_dir))
    cfg = EvalConfig(benchmarks=["cmmlu"], subjects=["chinese_history", "anatomy", "arts"], limit=3,
                     shots=0, perplexity=False, style="official")
    s = evaluate_model(loaded.model, loaded.tokenizer, loaded.family, cfg, shared_data,
                       progress=False).summary
    entry = s["benchmarks"]["cmmlu"]
    subjects = entry["subjects"]
    assert entry["aggregation"] == "subjects"
    assert entry["accuracy"] == pytest.approx(sum(v["accuracy"] for v in subjects.values()) / 3)
    # chinese_history counts in Humanities and in the fifth group
    assert entry["categories"]["China specific"]["n"] == 3
    assert entry["categories"]["China specific"]["accuracy"] == subjects["chinese_history"]["accuracy"]
    assert entry["categories"]["Humanities"]["n"] == 6  # chinese_history + arts


def test_lm_eval_style_groups_anatomy_in_stem(shared_data):
    from zhtune.eval.suite import _base_row

    q = load_questions(EvalConfig(benchmarks=["mmlu"], subjects=["anatomy"], limit=1), shared_data)["mmlu"][0]
    assert _base_row(q, "lm-eval")["category"] == "STEM"
    assert _base_row(q, "official")["category"] == "Other"  # Hendrycks: health -> other


def test_fingerprint_follows_settings_and_questions(shared_data):
    from zhtune.artifacts import fingerprint
    from zhtune.eval.suite import eval_settings

    def fp(cfg):
        qs = load_questions(cfg, shared_data)
        return fingerprint(eval_settings(cfg), [q.key for b in cfg.benchmarks for q in qs.get(b, [])])

    assert fp(small_eval()) == fp(small_eval(batch_size=1))  # batch size does not change scores
    assert fp(small_eval()) != fp(small_eval(shots=0))
    assert fp(small_eval()) != fp(small_eval(limit=3))


def test_limit_and_subjects(shared_data):
    qs = load_questions(small_eval(limit=3, subjects=["logic", "astronomy"]), shared_data)
    assert [q.key for q in qs["ceval"]] == [f"ceval/logic/val/{i}" for i in range(3)]
    assert {q.subject for q in qs["mmlu"]} == {"astronomy"} and len(qs["mmlu"]) == 3
    qs = load_questions(EvalConfig(benchmarks=["ceval", "gsm8k"], subjects=["logic"], limit=5), shared_data)
    assert len(qs["gsm8k"]) == 5  # GSM8K: first N overall, subjects do not apply
    with pytest.raises(UserError, match="no_such_subject"):
        load_questions(small_eval(subjects=["logic", "no_such_subject"]), shared_data)


def test_adapter_folders(adapters, tmp_path):
    out = adapters[0]
    assert resolve_adapter_dir(out) == out / "adapter"
    assert resolve_adapter_dir(out / "adapter") == out / "adapter"
    with pytest.raises(UserError, match="no adapter_config.json"):
        resolve_adapter_dir(tmp_path)
    with pytest.raises(UserError, match="no such adapter"):
        resolve_adapter_dir(tmp_path / "missing")
    assert adapter_names([out, out / "adapter", "x/base"]) == ["zh-a", "zh-a-2", "base-2"]
    # `zhtune run` trains into OUT/train: "train" would shadow nn.Module.train inside PEFT.
    assert adapter_names(["runs/x/train/adapter"]) == ["train-adapter"]
    # `zhtune run` names its adapter after the experiment instead.
    assert adapter_names(["runs/x/train/adapter"], ["demo cpu"]) == ["demo_cpu"]
    # PEFT refuses "." in adapter names (module keys); sweep points are named like this.
    assert adapter_names(["runs/qwen2.5-r8/adapter"]) == ["qwen2_5-r8"]
    assert adapter_names(["a"], ["tiny/rank4-dropout0.05"]) == ["tiny_rank4-dropout0_05"]
    with pytest.raises(ValueError, match="2 labels for 1 adapters"):
        adapter_names(["a"], ["x", "y"])
    assert scale_label("zh-a", 1.0) == "zh-a" and scale_label("zh-a", 0.5) == "zh-a@scale-0.5"


def test_adapters_and_scales(tiny_llama_dir, shared_data, adapters, tmp_path):
    out = tmp_path / "eval"
    index = run_eval(ModelConfig(name_or_path=str(tiny_llama_dir)), small_eval(), out,
                     data_dir=shared_data, adapters=[str(a) for a in adapters], scales=[0.0, 1.0],
                     progress=False)
    labels = ["base", "zh-a@scale-0", "zh-a", "zh-b@scale-0", "zh-b"]
    assert index["labels"] == labels == read_json(out / "index.json")["labels"]
    assert (out / "config.resolved.yaml").is_file()
    summaries = {lab: read_json(out / lab / "summary.json") for lab in labels}
    assert len({s["settings_fingerprint"] for s in summaries.values()}) == 1
    assert summaries["zh-a@scale-0"]["adapter_scale"] == 0.0
    assert summaries["zh-a"]["adapter"].endswith("zh-a/adapter")
    base = probs_of(out / "base")
    # Scale 0 is the base model exactly; scale 1 changes the outputs.
    assert probs_of(out / "zh-a@scale-0") == base == probs_of(out / "zh-b@scale-0")
    for lab in ("zh-a", "zh-b"):
        diff = max(abs(p[x] - base[k][x]) for k, p in probs_of(out / lab).items() for x in "ABCD")
        assert diff > 1e-4, lab
    assert probs_of(out / "zh-a") != probs_of(out / "zh-b")

    # Each adapter alone on a fresh base gives what it gave next to the other one.
    for a, lab in zip(adapters, ("zh-a", "zh-b")):
        loaded = load_model(str(tiny_llama_dir))
        peft_model, _ = attach_adapters(loaded.model, [a])
        alone = evaluate_model(peft_model, loaded.tokenizer, loaded.family, small_eval(), shared_data,
                               progress=False)
        together = probs_of(out / lab)
        for r in alone.predictions:
            assert r["probs"] == pytest.approx(together[r["key"]], abs=1e-6)


def test_scale_is_restored(tiny_llama_dir, adapters):
    from peft.tuners.lora import LoraLayer

    loaded = load_model(str(tiny_llama_dir))
    peft_model, _ = attach_adapters(loaded.model, adapters)
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    before = [dict(m.scaling) for m in layers]
    with use_adapter(peft_model, "zh-b", 0.25):
        assert all(m.scaling["zh-b"] == pytest.approx(0.25 * b["zh-b"]) for m, b in zip(layers, before))
        assert all(m.scaling["zh-a"] == b["zh-a"] for m, b in zip(layers, before))
    assert [dict(m.scaling) for m in layers] == before


def test_nothing_to_evaluate(tiny_llama_dir, tmp_path):
    with pytest.raises(UserError, match="nothing to evaluate"):
        run_eval(ModelConfig(name_or_path=str(tiny_llama_dir)), small_eval(), tmp_path, include_base=False)


def test_compare_refuses_other_styles_and_pairs_cloze(tmp_path):
    """Runs of different styles are not compared; a cloze benchmark pairs by its own keys and a
    Chinese one is judged on gain."""
    from fixtures_eval import SETTINGS, Cell, paired_predictions, write_eval_folder

    from zhtune.analysis.forgetting import compare_runs
    from zhtune.analysis.stats import GAIN

    cells = [Cell("ceval", "law", "Humanities", both=5, c=3, neither=2),
             Cell("mmlu", "anatomy", "STEM", both=6, b=1, neither=3)]
    base, tuned = paired_predictions(cells)
    cloze_base, cloze_tuned = paired_predictions([Cell("ceval", "law", "Humanities", both=4, c=4, neither=2)])
    for rows in (cloze_base, cloze_tuned):
        for r in rows:
            r["benchmark"] = "ceval_cloze"
            r["key"] = "ceval_cloze" + r["key"][len("ceval"):]
    settings = {**SETTINGS, "benchmarks": ["ceval", "mmlu"], "style": "lm-eval", "formulation": "both"}
    write_eval_folder(tmp_path / "base", base + cloze_base, settings=settings)
    write_eval_folder(tmp_path / "tuned", tuned + cloze_tuned, settings=settings)
    cmp = compare_runs(tmp_path / "base", tmp_path / "tuned")
    assert cmp.benchmarks["ceval_cloze"].counts.n == 10 and cmp.benchmarks["ceval_cloze"].kind == GAIN
    assert cmp.benchmarks["ceval"].counts.n == 10  # the letter questions pair separately
    write_eval_folder(tmp_path / "official", tuned + cloze_tuned, settings={**settings, "style": "official"})
    with pytest.raises(UserError, match="style: lm-eval vs official"):
        compare_runs(tmp_path / "base", tmp_path / "official")
