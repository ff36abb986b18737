#!/usr/bin/env bash
# Peak RSS of `qtrain score --dca` at growing lengths on a small model: with Dual Chunk Attention
# memory grows linearly in the length (no T x T buffer).
#   bench/dca_memory.sh [QTRAIN] [LENGTHS...]   (default: build/bin/qtrain 8192 16384 32768)
set -euo pipefail
qtrain=${1:-build/bin/qtrain}
shift || true
lengths=("${@:-8192 16384 32768}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$qtrain" init --preset qwen2-tiny --out "$work/model" --seed 1 2>/dev/null
for n in ${lengths[@]}; do
  python3 -c "import json,random; random.seed(0); print(json.dumps({'ids': [random.randrange(4096) for _ in range($n)]}))" >"$work/ids.jsonl"
  /usr/bin/time -v "$qtrain" score --model "$work/model" --dca 1024,128 <"$work/ids.jsonl" \
    2>"$work/time.txt" >/dev/null
  rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/time.txt")
  wall=$(awk -F': ' '/Elapsed/ {print $2}' "$work/time.txt")
  echo "tokens $n peak_rss_kib $rss wall $wall"
done
