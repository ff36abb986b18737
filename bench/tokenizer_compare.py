#!/usr/bin/env python3
"""Encode throughput of qtrain's tokenizer beside Hugging Face `tokenizers` and `tiktoken`.

All three encode the same multilingual corpus (bench/tokenizer_corpus.py; >= 20 MB) with the
Qwen2 vocabulary, document by document, single-threaded and with N threads; the best of
--repeat runs is reported. tiktoken's encoding is built from the same vocabulary (rank = id) and
split regex; it has no NFC step. The last column says whether an implementation's ids equal
qtrain's (sha256 of all ids).

    cmake --build build --target tokenizer_bench
    python3 bench/tokenizer_compare.py --bench build/bin/tokenizer_bench --threads 1,2

Needs `pip install tokenizers tiktoken`.
"""
import argparse
import array
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

WORKER = r'''
import array, hashlib, json, os, sys, time
impl, tok_path, corpus, threads, repeat = sys.argv[1:6]
threads, repeat = int(threads), int(repeat)
docs = [json.loads(l)["text"] for l in open(corpus, encoding="utf-8")]
nbytes = sum(len(d.encode()) for d in docs)
if impl == "hf_tokenizers":
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    if threads == 1:
        run = lambda: [tok.encode(d, add_special_tokens=False).ids for d in docs]
    else:
        run = lambda: [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
else:
    import tiktoken
    spec = json.load(open(tok_path, encoding="utf-8"))
    bs = list(range(33, 127)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    u2b = {chr(c): b for b, c in zip(bs, cs)}
    ranks = {bytes(u2b[c] for c in t): i for t, i in spec["model"]["vocab"].items()}
    special = {a["content"]: a["id"] for a in spec["added_tokens"]}
    pat = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    enc = tiktoken.Encoding("qwen2", pat_str=pat, mergeable_ranks=ranks, special_tokens=special)
    if threads == 1:
        run = lambda: [enc.encode(d, allowed_special="all") for d in docs]
    else:
        run = lambda: enc.encode_batch(docs, num_threads=threads, allowed_special="all")
best = 1e30
for _ in range(repeat):
    t0 = time.perf_counter()
    out = run()
    best = min(best, time.perf_counter() - t0)
h = hashlib.sha256()
tokens = 0
for ids in out:
    h.update(array.array("I", ids).tobytes())
    tokens += len(ids)
print(json.dumps({"impl": impl, "threads": threads, "seconds": best,
                  "mb_per_s": nbytes / 1e6 / best, "tokens": tokens,
                  "ids_sha256": h.hexdigest()}))
'''


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", default=os.path.join(REPO, "build/bin/tokenizer_bench"))
    parser.add_argument("--tokenizer",
                        default=os.path.join(REPO, "tokenizer/testdata/qwen2/tokenizer.json"))
    parser.add_argument("--corpus", help="JSONL corpus (made with tokenizer_corpus.py if absent)")
    parser.add_argument("--mb", type=float, default=24)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    corpus = args.corpus or os.path.join(tempfile.gettempdir(), "qtrain_tokenizer_corpus.jsonl")
    if not os.path.exists(corpus):
        subprocess.run([sys.executable, os.path.join(HERE, "tokenizer_corpus.py"), "--out", corpus,
                        "--mb", str(args.mb)], check=True)
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    out = subprocess.run([args.bench, "--tokenizer", args.tokenizer, "--corpus", corpus,
                          "--threads", args.threads, "--repeat", str(args.repeat)],
                         check=True, capture_output=True, text=True).stdout
    info = None
    for line in out.splitlines():
        obj = json.loads(line)
        if "threads" in obj:
            rows.append(obj)
        else:
            info = obj
    for impl in ("hf_tokenizers", "tiktoken"):
        for t in threads:
            env = dict(os.environ, RAYON_NUM_THREADS=str(t), TOKENIZERS_PARALLELISM="true")
            res = subprocess.run([sys.executable, "-c", WORKER, impl, args.tokenizer, corpus,
                                  str(t), str(args.repeat)],
                                 check=True, capture_output=True, text=True, env=env)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    ref = {r["threads"]: r["ids_sha256"] for r in rows if r["impl"] == "qtrain"}
    import tiktoken
    import tokenizers
    print(f"corpus: {info['bytes'] / 1e6:.1f} MB in {info['docs']} documents; "
          f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or '?'}); "
          f"tokenizers {tokenizers.__version__}, tiktoken {tiktoken.__version__}; "
          f"qtrain load {info['load_seconds']:.2f} s")
    print()
    print("| implementation | threads | MB/s | tokens | ids equal qtrain's |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        same = "yes" if r["ids_sha256"] == ref.get(r["threads"]) else "no"
        print(f"| {r['impl']} | {r['threads']} | {r['mb_per_s']:.1f} | {r['tokens']} | {same} |")


if __name__ == "__main__":
    main()
