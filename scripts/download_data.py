"""Original: python scripts/download_data.py --output_dir data --belle_sample_size 50000
Same as: zhtune data download --output-dir data --belle-sample-size 50000"""
from _original import run

if __name__ == "__main__":
    run(["data", "download"])
