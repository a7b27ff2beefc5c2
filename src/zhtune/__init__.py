"""zhtune: teach a Llama or Qwen model Chinese with LoRA, and show with evidence what it forgot."""
__version__ = "0.1.0"
