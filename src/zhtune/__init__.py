"""zhtune: teach a Llama or Qwen model Chinese with LoRA, and show with evidence what it forgot."""
__version__ = "0.1.0"

# bitsandbytes (QLoRA, optional) warns at import on CPUs with avx512_bf16 that it could not download
# an optional kernel from the hub; zhtune never downloads code, and its own CPU kernel is used.
import logging as _logging  # noqa: E402

_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
