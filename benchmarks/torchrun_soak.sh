#!/usr/bin/env bash
# Run tests/test_distributed.py (the torchrun tests: 2 gloo processes) RUNS times in a row
# while two busy-loop processes compete for the same cores, and stop at the first failure
# or at the first "terminate called" (a process that aborted at exit). A loaded machine
# is where a race at a process's exit shows: the workers of a process group get
# descheduled between finishing a collective and dropping it.
#
#   benchmarks/torchrun_soak.sh [RUNS] [MAX_MINUTES]
#
# PYTHON picks the interpreter (default .venv/bin/python, else python3); the busy loops and
# the tests run under it, with this script's niceness.
# RUNS defaults to 20. With MAX_MINUTES, no run starts that would, at the mean duration of
# the runs so far, end after that budget. Prints each run's duration and, at the end, how
# many runs in a row were green and the wall time. Exit status: 0 if every run that
# started was green, 1 otherwise. Each run's output is kept in a temporary folder (its
# path is printed).
set -u
cd "$(dirname "$0")/.."

runs=${1:-20}
max_minutes=${2:-}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
logs=$(mktemp -d "${TMPDIR:-/tmp}/torchrun_soak.XXXXXX")

"$python" -c 'while True: pass' &
busy1=$!
"$python" -c 'while True: pass' &
busy2=$!
trap 'kill "$busy1" "$busy2" 2>/dev/null' EXIT
trap 'exit 130' INT TERM

echo "torchrun soak: up to $runs runs of tests/test_distributed.py, two busy loops" \
    "(pids $busy1 $busy2), $(nproc) cores, logs in $logs"
start=$(date +%s)
green=0
status=0
for run in $(seq 1 "$runs"); do
    now=$(date +%s)
    if [ -n "$max_minutes" ] && [ "$green" -gt 0 ]; then
        mean=$(((now - start) / green))
        if [ $((now - start + mean)) -gt $((max_minutes * 60)) ]; then
            echo "stopping: run $run would end after the ${max_minutes}-minute budget"
            break
        fi
    fi
    log="$logs/run$run.log"
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$python" -m pytest -q -x -p no:cacheprovider \
        tests/test_distributed.py >"$log" 2>&1
    code=$?
    seconds=$(($(date +%s) - now))
    if [ "$code" -ne 0 ] || grep -q "terminate called" "$log"; then
        echo "run $run: FAILED after ${seconds}s (pytest exit $code), see $log"
        grep -m 5 -e "terminate called" -e "^FAILED" -e "^E " "$log"
        status=1
        break
    fi
    green=$((green + 1))
    echo "run $run: green in ${seconds}s ($(tail -n 1 "$log"))"
done
total=$(($(date +%s) - start))
echo "torchrun soak: $green runs in a row green of $runs asked," \
    "$((total / 60)) min $((total % 60)) s in all"
exit "$status"
