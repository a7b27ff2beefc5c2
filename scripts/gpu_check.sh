#!/usr/bin/env bash
# The GPU acceptance run (docs/gpu-memory.md), no network, about 6-8 minutes on one H200:
#   * the tiny random models (zhtune.testing, nothing downloaded) through bf16 training, bf16
#     evaluation, bf16-vs-fp32 agreement of evaluation, the evaluator's out-of-memory halving and
#     `zhtune sweep --devices`;
#   * models random-initialised at the shapes of Llama-2-7B and Qwen2.5-7B (benchmarks/gpu_acceptance.py):
#     LoRA r16 on all linears, bf16 with gradient checkpointing off and on, QLoRA nf4; per case
#     tokens/s, peak GPU memory and MFU against the GPU's bf16 peak.
# Prints one PASS/FAIL line per check; exit status 0 only if every check passed.
#
#   ZHTUNE_DATA_DIR=../shared/data bash scripts/gpu_check.sh
#   GPU_CHECK_WHEELS=/path/to/wheels bash scripts/gpu_check.sh   # bitsandbytes (and flash-attn) from local wheels
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh     # the same checks on the CPU, tiny shapes (tests the script)
# torch, transformers, peft and accelerate must be installed; anything else missing is installed
# from GPU_CHECK_WHEELS with pip --no-index (no network is used).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ZHTUNE=("$PY" -m zhtune)
DATA=${ZHTUNE_DATA_DIR:-../shared/data}
DEV=${GPU_CHECK_DEVICE:-cuda:0}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ZHTUNE_DATA_DIR="$DATA"

if [[ $DEV == cuda* ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "FAIL gpu_check: no CUDA device"
    exit 2
fi
[ -d "$DATA/ceval" ] || { echo "FAIL gpu_check: no data folder at $DATA (set ZHTUNE_DATA_DIR)"; exit 2; }
WORK=$(mktemp -d /tmp/zhtune-gpu-check.XXXXXX)
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then  # offline: the packages zhtune needs beyond the preinstalled four
    "$PY" -m pip install -q --no-index --find-links "$GPU_CHECK_WHEELS" -e . 'bitsandbytes>=0.46' \
        >"$WORK/pip.log" 2>&1 || { echo "FAIL gpu_check: pip from $GPU_CHECK_WHEELS (log: $WORK/pip.log)"; exit 2; }
    "$PY" -m pip install -q --no-index --find-links "$GPU_CHECK_WHEELS" flash-attn >>"$WORK/pip.log" 2>&1 ||
        echo "note: no flash-attn wheel in $GPU_CHECK_WHEELS; packed attention uses SDPA per sample"
fi

failed=0
check() {  # check NAME COMMAND...: run it, keep its log, print PASS or FAIL and the log's tail
    local name=$1; shift
    if "$@" >"$WORK/$name.log" 2>&1; then
        echo "PASS $name"
    else
        echo "FAIL $name (log: $WORK/$name.log)"; tail -n 5 "$WORK/$name.log" | sed 's/^/    /'
        failed=1
    fi
}

check tiny-models "$PY" -c "
from pathlib import Path
from zhtune.testing import build_tiny_model
for kind in ('llama', 'qwen2'):
    build_tiny_model(kind, Path('$WORK') / f'tiny-{kind}', Path('$DATA'))"

check train-bf16 bash -c "
${ZHTUNE[*]} train --model $WORK/tiny-qwen2 --data-dir $DATA --output-dir $WORK/train --max-steps 6 \
    --batch-size 4 model.device=$DEV train.precision=bf16 data.sample_size=60 data.max_length=128 train.report_to=[] &&
$PY -c \"
import json, math
m = json.load(open('$WORK/train/adapter/zhtune_adapter.json'))['metrics']
assert m['precision'] == 'bf16' and m['device'].startswith('${DEV%%:*}'), m
assert m['steps'] == 6 and math.isfinite(m['train_loss']), m\""

# bf16 evaluation on the GPU; the CPU refuses it (fp32 only there, README "CPU precision"), so the
# script's CPU mode evaluates in float32.
EVAL_DTYPE=bfloat16
[[ $DEV == cpu ]] && EVAL_DTYPE=float32
check eval-bf16 bash -c "
${ZHTUNE[*]} eval --model $WORK/tiny-qwen2 --adapter $WORK/train/adapter --benchmarks ceval,mmlu,gsm8k \
    --limit 2 --shots 1 --dtype $EVAL_DTYPE --device $DEV --max-new-tokens 16 --no-progress \
    --output-dir $WORK/eval && ls $WORK/eval/*/summary.json"

check oom-halving "$PY" -c "
import logging, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from zhtune.data.benchmarks import load_benchmark
from zhtune.eval.choice import score_choice
path = '$WORK/tiny-llama'
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to('$DEV').eval()
tok = AutoTokenizer.from_pretrained(path)
questions = load_benchmark('mmlu', 'test', '$DATA')[:12]
expected = [p.pred for p in score_choice(model, tok, questions, shots=2, batch_tokens=2000, progress=False)]
raised = []
def oom_once(module, args, kwargs):  # the first multi-question forward pass runs out of memory
    ids = kwargs.get('input_ids', args[0] if args else None)
    if not raised and ids is not None and ids.shape[0] > 1:
        raised.append(ids.shape[0])
        raise torch.OutOfMemoryError('injected by gpu_check.sh')
hook = model.model.register_forward_pre_hook(oom_once, with_kwargs=True)
warnings = []
logging.getLogger('zhtune.eval').addHandler(type('H', (logging.Handler,), {'emit': lambda s, r: warnings.append(r.getMessage())})())
got = [p.pred for p in score_choice(model, tok, questions, shots=2, batch_tokens=2000, progress=False)]
assert raised, 'no forward pass had more than one question'
assert any('out of memory' in w for w in warnings), warnings
assert got == expected, (got, expected)
print('halved after an OOM at', raised[0], 'questions; same predictions')"

check eval-bf16-vs-fp32 "$PY" -c "
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from zhtune.data.benchmarks import load_benchmark
from zhtune.eval.choice import score_choice
path = '$WORK/tiny-qwen2'
tok = AutoTokenizer.from_pretrained(path)
questions = load_benchmark('ceval', 'val', '$DATA')[:40]
preds = {}
for dtype in (torch.float32, torch.bfloat16):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to('$DEV').eval()
    preds[dtype] = score_choice(model, tok, questions, shots=1, batch_tokens=4000, progress=False)
# A random tiny model has many near-ties: bf16 must agree wherever fp32's top two differ by > 0.02.
clear = [(a, b) for a, b in zip(preds[torch.float32], preds[torch.bfloat16])
         if sorted(a.probs.values())[-1] - sorted(a.probs.values())[-2] > 0.02]
agree = sum(a.pred == b.pred for a, b in zip(preds[torch.float32], preds[torch.bfloat16]))
diff = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(preds[torch.float32], preds[torch.bfloat16]) for k in a.probs)
print(f'bf16 agrees with fp32 on {agree}/{len(questions)} questions, on {sum(a.pred == b.pred for a, b in clear)}/{len(clear)} clear ones; max prob diff {diff:.4f}')
assert all(a.pred == b.pred for a, b in clear) and diff < 0.05"
tail -n 1 "$WORK/eval-bf16-vs-fp32.log" | sed 's/^/    /'

cat >"$WORK/sweep.yaml" <<EOF
name: gpu-check
model: {name_or_path: $WORK/tiny-qwen2}
data: {train: [belle/dev1K.json], sample_size: 40, max_length: 128}
train: {max_steps: 2, batch_size: 4, save_steps: 10, report_to: []}
eval: {benchmarks: [ceval, mmlu], shots: 0, limit: 1, batch_size: 4, perplexity_chars: 300}
sweep: {grid: {lora.rank: [4, 8]}}
output: {dir: $WORK/sweep}
EOF
check sweep-devices bash -c "
${ZHTUNE[*]} sweep $WORK/sweep.yaml --devices $DEV --data-dir $DATA &&
$PY -c \"
import csv, json, pathlib
rows = list(csv.DictReader(open('$WORK/sweep/results.csv')))
assert len(rows) == 2, rows
metas = list(pathlib.Path('$WORK/sweep').rglob('zhtune_adapter.json'))
assert len(metas) == 2 and all(json.load(open(m))['metrics']['device'].startswith('${DEV%%:*}') for m in metas), metas\""

# The acceptance cases print their own PASS/FAIL lines with tokens/s, peak memory and MFU.
SHAPES=7b; ACC_ARGS=()
[[ $DEV == cpu ]] && { SHAPES=tiny; ACC_ARGS=(--rows 2 --length 128 --warmup 1 --steps 2); }
"$PY" benchmarks/gpu_acceptance.py --tokenizer-from "$WORK/tiny-llama" --work "$WORK/acceptance" \
    --device "$DEV" --shapes $SHAPES "${ACC_ARGS[@]}" 2>"$WORK/acceptance.log" | tee "$WORK/acceptance.out"
grep -q '^FAIL' "$WORK/acceptance.out" && failed=1
[ "$(grep -c '^PASS' "$WORK/acceptance.out")" = 6 ] || { echo "FAIL acceptance (log: $WORK/acceptance.log)"; failed=1; }

[ $failed = 0 ] && echo "gpu_check: all passed" || echo "gpu_check: some checks FAILED (logs in $WORK)"
exit $failed
