#!/usr/bin/env python3
"""Builds the multilingual benchmark corpus for the tokenizer benchmark (not committed).

Sources: the texts of tokenizer/testdata/qwen2/golden_dev.jsonl and Debian's fortune files
(packages fortunes, fortunes-min, fortunes-zh, fortunes-de, fortunes-ru; English, Chinese
poems, German, Russian), shuffled with a fixed seed and joined into documents of about 32 KB,
repeated (reshuffled) until the corpus has --mb megabytes. Output: JSON lines {"text": ...}.

    python3 bench/tokenizer_corpus.py --out /tmp/tok_corpus.jsonl --mb 24
"""
import argparse
import json
import os
import random

FORTUNE_DIR = "/usr/share/games/fortunes"


def fortune_texts():
    texts = []
    for root, _, files in os.walk(FORTUNE_DIR):
        for name in sorted(files):
            if name.endswith((".dat", ".u8")):
                continue
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                data = f.read().decode("utf-8", errors="replace")
            texts.extend(t.strip("\n") for t in data.split("\n%\n") if t.strip())
    return texts


def golden_texts(repo):
    path = os.path.join(repo, "tokenizer/testdata/qwen2/golden_dev.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--mb", type=float, default=24)
    parser.add_argument("--doc-bytes", type=int, default=32 * 1024)
    parser.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), ".."))
    args = parser.parse_args()
    pieces = fortune_texts() + golden_texts(args.repo)
    rng = random.Random(1234)
    target = int(args.mb * 1e6)
    written = 0
    with open(args.out, "w", encoding="utf-8") as out:
        while written < target:
            rng.shuffle(pieces)
            doc, size = [], 0
            for p in pieces:
                doc.append(p)
                size += len(p.encode()) + 2
                if size >= args.doc_bytes:
                    text = "\n\n".join(doc)
                    out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    written += len(text.encode())
                    doc, size = [], 0
                    if written >= target:
                        break
    print(f"{args.out}: {written / 1e6:.1f} MB of text from {len(pieces)} texts")


if __name__ == "__main__":
    main()
