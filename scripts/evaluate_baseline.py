"""Original: python scripts/evaluate_baseline.py --model_path MODEL --results_dir evaluation_results/baseline
          [--ceval_path DIR --mmlu_path DIR]
Same as: zhtune eval --model MODEL --output-dir evaluation_results/baseline"""
import sys

from _original import run, with_data_dir

if __name__ == "__main__":
    run(["eval"], with_data_dir(sys.argv[1:]))
