#!/usr/bin/env bash
# Kill soak of data-parallel training:
#
#   kill_soak.sh N [SEED]
#
# Starts a qtrain-coordinator and three qtrain-worker daemons on 127.0.0.1, then runs N times a
# two-worker job (the third worker idle), each time SIGKILLing the daemon and training child of
# a random rank at a random step (drawn from SEED, printed; a new worker then takes the killed
# one's place as the spare). Every run must end SUCCEEDED with the final/model.safetensors of
# `qtrain train` of the same job. Prints "k/N byte-identical" and exits 0 only when k = N.
#
# The binaries come from $QTRAIN_BIN_DIR (default: build/bin of this repository); KEEP=1 keeps
# the working directory (data, logs, run directories) for a look after a failure.
set -euo pipefail

usage() {
  echo "usage: $0 N [SEED]   (N runs, N >= 1; SEED a non-negative integer)" >&2
  exit 2
}
[[ $# -ge 1 && $# -le 2 ]] || usage
runs=$1
[[ $runs =~ ^[1-9][0-9]*$ ]] || usage
seed=${2:-$(($(date +%s) % 100000))}
[[ $seed =~ ^[0-9]+$ ]] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${QTRAIN_BIN_DIR:-$here/../../build/bin}
for tool in qtrain qtrain-coordinator qtrain-worker; do
  [[ -x $bin/$tool ]] || { echo "kill_soak: $bin/$tool is missing (set QTRAIN_BIN_DIR)" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "kill_soak: python3 is needed to read JSON" >&2; exit 2; }

readonly kTotalSteps=18 kStepDelayMs=150 kJobTimeout=150
work=$(mktemp -d "${TMPDIR:-/tmp}/kill_soak.XXXXXX")
declare -A worker_pid=()  # worker name -> daemon pid
coordinator_pid=""

# The pids of a process's children.
children_of() {
  cat /proc/"$1"/task/*/children 2>/dev/null || true
}
# SIGKILLs a process after its children (the training child of a daemon); stopped first, so that
# it cannot see a child end and act on it.
kill_tree() {
  local pid=$1 child
  kill -STOP "$pid" 2>/dev/null || return 0
  for child in $(children_of "$pid"); do kill -KILL "$child" 2>/dev/null || true; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local name
  for name in "${!worker_pid[@]}"; do kill_tree "${worker_pid[$name]}"; done
  [[ -n $coordinator_pid ]] && kill_tree "$coordinator_pid"
  if [[ ${KEEP:-0} == 1 ]]; then echo "kill_soak: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# field JSON_FILE KEY...: the value at that path ("" when absent; list indices are numbers).
field() {
  python3 - "$@" <<'PY'
import json, sys
try:
    value = json.load(open(sys.argv[1]))
    for key in sys.argv[2:]:
        value = value[int(key)] if isinstance(value, list) else value[key]
except (OSError, ValueError, KeyError, IndexError, TypeError):
    value = ""
print(len(value) if isinstance(value, list) else value)
PY
}

# job_view JOB_JSON_FILE: "STATE STEP WORKERS RANK0 RANK1" of a job (one python start per poll,
# so that the kill lands close to the drawn step).
job_view() {
  python3 - "$1" <<'PY'
import json, sys
try:
    job = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    job = {}
workers = job.get("workers", [])
print(job.get("state", "-"), job.get("progress", {}).get("step", 0), len(workers),
      *(workers + ["-", "-"])[:2])
PY
}

qtrain() { "$bin/qtrain" "$@"; }

echo "kill_soak: $runs runs, seed $seed, in $work"
RANDOM=$seed

# --- the job's data and the reference bytes -------------------------------------------------
mkdir -p "$work/corpus" "$work/logs"
python3 - "$work/corpus/text.txt" <<'PY'
import sys
words = "every rank sums its share of the step in one tree so bytes agree".split()
rng, out = 29, []
for _ in range(20000):
    rng = (rng * 1103515245 + 12345) % 2**32
    out.append(words[(rng >> 16) % len(words)] + (".\n" if (rng >> 8) % 9 == 0 else " "))
open(sys.argv[1], "w").write("".join(out))
PY
qtrain train-tokenizer --quiet --vocab-size 300 --out "$work/tok" "$work/corpus/text.txt" \
  >"$work/logs/tokenizer.log" 2>&1
qtrain tokenize --quiet --tokenizer "$work/tok/tokenizer.json" --out "$work/shards" \
  --shard-tokens 5000 "$work/corpus/text.txt" >"$work/logs/tokenize.log" 2>&1

# spec NAME WORLD: the job, M = 4 micro-batches per step in both stages (1, 2 or 4 workers).
spec() {
  cat <<YAML
name: $1
seed: 11
model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 128}}
tokenizer: $work/tok/tokenizer.json
data: {manifest: $work/shards/manifest.json, validation_fraction: 0.1}
curriculum:
  - {name: short, seq_len: 32, tokens: 2560, micro_batch: 2}
  - {name: long, seq_len: 64, tokens: 2048, micro_batch: 1, rope_theta: 100000}
optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}
batch: {global_tokens: 256}
checkpoint: {every_steps: 2, keep_last: 2}
eval: {every_steps: 4, batches: 2}
YAML
  [[ -n $2 ]] && echo "world: {$2}"
  return 0
}
spec reference "" >"$work/reference.yaml"
OMP_NUM_THREADS=1 timeout 120 "$bin/qtrain" train "$work/reference.yaml" --run-dir "$work/reference" \
  >"$work/logs/reference.log" 2>&1 || { echo "kill_soak: qtrain train failed:"; tail -20 "$work/logs/reference.log"; exit 1; }
reference=$(sha256sum "$work/reference/final/model.safetensors" | cut -d' ' -f1)
echo "kill_soak: reference model sha256 $reference"

# --- the service ---------------------------------------------------------------------------
"$bin/qtrain-coordinator" --listen 127.0.0.1:0 --address-file "$work/coordinator.address" \
  --state-dir "$work/state" --run-root "$work/runs" --lease-seconds 2 --settle-seconds 0.2 \
  >"$work/logs/coordinator.log" 2>&1 &
coordinator_pid=$!
for _ in $(seq 300); do
  [[ -s $work/coordinator.address ]] && break
  sleep 0.1
done
address=$(tr -d '\n' <"$work/coordinator.address" 2>/dev/null || true)
[[ -n $address ]] || { echo "kill_soak: the coordinator did not start:"; tail -20 "$work/logs/coordinator.log"; exit 1; }

workers_started=0
# Starts a worker daemon and waits until it is registered.
start_worker() {
  local name=w$((workers_started += 1))
  OMP_NUM_THREADS=1 QTRAIN_TEST_STEP_DELAY_MS=$kStepDelayMs "$bin/qtrain-worker" \
    --coordinator "$address" --work-dir "$work/workers/$name" --name "$name" --threads 1 \
    --peer-host 127.0.0.1 --collective-timeout-seconds 5 >"$work/logs/$name.log" 2>&1 &
  worker_pid[$name]=$!
  for _ in $(seq 200); do
    [[ -s $work/workers/$name/worker_id ]] && return 0
    kill -0 "${worker_pid[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "kill_soak: worker $name did not register:"
  tail -20 "$work/logs/$name.log"
  exit 1
}
# The started worker (its name) whose id is ID.
worker_named() {
  local name
  for name in "${!worker_pid[@]}"; do
    [[ $(cat "$work/workers/$name/worker_id" 2>/dev/null) == "$1" ]] && { echo "$name"; return; }
  done
}
for _ in 1 2 3; do start_worker; done

# --- the runs ------------------------------------------------------------------------------
identical=0
for run in $(seq "$runs"); do
  victim_rank=$((RANDOM % 2))
  kill_step=$((1 + RANDOM % (kTotalSteps - 4)))  # 1..14: a kill lands before the last step
  job=soak-$run
  spec "$job" "min_workers: 2, max_workers: 2, max_restarts: 5" >"$work/$job.yaml"
  qtrain --coordinator "$address" submit "$work/$job.yaml" --request-id "$job" -o json \
    >"$work/logs/$job.submit.json" 2>"$work/logs/$job.submit.log" ||
    { echo "run $run: submit failed: $(cat "$work/logs/$job.submit.log")"; continue; }
  id=$(field "$work/logs/$job.submit.json" name)
  id=${id#jobs/}
  get="$work/logs/$job.get.json"

  # Wait for the step, then kill the rank's daemon and child.
  killed="" state="" deadline=$((SECONDS + kJobTimeout))
  while ((SECONDS < deadline)); do
    qtrain --coordinator "$address" get "$id" -o json >"$get" 2>/dev/null || { sleep 0.05; continue; }
    read -r state at_step group rank0 rank1 <<<"$(job_view "$get")"
    [[ $state == JOB_STATE_SUCCEEDED || $state == JOB_STATE_FAILED || $state == JOB_STATE_CANCELLED ]] && break
    if [[ $state == JOB_STATE_RUNNING && $group == 2 ]] && ((at_step >= kill_step)); then
      worker_id=$rank0
      ((victim_rank == 0)) || worker_id=$rank1
      killed=$(worker_named "${worker_id#workers/}")
      [[ -n $killed ]] || { echo "run $run: $worker_id is none of the started workers"; break; }
      kill_tree "${worker_pid[$killed]}"
      unset "worker_pid[$killed]"
      echo "run $run: killed rank $victim_rank ($worker_id) at step $at_step (drawn: $kill_step)"
      start_worker  # the next spare
      break
    fi
    sleep 0.05
  done
  if [[ -z $killed ]]; then
    echo "run $run: FAILED: no kill happened (state ${state:-unknown}, drawn step $kill_step)"
    continue
  fi

  while ((SECONDS < deadline)); do
    qtrain --coordinator "$address" get "$id" -o json >"$get" 2>/dev/null || { sleep 0.2; continue; }
    state=$(field "$get" state)
    [[ $state == JOB_STATE_SUCCEEDED || $state == JOB_STATE_FAILED || $state == JOB_STATE_CANCELLED ]] && break
    sleep 0.2
  done
  restarts=$(field "$get" restarts)
  if [[ $state != JOB_STATE_SUCCEEDED ]]; then
    echo "run $run: FAILED: ended ${state:-unknown} (restarts ${restarts:-0}): $(field "$get" state_message)"
    continue
  fi
  model="$(field "$get" run_directory)/final/model.safetensors"
  digest=$(sha256sum "$model" 2>/dev/null | cut -d' ' -f1)
  if [[ $digest == "$reference" ]]; then
    identical=$((identical + 1))
    if [[ ${restarts:-0} == 0 ]]; then
      echo "run $run: byte-identical (no restart: the kill came after the last step)"
    else
      echo "run $run: byte-identical (restarts $restarts)"
    fi
  else
    echo "run $run: DIFFERENT: $model has sha256 ${digest:-missing}, the reference $reference"
  fi
done

echo "$identical/$runs byte-identical"
((identical == runs))
