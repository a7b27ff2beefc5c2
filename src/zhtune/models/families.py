"""Model families: a small record of facts per family, never a copy of the pipeline.

A family says how to format an instruction or a chat, where the assistant's answer starts and stops,
and what LoRA defaults the original project documents. Everything else (loading, training,
evaluation) is shared. The family is detected from ``config.json`` and the tokenizer, and can be
overridden by name (``model.family``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ChatML, as Qwen2/Qwen2.5 and SmolLM2 write it. Used when a tokenizer ships no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = none %}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}{{ bos_token + '[INST] <<SYS>>\n' + system + '\n<</SYS>>\n\n'"
    " + message['content'] + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content']"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# For base models without a chat format: an Alpaca-style instruction template.
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass(frozen=True, kw_only=True)
class ModelFamily:
    name: str
    description: str
    chat_template: str | None  # fallback when the tokenizer has none; None: plain template
    assistant_start: tuple[str, ...]  # markers after which the assistant's answer starts
    turn_end: str | None  # what closes an assistant turn (None: the tokenizer's EOS)
    stop_strings: tuple[str, ...]
    lora_rank: int
    lora_alpha: float
    learning_rate: float
    is_chat: bool = False  # instruct/chat model: evaluate with the chat template by default
    notes: tuple[str, ...] = field(default_factory=tuple)


_CHATML_START = ("<|im_start|>assistant\n",)
_PLAIN_START = ("### Response:\n",)

# LoRA defaults as the original project documents them: Llama r16/alpha32/lr 2e-5, Qwen r8/alpha32/lr 1e-4.
_LLAMA_LORA = dict(lora_rank=16, lora_alpha=32, learning_rate=2e-5)
_QWEN_LORA = dict(lora_rank=8, lora_alpha=32, learning_rate=1e-4)

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in [
        ModelFamily(name="llama2", description="Llama-2 base (SentencePiece, 32k vocab)",
                    chat_template=None, assistant_start=_PLAIN_START, turn_end=None,
                    stop_strings=("### Instruction:", "</s>"), **_LLAMA_LORA),
        ModelFamily(name="llama2-chat", description="Llama-2-chat ([INST] format)",
                    chat_template=LLAMA2_CHAT_TEMPLATE, assistant_start=("[/INST]",), turn_end=None,
                    stop_strings=("</s>", "[INST]"), is_chat=True, **_LLAMA_LORA),
        ModelFamily(name="llama3", description="Llama-3 / 3.x (header tokens, <|eot_id|>)",
                    chat_template=LLAMA3_TEMPLATE,
                    assistant_start=("<|start_header_id|>assistant<|end_header_id|>\n\n",),
                    turn_end="<|eot_id|>", stop_strings=("<|eot_id|>", "<|end_of_text|>"),
                    is_chat=True, **_LLAMA_LORA),
        # Other Llama-architecture models (SmolLM2, TinyLlama, ...): the tokenizer's own template.
        ModelFamily(name="llama", description="Llama architecture with its tokenizer's own chat template",
                    chat_template=CHATML_TEMPLATE, assistant_start=_CHATML_START + _PLAIN_START,
                    turn_end=None, stop_strings=("<|im_end|>", "</s>", "<|endoftext|>"),
                    is_chat=True, **_LLAMA_LORA),
        ModelFamily(name="qwen2", description="Qwen2 / Qwen2.5 base (ChatML)",
                    chat_template=CHATML_TEMPLATE, assistant_start=_CHATML_START,
                    turn_end="<|im_end|>", stop_strings=("<|im_end|>", "<|endoftext|>"), **_QWEN_LORA),
        ModelFamily(name="qwen2-instruct", description="Qwen2 / Qwen2.5 Instruct (ChatML)",
                    chat_template=CHATML_TEMPLATE, assistant_start=_CHATML_START,
                    turn_end="<|im_end|>", stop_strings=("<|im_end|>", "<|endoftext|>"),
                    is_chat=True, **_QWEN_LORA),
    ]
}

QWEN_MODEL_TYPES = {"qwen2", "qwen2_moe", "qwen3", "qwen3_moe"}
LLAMA_MODEL_TYPES = {"llama", "mistral"}


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def _vocab(tokenizer: Any) -> set[str]:
    if tokenizer is None:
        return set()
    try:
        return set(tokenizer.get_vocab())
    except Exception:  # some tokenizers cannot list their vocabulary
        return set()


def detect_family(config: Any, tokenizer: Any = None, name_or_path: str = "",
                  override: str | None = None) -> ModelFamily:
    """Pick the family from a model config (object or dict), the tokenizer and the model's name."""
    if override:
        return get_family(override)
    cfg = config if isinstance(config, dict) else config.to_dict()
    model_type = cfg.get("model_type", "")
    name = name_or_path.lower()
    template = getattr(tokenizer, "chat_template", None) or ""
    if model_type == "qwen":
        raise ValueError(
            "Qwen-1 (model_type 'qwen') needs trust_remote_code and is not supported; "
            "use Qwen2 or Qwen2.5 checkpoints")
    if model_type in QWEN_MODEL_TYPES:
        chat = any(w in name for w in ("instruct", "chat")) and "base" not in name
        return FAMILIES["qwen2-instruct" if chat else "qwen2"]
    if model_type in LLAMA_MODEL_TYPES:
        vocab = _vocab(tokenizer)
        if "<|eot_id|>" in vocab or "<|eot_id|>" in template or cfg.get("vocab_size") in (128256,):
            return FAMILIES["llama3"]
        if "<|im_start|>" in template or "<|im_start|>" in vocab:
            return FAMILIES["llama"]
        if "[INST]" in template or "chat" in name:
            return FAMILIES["llama2-chat"]
        if template:
            return FAMILIES["llama"]
        return FAMILIES["llama2"]
    raise ValueError(
        f"model_type {model_type!r} is neither a Llama nor a Qwen2 architecture; "
        f"pass model.family={'|'.join(FAMILIES)} to treat it as one of them")


def ensure_chat_template(tokenizer: Any, family: ModelFamily) -> bool:
    """Give the tokenizer the family's template if it has none. False: the family uses plain text."""
    if getattr(tokenizer, "chat_template", None):
        return True
    if family.chat_template is None:
        return False
    tokenizer.chat_template = family.chat_template
    return True


def format_prompt(tokenizer: Any, family: ModelFamily, instruction: str, input_text: str = "",
                  system: str | None = None, chat: bool = True) -> str:
    """The text a model sees before its answer: chat template where there is one, else plain."""
    user = instruction if not input_text else f"{instruction}\n\n{input_text}"
    if chat and ensure_chat_template(tokenizer, family):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if input_text:
        return PLAIN_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PLAIN_PROMPT.format(instruction=instruction)


def format_chat(tokenizer: Any, family: ModelFamily, messages: list[dict],
                add_generation_prompt: bool = False) -> str:
    """A whole conversation in the family's chat format (multi-turn SFT data, chat evaluation)."""
    if not ensure_chat_template(tokenizer, family):
        text = ""
        for m in messages:
            if m["role"] == "user":
                text += PLAIN_PROMPT.format(instruction=m["content"])
            elif m["role"] == "assistant":
                text += m["content"] + "\n\n"
        return text
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def turn_end(tokenizer: Any, family: ModelFamily, chat: bool = True) -> str:
    """The text that closes an assistant answer in training data."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if chat and "<|im_end|>" in template:
        return "<|im_end|>"
    if chat and family.turn_end:
        return family.turn_end
    return tokenizer.eos_token or ""


def stop_strings(tokenizer: Any, family: ModelFamily) -> list[str]:
    """Strings that end generation: the family's, plus the tokenizer's EOS."""
    stops = list(family.stop_strings)
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in stops:
        stops.append(eos)
    return stops


def extract_answer(family: ModelFamily, text: str, stops: list[str] | None = None) -> str:
    """Cut the assistant's answer out of generated text: after the last assistant marker, before
    the first stop string."""
    start = 0
    for marker in family.assistant_start:
        pos = text.rfind(marker)
        if pos >= 0:
            start = max(start, pos + len(marker))
    answer = text[start:]
    cut = len(answer)
    for stop in list(family.stop_strings) + list(stops or []):
        pos = answer.find(stop)
        if 0 <= pos < cut:
            cut = pos
    return answer[:cut].strip()
