#!/usr/bin/env bash
# One-command GPU check: `make gpu-check`, or `bash benchmarks/gpu_check.sh [REPORT.md]`.
#
# For a GPU machine whose python (PYTHON, default python3) already has torch, mpi4py, h5py and pytest,
# with an mpiexec on PATH; needs no internet. Installs this checkout with `pip install --no-deps -e .`,
# then, in one go, writes one dated markdown report (default benchmarks/results/DATE-gpu_check.md):
#   1. the tests marked `gpu` (pinned staging, CUDA sparse exchange, bf16/channels_last, device-resident
#      data, the Eq. 3 memory model against torch.cuda.max_memory_allocated, bucketed exchange on CUDA);
#   2. 4-rank jobs sharing the GPU, one per sync mode, against the same jobs on CPU (gpu_jobs.py);
#   3. bench_step (1 rank; 2 ranks against DDP) and bench_topk rows on the GPU.
# Exit status: 0 when every part passed, 1 otherwise (the report says which). Budget: < 15 min on one H100.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MPIEXEC=${MPIEXEC:-mpiexec}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
day=$(date +%F)
report=${1:-benchmarks/results/$day-gpu_check.md}
work=$(mktemp -d)
mkdir -p "$(dirname "$report")"

$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu-check: no CUDA device visible to $PY (run it on a GPU machine)"; exit 1; }
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$work/pip.log" 2>&1 \
  || { cat "$work/pip.log"; echo "gpu-check: pip install --no-deps -e . failed"; exit 1; }

failed=()
# part NAME TIMEOUT_S CMD...: run CMD, append its output (as a code block) to the report
part() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name" >&2
  timeout "$limit" "$@" >"$work/out" 2>&1
  local rc=$?
  tail -n 60 "$work/out" >&2
  { echo; echo "## $name"; echo; echo "Command: \`$*\` (exit $rc, $((SECONDS - t0)) s)"; echo
    echo '```'; tail -n 80 "$work/out"; echo '```'; } >>"$report"
  [ $rc -eq 0 ] || failed+=("$name")
}

{
  echo "# GPU check ($day)"
  echo
  echo "Machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)," \
       "$(nproc) CPU cores, $($MPIEXEC --version 2>&1 | head -n 1)."
  echo
  echo "Software: $($PY -c 'import sys, torch, mpi4py, h5py; print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), mpi4py {mpi4py.__version__}, h5py {h5py.__version__}")')."
  echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
} >"$report"

part "Tests marked gpu" 420 $PY -m pytest tests -m gpu -q -p no:cacheprovider -rs
part "4-rank jobs on one GPU against CPU" 420 $PY benchmarks/gpu_jobs.py "$work/jobs" --markdown "$work/jobs.md"
[ -f "$work/jobs.md" ] && { echo; cat "$work/jobs.md"; } >>"$report"
part "bench_step, 1 rank, fp32" 240 $PY benchmarks/bench_step.py --device cuda --model cnn --model resnet18 \
  --model resnet50
part "bench_step, 1 rank, bf16 + channels_last" 240 $PY benchmarks/bench_step.py --device cuda --model resnet18 \
  --model resnet50 --precision bf16 --set train.channels_last=true
part "bench_step, 2 ranks sharing the GPU, against DDP" 240 $MPIEXEC -n 2 --oversubscribe $PY benchmarks/bench_step.py \
  --device cuda --model resnet18 --bucket-mb 4
part "bench_topk (CPU and GPU rows)" 240 $MPIEXEC -n 2 --oversubscribe $PY benchmarks/bench_topk.py --sizes 1M,11M

{ echo; echo "## Result"; echo
  if [ ${#failed[@]} -eq 0 ]; then echo "Every part passed."; else (IFS=";"; echo "Failed: ${failed[*]}."); fi; } >>"$report"
echo "gpu-check: report written to $report" >&2
[ ${#failed[@]} -eq 0 ]
