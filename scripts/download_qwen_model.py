"""Original: python scripts/download_qwen_model.py --model_name_or_path MODEL --output_dir models
Same as: zhtune models pull MODEL --output-dir models (hub, modelscope:, .gguf or builtin:)"""
from _original import run

if __name__ == "__main__":
    run(["models", "pull"])
