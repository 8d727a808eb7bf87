#!/usr/bin/env bash
# One prepared run for a GPU machine (H100/H200, PyTorch preinstalled), about 6-8 minutes:
#   1. correctness: kdgen's GPU training step against the float32 CPU step (gpu_check.py);
#   2. throughput.py on CUDA for resnet20, resnet56 and densenet_bc_100_12 (batch 128);
#   3. a full CIFAR-100-size epoch (50,000 images) of resnet56 kdgen-kd (target < 2 s);
#   4. a summary table of every JSON line written.
# Usage, from the repository root: bash benchmarks/gpu.sh
# Environment: OUT (where results go; default benchmarks/out), COMPILE=1 (add a
# torch.compile run of resnet20), PYTHON (default python).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
RESULTS="${OUT:-benchmarks/out}"
mkdir -p "$RESULTS"
JSON="$RESULTS/throughput.jsonl"
STATUS=0

# Dependencies that may be missing on the machine, carried as wheels.
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps .whl/*.whl
fi
"$PYTHON" -c "import kdgen" 2>/dev/null || "$PYTHON" -m pip install --quiet --no-deps -e .

# step LIMIT_S LOG COMMAND...: run one step under a time limit, keep its log, go on on failure.
step() {
    local limit=$1 log=$2
    shift 2
    echo "== $*"
    timeout "$limit" "$@" 2>&1 | tee "$RESULTS/$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "!! exit $rc (124: over its ${limit}s limit): $*"
        STATUS=1
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

step 150 gpu_check.txt "$PYTHON" benchmarks/gpu_check.py

for model in resnet20 resnet56 densenet_bc_100_12; do
    step 120 "throughput-$model.txt" "$PYTHON" benchmarks/throughput.py --device cuda \
        --model "$model" --batch 128 --train-images 10000 --warmup 1 --repeats 3 \
        --json-out "$JSON"
done

step 120 epoch-resnet56.txt "$PYTHON" benchmarks/throughput.py --device cuda \
    --model resnet56 --batch 128 --train-images 50000 --modes kdgen-ce,kdgen-kd \
    --warmup 1 --repeats 3 --json-out "$JSON"

if [ "${COMPILE:-0}" = 1 ]; then
    step 240 throughput-resnet20-compile.txt "$PYTHON" benchmarks/throughput.py --device cuda \
        --model resnet20 --batch 128 --train-images 10000 --modes bare,kdgen-ce,kdgen-kd \
        --warmup 1 --repeats 3 --compile --json-out "$JSON"
fi

echo
grep -h "correctness:\|host-device syncs" "$RESULTS/gpu_check.txt" || echo "correctness: no result"
if [ -s "$JSON" ]; then
    "$PYTHON" benchmarks/throughput.py --summary "$JSON" | tee "$RESULTS/summary.md"
fi
exit "$STATUS"
