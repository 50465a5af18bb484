#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA GPU, from the repository root (at most ~8 minutes):
#
#   bash benchmarks/gpu.sh            # PYTHON=.venv/bin/python bash benchmarks/gpu.sh to pick the interpreter
#
# 1. nvidia-smi and torch's view of the GPU (stops here without CUDA: the tests would only skip);
# 2. the CUDA tests: python -m pytest -q -m cuda tests/test_cuda.py (finetune/extract/train/eval in
#    fp32, bf16, fp16; the collectives on a real NCCL group; torchrun; kill and resume on CUDA and
#    across CPU <-> CUDA; cache-vs-online equivalence);
# 3. the GPU variants of the benchmarks, written to benchmarks/results/*-cuda.{json,md} (naming the GPU):
#    benchmarks.speedup --device cuda (MiniLM and BERT-base-shaped teachers), benchmarks.extract_throughput
#    --device cuda (fp32, bf16).
#    benchmarks.loader measures the host side (opening, decoding, gathering); the device copies of
#    cache.loader(device="cuda") are covered by the CUDA tests, so it is not run here.
#
# Every step runs under `timeout`, against one overall budget; a failed or timed-out step is reported
# and the rest still run; the exit status is 1 when any step failed. With $OUT set (a folder), the
# log and the *-cuda results are copied there too.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUDGET=${HSK_GPU_BUDGET_S:-470}  # seconds for everything
LOG=$(mktemp -t hsk-gpu-XXXX.log)
failed=()

left() { echo $((BUDGET - SECONDS)); }

step() {  # step NAME CAP_SECONDS COMMAND...: run COMMAND for at most CAP (and what the budget has left)
    local name=$1 cap=$2
    shift 2
    local limit
    limit=$(left)
    ((limit > cap)) && limit=$cap
    if ((limit < 10)); then
        echo "== $name: skipped, the time budget is spent" | tee -a "$LOG"
        failed+=("$name (no time left)")
        return 0
    fi
    echo "== $name (at most ${limit}s): $*" | tee -a "$LOG"
    local status=0
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" || status=$?
    if ((status == 124 || status == 137)); then
        failed+=("$name (timed out after ${limit}s)")
    elif ((status != 0)); then
        failed+=("$name (exit $status)")
    fi
    echo "== $name: exit $status after ${SECONDS}s in all" | tee -a "$LOG"
}

finish() {
    if [[ -n ${OUT:-} ]]; then
        mkdir -p "$OUT"
        cp "$LOG" "$OUT/gpu.log"
        cp benchmarks/results/*-cuda.* "$OUT/" 2>/dev/null || true
    fi
    if ((${#failed[@]})); then
        printf 'gpu.sh: FAILED: %s\n' "${failed[@]}" | tee -a "$LOG"
        exit 1
    fi
    echo "gpu.sh: all steps passed in ${SECONDS}s" | tee -a "$LOG"
}
trap finish EXIT

step "nvidia-smi" 30 nvidia-smi
if ! "$PY" -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "gpus", torch.cuda.device_count()); sys.exit(0 if torch.cuda.is_available() else 1)' 2>&1 | tee -a "$LOG"; then
    failed+=("torch sees no CUDA GPU: the CUDA tests would only skip")
    exit 1
fi

workers=()
if "$PY" -c 'import xdist' 2>/dev/null; then
    workers=(-n 4)  # independent tests; the machine has the cores and the GPU the memory
fi
step "CUDA tests" 260 "$PY" -m pytest -q -m cuda tests/test_cuda.py "${workers[@]}"
step "speedup (cuda)" 150 "$PY" -m benchmarks.speedup --device cuda --steps 6 --repeats 3
step "extract_throughput fp32 (cuda)" 60 "$PY" -m benchmarks.extract_throughput --device cuda --precision fp32
step "extract_throughput bf16 (cuda)" 60 "$PY" -m benchmarks.extract_throughput --device cuda --precision bf16
