"""A Hugging Face tokenizer as GGUF metadata, in llama.cpp's conventions (convert_hf_to_gguf.py).

Three tokenizer kinds, as llama.cpp's converter tells them apart:
- ``tokenizer.model`` (SentencePiece, Llama-2): ``tokenizer.ggml.model = llama``, pieces with their
  scores and types (gguf's ``SentencePieceVocab``);
- a ``tokenizer.json`` BPE with byte fallback (SentencePiece converted to tokenizers, as TinyLlama
  and the tests' tiny Llama): ``llama`` too, plus the merges;
- byte-level BPE (Qwen2, SmolLM2, Llama-3): ``gpt2``, tokens in the byte-level spelling, merges, and
  ``tokenizer.ggml.pre`` naming the pre-tokenizer's split so llama.cpp splits text the same way.
Special token ids, add-BOS/EOS flags and the chat template come from gguf's ``SpecialVocab``.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The pre-tokenizer splits llama.cpp knows by name (llama-vocab.cpp), as transformers writes them.
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _pre_tokenizers(node: dict | None) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [p for child in node.get("pretokenizers", []) for p in _pre_tokenizers(child)]
    return [node]


def pre_tokenizer_name(tokenizer_json: dict, architecture: str) -> str:
    """``tokenizer.ggml.pre`` for a byte-level BPE: which split its merges were learned on.

    llama.cpp's converter hashes the tokenization of a test string; reading the split itself gives
    the same answer for the tokenizers zhtune supports, and "default" (GPT-2's split) otherwise."""
    parts = _pre_tokenizers(tokenizer_json.get("pre_tokenizer"))
    regexes = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    if QWEN2_SPLIT in regexes:
        return "qwen2"
    if LLAMA3_SPLIT in regexes:
        return "llama-bpe"
    if any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts):
        return "smollm"  # SmolLM/SmolLM2: GPT-2's split with every digit apart
    if architecture == "qwen2":
        return "qwen2"
    if not regexes and any(p.get("type") == "ByteLevel" for p in parts):
        return "gpt-2"
    log.warning("unrecognised pre-tokenizer; writing tokenizer.ggml.pre = default")
    return "default"


def _looks_special(token: str) -> bool:
    # llama.cpp's does_token_look_special: <|...|>, <s>-like tags and [INST]-like brackets
    return bool(re.fullmatch(r"<\|.*\|>|<[/a-zA-Z_]+>|\[[A-Z_/]+\]", token))


def _byte_level_vocab(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens and their types as convert_hf_to_gguf's get_vocab_base writes them: ids without a
    token become ``[PAD<id>]`` (unused), added special tokens are control tokens, other added
    tokens user-defined, written as the text they stand for."""
    from gguf import TokenType

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            special = decoder[i].special if i in decoder else False
            if special or _looks_special(token):
                types.append(TokenType.CONTROL)
            else:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
                types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def _llama_hf_vocab(folder: Path, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A BPE with byte fallback (SentencePiece-style). Scores: llama.cpp's SentencePiece tokenizer
    merges by score, and a converted SentencePiece BPE numbers its pieces in merge order, so
    ``-id`` is the score SentencePiece would give (gguf's LlamaHfVocab writes -1000 for all)."""
    from gguf import TokenType
    from gguf.vocab import LlamaHfVocab

    vocab = LlamaHfVocab(folder)
    tokens, scores, types = [], [], []
    for i, (text, _score, kind) in enumerate(vocab.all_tokens()):
        tokens.append(text.decode("utf-8"))
        scores.append(-float(i) if kind == TokenType.NORMAL else -1000.0)
        types.append(kind)
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(TokenType.UNUSED)
    return tokens, scores, types


def add_tokenizer(writer: Any, tokenizer: Any, source_dir: Path, work_dir: Path, architecture: str,
                  n_vocab: int, chat_template: str | None) -> str:
    """Write the tokenizer metadata; returns ``tokenizer.ggml.model`` (``llama`` or ``gpt2``).

    ``work_dir``: an empty folder to save the tokenizer in, so that every source (a model folder, an
    adapter folder) is read the same way; ``source_dir`` is searched for a ``tokenizer.model``."""
    from gguf import SpecialVocab, TokenType
    from gguf.vocab import SentencePieceVocab

    tokenizer.save_pretrained(str(work_dir))
    tok_json = json.loads((work_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok_json.get("model", {})
    if (Path(source_dir) / "tokenizer.model").exists():
        kind = "llama"
        spm = SentencePieceVocab(Path(source_dir))
        rows = list(spm.all_tokens())
        tokens = [t.decode("utf-8") for t, _, _ in rows]
        scores = [s for _, s, _ in rows]
        types = [k for _, _, k in rows]
        for i in range(len(tokens), n_vocab):
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(TokenType.UNUSED)
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        kind = "llama"
        tokens, scores, types = _llama_hf_vocab(work_dir, n_vocab)
    elif model.get("type") == "BPE":
        kind = "gpt2"
        tokens, types = _byte_level_vocab(tokenizer, n_vocab)
        scores = None
        writer.add_tokenizer_pre(pre_tokenizer_name(tok_json, architecture))
    else:
        from zhtune.errors import UserError
        raise UserError(f"{source_dir}: a {model.get('type')!r} tokenizer cannot be written as GGUF "
                        "(supported: SentencePiece, BPE with byte fallback, byte-level BPE)")
    writer.add_tokenizer_model(kind)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types([int(t) for t in types])
    special = SpecialVocab(work_dir, load_merges=True, n_vocab=len(tokens))
    special.chat_template = chat_template
    # Whether BOS/EOS are added is what the tokenizer does, not what a config file may or may not
    # say (transformers 5 does not always write add_bos_token): llama.cpp then encodes the same way.
    special.add_special_token = adds_special_tokens(tokenizer)
    special.add_to_gguf(writer, quiet=True)
    if kind == "llama":
        writer.add_add_space_prefix(_adds_space_prefix(tokenizer))
    else:
        writer.add_add_space_prefix(False)
    return kind


def adds_special_tokens(tokenizer: Any) -> dict[str, bool]:
    ids = tokenizer("a").input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return {"bos": bos is not None and bool(ids) and ids[0] == bos,
            "eos": eos is not None and bool(ids) and ids[-1] == eos}


def _adds_space_prefix(tokenizer: Any) -> bool:
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False).input_ids)
    return bool(pieces) and pieces[0].startswith("\u2581")
