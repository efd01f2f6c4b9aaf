#!/usr/bin/env bash
# Run every *.toml experiment in a directory, then summarise all of them with `lbfl analyze`.
#
#   bash jobs/run_grid.sh DIR [--set section.key=value ...]
#
# Each config is launched as
#   $MPIEXEC -n <run.world_size> $MPIEXEC_ARGS $LBFL train --config F --set run.overwrite=true [extra args]
# (extra args come after run.overwrite=true, so they can override it and anything in the TOML).
# The rank count is the config's run.world_size (1 when it is 0 or absent).
#
# Environment (defaults in brackets):
#   MPIEXEC       launcher command               [mpiexec]        e.g. MPIEXEC=srun inside an allocation
#   MPIEXEC_ARGS  options placed after "-n N"    [--oversubscribe] e.g. MPIEXEC_ARGS="" for srun
#   LBFL          the lbfl command               [lbfl]           e.g. LBFL=".venv/bin/lbfl"
#   PYTHON        Python >= 3.11 (reads TOML)    [python3]
#   PLOTS         also write lbfl analyze's charts to this directory  [none]
# The script stops at the first failing run (set -euo pipefail); runs already finished keep their files.
# Overriding run.out_dir with --set is not supported: analysis reads out_dir from the TOML files.
set -euo pipefail

if [[ $# -lt 1 || ! -d "$1" ]]; then
    echo "usage: $0 DIR [--set section.key=value ...]   (DIR holds *.toml experiment configs)" >&2
    exit 2
fi
dir=$1
shift

read -r -a mpiexec <<< "${MPIEXEC:-mpiexec}"
read -r -a mpiexec_args <<< "${MPIEXEC_ARGS---oversubscribe}"
read -r -a lbfl <<< "${LBFL:-lbfl}"
python=${PYTHON:-python3}

shopt -s nullglob
configs=("$dir"/*.toml)
if [[ ${#configs[@]} -eq 0 ]]; then
    echo "$0: no *.toml files in $dir" >&2
    exit 2
fi

# Print "<world_size> <out_dir>" of a config (world_size 0 = any, launched as 1 rank).
toml_fields() {
    "$python" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    cfg = tomllib.load(f)
run = cfg.get("run", {})
out = run.get("out_dir", "runs/default")
if any(c.isspace() for c in out):
    sys.exit(f"{sys.argv[1]}: run.out_dir {out!r} contains whitespace")
print(run.get("world_size", 0) or 1, out)
' "$1"
}

out_dirs=()
t_grid=$SECONDS
for cfg in "${configs[@]}"; do
    read -r ranks out_dir < <(toml_fields "$cfg")
    [[ -n "${out_dir:-}" ]] || { echo "$0: cannot read $cfg" >&2; exit 2; }
    echo "=== $cfg: $ranks ranks -> $out_dir" >&2
    t_run=$SECONDS
    "${mpiexec[@]}" -n "$ranks" "${mpiexec_args[@]}" \
        "${lbfl[@]}" train --config "$cfg" --set run.overwrite=true "$@"
    echo "=== $cfg done in $((SECONDS - t_run)) s" >&2
    out_dirs+=("$out_dir")
done
echo "=== grid of ${#configs[@]} runs done in $((SECONDS - t_grid)) s" >&2

if [[ -n "${PLOTS:-}" ]]; then
    "${lbfl[@]}" analyze "${out_dirs[@]}" --plots "$PLOTS"
else
    "${lbfl[@]}" analyze "${out_dirs[@]}"
fi
