#!/usr/bin/env python3
"""The peer of gpu_model_check's throughput figures: transformers' Qwen2 trained with PyTorch.

Same model config (a transformers config.json, as qtrain writes it), same batch shape and the
same step (forward with the next-token loss, backward, AdamW with weight decay 0.1), the way a
PyTorch user would run it fast on one card: torch.compile, SDPA attention, bf16 autocast over
fp32 weights, fused AdamW. Prints one line per sequence length and writes JSON with --json.

  bench/torch_train_peer.py --config qwen2-0.5b.json --seq-len 2048 4096 [--json out.json]

--device cpu --no-compile runs it anywhere (slowly), which is how the tests check the script.
"""

import argparse
import json
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="transformers config.json of the model")
    p.add_argument("--seq-len", type=int, nargs="+", required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation included)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-compile", action="store_true", help="eager mode instead of torch.compile")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--batch-size and --steps must be positive, --warmup not negative")
    if any(t < 2 for t in args.seq_len):
        p.error("--seq-len values must be at least 2")
    return args


def main(argv):
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    try:
        config = Qwen2Config.from_json_file(args.config)
    except (OSError, ValueError) as e:
        sys.exit(f"torch_train_peer: cannot read the config {args.config}: {e}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_train_peer: --device cuda but PyTorch sees no GPU")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                  weight_decay=0.1, fused=device.type == "cuda")
    forward = model if args.no_compile else torch.compile(model)

    def step(ids):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "compile": not args.no_compile,
        "points": [],
    }
    for seq_len in args.seq_len:
        ids = torch.randint(0, config.vocab_size, (args.batch_size, seq_len), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            step(ids)
        synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step(ids)
        synchronize()
        seconds = (time.perf_counter() - start) / args.steps
        point = {
            "seq_len": seq_len,
            "batch_size": args.batch_size,
            "seconds_per_step": seconds,
            "tokens_per_second": args.batch_size * seq_len / seconds,
            "loss": float(loss.detach()),
            "peak_memory_bytes": (torch.cuda.max_memory_allocated(device)
                                  if device.type == "cuda" else None),
        }
        results["points"].append(point)
        print(f"torch_train_peer: seq {seq_len}: {seconds:.3f} s/step, "
              f"{point['tokens_per_second']:.0f} tokens/s, loss {point['loss']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
