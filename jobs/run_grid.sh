#!/usr/bin/env bash
# Run experiment configs, then summarise all of them with `lbfl analyze`.
#
#   bash jobs/run_grid.sh PATH... [--set section.key=value ...]
#
# Each PATH is a directory (all its *.toml, in name order) or a single .toml file; the arguments from
# the first one that starts with "-" on go to every `lbfl train`. Each config is launched as
#   $MPIEXEC -n <run.world_size> $MPIEXEC_ARGS $LBFL train --config F --set run.overwrite=true [extra args]
# (extra args come after run.overwrite=true, so they can override it and anything in the TOML).
# The rank count is the config's run.world_size (1 when it is 0 or absent).
#
# With SEEDS="0 1 2" every config runs once per seed, with
#   ... [extra args] --set run.seed=S --set run.out_dir=<the TOML's run.out_dir>/seedS
# and keeps its run.name, so that `lbfl analyze` adds a "mean +- std over seeds" table (and, when the
# grid has several global batches, a final-accuracy-by-batch table).
#
# Environment (defaults in brackets):
#   MPIEXEC       launcher command               [mpiexec]        e.g. MPIEXEC=srun inside an allocation
#   MPIEXEC_ARGS  options placed after "-n N"    [--oversubscribe] e.g. MPIEXEC_ARGS="" for srun
#   LBFL          the lbfl command               [lbfl]           e.g. LBFL=".venv/bin/lbfl"
#   PYTHON        Python >= 3.11 (reads TOML)    [python3]
#   PLOTS         also write lbfl analyze's charts to this directory  [none]
#   SEEDS         seeds (non-negative integers, space-separated) to run each config with  [the TOML's]
#   SKIP_DONE     1: skip a run whose out_dir already holds a summary.json with outcome "completed",
#                 so that a grid interrupted at any point continues where it stopped  [0]
# Each run's wall time and the grid's total go to stderr. The script stops at the first failing run
# (set -euo pipefail); runs already finished keep their files; `lbfl analyze` then covers every run dir.
# run.out_dir cannot be overridden with --set (analysis reads out_dir from the TOML files), nor
# run.seed when SEEDS is set: both exit 2 before anything runs.
set -euo pipefail

usage() {
    echo "usage: $0 PATH... [--set section.key=value ...]   (PATH: a directory of *.toml configs or a .toml file)" >&2
    exit 2
}

shopt -s nullglob
configs=()
while [[ $# -gt 0 && $1 != -* ]]; do
    if [[ -d "$1" ]]; then
        found=("${1%/}"/*.toml)
        if [[ ${#found[@]} -eq 0 ]]; then
            echo "$0: no *.toml files in $1" >&2
            exit 2
        fi
        configs+=("${found[@]}")
    elif [[ -f "$1" && $1 == *.toml ]]; then
        configs+=("$1")
    else
        echo "$0: $1: not a directory or a .toml file" >&2
        usage
    fi
    shift
done
[[ ${#configs[@]} -gt 0 ]] || usage

read -r -a seeds <<< "${SEEDS:-}"
for s in "${seeds[@]}"; do
    [[ $s =~ ^[0-9]+$ ]] || { echo "$0: SEEDS: $s is not a non-negative integer" >&2; exit 2; }
done

read -r -a mpiexec <<< "${MPIEXEC:-mpiexec}"
read -r -a mpiexec_args <<< "${MPIEXEC_ARGS---oversubscribe}"
read -r -a lbfl <<< "${LBFL:-lbfl}"
python=${PYTHON:-python3}

# Every override is parsed the way `lbfl train` parses it (lbfl_mpi/config/load.py, split_override:
# the key before the first "=", stripped of surrounding spaces, must be section.key of identifiers),
# so that no spelling of a key (" run.out_dir=X", "run.out_dir =X") slips past the checks below.
check_overrides() {
    "$python" - "${#seeds[@]}" "${SEEDS:-}" "$@" <<'PY'
import re, sys
n_seeds, seeds, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
key_re = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
i = 0
while i < len(args):
    a = args[i]
    if a == "--set" and i + 1 < len(args):
        item, i = args[i + 1], i + 2
    elif a.startswith("--set="):
        item, i = a[len("--set="):], i + 1
    else:
        sys.exit(f"{a!r}: only --set section.key=value may follow the configs")
    dotted, sep, _ = item.partition("=")
    key = dotted.strip()
    if not sep or not key_re.fullmatch(key):
        sys.exit(f"--set {item!r}: expected section.key=value")
    if key == "run.out_dir":
        sys.exit(f"--set {item!r}: run.out_dir comes from each TOML file and cannot be overridden")
    if key == "run.seed" and n_seeds:
        sys.exit(f"--set {item!r}: conflicts with SEEDS={seeds!r}")
PY
}
if [[ $# -gt 0 ]] && ! msg=$(check_overrides "$@" 2>&1); then
    echo "$0: ${msg}" >&2
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

# One run: launch_one CONFIG RANKS OUT_DIR LABEL [extra args for lbfl train]
launch_one() {
    local cfg=$1 ranks=$2 out_dir=$3 label=$4 t_run=$SECONDS
    shift 4
    if [[ ${SKIP_DONE:-0} == 1 ]] && "$python" -c '
import json, sys
try:
    sys.exit(0 if json.load(open(sys.argv[1])).get("outcome") == "completed" else 1)
except (OSError, ValueError):
    sys.exit(1)
' "$out_dir/summary.json"; then
        echo "=== $label: skipped, $out_dir/summary.json says completed (SKIP_DONE=1)" >&2
        out_dirs+=("$out_dir")
        return
    fi
    echo "=== $label: $ranks ranks -> $out_dir" >&2
    "${mpiexec[@]}" -n "$ranks" "${mpiexec_args[@]}" \
        "${lbfl[@]}" train --config "$cfg" --set run.overwrite=true "$@"
    echo "=== $label done in $((SECONDS - t_run)) s" >&2
    out_dirs+=("$out_dir")
}

out_dirs=()
t_grid=$SECONDS
for cfg in "${configs[@]}"; do
    read -r ranks out_dir < <(toml_fields "$cfg") || true
    [[ -n "${out_dir:-}" ]] || { echo "$0: cannot read $cfg" >&2; exit 2; }
    if [[ ${#seeds[@]} -eq 0 ]]; then
        launch_one "$cfg" "$ranks" "$out_dir" "$cfg" "$@"
    else
        for s in "${seeds[@]}"; do
            launch_one "$cfg" "$ranks" "${out_dir%/}/seed$s" "$cfg seed $s" "$@" \
                --set "run.seed=$s" --set "run.out_dir=${out_dir%/}/seed$s"
        done
    fi
    unset out_dir
done
echo "=== grid of ${#out_dirs[@]} runs done in $((SECONDS - t_grid)) s" >&2

if [[ -n "${PLOTS:-}" ]]; then
    "${lbfl[@]}" analyze "${out_dirs[@]}" --plots "$PLOTS"
else
    "${lbfl[@]}" analyze "${out_dirs[@]}"
fi
