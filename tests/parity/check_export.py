#!/usr/bin/env python3
"""Checks that models written by qtrain load in transformers as they are and give qtrain's logits.

For each case it runs `qtrain init` (a fresh random model in transformers format), loads the
directory with transformers' Qwen2ForCausalLM.from_pretrained (no missing or unexpected tensors,
tied lm_head), and compares the logits of a few random sequences with `qtrain score
--output-logits` on the same ids. Exits non-zero on any difference above the tolerance.

Usage: python3 tests/parity/check_export.py --qtrain build/bin/qtrain
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import Qwen2ForCausalLM

# (name, preset, extra `qtrain init` flags, sequence lengths)
CASES = [
    ("qwen2-tiny", "qwen2-tiny", [], (3, 17, 64)),
    ("qwen2-tiny-yarn", "qwen2-tiny", ["--yarn-factor", "4",
                                       "--yarn-original-max-position-embeddings", "2048",
                                       "--rope-theta", "10000"], (3, 17, 64)),
]
# The full-size preset (2 GB of weights; minutes): only with --full.
FULL_CASES = [("qwen2-0.5b", "qwen2-0.5b", [], (5, 12))]
REL_TOL = 1e-4


def qtrain_logits(qtrain, model_dir, sequences):
    lines = "".join(json.dumps({"ids": seq}) + "\n" for seq in sequences)
    out = subprocess.run([qtrain, "score", "--model", model_dir, "--output-logits"],
                         input=lines, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def check_case(qtrain, name, preset, extra_args, lengths, work):
    model_dir = os.path.join(work, name)
    subprocess.run([qtrain, "init", "--preset", preset, "--out", model_dir, "--seed", "5"]
                   + extra_args, check=True, capture_output=True)
    model, info = Qwen2ForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                                   output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise AssertionError(f"{name}: transformers reported loading problems: {problems}")
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise AssertionError(f"{name}: lm_head is not tied to embed_tokens")
    if model.dtype != torch.float32:
        raise AssertionError(f"{name}: loaded as {model.dtype}, expected float32")
    model.eval()

    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    sequences = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
    results = qtrain_logits(qtrain, model_dir, sequences)
    worst = 0.0
    for seq, result in zip(sequences, results):
        with torch.no_grad():
            ref = model(torch.tensor([seq])).logits[0].double()
        ours = torch.tensor(result["logits"], dtype=torch.float64)
        err = ((ours - ref).abs().max() / ref.abs().max()).item()
        worst = max(worst, err)
        logprobs = torch.log_softmax(ref, dim=-1)
        expected = [logprobs[i, seq[i + 1]].item() for i in range(len(seq) - 1)]
        lp_err = max((abs(a - b) for a, b in zip(result["logprobs"], expected)), default=0.0)
        if lp_err > 1e-4:
            raise AssertionError(f"{name}: logprobs differ by {lp_err}")
    print(f"{name}: {model.config.rope_parameters}, worst logits rel err {worst:.3g}")
    if worst > REL_TOL:
        raise AssertionError(f"{name}: logits differ from transformers by {worst} (relative)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qtrain", default=os.path.join(
        os.environ.get("QTRAIN_BIN_DIR", "build/bin"), "qtrain"))
    parser.add_argument("--full", action="store_true", help="also check the qwen2-0.5b preset")
    args = parser.parse_args()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        for case in CASES + (FULL_CASES if args.full else []):
            check_case(args.qtrain, *case, work)
            shutil.rmtree(os.path.join(work, case[0]))
    print("OK")


if __name__ == "__main__":
    sys.exit(main())
