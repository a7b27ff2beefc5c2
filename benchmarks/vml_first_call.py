"""Is the first training step the same in every fresh process? With and without zhtune's warm-up.

torch hands float cos, exp, sqrt... to MKL's vector math library, each intra-op thread its chunk.
MKL picks a function's kernel on its first call; if that call runs on several threads at once,
one thread can use a low-accuracy kernel for its whole chunk (pytorch/pytorch#188792). In
training, the first such call is the rotary embedding's cos in the first step.
``zhtune.models.cpu_math.resolve_math_kernels`` (called by ``load_model``) calls every such
function once on one element first.

Each trial is a fresh process that trains the tiny random Llama of the tests (LoRA, dropout 0.05,
bf16 autocast where the CPU has it, 2 threads) on a prepared BELLE sample and prints the first
step's loss, to 9 digits. The arm without the warm-up marks it as done, so ``load_model`` skips
it. The arms alternate, so both see the same machine. A trial whose loss is not the arm's most
common value counts as a deviation.

    python benchmarks/vml_first_call.py [--trials 40] [--threads 2]
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TRIAL = """
import os, sys, torch
torch.set_num_threads({threads})
from zhtune.models import cpu_math
cpu_math._resolved = not {warm}  # True: load_model skips the warm-up
import transformers
real_step = transformers.Trainer.training_step
def first_step(self, *args, **kwargs):
    loss = real_step(self, *args, **kwargs)
    print("FIRST_LOSS", f"{{loss.item():.9f}}", flush=True)
    os._exit(0)
transformers.Trainer.training_step = first_step
from zhtune.config import config_from_dict
from zhtune.train.lora import train_lora
train_lora(config_from_dict({config!r}), {out!r}, dataset_dir={dataset!r}, resume=False)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=40, help="fresh processes per arm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("ZHTUNE_DATA_DIR", "../shared/data"))
    args = ap.parse_args()

    from zhtune.config import config_from_dict
    from zhtune.data.sft import prepare_dataset
    from zhtune.testing import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="vml-first-call-"))
    model = build_tiny_model("llama", work / "tiny-llama", Path(args.data_dir))
    config = {"model": {"name_or_path": str(model)},
              "data": {"train": ["belle/dev1K.json"], "sample_size": 48, "max_length": 128, "val_size": 0.1},
              "lora": {"rank": 4, "alpha": 8, "dropout": 0.05},
              "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "report_to": []}}
    prepare_dataset(config_from_dict(config), work / "data", data_dir=args.data_dir)

    losses: dict[bool, list[str]] = {False: [], True: []}
    for i in range(args.trials):
        for warm in (False, True):
            code = TRIAL.format(threads=args.threads, warm=warm, config=config,
                                out=str(work / f"run-{warm}"), dataset=str(work / "data"))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            found = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("FIRST_LOSS")]
            if not found:
                sys.exit(f"trial failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
            losses[warm].append(found[0])
        print(f"\r{i + 1}/{args.trials}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for warm, label in ((False, "torch as is"), (True, "resolve_math_kernels() first")):
        counts = collections.Counter(losses[warm])
        common, n = counts.most_common(1)[0]
        others = ", ".join(f"{v} x{c}" for v, c in counts.items() if v != common) or "none"
        print(f"{label:30s} first-step loss {common} in {n} of {args.trials} processes; "
              f"deviations: {args.trials - n} ({others})")


if __name__ == "__main__":
    main()
