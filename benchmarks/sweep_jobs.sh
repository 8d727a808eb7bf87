#!/usr/bin/env bash
# Wall time of one smoke sweep (3 processes x 2 seeds = 6 runs) with --jobs 1 and with
# --jobs 2, interleaved in ABBA order (1 2, 2 1, ...) so that a change in the machine's
# load hits both alike; prints each time, the sums and the speed-up (jobs 1 / jobs 2).
#
#   bash benchmarks/sweep_jobs.sh [ROUNDS [key=value ...]]
#
# ROUNDS defaults to 1; key=value overrides go to every run (e.g. schedule.epochs=2 for a
# quicker try); KDGEN="python -m kdgen" runs another installation.
set -euo pipefail

rounds=${1:-1}
shift || true
overrides=("$@")
kdgen=${KDGEN:-"python -m kdgen"}
out=benchmarks/out/sweep_jobs
rm -rf "$out"
mkdir -p "$out"

sweep() {  # $1 = jobs, $2 = folder
    $kdgen sweep smoke "${overrides[@]}" --processes "D(1.0,0.0)" "D(1.0,0.6)" "D(0.6,0.6)" --seeds 0 1 \
        --jobs "$1" --out "$2" >"$2.log" 2>&1
}

seconds() {  # wall seconds of: sweep $1 $2 (bash's time keyword)
    local TIMEFORMAT=%R
    { time sweep "$1" "$2"; } 2>&1
}

add() { awk -v a="$1" -v b="$2" 'BEGIN { print a + b }'; }

total1=0
total2=0
for round in $(seq 1 "$rounds"); do
    if ((round % 2)); then  # ABBA order: a trend in the load hits both alike
        t1=$(seconds 1 "$out/jobs1-round$round")
        t2=$(seconds 2 "$out/jobs2-round$round")
    else
        t2=$(seconds 2 "$out/jobs2-round$round")
        t1=$(seconds 1 "$out/jobs1-round$round")
    fi
    printf 'round %d: --jobs 1 %.1f s, --jobs 2 %.1f s\n' "$round" "$t1" "$t2"
    total1=$(add "$total1" "$t1")
    total2=$(add "$total2" "$t2")
done
printf 'total: --jobs 1 %.1f s, --jobs 2 %.1f s, speed-up %.2fx\n' \
    "$total1" "$total2" "$(awk -v a="$total1" -v b="$total2" 'BEGIN { print a / b }')"
