# The steps of benchmarks/gpu_check.sh and their time budget, sourced by it (and by the tests: nothing here
# runs on its own).
#
# The caller sets: BUDGET_S (seconds for the whole check), START (its $SECONDS at the start), SUMMARY (the
# file each step's line is appended to), the arrays FAILED, OPTIONAL_FAILED and SKIPPED_REQUIRED, and
# NO_GPU_STEPS (empty, or why the GPU steps are skipped). It may set RESERVED_S (below) and MIN_STEP_S.
# Each step sets LAST_RC (its exit status; 0 for one skipped) and LAST_STATUS (OK, FAIL, TIME or SKIP).

# Seconds kept back for required steps still to come, by step name: a step before them may use only the
# budget left after these, so that a slow one (the CUDA tests, which grow with every test added) cannot
# leave the benchmark that judges the goals no time. A step's own reservation is released when it runs or
# is skipped.
declare -A RESERVED_S=()
# A step left less than this many seconds is skipped instead of started.
MIN_STEP_S="${MIN_STEP_S:-15}"

remaining() { echo $(( BUDGET_S - (SECONDS - START) )); }

# The seconds reserved for the steps still to come.
reserved_total() {
    local total=0 name
    for name in "${!RESERVED_S[@]}"; do total=$(( total + RESERVED_S[$name] )); done
    echo "$total"
}

# step NAME LOG CAP_SECONDS REQUIRED(1/0) COMMAND...
# Runs COMMAND through bash under `timeout`, for at most CAP seconds and at most what the budget has left
# after the reservations of the steps to come; appends to LOG and echoes to stdout.
step() {
    local name="$1" log="$2" cap="$3" required="$4"
    shift 4
    local cmd="$*"
    local kept left
    unset "RESERVED_S[$name]"
    kept=$(reserved_total)
    left=$(( $(remaining) - kept ))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < MIN_STEP_S )); then
        skip_step "$name" "$log" "$required" \
            "out of time: ${left}s of the ${BUDGET_S}s budget free, ${kept}s kept for later steps"
        return 0
    fi
    local shown="${cmd#$'\n'}"
    [[ "$shown" == *$'\n'* ]] && shown="${shown%%$'\n'*} ..."
    echo "===== [$name] $(date +%T) timeout ${limit}s: $shown" | tee -a "$log"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" bash -c "$cmd" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    local dt=$(( SECONDS - t0 ))
    local status=OK
    if (( (rc == 124 || rc == 137) && limit < cap )); then
        # Cut short by the budget, not by its own cap: unfinished, which says nothing of its result.
        status=TIME
        (( required )) && SKIPPED_REQUIRED+=("$name")
        echo "===== [$name] OUT OF BUDGET after ${limit}s (its cap: ${cap}s; ${kept}s kept for later steps)" |
            tee -a "$log"
    elif (( rc != 0 )); then
        status=FAIL
        if (( required )); then FAILED+=("$name"); else OPTIONAL_FAILED+=("$name"); fi
        (( rc == 124 || rc == 137 )) && echo "===== [$name] TIMED OUT after ${limit}s" | tee -a "$log"
    fi
    LAST_RC=$rc
    LAST_STATUS=$status
    echo "===== [$name] $status (rc=$rc, ${dt}s)" | tee -a "$log"
    printf '%-10s %-6s %5s %7s  %s\n' "$name" "$status" "$rc" "$dt" "$(basename "$log")" >> "$SUMMARY"
}

# gpu_step NAME LOG CAP REQUIRED COMMAND...: step, unless NO_GPU_STEPS says why not.
gpu_step() {
    if [[ -n "$NO_GPU_STEPS" ]]; then
        skip_step "$1" "$2" "$4" "$NO_GPU_STEPS"
    else
        step "$@"
    fi
}

skip_step() {  # skip_step NAME LOG REQUIRED REASON
    unset "RESERVED_S[$1]"
    echo "===== [$1] SKIPPED: $4" | tee -a "$2"
    printf '%-10s %-6s %5s %7s  %s\n' "$1" SKIP - 0 "$(basename "$2") ($4)" >> "$SUMMARY"
    (( $3 )) && SKIPPED_REQUIRED+=("$1")
    LAST_RC=0
    LAST_STATUS=SKIP
}
