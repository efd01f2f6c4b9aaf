# Shared by benchmarks/gpu_check.sh and benchmarks/gpu_fidelity.sh (sourced, not run).
#
# A check is a list of parts, each with its own time limit. The caller declares them before
# `gpu_begin`:
#     PARTS=(key1 key2 ...)            # in run order, most valuable first
#     declare -A LIMIT=([key1]=30 ...) # seconds each part may run
#     declare -A TITLE=([key1]="..." ...)
# `gpu_begin NAME` prints the sum of the limits (plus each part's kill grace) and refuses to start
# when it exceeds MAX_TOTAL_S, so the whole check ends within that sum by construction. Every part
# runs under `timeout`; after each one the report is written anew (through a temporary file and a
# rename), so a run killed at any moment leaves a report with every part finished so far and the
# others marked "not run". Raw JSON rows go to one file beside the report (REPORT with .jsonl).
#
# Environment read here:
#   GPU_REPORT      report path [benchmarks/results/DATE-NAME.md]
#   GPU_CHECK_DRY   1: run every part on CPU with tiny sizes (the plumbing check) [0]
#   GPU_PARTS       comma-separated subset of the part keys to run [all]
#   PYTHON          the interpreter [python3]
#   GPU_CARRY       the folder gpu_prepare.sh filled (wheels/, fashion-mnist/) [benchmarks/gpu_carry]
#   GPU_KEEP_WORK   1: keep the temporary folder (part outputs, installed MPI) after the run [0]
# An earlier report at GPU_REPORT is renamed NAME.earlier-HHMMSS.md (rows likewise), never overwritten.
# The time outside the parts (the start-up check, writing the report) is a few seconds, not counted.

MAX_TOTAL_S=${MAX_TOTAL_S:-480}
KILL_GRACE_S=2

gpu_visible() {
  [[ ${CUDA_VISIBLE_DEVICES-unset} == "" || ${CUDA_VISIBLE_DEVICES-unset} == -1 ]] && return 1
  compgen -G "/dev/nvidia[0-9]*" >/dev/null && return 0
  command -v nvidia-smi >/dev/null && timeout 5 nvidia-smi -L 2>/dev/null | grep -q "^GPU " && return 0
  return 1
}

gpu_begin() {
  GPU_NAME=$1
  PY=${PYTHON:-python3}
  DRY=${GPU_CHECK_DRY:-0}
  [[ $DRY == 1 || $DRY == 0 ]] || { echo "$GPU_NAME: GPU_CHECK_DRY=$DRY: must be 0 or 1" >&2; exit 2; }
  # Without a GPU, say so at once (importing torch on a cold disk can take longer than that); whether
  # torch itself sees the device is the machine part's first question (gpu_env.py --require-cuda).
  if [[ $DRY == 0 ]] && ! gpu_visible; then
    echo "$GPU_NAME: no CUDA device visible here (no /dev/nvidia0.., nvidia-smi lists none, or CUDA_VISIBLE_DEVICES" \
         "hides them); run it on a GPU machine, or GPU_CHECK_DRY=1 for the CPU dry run" >&2
    exit 1
  fi
  DAY=$(date +%F)
  REPORT=${GPU_REPORT:-benchmarks/results/$DAY-$GPU_NAME.md}
  [[ $REPORT == *.md ]] || { echo "$GPU_NAME: GPU_REPORT=$REPORT: must end in .md" >&2; exit 2; }
  ROWS=${REPORT%.md}.jsonl
  CARRY=${GPU_CARRY:-benchmarks/gpu_carry}
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout, without installing it
  local total=0 k
  for k in "${PARTS[@]}"; do
    [[ -n ${LIMIT[$k]:-} && -n ${TITLE[$k]:-} ]] || { echo "$GPU_NAME: part $k has no limit or title" >&2; exit 2; }
    total=$((total + LIMIT[$k] + KILL_GRACE_S))
  done
  SELECTED=("${PARTS[@]}")
  if [[ -n ${GPU_PARTS:-} ]]; then
    SELECTED=()
    IFS=, read -r -a want <<< "$GPU_PARTS"
    for k in "${want[@]}"; do
      [[ -n ${LIMIT[$k]:-} ]] || { echo "$GPU_NAME: GPU_PARTS: unknown part '$k' (parts: ${PARTS[*]})" >&2; exit 2; }
    done
    for k in "${PARTS[@]}"; do [[ ",$GPU_PARTS," == *",$k,"* ]] && SELECTED+=("$k"); done
  fi
  echo "$GPU_NAME: ${#PARTS[@]} parts, sum of part timeouts $total s (limit $MAX_TOTAL_S s, each part killed at" \
       "its limit + ${KILL_GRACE_S} s)$([[ $DRY == 1 ]] && echo '; dry run on CPU with tiny sizes')" >&2
  if ((total > MAX_TOTAL_S)); then
    echo "$GPU_NAME: the part timeouts add up to $total s, over $MAX_TOTAL_S s" >&2; exit 2
  fi
  TOTAL_S=$total
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$GPU_NAME.XXXXXX")
  trap 'on_signal TERM 143' TERM
  trap 'on_signal INT 130' INT
  trap 'on_signal HUP 129' HUP
  trap '[[ ${GPU_KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK"' EXIT
  mkdir -p "$(dirname "$REPORT")"
  keep_earlier "$REPORT" "$ROWS"
  : > "$ROWS"
  declare -gA RESULT=() SECS=()
  FAILED=()
  T_START=$SECONDS
  COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  render_report
}

# part KEY CMD...: run CMD under the part's limit; its stdout+stderr go to $WORK/KEY.out, its exit
# status to LAST_RC. A part may write markdown for the report to $WORK/KEY.md (tables), shown above
# the tail of its output.
part() {
  local key=$1; shift
  [[ " ${SELECTED[*]} " == *" $key "* ]] || return 0
  local limit=${LIMIT[$key]} t0=$SECONDS rc
  echo "== $GPU_NAME: ${TITLE[$key]} (limit $limit s)" >&2
  # the part counts as running from here: a signal from now on marks it killed (on_signal), even in
  # the moment before its pid is known
  PART_KEY=$key PART_T0=$t0
  printf '%s\n' "$*" > "$WORK/$key.cmd"
  RESULT[$key]=running; render_report
  # timeout leads a process group of its own (the part and everything it starts): in the background,
  # so that a signal to this script can end that group too (on_signal)
  timeout -k "$KILL_GRACE_S" "$limit" "$@" > "$WORK/$key.out" 2>&1 &
  PART_PID=$!
  wait "$PART_PID"
  rc=$?
  PART_PID= PART_KEY=
  LAST_RC=$rc
  SECS[$key]=$((SECONDS - t0))
  case $rc in
    0) RESULT[$key]=pass ;;
    124|137) RESULT[$key]="FAIL (timed out at $limit s)"; FAILED+=("$key") ;;
    *) RESULT[$key]="FAIL (exit $rc)"; FAILED+=("$key") ;;
  esac
  tail -n 40 "$WORK/$key.out" >&2
  printf '{"part": "%s", "result": "%s", "exit": %d, "seconds": %d, "limit_s": %d, "dry": %s}\n' \
    "$key" "${RESULT[$key]}" "$rc" "${SECS[$key]}" "$limit" "$([[ $DRY == 1 ]] && echo true || echo false)" >> "$ROWS"
  render_report
  return 0
}

# A signal to the script (a slot's limit, Ctrl-C): end the running part's process group, record it as
# killed, write the report and stop.
on_signal() {
  if [[ -n ${PART_KEY:-} ]]; then
    # the part's timeout (its own process group) by its pid, or, in the moment before that pid was
    # recorded, every background job of this script
    local p pids=(${PART_PID:-} $(jobs -p))
    for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
    sleep 1
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
    RESULT[$PART_KEY]="FAIL (killed by SIG$1)"; SECS[$PART_KEY]=$((SECONDS - PART_T0)); FAILED+=("$PART_KEY")
  fi
  render_report
  echo "$GPU_NAME: stopped by SIG$1; report written to $REPORT" >&2
  exit "$2"
}

# An earlier report (and its rows) at the same path is kept under a new name, never overwritten.
keep_earlier() {
  local f stamp
  stamp=$(date +%H%M%S)
  for f in "$@"; do
    if [[ -e $f ]]; then
      mv -f "$f" "${f%.*}.earlier-$stamp.${f##*.}"
      echo "$GPU_NAME: kept the earlier $(basename "$f") as $(basename "${f%.*}.earlier-$stamp.${f##*.}")" >&2
    fi
  done
}

# The whole report from what is known now, written through a temporary file and a rename.
render_report() {
  local tmp="$REPORT.tmp.$$" k n=0
  {
    echo "# ${REPORT_TITLE:-$GPU_NAME} ($DAY)"
    echo
    [[ $DRY == 1 ]] && { echo "**Dry run** (GPU_CHECK_DRY=1): every part on CPU with tiny sizes; it checks the plumbing, its figures mean nothing."; echo; }
    echo "Commit $COMMIT; sum of part timeouts $TOTAL_S s; elapsed $((SECONDS - T_START)) s; raw rows: \`$(basename "$ROWS")\`."
    [[ -n ${REPORT_INTRO:-} && -s $REPORT_INTRO ]] && { echo; cat "$REPORT_INTRO"; }
    echo
    echo "| # | part | result | seconds | limit s |"
    echo "|---|---|---|---|---|"
    for k in "${PARTS[@]}"; do
      n=$((n + 1))
      echo "| $n | ${TITLE[$k]} | ${RESULT[$k]:-not run} | ${SECS[$k]:--} | ${LIMIT[$k]} |"
    done
    for k in "${PARTS[@]}"; do
      [[ -n ${RESULT[$k]:-} && ${RESULT[$k]} != running ]] || continue
      echo; echo "## ${TITLE[$k]}"; echo
      echo "Command: \`$(cat "$WORK/$k.cmd")\` (${RESULT[$k]}, ${SECS[$k]} s)"
      if [[ -s $WORK/$k.md ]]; then echo; cat "$WORK/$k.md"; fi
      keep=60; [[ ${RESULT[$k]} == pass ]] || keep=250   # a failed part keeps more of its output
      echo; echo "<details><summary>output (last $keep lines)</summary>"; echo; echo '```'
      [[ -e $WORK/$k.out ]] && tail -n "$keep" "$WORK/$k.out"; echo '```'; echo; echo "</details>"
    done
  } > "$tmp" && mv -f "$tmp" "$REPORT"
}

# The machine part both scripts start with: probe, carried MPI wheels when needed, and the exports
# that select that MPI for every later part. Without CUDA in torch (and no dry run) the check ends here.
machine_part() {
  local need=(--require-cuda)
  [[ $DRY == 1 ]] && need=()
  part machine "$PY" benchmarks/gpu_env.py --carry "$CARRY" --prefix "$WORK/mpi" --env-out "$WORK/env.sh" \
    --markdown "$WORK/machine.md" --json "$ROWS" "${need[@]}"
  [[ -s $WORK/env.sh ]] && source "$WORK/env.sh"
  if [[ ${LAST_RC:-0} == 3 ]]; then
    echo "$GPU_NAME: torch sees no CUDA device (see the machine part); the other parts were not run" >&2
    gpu_end; exit 1
  fi
}

gpu_end() {
  render_report
  { echo; echo "## Result"; echo
    if [[ ${#FAILED[@]} -eq 0 ]]; then echo "Every part that ran passed."; else (IFS=,; echo "Failed: ${FAILED[*]}."); fi
  } >> "$REPORT"
  echo "$GPU_NAME: report written to $REPORT (rows: $ROWS) in $((SECONDS - T_START)) s" >&2
  [[ ${#FAILED[@]} -eq 0 ]]
}
