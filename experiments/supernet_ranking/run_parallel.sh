#!/usr/bin/env bash
# Every phase of the ranking study as parallel processes on one machine (many cores, one GPU):
#
#     experiments/supernet_ranking/run_parallel.sh CONFIG [DEADLINE_S] [SHARDS]
#
# The supernet, SHARDS standalone shards (default 10) and one process per budget-check and
# seed-check network start together (threads 1 each: a small network's GPU step is launch-bound,
# so processes side by side keep the device busy). Every phase is resumable, so a process
# stopped at DEADLINE_S seconds (default: none) loses at most its current epoch; the evaluation
# then runs over what finished (`--partial` when anything is missing, writing the *_partial
# outputs). Logs: <checkpoints>/logs/. Exit status: the evaluation's.
set -u
config=${1:?usage: run_parallel.sh CONFIG [DEADLINE_S] [SHARDS]}
deadline=${2:-0}
shards=${3:-10}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
python=${PYTHON:-python3}
run=("$python" experiments/supernet_ranking/run.py --config "$config")
checkpoints=$("$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["checkpoints"])' "$config") || exit 2
logs="$checkpoints/logs"
mkdir -p "$logs"
count() { "$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["standalone"][sys.argv[2]]["networks"])' "$config" "$1"; }
budget=$(count budget_check) && seeds=$(count seed_check) || exit 2

"${run[@]}" --phase select > "$logs/select.log" 2>&1 || { cat "$logs/select.log"; exit 2; }
started=$(date +%s)
pids=()
launch() {  # launch NAME ARGS...: one phase process, logged, stopped at the deadline
    local name=$1; shift
    if [ "$deadline" -gt 0 ]; then
        timeout --signal=TERM "$deadline" "${run[@]}" "$@" > "$logs/$name.log" 2>&1 &
    else
        "${run[@]}" "$@" > "$logs/$name.log" 2>&1 &
    fi
    pids+=($!)
}
launch supernet --phase supernet
for i in $(seq 1 "$shards"); do launch "standalone_$i" --phase standalone --shard "$i/$shards"; done
for i in $(seq 1 "$budget"); do launch "budget_$i" --phase budget --shard "$i/$budget"; done
for i in $(seq 1 "$seeds"); do launch "seeds_$i" --phase seeds --shard "$i/$seeds"; done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
echo "training: $(( $(date +%s) - started )) s, $failed of ${#pids[@]} processes stopped or failed (logs: $logs)"
if [ "$failed" -eq 0 ]; then
    "${run[@]}" --phase evaluate
else
    for log in "$logs"/*.log; do  # the last line of each unfinished process: why it stopped
        tail -c 2000 "$log" | tr '\r' '\n' | grep -a . | tail -1 | sed "s|^|$(basename "$log" .log): |" | cut -c1-300
    done
    "${run[@]}" --phase evaluate --partial
fi
