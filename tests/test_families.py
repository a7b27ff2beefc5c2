"""Model families (detection, prompt and chat formats, answer extraction), LoRA target resolution and
config validation, on the tiny Llama and Qwen2 models."""
from __future__ import annotations

import pytest
import yaml

from zhtune.artifacts import fingerprint
from zhtune.config import ConfigError, apply_overrides, load_config, save_resolved
from zhtune.errors import UserError
from zhtune.models.families import (CHATML_TEMPLATE, FAMILIES, detect_family, extract_answer,
                                    format_chat, format_prompt, get_family, stop_strings, turn_end)
from zhtune.models.targets import LoraTargetError, linear_module_names, resolve_lora_targets


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    return (AutoConfig.from_pretrained(str(tiny_llama_dir)), AutoTokenizer.from_pretrained(str(tiny_llama_dir)),
            AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)))


@pytest.fixture(scope="module")
def tiny_qwen(tiny_qwen_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    return (AutoConfig.from_pretrained(str(tiny_qwen_dir)), AutoTokenizer.from_pretrained(str(tiny_qwen_dir)),
            AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir)))


# ------------------------------------------------------------------------------------ detection


def test_detects_llama2_for_a_base_llama(tiny_llama, tiny_llama_dir):
    config, tokenizer, _ = tiny_llama
    assert not tokenizer.chat_template
    assert detect_family(config, tokenizer, str(tiny_llama_dir)).name == "llama2"
    assert detect_family(config, tokenizer, "meta-llama/Llama-2-7b-chat-hf").name == "llama2-chat"


def test_detects_llama_with_chatml_template(tiny_llama_dir):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.chat_template = CHATML_TEMPLATE  # as SmolLM2 ships it
    config = AutoConfig.from_pretrained(str(tiny_llama_dir))
    assert detect_family(config, tokenizer, "HuggingFaceTB/SmolLM2-135M-Instruct").name == "llama"


def test_detects_qwen2_base_and_instruct_by_name(tiny_qwen, tiny_qwen_dir):
    config, tokenizer, _ = tiny_qwen
    assert detect_family(config, tokenizer, str(tiny_qwen_dir)).name == "qwen2"
    assert detect_family(config, tokenizer, "Qwen/Qwen2.5-0.5B-Instruct").name == "qwen2-instruct"
    assert detect_family(config, tokenizer, "Qwen/Qwen2-7B-Chat").name == "qwen2-instruct"
    assert detect_family(config, tokenizer, "Qwen/Qwen2.5-7B").name == "qwen2"


def test_detects_llama3_and_refuses_other_architectures():
    assert detect_family({"model_type": "llama", "vocab_size": 128256}).name == "llama3"
    with pytest.raises(ValueError, match="Qwen-1"):
        detect_family({"model_type": "qwen"})
    with pytest.raises(ValueError, match="model.family="):
        detect_family({"model_type": "gpt2"})
    assert detect_family({"model_type": "gpt2"}, override="llama2").name == "llama2"
    with pytest.raises(ValueError, match="unknown model family"):
        get_family("llama4")


# ------------------------------------------------------------------------------- chat formatting


def test_qwen_prompt_and_chat_use_chatml(tiny_qwen):
    _, tokenizer, _ = tiny_qwen
    family = FAMILIES["qwen2-instruct"]
    prompt = format_prompt(tokenizer, family, "中国的首都是哪里？", system="你是一个助手。")
    assert prompt == ("<|im_start|>system\n你是一个助手。<|im_end|>\n"
                      "<|im_start|>user\n中国的首都是哪里？<|im_end|>\n<|im_start|>assistant\n")
    chat = format_chat(tokenizer, family, [
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"}])
    assert chat.count("<|im_start|>assistant\n") == 2 and chat.endswith("<|im_start|>assistant\n2<|im_end|>\n")
    assert chat.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")  # default system
    assert turn_end(tokenizer, family) == "<|im_end|>"
    assert "<|im_end|>" in stop_strings(tokenizer, family)


def test_base_llama_uses_the_plain_template(tiny_llama):
    _, tokenizer, _ = tiny_llama
    family = FAMILIES["llama2"]
    assert format_prompt(tokenizer, family, "Translate", "你好") == \
        "### Instruction:\nTranslate\n\n### Input:\n你好\n\n### Response:\n"
    assert format_prompt(tokenizer, family, "Say hi") == "### Instruction:\nSay hi\n\n### Response:\n"
    chat = format_chat(tokenizer, family, [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}])
    assert chat == "### Instruction:\nQ1\n\n### Response:\nA1\n\n"
    assert turn_end(tokenizer, family) == "</s>" and "</s>" in stop_strings(tokenizer, family)
    # chat=False forces the plain template even on a chat family
    qwen_plain = format_prompt(tokenizer, FAMILIES["qwen2"], "Say hi", chat=False)
    assert qwen_plain.startswith("### Instruction:")


def test_extract_answer_cuts_between_marker_and_stop():
    qwen = FAMILIES["qwen2-instruct"]
    generated = ("<|im_start|>user\n问题<|im_end|>\n<|im_start|>assistant\n答案是 B。<|im_end|>\n"
                 "<|im_start|>user\n又一个")
    assert extract_answer(qwen, generated) == "答案是 B。"
    assert extract_answer(qwen, "  只有答案  <|endoftext|>后面") == "只有答案"
    llama2 = FAMILIES["llama2"]
    text = "### Instruction:\nQ\n\n### Response:\nThe answer is 42.\n\n### Instruction:\nnext"
    assert extract_answer(llama2, text) == "The answer is 42."
    assert extract_answer(llama2, "Natalia sold 72 clips.\nQuestion: next", stops=["Question:"]) == \
        "Natalia sold 72 clips."


# ------------------------------------------------------------------------------------ LoRA targets


def test_lora_presets_on_tiny_models(tiny_llama, tiny_qwen):
    for _, _, model in (tiny_llama, tiny_qwen):
        assert linear_module_names(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                              "up_proj", "v_proj"]  # lm_head excluded
        assert resolve_lora_targets(model, "attention") == ["k_proj", "o_proj", "q_proj", "v_proj"]
        assert resolve_lora_targets(model, "mlp") == ["down_proj", "gate_proj", "up_proj"]
        assert resolve_lora_targets(model, "q_proj, v_proj") == ["q_proj", "v_proj"]
        assert resolve_lora_targets(model, ["o_proj"]) == ["o_proj"]


def test_qwen1_target_names_are_a_clear_error(tiny_qwen):
    _, _, model = tiny_qwen
    with pytest.raises(LoraTargetError) as err:
        resolve_lora_targets(model, ["c_attn", "c_proj", "w1", "w2"])
    message = str(err.value)
    assert isinstance(err.value, UserError)
    assert "Qwen-1" in message and "c_attn" in message
    assert "Linear layers that exist: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message
    with pytest.raises(LoraTargetError, match="lm_head"):
        resolve_lora_targets(model, ["lm_head"])


# ------------------------------------------------------------------------------------------ config


def _write(tmp_path, data) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return str(path)


@pytest.mark.parametrize("data, key, words", [
    ({"lora": {"rnak": 8}}, "lora.rnak", "unknown key"),
    ({"lora": {"rank": "eight"}}, "lora.rank", "integer"),
    ({"lora": {"rank": 0}}, "lora.rank", "greater than 0"),
    ({"lora": {"dropout": 1.0}}, "lora.dropout", "less than 1"),
    ({"lora": {"dropout": -0.1}}, "lora.dropout", "greater than or equal to 0"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate", "greater than 0"),
    ({"train": {"batch_size": "big"}}, "train.batch_size", "integer"),
    ({"typo_section": {}}, "typo_section", "unknown key"),
])
def test_config_errors_name_key_and_file(tmp_path, data, key, words):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert isinstance(err.value, UserError)
    assert path in message and f"'{key}'" in message and words in message


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n- not sections\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)


def test_dotted_overrides(tmp_path):
    path = _write(tmp_path, {"lora": {"rank": 4}, "model": {"name_or_path": "Qwen/Qwen2.5-0.5B"}})
    cfg = load_config(path, ["lora.rank=16", "lora.targets=[q_proj, v_proj]", "eval.benchmarks=[ceval,mmlu]",
                             "train.learning_rate=2e-4", "lora.alpha=32", "eval.limit=null"])
    assert cfg.lora.rank == 16 and cfg.lora.targets == ["q_proj", "v_proj"]
    assert cfg.eval.benchmarks == ["ceval", "mmlu"] and cfg.train.learning_rate == 2e-4
    assert cfg.eval.limit is None and cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B"
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(path, ["lora.rank"])
    with pytest.raises(ConfigError, match="override 'model.name_or_path.sub': 'name_or_path' is not a section"):
        load_config(path, ["model.name_or_path.sub=1"])
    with pytest.raises(ConfigError, match="'name': Input should be a valid string"):
        load_config(path, ["name.sub=1"])
    with pytest.raises(ConfigError, match=r"with overrides lora\.rank=-1.*'lora\.rank'"):
        load_config(path, ["lora.rank=-1"])
    with pytest.raises(ConfigError, match="'eval.benchmarks.0'"):
        load_config(path, ["eval.benchmarks=[hellaswag]"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_resolved_config_round_trips_and_fingerprints(tmp_path):
    cfg = load_config(None, ["lora.rank=8", "name=zh"])
    written = save_resolved(cfg, tmp_path)
    again = load_config(written)
    assert again == cfg and again.name == "zh"
    assert fingerprint(again.model_dump()) == fingerprint(cfg.model_dump())
    assert fingerprint(load_config(None, ["lora.rank=16"]).model_dump()) != fingerprint(cfg.model_dump())
