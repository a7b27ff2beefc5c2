"""Original: python scripts/train_qwen_lora.py --model_path MODEL --dataset_path processed_data/train_dataset
          --output_dir results/lora --lora_rank 16 [--num_epochs 3 --batch_size 4
          --gradient_accumulation_steps 8 --learning_rate 1e-4]
Same as: zhtune train --model MODEL --dataset processed_data/train_dataset --output-dir results/lora lora.rank=16"""
import sys

from _original import run

if __name__ == "__main__":
    run(["train"], sys.argv[1:])
