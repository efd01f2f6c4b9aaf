#!/usr/bin/env bash
# A protocol spec's grid on a GPU machine, within a short slot (jobs/protocol/run.py, several runs
# sharing the GPU), its finished runs packed into one file that comes back:
#   PROTOCOL_SPEC=jobs/protocol/gap.toml GPU_REPORT=$OUT/gap_gpu.md bash benchmarks/gpu_protocol.sh
#   GPU_CHECK_DRY=1 PROTOCOL_SPEC=... bash benchmarks/gpu_protocol.sh      # the same plumbing on CPU
#
# Parts, each under its own time limit (gpu_lib.sh; the sum is checked to be <= 480 s before anything runs):
#   machine  GPU, torch, MPI (gpu_env.py; installs the carried MPI wheels when needed)
#   tune     --stage tune, PROTOCOL_PARALLEL runs at once
#   final    --stage final, likewise, under FINAL_S plus what the tune part left of TUNE_S (it needs
#            every grid finished: a grid cut short by its limit leaves the final part failing with
#            "its grid is not finished")
#   pack     every run directory of the spec without its checkpoints, as PROTOCOL_RUNS/<name>.tgz
#            beside the report (REPORT without .md, plus -runs.tgz)
# Finished runs (summary.json) are skipped, so running this again, here or on the next GPU machine
# with the unpacked runs in place, continues the grid; a run killed by a part's limit starts again.
# Runs on the GPU are not mixed with runs on a CPU in one comparison: unpack them into their own
# --runs folder.
#
# Environment: PROTOCOL_SPEC (required), PROTOCOL_PARALLEL [4], PROTOCOL_RUNS [runs/protocol_gpu],
# PROTOCOL_SET (more overrides for every run; data.root is set to the carried Fashion-MNIST when the
# spec reads fashion_mnist), TUNE_S [200], FINAL_S [220], and those of gpu_lib.sh (GPU_REPORT,
# GPU_CHECK_DRY, GPU_PARTS, PYTHON, GPU_CARRY). Dry run: CUDA hidden, and PROTOCOL_SET as given
# (tests use a tiny spec). Exit status: 0 when every part passed, 1 when one failed, 2 on bad input.
set -uo pipefail
cd "$(dirname "$0")/.."

NAME=gpu_protocol
bad() { echo "$NAME: $*" >&2; exit 2; }
[[ -n ${PROTOCOL_SPEC:-} ]] || bad "PROTOCOL_SPEC is not set: name a spec, e.g. jobs/protocol/gap.toml"
[[ -f $PROTOCOL_SPEC ]] || bad "PROTOCOL_SPEC=$PROTOCOL_SPEC: no such file"
py_exe=$(command -v "${PYTHON:-python3}") || bad "PYTHON=${PYTHON:-python3}: no such interpreter"
export PATH="$(dirname "$py_exe"):$PATH"
posint() { [[ $2 =~ ^[1-9][0-9]{0,8}$ ]] || bad "$1=$2: must be a positive integer"; }
PARALLEL=${PROTOCOL_PARALLEL:-4}; posint PROTOCOL_PARALLEL "$PARALLEL"
TUNE_S=${TUNE_S:-200}; posint TUNE_S "$TUNE_S"
FINAL_S=${FINAL_S:-220}; posint FINAL_S "$FINAL_S"
RUNS=${PROTOCOL_RUNS:-runs/protocol_gpu}
[[ $RUNS =~ [[:space:]] ]] && bad "PROTOCOL_RUNS='$RUNS': must not contain whitespace"

PARTS=(machine tune final pack)
declare -A LIMIT=([machine]=40 [tune]=$TUNE_S [final]=$FINAL_S [pack]=10)
declare -A TITLE=([machine]="Machine: GPU, torch, MPI (gpu_env.py)" [tune]="Grid (--stage tune)"
                  [final]="Chosen settings on the paired seeds (--stage final)" [pack]="Pack the finished runs")
REPORT_TITLE="Protocol $PROTOCOL_SPEC on the GPU"
source benchmarks/gpu_lib.sh
gpu_begin "$NAME"

name=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["protocol"]["name"])' \
  "$PROTOCOL_SPEC") || bad "PROTOCOL_SPEC=$PROTOCOL_SPEC: no protocol.name"
if [[ $DRY == 1 ]]; then
  export CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else   # the base config's dataset, as the runs will read it
  data=$("$PY" -c 'import sys, tomllib
from lbfl_mpi.config import load_config
print(load_config(tomllib.load(open(sys.argv[1], "rb"))["protocol"]["config"]).data.name)' "$PROTOCOL_SPEC") \
    || bad "PROTOCOL_SPEC=$PROTOCOL_SPEC: its base config does not load"
  [[ $data == fashion_mnist ]] && export PROTOCOL_SET="data.root=$CARRY/fashion-mnist ${PROTOCOL_SET:-}"
fi
export LBFL="${LBFL:-$PY -m lbfl_mpi}" PROTOCOL_SET=${PROTOCOL_SET:-}
PACK=${REPORT%.md}-runs.tgz

machine_part
part tune "$PY" jobs/protocol/run.py "$PROTOCOL_SPEC" --stage tune --runs "$RUNS" --parallel "$PARALLEL"
# what the grid left of its limit goes to the final runs (the sum of the limits checked above stays)
[[ -n ${SECS[tune]:-} ]] && LIMIT[final]=$((FINAL_S + TUNE_S - SECS[tune]))
part final "$PY" jobs/protocol/run.py "$PROTOCOL_SPEC" --stage final --runs "$RUNS" --parallel "$PARALLEL"
part pack bash -c 'set -e; [[ -d $1/$2 ]] || { echo "no runs in $1/$2"; exit 1; }
  tar -czf "$3" --exclude=checkpoints -C "$1" "$2"
  echo "$(tar -tzf "$3" | grep -c "/summary.json$") finished runs packed into $3 ($(du -k "$3" | cut -f1) KiB)"' \
  pack "$RUNS" "$name" "$PACK"
gpu_end
