#!/usr/bin/env bash
# The paper's Fig. 7/8 at GPU scale, as one command on a GPU machine (one H200 or alike):
#   bash benchmarks/gpu_fidelity.sh                      # report: benchmarks/results/DATE-gpu_fidelity.md
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_fidelity.sh      # the same plumbing on CPU, tiny sizes (~80 s on 2 cores)
#
# The grid is jobs/scaling/resnet18_gpu/*.toml: ResNet-18 (BatchNorm) on fashion_mnist, 1 rank, BSP,
# global batch 1024, plain SGD lr 0.05, equal iterations (600 steps), bf16 + channels_last. The step
# scaling U(X) of Eq. 6 multiplies the gradient by X whenever the gradient change delta of Eq. 8 is >=
# the threshold: X in {1, 2, 4, 8, 16} at threshold 0.5, X in {8, 16} at 0.8, against the small batch
# B = 32 and constant lr x 2 / x 4 without transform. Parts, each under its own time limit:
#   machine   GPU, torch, MPI (benchmarks/gpu_env.py via gpu_lib.sh's machine_part; installs carried MPI
#             wheels when needed; without CUDA in torch the check ends there)
#   wave1     X = 1, B = 32, X = 2 / 4 / 8 at t = 0.5            (gpu_fidelity_runs.py, runs share the GPU)
#   wave2     X = 8 / 16 at t = 0.8, X = 16 at t = 0.5, lr x 2 / x 4
#   analysis  table, the paper's orderings (held / not held), lbfl analyze and its charts
#             (gpu_fidelity_report.py; charts in the folder beside the report, at most 6 PNGs)
# The report is rewritten after every part, so a kill keeps every finished part; raw JSON rows (one per
# run, one per ordering, one per part) go beside it as .jsonl. Run directories stay in FIDELITY_RUNS, and
# a run already finished there with the same resolved config is skipped: running the command again (or
# with GPU_PARTS=wave2,analysis) continues the grid.
#
# Time budget: the part limits (50 + 177 + 177 + 60 s, plus 2 s kill grace each) add up to 472 s <= 480 s,
# checked before anything runs. Expected on an H200: ~15-25 ms a step at B = 1024 in bf16 (~10-15 s of
# GPU time a run), ~5 ms at B = 32, 10-20 s process start-up hidden by running 3 at once: ~60-90 s a wave.
#
# Environment (defaults in brackets):
#   GPU_REPORT         report path, ending in .md [benchmarks/results/DATE-gpu_fidelity.md]
#   GPU_CHECK_DRY      1: CPU dry run with tiny sizes (CUDA hidden, fp32, 4 steps, 8x8 images, the small
#                      BatchNorm CNN bncnn in place of ResNet-18: 4 s of CPU a run, not 9) [0]
#   GPU_PARTS          comma-separated subset of machine,wave1,wave2,analysis [all]
#   PYTHON             the interpreter (its folder goes first on PATH, for a venv's mpiexec) [python3]
#   GPU_CARRY          the folder carried to the machine (fashion-mnist/, wheels/) [benchmarks/gpu_carry]
#   FMNIST_ROOT        the Fashion-MNIST IDX files [GPU_CARRY/fashion-mnist]; dry run: where the tiny
#                      copy comes from [FMNIST_ROOT, GPU_CARRY/fashion-mnist, /usr/share/datasets/fashion-mnist,
#                      else random images]
#   FIDELITY_STEPS     train.steps of every run [600; dry run 4]
#   FIDELITY_PARALLEL  runs at once on the device [3]
#   FIDELITY_RUNS      run directories (and run logs) [runs/gpu_fidelity; dry run runs/gpu_fidelity_dry]
# Exit status: 0 when every part passed, 1 when one failed, 2 on bad input (one line on stderr).
set -uo pipefail
cd "$(dirname "$0")/.."

NAME=gpu_fidelity
bad() { echo "$NAME: $*" >&2; exit 2; }
py_exe=$(command -v "${PYTHON:-python3}") || bad "PYTHON=${PYTHON:-python3}: no such interpreter"
export PATH="$(dirname "$py_exe"):$PATH"   # a venv's mpiexec and lbfl come with its python

dry=${GPU_CHECK_DRY:-0}
posint() { [[ $2 =~ ^[1-9][0-9]{0,8}$ ]] || bad "$1=$2: must be a positive integer"; }
[[ -n ${FIDELITY_STEPS:-} ]] && posint FIDELITY_STEPS "$FIDELITY_STEPS"
[[ -n ${FIDELITY_PARALLEL:-} ]] && posint FIDELITY_PARALLEL "$FIDELITY_PARALLEL"
PARALLEL=${FIDELITY_PARALLEL:-3}
RUNS=${FIDELITY_RUNS:-runs/gpu_fidelity$([[ $dry == 1 ]] && echo _dry)}
[[ $RUNS =~ [[:space:]] ]] && bad "FIDELITY_RUNS='$RUNS': must not contain whitespace"
if [[ $dry == 0 ]]; then   # any other value: gpu_begin refuses it
  DATA=${FMNIST_ROOT:-${GPU_CARRY:-benchmarks/gpu_carry}/fashion-mnist}
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [[ -f $DATA/$f.gz || -f $DATA/$f ]] || bad "data root $DATA has no $f.gz (nor $f): copy the four" \
      "Fashion-MNIST IDX files there, or set FMNIST_ROOT to a folder holding them"
  done
fi

JOBS=jobs/scaling/resnet18_gpu
WAVE1=(large_x1 small_b32 large_t05_x04 large_t05_x02 large_t05_x08)   # in launch order, most valuable first
WAVE2=(large_t08_x08 large_t08_x16 large_t05_x16 large_lr_x02 large_lr_x04)
ALL=(large_x1 large_t05_x02 large_t05_x04 large_t05_x08 large_t05_x16 large_t08_x08 large_t08_x16 small_b32
     large_lr_x02 large_lr_x04)
configs() { local n; for n in "$@"; do printf '%s\n' "$JOBS/$n.toml"; done; }

PARTS=(machine wave1 wave2 analysis)
declare -A LIMIT=([machine]=50 [wave1]=177 [wave2]=177 [analysis]=60)
declare -A TITLE=([machine]="Machine: GPU, torch, MPI (gpu_env.py)"
                  [wave1]="Wave 1: X = 1, B = 32, X = 2 / 4 / 8 at t = 0.5"
                  [wave2]="Wave 2: X = 8 / 16 at t = 0.8, X = 16 at t = 0.5, lr x 2 / x 4"
                  [analysis]="Fig. 7/8 orderings and charts (lbfl analyze)")
REPORT_TITLE="Fig. 7/8 at GPU scale: ResNet-18 on fashion_mnist, B = 1024, step scaling U(X) (Eq. 6-8)"
source benchmarks/gpu_lib.sh
gpu_begin "$NAME"

SETS=()
[[ -n ${FIDELITY_STEPS:-} ]] && SETS+=(--set "train.steps=$FIDELITY_STEPS")
if [[ $DRY == 1 ]]; then
  export CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  DATA=$RUNS/fashion-mnist-tiny
  "$PY" benchmarks/gpu_fidelity_data.py "$DATA" --from "${FMNIST_ROOT:-}" --from "$CARRY/fashion-mnist" \
    --from /usr/share/datasets/fashion-mnist >&2 || echo "$NAME: the tiny data copy failed; the runs will fail" >&2
  SETS=(--set "train.steps=${FIDELITY_STEPS:-4}" --set model.name=bncnn --set train.batch_size=16 --set train.eval_every=2
        --set train.eval_batch=128 --set train.precision=fp32 --set train.channels_last=false
        --set-run small_b32 train.batch_size=4)
fi
GRID=(--out "$RUNS" --data-root "$DATA" "${SETS[@]}")

REPORT_INTRO=$WORK/intro.md
cat > "$REPORT_INTRO" <<EOF
Command: \`$([[ $DRY == 1 ]] && echo "GPU_CHECK_DRY=1 ")bash benchmarks/gpu_fidelity.sh\`; grid \`$JOBS/*.toml\`
(${#ALL[@]} runs, $PARALLEL at once), run directories in \`$RUNS/\`, data \`$DATA\`$([[ ${#SETS[@]} -gt 0 ]] && echo "; overrides \`${SETS[*]}\`").
One seed: differences below ~1 point of accuracy are noise.
EOF

machine_part   # gpu_env.py: probe, carried MPI wheels when needed, their exports; stops here if torch sees no GPU

mapfile -t W1 < <(configs "${WAVE1[@]}")
mapfile -t W2 < <(configs "${WAVE2[@]}")
mapfile -t WA < <(configs "${ALL[@]}")
part wave1 "$PY" benchmarks/gpu_fidelity_runs.py "${GRID[@]}" --parallel "$PARALLEL" --json "$ROWS" --part wave1 \
  --markdown "$WORK/wave1.md" "${W1[@]}"
part wave2 "$PY" benchmarks/gpu_fidelity_runs.py "${GRID[@]}" --parallel "$PARALLEL" --json "$ROWS" --part wave2 \
  --markdown "$WORK/wave2.md" "${W2[@]}"
part analysis "$PY" benchmarks/gpu_fidelity_report.py "${GRID[@]}" --json "$ROWS" --part analysis \
  --markdown "$WORK/analysis.md" --plots "${REPORT%.md}" --max-png 6 "${WA[@]}"
gpu_end
