#!/usr/bin/env python3
"""`qtrain score --dca C,L` against the float64 reference (dca_reference.py) on random models:
lengths of many chunks, local_size > 0, with and without original_max_position_embeddings
scaling. Every per-token log-prob within 3e-4.

  check_dca.py --qtrain build/bin/qtrain
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dca_reference  # noqa: E402

TOLERANCE = 3e-4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtrain", required=True)
    args = ap.parse_args()
    cases = [  # (seed, chunk, local, tokens, original_max_position_embeddings)
        (1, 64, 16, 600, 0), (2, 48, 8, 300, 100), (3, 40, 0, 200, 0), (4, 64, 32, 250, 64)]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for seed, chunk, local, n, original in cases:
            model = os.path.join(tmp, f"m{seed}")
            subprocess.run([args.qtrain, "init", "--preset", "qwen2-tiny", "--out", model,
                            "--seed", str(seed)], check=True, timeout=120,
                           stderr=subprocess.DEVNULL)
            if original:
                path = os.path.join(model, "config.json")
                cfg = json.load(open(path))
                cfg["dual_chunk_attention_config"] = {
                    "chunk_size": 4096, "local_size": 0,
                    "original_max_position_embeddings": original}
                json.dump(cfg, open(path, "w"))
            rng = random.Random(seed)
            ids = [rng.randrange(4096) for _ in range(n)]
            out = subprocess.run([args.qtrain, "score", "--model", model, "--dca",
                                  f"{chunk},{local}"], input=json.dumps({"ids": ids}) + "\n",
                                 capture_output=True, text=True, check=True, timeout=300)
            got = json.loads(out.stdout)["logprobs"]
            want = dca_reference.logprobs(model, ids, chunk, local, original)
            assert len(got) == len(want) == n - 1, (len(got), len(want))
            diff = max(abs(a - b) for a, b in zip(got, want))
            print(f"seed {seed} C={chunk} L={local} T={n} L_orig={original}: max |diff| {diff:.3g}")
            worst = max(worst, diff)
    print(f"worst {worst:.3g} (tolerance {TOLERANCE})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
