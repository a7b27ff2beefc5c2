#!/usr/bin/env bash
# GPU smoke check, no network: the tiny random models (zhtune.testing, nothing downloaded) through
# bf16 training, bf16 evaluation, the evaluator's out-of-memory halving and `zhtune sweep --devices`.
# Prints one PASS/FAIL line per check; exit status 0 only if every check passed.
#
#   ZHTUNE_DATA_DIR=../shared/data bash scripts/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh     # the same checks on the CPU (tests the script)
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
logging.getLogger('zhtune.eval.choice').addHandler(type('H', (logging.Handler,), {'emit': lambda s, r: warnings.append(r.getMessage())})())
got = [p.pred for p in score_choice(model, tok, questions, shots=2, batch_tokens=2000, progress=False)]
assert raised, 'no forward pass had more than one question'
assert any('out of memory' in w for w in warnings), warnings
assert got == expected, (got, expected)
print('halved after an OOM at', raised[0], 'questions; same predictions')"

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

[ $failed = 0 ] && echo "gpu_check: all passed" || echo "gpu_check: some checks FAILED (logs in $WORK)"
exit $failed
