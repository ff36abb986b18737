#!/usr/bin/env bash
# The demo behind `make demo`: on a corpus from Debian's fortune packages (English `fortunes`,
# Chinese `fortunes-zh`), train a byte-level BPE tokenizer, tokenize the corpus into shards,
# train a tiny Qwen2 through a two-stage curriculum (short then long context, larger RoPE base)
# on a coordinator and two workers started for the job (`qtrain local --workers 2`: one
# data-parallel group), and sample from it.
# Everything lands in BUILD/demo.
set -euo pipefail
build=${1:-build}
qtrain="$build/bin/qtrain"
out="$build/demo"
fortunes=/usr/share/games/fortunes
for bin in qtrain qtrain-coordinator qtrain-worker; do
  [ -x "$build/bin/$bin" ] || { echo "demo: $build/bin/$bin is missing; run 'make build' first" >&2; exit 1; }
done
[ -d "$fortunes" ] || { echo "demo: $fortunes is missing; run scripts/setup.sh" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/corpus"
step() { printf '\n== %s\n' "$*" >&2; }

step "1/5 corpus: every fortune of Debian's fortune packages is one document"
# Fortune files separate entries with lines holding a single '%'.
python3 - "$fortunes" "$out/corpus/fortunes.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
names = sorted(n for n in os.listdir(src)
               if os.path.isfile(os.path.join(src, n)) and "." not in n
               and not os.path.islink(os.path.join(src, n)) and n != "chinese")
docs = 0
with open(dst, "w", encoding="utf-8") as out:
    for name in names:
        text = open(os.path.join(src, name), encoding="utf-8", errors="replace").read()
        for entry in text.split("\n%\n"):
            entry = entry.strip("\n%")
            if entry.strip():
                out.write(json.dumps({"text": entry}, ensure_ascii=False) + "\n")
                docs += 1
print(f"demo: {docs} documents from {len(names)} fortune files", file=sys.stderr)
PY
du -h "$out/corpus/fortunes.jsonl" >&2

step "2/5 train a 4096-token byte-level BPE tokenizer"
"$qtrain" train-tokenizer --vocab-size 4096 --out "$out/tokenizer" "$out/corpus/fortunes.jsonl"

step "3/5 tokenize the corpus into shards"
"$qtrain" tokenize --tokenizer "$out/tokenizer/tokenizer.json" --out "$out/shards" \
  "$out/corpus/fortunes.jsonl"

step "4/5 train qwen2-tiny: 128-token context, then 512 tokens with RoPE base 2e6"
cat > "$out/job.yaml" <<YAML
name: demo
seed: 1
model: {preset: qwen2-tiny}
tokenizer: $out/tokenizer/tokenizer.json
data: {manifest: $out/shards/manifest.json, validation_fraction: 0.02}
curriculum:
  - {name: short, seq_len: 128, tokens: 1048576, micro_batch: 16}
  - {name: long, seq_len: 512, tokens: 262144, micro_batch: 4, rope_theta: 2000000}
optimizer: {lr: 4e-3, min_lr: 4e-4, warmup_steps: 20}
batch: {global_tokens: 4096}
checkpoint: {every_steps: 100, keep_last: 2}
eval: {every_steps: 80, batches: 8}
world: {min_workers: 1, max_workers: 2, device: cpu}
YAML
"$qtrain" validate "$out/job.yaml" > /dev/null
# A coordinator and two workers as child processes (each with half the cores), training the
# job as one group; the job's run directory is <run-root>/<job ID>/, its logs in
# <run-root>/.logs/.
"$qtrain" local "$out/job.yaml" --workers 2 --run-root "$out/local" | tee "$out/local.out"
run=$(sed -n 's/^final model: \(.*\)\/final$/\1/p' "$out/local.out" | tail -n 1)
[ -n "$run" ] && [ -d "$run/final" ] || { echo "demo: the job left no final model" >&2; exit 1; }

step "5/5 samples from the trained model"
for prompt in "The secret of" "Q: What is" "Linux is"; do
  printf -- '--- %s' "$prompt"
  "$qtrain" generate --model "$run/final" --tokenizer "$run/final/tokenizer.json" \
    --prompt "$prompt" --max-new-tokens 40 --temperature 0.8 --top-p 0.9 --seed 1
  echo
done

cat >&2 <<TXT

demo: done.
  run directory:   $run
  loss curve:      $run/loss.svg
  metrics:         $run/metrics.jsonl
  exported model:  $run/final (transformers format, with its tokenizer)
  service logs:    $out/local/.logs/
TXT
