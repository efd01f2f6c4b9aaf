#!/usr/bin/env bash
# Paper Fig. 1/2/5: time compute (t_c) and data movement (t_mov) against the batch size for every
# *.toml model config in DIR with `lbfl plan`, then print one table per model and plot them.
#
#   bash jobs/run_batch_sweep.sh DIR [lbfl plan options]
#   e.g. bash jobs/run_batch_sweep.sh jobs/batch_sweep --probes 1,2,4,8,16,32,64 --holdout 48
#
# Output: runs/batch_sweep/<config name>.json (lbfl plan --json of each config) and
# runs/batch_sweep/batch_sweep.png. Run it on the device you want to characterise (one rank, or
# under srun/mpirun for one plan per device: rank 0's is tabulated).
# Environment: LBFL (the lbfl command, default lbfl), PYTHON (default python3), OUT (runs/batch_sweep),
# LAUNCH (a launcher prefix, e.g. "srun -n 1"; default none), PATTERN (which configs, default
# "*.toml"; e.g. PATTERN="*_cifar.toml" for the CIFAR-shaped ones only).
set -euo pipefail

if [[ $# -lt 1 || ! -d "$1" ]]; then
    echo "usage: $0 DIR [lbfl plan options]   (DIR holds *.toml model configs)" >&2
    exit 2
fi
dir=$1
shift
read -r -a lbfl <<< "${LBFL:-lbfl}"
read -r -a launch <<< "${LAUNCH:-}"
python=${PYTHON:-python3}
out=${OUT:-runs/batch_sweep}

shopt -s nullglob
pattern=${PATTERN:-*.toml}
configs=("$dir"/$pattern)
if [[ ${#configs[@]} -eq 0 ]]; then
    echo "$0: no $pattern files in $dir" >&2
    exit 2
fi
mkdir -p "$out"
files=()
for cfg in "${configs[@]}"; do
    name=$(basename "$cfg" .toml)
    echo "=== $cfg -> $out/$name.json" >&2
    t0=$SECONDS
    "${launch[@]}" "${lbfl[@]}" plan --config "$cfg" --json "$@" > "$out/$name.json.tmp"
    mv "$out/$name.json.tmp" "$out/$name.json"
    echo "=== $name done in $((SECONDS - t0)) s" >&2
    files+=("$out/$name.json")
done
"$python" -m lbfl_mpi.analysis.sweep "${files[@]}" --plots "$out"
