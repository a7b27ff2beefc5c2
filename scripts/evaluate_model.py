"""Original: python scripts/evaluate_model.py --base_model_path MODEL --lora_model_path results/lora
          --results_dir evaluation_results/lora [--ceval_path DIR --mmlu_path DIR]
Same as: zhtune eval --model MODEL --adapter results/lora --output-dir evaluation_results/lora,
then, as the original did ("analyse catastrophic forgetting"), when the baseline results sit beside
it (evaluation_results/baseline, or --baseline_dir), zhtune compare + zhtune report into
RESULTS_DIR/forgetting."""
import sys

from _evaluate_tuned import evaluate_tuned

if __name__ == "__main__":
    evaluate_tuned(sys.argv[1:])
