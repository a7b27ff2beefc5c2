"""Original: python scripts/preprocess_data_qwen.py --data_dir data --output_dir processed_data --model_name_or_path MODEL
Same as: zhtune prepare --data-dir data --output-dir processed_data/train_dataset --model MODEL
(the family's chat format is chosen from the model: ChatML for Qwen, the tokenizer's template or a
plain instruction template for Llama; a dataset prepared for one tokenizer is refused by another)."""
import sys

from _preprocess import preprocess

if __name__ == "__main__":
    preprocess(sys.argv[1:])
