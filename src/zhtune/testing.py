"""Tiny random-initialised Llama and Qwen2 models, built in seconds, for tests and benchmarks.

The tokenizers are trained on the spot and imitate the real ones where it matters for scoring:
the Llama one is SentencePiece-style (``▁`` word prefix, byte fallback, ``<s>`` prepended), the
Qwen2 one is byte-level BPE with ChatML special tokens and no BOS.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

_CORPUS = [
    "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。",
    "以下是关于农学的单项选择题，请直接给出正确答案的选项。",
    "The following are multiple choice questions (with answers) about abstract algebra.",
    "Question: Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
    "Answer: Natalia sold 48/2 = 24 clips in May. #### 72",
    "中国的首都是北京。长城是中国古代的军事防御工程。小明有5个苹果，吃了2个，还剩3个。",
    "The capital of France is Paris. A cat sat on the mat. The answer is 42.",
    "答案：A\n答案：B\n答案：C\n答案：D\nAnswer: A\nAnswer: B\nAnswer: C\nAnswer: D",
    "A. 一 B. 二 C. 三 D. 四 A. one B. two C. three D. four",
    "请计算：3 + 5 = 8。题目：一个数加上12等于20，这个数是多少？解答：20 - 12 = 8。",
    "You are a helpful assistant. Human: 你好 Assistant: 你好！有什么可以帮你的吗？",
    "0 1 2 3 4 5 6 7 8 9 10 100 1,000 -3 2.5 $ % = + - * / ( )",
]


def _corpus(data_dir: Path | None) -> list[str]:
    texts = list(_CORPUS) * 20
    if data_dir is not None:
        for rel in ("belle/dev1K.json", "alpaca/alpaca_en_demo.json"):
            p = Path(data_dir) / rel
            if p.exists():
                texts.append(p.read_text(encoding="utf-8")[:200_000])
    return texts


def build_tokenizer(kind: str, data_dir: Path | None = None, vocab_size: int = 4000):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "llama":
        specials = ["<unk>", "<s>", "</s>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
        # A small alphabet: rare Chinese characters fall back to bytes, as with Llama-2. Chosen
        # here, ties by character: the trainer's own limit_alphabet breaks ties in hash order, so
        # every process built a different tokenizer (and the tests a different tiny model).
        corpus = _corpus(data_dir)
        counts = Counter(ch for text in corpus for ch in text.replace(" ", "▁"))
        alphabet = sorted(counts, key=lambda ch: (-counts[ch], ch))[:600]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + byte_tokens,
                                      initial_alphabet=alphabet, limit_alphabet=len(alphabet),
                                      show_progress=False)
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                     unk_token="<unk>", add_bos_token=True)
        hf.padding_side = "left"
        return hf
    if kind == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(_corpus(data_dir), trainer)
        from zhtune.models.families import CHATML_TEMPLATE

        hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>")
        hf.chat_template = CHATML_TEMPLATE
        hf.padding_side = "left"
        return hf
    raise ValueError(f"unknown tiny tokenizer kind {kind!r}")


def build_tiny_model(kind: str, out_dir: str | Path, data_dir: Path | None = None,
                     hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random-initialised ``kind`` ("llama" or "qwen2") model with its tokenizer to a folder."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(kind, data_dir)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=2048)
    if kind == "llama":
        config = LlamaConfig(**common, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    else:
        config = Qwen2Config(**common, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
