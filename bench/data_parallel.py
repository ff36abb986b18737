#!/usr/bin/env python3
"""Data-parallel training throughput of qtrain beside PyTorch DDP, in the same run.

For each configuration (qwen2-tiny and a GEMM-bound one: hidden 512, 4 layers, 8/2 heads,
vocab 32000) it trains the same global batch of synthetic tokens for a few steps as:
  qtrain 1x1   one worker, one thread (OMP_NUM_THREADS=1)
  qtrain 2x1   two worker processes of one thread each, Gloo over the loopback (the trainer's
               production step: reduce-scatter, ZeRO-1 AdamW on each rank's shard, all-gather)
  qtrain 1x2   one worker, two threads
  ddp 2x1      PyTorch DDP (gloo backend), two processes, torch.set_num_threads(1), transformers'
               Qwen2ForCausalLM with the same config, the same micro-batching (gradient
               accumulation under no_sync), clipping and AdamW, fp32
and prints one table: tokens/s (the global batch over the mean step time after the warm-up
steps, on rank 0), the CPU seconds per step of all ranks together (beside the wall time it tells
computing from waiting for a core on a loaded machine), the share of step time in collectives,
and the ratio to DDP 2x1. The goal:
qtrain 2x1 at least 1.5x DDP 2x1. The table is also written as JSON and markdown under --out.

qtrain's comm share is what the trainer measures in its collectives (waiting included). DDP
overlaps its all-reduce with the backward pass, so its share is an estimate of the exposed
part: the synchronizing micro-batch's forward+backward minus the mean of the no_sync ones (n/a
with one micro-batch per rank).

Every qtrain run of a configuration must end with the same final model bytes (the result does
not depend on the worker or thread count); the table says so, and --check fails otherwise.

Usage: python3 bench/data_parallel.py --bench build/bin/data_parallel_bench [--steps 3 ...]
       python3 bench/data_parallel.py --check   (a short run that checks the above; ctest -L bench)
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    # The qwen2-tiny preset (worker/model/config.cc).
    "qwen2-tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=176,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    # GEMM-bound: the matrix products dominate the step.
    "gemm-512": dict(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                     num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2),
    # The qwen2-test preset: a run of seconds (--check).
    "qwen2-test": dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2),
}
PRESETS = {"qwen2-tiny", "qwen2-test"}  # built into qtrain; others are passed as sizes
SETUPS = ["qtrain 1x1", "qtrain 2x1", "qtrain 1x2", "ddp 2x1"]
GOAL = 1.5  # qtrain 2x1 / ddp 2x1 tokens/s


# ---------------------------------------------------------------------------------------------
# Synthetic tokens: uniform ids from a seeded SplitMix64 stream, as data_parallel_bench makes
# them, written once and read by every run.

def synthetic_tokens(count, vocab, seed):
    import numpy as np
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(
            0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z % np.uint64(vocab)).astype("<i4")


def tokens_needed(args):
    return (args.warmup + args.steps) * args.global_batch * args.seq + 1


# ---------------------------------------------------------------------------------------------
# Process groups: start every rank, wait with a deadline, kill them all on any failure.

def run_group(commands, env, timeout):
    procs = []
    try:
        for command in commands:
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + timeout
        outputs = []
        for rank, proc in enumerate(procs):
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"rank {rank} of {commands[rank][0]} did not finish in "
                                   f"{timeout:.0f} s")
            if proc.returncode != 0:
                raise RuntimeError(f"rank {rank} exited {proc.returncode}: "
                                   f"{err.strip()[-2000:]}")
            outputs.append(out)
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def last_json(text, what):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{what} printed no result")


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def qtrain_run(args, config, workers, threads, tokens_file, scratch):
    root = tempfile.mkdtemp(prefix="qtrain-dp-", dir=scratch)
    try:
        sizes = CONFIGS[config]
        model = (["--preset", config] if config in PRESETS else
                 ["--vocab", str(sizes["vocab_size"]), "--hidden", str(sizes["hidden_size"]),
                  "--intermediate", str(sizes["intermediate_size"]),
                  "--layers", str(sizes["num_hidden_layers"]),
                  "--heads", str(sizes["num_attention_heads"]),
                  "--kv-heads", str(sizes["num_key_value_heads"])])
        common = [args.bench, "--world-size", str(workers), "--store-dir", f"{root}/store",
                  "--run-dir", f"{root}/run", "--label", config, "--seq", str(args.seq),
                  "--global-batch", str(args.global_batch), "--micro-batch",
                  str(args.micro_batch), "--steps", str(args.steps), "--warmup",
                  str(args.warmup), "--tokens-file", tokens_file,
                  "--timeout-seconds", str(args.timeout)] + model
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        outputs = run_group([common + ["--rank", str(r)] for r in range(workers)], env,
                            args.timeout)
        ranks = [last_json(out, f"data_parallel_bench rank {r}") for r, out in enumerate(outputs)]
        result = dict(ranks[0])
        result["comm_share"] = statistics.mean(r["comm_share"] for r in ranks)
        result["comm_share_by_rank"] = [r["comm_share"] for r in ranks]
        result["cpu_seconds_per_step"] = sum(r["cpu_seconds_per_step"] for r in ranks)
        result["final_sha256"] = sha256_file(f"{root}/run/final/model.safetensors")
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_run(args, configs, workers, threads, tokens_files):
    """Every configuration in one process group: torch and transformers load once."""
    port = free_port()
    command = [sys.executable, os.path.abspath(__file__), "--ddp-worker", "--configs",
               ",".join(configs), "--world-size", str(workers), "--threads", str(threads),
               "--port", str(port), "--tokens-files", ",".join(tokens_files), "--seq",
               str(args.seq), "--global-batch", str(args.global_batch), "--micro-batch",
               str(args.micro_batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--attn", args.attn, "--timeout", str(args.timeout)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    outputs = run_group([command + ["--rank", str(r)] for r in range(workers)], env,
                        args.timeout * len(configs))
    by_rank = [[json.loads(line) for line in out.splitlines() if line.startswith("{")]
               for out in outputs]
    for results in by_rank:
        if [r["config"] for r in results] != list(configs):
            raise RuntimeError(f"the DDP peer printed results for {[r['config'] for r in results]}")
    for i, result in enumerate(by_rank[0]):  # CPU time of the whole group
        result["cpu_seconds_per_step"] = sum(ranks[i]["cpu_seconds_per_step"] for ranks in by_rank)
    return by_rank[0]


# ---------------------------------------------------------------------------------------------
# The PyTorch DDP peer: one rank.

def ddp_worker(args):
    import torch.distributed as dist
    from datetime import timedelta
    import torch

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world_size, timeout=timedelta(seconds=args.timeout))
    for config, tokens_file in zip(args.configs.split(","), args.tokens_files.split(",")):
        print(json.dumps(ddp_train(args, config, tokens_file)), flush=True)
    dist.destroy_process_group()


def ddp_train(args, config_name, tokens_file):
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**CONFIGS[config_name], rope_theta=1e6, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, max_position_embeddings=max(32768, args.seq),
                         use_sliding_window=False)
    config._attn_implementation = args.attn
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).float()
    model.config._attn_implementation = args.attn
    model.train()
    ddp = DistributedDataParallel(model)
    # qtrain's optimizer defaults (jobs.proto): betas (0.9, 0.95), eps 1e-8, decay 0.1, clip 1.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.1, foreach=False)
    tokens = torch.from_numpy(np.fromfile(tokens_file, dtype="<i4").astype(np.int64))
    seq, mb = args.seq, args.micro_batch
    per_rank = args.global_batch // args.world_size
    micro_batches = per_rank // mb
    global_tokens = args.global_batch * seq
    vocab = config.vocab_size
    step_times, cpu_times, exposed, losses = [], [], [], []
    for step in range(args.warmup + args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=False)
        mb_times, loss_sum = [], 0.0
        for k in range(micro_batches):
            first = step * args.global_batch + args.rank * per_rank + k * mb
            windows = torch.stack([tokens[(first + i) * seq:(first + i) * seq + seq + 1]
                                   for i in range(mb)])
            ids, targets = windows[:, :-1], windows[:, 1:]
            sync = k == micro_batches - 1
            t = time.perf_counter()
            with contextlib.nullcontext() if sync else ddp.no_sync():
                logits = ddp(input_ids=ids).logits
                loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1),
                                       reduction="sum")
                # DDP averages over ranks: scale so the result is the global mean.
                (loss * (args.world_size / global_tokens)).backward()
            mb_times.append(time.perf_counter() - t)
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            step_times.append(elapsed)
            cpu_times.append(time.process_time() - cpu_start)
            if micro_batches > 1:
                exposed.append(max(0.0, mb_times[-1] - statistics.mean(mb_times[:-1])))
        losses.append(loss_sum * args.world_size / global_tokens)
    dist.barrier()  # the next configuration starts together
    per_step = statistics.mean(step_times)
    return {"impl": "ddp", "config": config_name, "rank": args.rank,
              "world_size": args.world_size, "seconds_per_step": per_step,
              "tokens_per_second": global_tokens / per_step, "step_seconds": step_times,
              "cpu_seconds_per_step": statistics.mean(cpu_times),
              "comm_share": (statistics.mean(exposed) / per_step) if exposed else None,
              "first_loss": losses[0], "last_loss": losses[-1],
              "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# The table.

def setup_shape(setup):
    impl, shape = setup.split()
    workers, threads = (int(x) for x in shape.split("x"))
    return impl, workers, threads


def measure_all(args, configs, setups, tokens_files, scratch, runs):
    """One repeat: each qtrain setup per configuration, then each peer setup over all of them."""
    for setup in setups:
        impl, workers, threads = setup_shape(setup)
        started = time.monotonic()
        if impl == "ddp":
            results = ddp_run(args, configs, workers, threads, [tokens_files[c] for c in configs])
        else:
            results = [qtrain_run(args, c, workers, threads, tokens_files[c], scratch)
                       for c in configs]
        for config, result in zip(configs, results):
            runs[config][setup].append(result)
            print(f"{config} {setup}: {result['tokens_per_second']:.1f} tokens/s",
                  file=sys.stderr, flush=True)
        print(f"{setup}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def median_run(results):
    return sorted(results, key=lambda r: r["tokens_per_second"])[len(results) // 2]


def fmt_share(share):
    return "n/a" if share is None else f"{100 * share:.1f}%"


def build_rows(args, measured):
    rows = []
    for config, by_setup in measured.items():
        ddp = by_setup.get("ddp 2x1")
        for setup, r in by_setup.items():
            ratio = (r["tokens_per_second"] / ddp["tokens_per_second"]) if ddp else None
            rows.append({"config": config, "setup": setup,
                         "tokens_per_second": r["tokens_per_second"],
                         "seconds_per_step": r["seconds_per_step"],
                         "comm_share": r.get("comm_share"), "ratio_to_ddp": ratio,
                         "cpu_seconds_per_step": r.get("cpu_seconds_per_step"),
                         "first_loss": r.get("first_loss"), "last_loss": r.get("last_loss")})
    return rows


def markdown(args, rows, header):
    lines = [header, "",
             "| config | setup | tokens/s | s/step | CPU s/step | comm share | ratio to DDP 2x1 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        ratio = "n/a" if row["ratio_to_ddp"] is None else f"{row['ratio_to_ddp']:.2f}x"
        lines.append(f"| {row['config']} | {row['setup']} | {row['tokens_per_second']:.1f} | "
                     f"{row['seconds_per_step']:.3f} | {row['cpu_seconds_per_step']:.3f} | "
                     f"{fmt_share(row['comm_share'])} | {ratio} |")
    return "\n".join(lines)


def goal_lines(rows):
    lines = []
    for row in rows:
        if row["setup"] == "qtrain 2x1" and row["ratio_to_ddp"] is not None:
            verdict = "met" if row["ratio_to_ddp"] >= GOAL else "MISSED"
            lines.append(f"goal {row['config']}: qtrain 2x1 = {row['ratio_to_ddp']:.2f}x DDP 2x1 "
                         f"(goal >= {GOAL}x): {verdict}")
    return lines


def check_results(measured):
    problems = []
    for config, by_setup in measured.items():
        for setup, r in by_setup.items():
            if not (r["tokens_per_second"] > 0 and math.isfinite(r["tokens_per_second"])):
                problems.append(f"{config} {setup}: tokens/s {r['tokens_per_second']}")
            share = r.get("comm_share")
            if share is not None and not 0 <= share < 1:
                problems.append(f"{config} {setup}: comm share {share}")
            if not math.isfinite(r["last_loss"]):
                problems.append(f"{config} {setup}: loss {r['last_loss']}")
        hashes = {s: r["final_sha256"] for s, r in by_setup.items() if s.startswith("qtrain")}
        if len(set(hashes.values())) > 1:
            problems.append(f"{config}: final models differ across {hashes}")
        two = by_setup.get("qtrain 2x1")
        if two is not None and not two.get("bytes_sent", 0) > 0:
            problems.append(f"{config} qtrain 2x1: no bytes sent between the ranks")
        if two is not None and not two["comm_share"] > 0:
            problems.append(f"{config} qtrain 2x1: no time measured in collectives")
    return problems


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default="build/bin/data_parallel_bench")
    parser.add_argument("--configs", default="qwen2-tiny,gemm-512",
                        help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help="comma-separated 'qtrain WxT' / 'ddp WxT'")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--global-batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per setup (median)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                        help="the peer's attention")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--out", default="build/bench", help="directory for the JSON/markdown")
    parser.add_argument("--check", action="store_true",
                        help="a short run (qwen2-test) that fails unless every setup ran, the "
                             "qtrain runs agree bit for bit and the 2-worker runs communicated")
    # One rank of the DDP peer (started by this script).
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)

    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokens-files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        args.configs, args.seq, args.steps, args.warmup, args.repeats = "qwen2-test", 64, 2, 1, 1
    for name in ("seq", "global_batch", "micro_batch", "steps", "repeats"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or not args.timeout > 0:
        parser.error("--warmup must be >= 0 and --timeout positive")
    return parser, args


def main():
    parser, args = parse_args()
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    configs = [c for c in args.configs.split(",") if c]
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    for c in configs:
        if c not in CONFIGS:
            parser.error(f"--configs: unknown configuration '{c}' (known: {sorted(CONFIGS)})")
    for s in setups:
        try:
            impl, workers, threads = setup_shape(s)
        except ValueError:
            parser.error(f"--setups: '{s}' is not 'qtrain WxT' or 'ddp WxT'")
        if impl not in ("qtrain", "ddp") or workers < 1 or threads < 1:
            parser.error(f"--setups: '{s}' is not 'qtrain WxT' or 'ddp WxT'")
        if args.global_batch % (args.micro_batch * workers) != 0:
            parser.error(f"--global-batch {args.global_batch} is not a multiple of "
                         f"--micro-batch x workers ({args.micro_batch} x {workers}) for '{s}'")
    if not os.access(args.bench, os.X_OK):
        parser.error(f"--bench {args.bench}: not an executable (build data_parallel_bench)")
    if any(s.startswith("ddp") for s in setups):
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            sys.exit(f"data_parallel.py: the DDP peer needs torch and transformers ({e}); "
                     "pip install torch transformers, or leave the ddp setups out (--setups)")

    os.makedirs(args.out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="data-parallel-")
    try:
        tokens_files = {}
        for config in configs:
            tokens_files[config] = os.path.join(scratch, f"{config}.tokens")
            synthetic_tokens(tokens_needed(args), CONFIGS[config]["vocab_size"],
                             args.seed).tofile(tokens_files[config])
        runs = {c: {s: [] for s in setups} for c in configs}
        for _ in range(args.repeats):  # setups take turns: a noisy machine hurts all alike
            measure_all(args, configs, setups, tokens_files, scratch, runs)
        measured = {c: {s: median_run(r) for s, r in by_setup.items()}
                    for c, by_setup in runs.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = build_rows(args, measured)
    try:
        import torch
        import transformers
        versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    except ImportError:
        versions = "no torch"
    header = (f"data-parallel training, seq {args.seq}, global batch {args.global_batch} x "
              f"micro-batch {args.micro_batch}, fp32, {args.steps} steps after {args.warmup} "
              f"warm-up, median of {args.repeats}; {os.cpu_count()} CPUs; {versions}; "
              f"peer attention {args.attn}")
    table = markdown(args, rows, header)
    extra = goal_lines(rows)
    for config, by_setup in measured.items():
        hashes = {r["final_sha256"] for s, r in by_setup.items() if s.startswith("qtrain")}
        if hashes:
            extra.append(f"{config}: qtrain final model bytes "
                         f"{'identical' if len(hashes) == 1 else 'DIFFER'} across the setups")
    print(table)
    for line in extra:
        print(line)
    with open(os.path.join(args.out, "data_parallel.md"), "w") as f:
        f.write(table + "\n\n" + "\n".join(extra) + "\n")
    with open(os.path.join(args.out, "data_parallel.json"), "w") as f:
        json.dump({"header": header, "rows": rows, "runs": measured, "notes": extra}, f,
                  indent=2)
    if args.check:
        problems = check_results(measured)
        for p in problems:
            print(f"check failed: {p}")
        if problems:
            return 1
        print("data-parallel benchmark check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
