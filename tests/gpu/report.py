#!/usr/bin/env python3
"""The table tests/gpu/run.sh prints last, from the outputs of its checks.

  report.py --out DIR [--build-seconds N] [--total-seconds N]

Reads DIR/ops.txt and DIR/conformance*.txt (the last line of each), DIR/model.json
(gpu_model_check) and DIR/peer.json (bench/torch_train_peer.py), any of which may be missing
(its rows then say why), and prints a Markdown table, also written to DIR/table.md.
"""

import argparse
import json
import os
import sys


def last_line(path):
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else "no output"
    except OSError:
        return "not run"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"unreadable": str(e)}


def gib(n):
    return f"{n / 2**30:.1f} GiB"


def rows(out_dir, build_seconds):
    yield ("build", f"{build_seconds} s" if build_seconds is not None else "?")
    yield ("(a) kernels and GEMMs vs reference", last_line(os.path.join(out_dir, "ops.txt")))
    yield ("(a') CUDA backend conformance", last_line(os.path.join(out_dir, "conformance.txt")))
    kernel = os.path.join(out_dir, "conformance_kernel.txt")
    if os.path.exists(kernel):
        yield ("(a') the same with attention.cu instead of cuDNN", last_line(kernel))
    model = load(os.path.join(out_dir, "model.json"))
    if "unreadable" in model:
        yield ("(b)-(d) model on the GPU", "not run: " + last_line(
            os.path.join(out_dir, "model.txt")))
        return
    for g in model.get("gradients", []):
        yield (f"(b) qwen2-tiny {g['dtype']} loss, gradients vs CPU",
               f"{'ok' if g['passed'] else 'MISMATCH'}: loss error {g['loss_error']:.1e}, "
               f"worst gradient {g['worst_gradient_error']:.1e} ({g['worst_tensor']})")
    curve = model.get("training_curve")
    if curve:
        yield ("(c) qwen2-tiny bf16 training, 30 steps vs CPU",
               f"{'ok' if curve['passed'] else 'MISMATCH'}: loss {curve['losses'][0]:.3f} -> "
               f"{curve['losses'][-1]:.3f} (CPU {curve['reference_losses'][-1]:.3f}), "
               f"worst step {curve['worst_error']:.1e}")
    peer = load(os.path.join(out_dir, "peer.json"))
    peer_points = {p["seq_len"]: p for p in peer.get("points", [])}
    attention = {"cudnn": "cuDNN SDPA", "kernel": "attention.cu"}.get(model.get("attention"), "?")
    for t in model.get("throughput", []):
        name = f"(d) qwen2-0.5b bf16, {t['seq_len']} tokens, {attention}"
        text = (f"{t['tokens_per_second']:.0f} tokens/s, {t['seconds_per_step']:.3f} s/step, "
                f"{t['model_tflops']:.0f} TFLOP/s")
        if t.get("mfu"):
            text += f", MFU {100 * t['mfu']:.1f}%"
        if t.get("recompute"):
            text += f", recomputation, peak {gib(t['peak_backend_bytes'])}"
        yield (name, text)
        p = peer_points.get(t["seq_len"])
        if p:
            ratio = t["tokens_per_second"] / p["tokens_per_second"]
            yield (f"(e) transformers + torch.compile, {t['seq_len']} tokens",
                   f"{p['tokens_per_second']:.0f} tokens/s; qtrain / torch = {ratio:.2f}x")
    if not peer_points and "throughput" in model:
        yield ("(e) transformers + torch.compile", "not run: " + last_line(
            os.path.join(out_dir, "peer.txt")))
    for e in model.get("errors", []):
        yield ("error", e)


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--build-seconds", type=int)
    p.add_argument("--total-seconds", type=int)
    args = p.parse_args(argv)
    lines = ["| check | result |", "| --- | --- |"]
    for name, text in rows(args.out, args.build_seconds):
        lines.append(f"| {name} | {text.replace('|', '/')} |")
    if args.total_seconds is not None:
        lines.append(f"| total | {args.total_seconds} s |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
