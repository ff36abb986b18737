#!/usr/bin/env python3
"""Checks that a tokenizer.json gives the same ids in qtrain and in Hugging Face tokenizers.

Encodes the golden and edge-case texts with `qtrain encode` and with `tokenizers` (pip), and
loads the directory with transformers' AutoTokenizer when transformers is installed. Use it on
the output of `qtrain train-tokenizer`:

    qtrain train-tokenizer --vocab-size 8000 --out /tmp/tok corpus.jsonl
    python3 tokenizer/testdata/check_with_hf.py /tmp/tok/tokenizer.json [--qtrain build/bin/qtrain]

Exits non-zero on any difference.
"""
import argparse
import json
import os
import subprocess
import sys

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("tokenizer_json")
    parser.add_argument("--qtrain", default=os.path.join(REPO, "build/bin/qtrain"))
    args = parser.parse_args()
    texts = []
    for name in ("qwen2/golden_dev.jsonl", "edge_cases.jsonl"):
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    texts += ["<|im_start|>user\nhello<|endoftext|>", "x<|endoftext|><|im_start|>"]
    hf = Tokenizer.from_file(args.tokenizer_json)
    stdin = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    out = subprocess.run([args.qtrain, "encode", "--tokenizer", args.tokenizer_json],
                         input=stdin.encode(), capture_output=True, check=True)
    ours = [json.loads(line)["ids"] for line in out.stdout.decode().splitlines()]
    bad = 0
    for text, ids in zip(texts, ours):
        ref = hf.encode(text, add_special_tokens=False).ids
        if ref != ids:
            bad += 1
            if bad <= 5:
                print("MISMATCH", repr(text)[:80], ref[:12], ids[:12])
    print(f"{args.tokenizer_json}: {len(texts)} texts, {bad} mismatches, "
          f"vocab size {hf.get_vocab_size()}")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        AutoTokenizer = None
    if AutoTokenizer is not None:
        at = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(args.tokenizer_json)))
        same = at("hello world")["input_ids"] == hf.encode("hello world").ids
        print(f"transformers: {type(at).__name__}, eos {at.eos_token!r}, same ids: {same}")
        bad += 0 if same else 1
    sys.exit(1 if bad or len(ours) != len(texts) else 0)


if __name__ == "__main__":
    main()
