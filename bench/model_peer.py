#!/usr/bin/env python3
"""Training-step throughput of qtrain's CPU model beside PyTorch transformers' Qwen2.

Both run the same preset configuration on random tokens: forward, backward (mean cross-entropy)
and one AdamW step, in fp32 on the CPU with the same number of threads, in the same run. Prints
a table of tokens/s. PyTorch uses eager attention (its reference path) and SDPA (transformers'
default). Each implementation is measured --repeats times, the implementations taking turns,
and the table shows the median (shared machines are noisy).

Usage: python3 bench/model_peer.py --bench build/bin/model_train_bench --threads 2 \
           [--batch 4 --seq 512 --steps 10 --repeats 3]
"""
import argparse
import json
import os
import subprocess
import time

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

PRESETS = {
    "qwen2-tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=176,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen2-test": dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2),
}


def make_torch_model(preset, attn):
    config = Qwen2Config(**PRESETS[preset], rope_theta=1e6, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, max_position_embeddings=32768,
                         use_sliding_window=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).float()
    model.config._attn_implementation = attn
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01,
                                  foreach=False)
    return model, optimizer


def torch_step_rate(model, optimizer, batch, seq, steps, warmup, attn):
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    total = 0.0
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step >= warmup:
            total += elapsed
    per_step = total / steps
    return {"impl": f"pytorch ({attn})", "seconds_per_step": per_step,
            "tokens_per_second": batch * seq / per_step}


def qtrain_step_rate(bench, preset, batch, seq, steps, warmup, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # qtrain runs BLAS on its OpenMP threads
    out = subprocess.run([bench, "--preset", preset, "--batch", str(batch), "--seq", str(seq),
                          "--steps", str(steps), "--warmup", str(warmup)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="build/bin/model_train_bench")
    parser.add_argument("--preset", default="qwen2-tiny", choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {attn: make_torch_model(args.preset, attn) for attn in ("eager", "sdpa")}
    runs = {"qtrain": [], "eager": [], "sdpa": []}
    for _ in range(args.repeats):
        runs["qtrain"].append(qtrain_step_rate(args.bench, args.preset, args.batch, args.seq,
                                               args.steps, args.warmup, args.threads))
        for attn, (model, optimizer) in models.items():
            runs[attn].append(torch_step_rate(model, optimizer, args.batch, args.seq, args.steps,
                                              args.warmup, attn))
    rows = []
    for name, results in runs.items():
        row = sorted(results, key=lambda r: r["tokens_per_second"])[len(results) // 2]
        row["impl"] = "qtrain" if name == "qtrain" else f"pytorch ({name})"
        rows.append(row)
    base = rows[0]["tokens_per_second"]
    print(f"{args.preset}, batch {args.batch} x seq {args.seq}, {args.threads} threads, "
          f"fwd+bwd+AdamW, median of {args.repeats} runs of {args.steps} steps; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"| {'implementation':<18} | {'s/step':>8} | {'tokens/s':>10} | {'qtrain speedup':>14} |")
    print(f"|{'-' * 20}|{'-' * 10}|{'-' * 12}|{'-' * 16}|")
    for row in rows:
        speedup = base / row["tokens_per_second"]
        print(f"| {row['impl']:<18} | {row['seconds_per_step']:>8.4f} | "
              f"{row['tokens_per_second']:>10.1f} | {speedup:>13.2f}x |")


if __name__ == "__main__":
    main()
