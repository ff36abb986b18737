#!/usr/bin/env python3
"""Generates the transformers parity fixtures under tests/parity/fixtures/<name>/.

Each fixture is a small random Qwen2 model in fp32 (config.json + model.safetensors, as
transformers saves them) and io.safetensors with what transformers computes for it:

  input_ids [B, T] (I64), labels [B, T] (I64, transformers convention: unshifted, -100 ignored),
  logits [B, T, V], loss [1], grad.<parameter name> for every parameter (tied lm_head included in
  grad.model.embed_tokens.weight), generate.prompt [P] and generate.output [P + 32] (I64, greedy).

The reference numbers are computed in float64 (eager attention) and stored as fp32, so the
fixtures measure qtrain's fp32 error against exact math rather than against torch's own fp32
rounding. Weights are drawn wider than the usual N(0, 0.02) so that logits are well separated and
greedy decoding has no near-ties (the script checks the top-1/top-2 margin at every step).

Usage: python3 tests/parity/make_fixtures.py [--out tests/parity/fixtures]
"""
import argparse
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

BATCH, SEQ, NEW_TOKENS = 2, 16, 32
MIN_GREEDY_MARGIN = 1e-3

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            tie_word_embeddings=True, use_sliding_window=False, bos_token_id=None,
            eos_token_id=None, pad_token_id=None)

FIXTURES = {
    "plain": dict(rope_theta=1000000.0, max_position_embeddings=4096),
    # YaRN with every value explicit: the factor wins and L0 = original_max_position_embeddings
    # in the transformers version used here (see docs/model-math.md#version-trap).
    "yarn": dict(rope_theta=10000.0, max_position_embeddings=4096,
                 rope_scaling={"rope_type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 1024,
                               "beta_fast": 32.0, "beta_slow": 1.0}),
}


# Not committed (about 1 GB): Qwen2-0.5B's exact layer shapes and vocabulary with 2 layers, for a
# one-off check at full width (--extra DIR; run parity_test with QTRAIN_PARITY_FIXTURES=DIR/...).
EXTRA_FIXTURES = {
    "qwen2-0.5b-2layers": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                               num_hidden_layers=2, num_attention_heads=14,
                               num_key_value_heads=2, rope_theta=1000000.0,
                               max_position_embeddings=32768),
}


def legacy_config_json(config_dict, rope):
    """Rewrites a saved config into the older layout (rope_theta + rope_scaling with `type`),
    as Qwen2-Instruct ships it, so that the C++ reader is exercised on both layouts."""
    out = dict(config_dict)
    params = out.pop("rope_parameters")
    out["rope_theta"] = params["rope_theta"]
    scaling = dict(rope["rope_scaling"])
    scaling["type"] = scaling.pop("rope_type")
    out["rope_scaling"] = scaling
    return out


def build_model(name, spec, seed):
    kwargs = dict(BASE)
    kwargs.update({k: v for k, v in spec.items() if k != "rope_scaling"})
    if "rope_scaling" in spec:
        kwargs["rope_scaling"] = dict(spec["rope_scaling"])
    config = Qwen2Config(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model


def greedy(model, prompt):
    out = model.generate(prompt[None, :], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                         do_sample=False, eos_token_id=None, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)
    margin = min(float((s.topk(2).values[0, 0] - s.topk(2).values[0, 1])) for s in out.scores)
    return out.sequences[0], margin


def make_fixture(name, spec, out_dir):
    for seed in range(100):
        model = build_model(name, spec, seed)
        model64 = model.double().eval()
        gen = torch.Generator().manual_seed(1000 + seed)
        vocab = model.config.vocab_size
        prompt = torch.randint(0, vocab, (8,), generator=gen)
        with torch.no_grad():
            sequence, margin = greedy(model64, prompt)
        if margin >= MIN_GREEDY_MARGIN:
            break
    else:
        raise RuntimeError(f"{name}: no seed gave a greedy margin >= {MIN_GREEDY_MARGIN}")
    print(f"{name}: seed {seed}, smallest greedy top-1/top-2 logit margin {margin:.4f}")

    input_ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    labels = input_ids.clone()
    labels[0, 3] = -100
    labels[0, 10:12] = -100
    labels[1, 7] = -100
    model64.zero_grad()
    out = model64(input_ids=input_ids, labels=labels)
    out.loss.backward()

    os.makedirs(out_dir, exist_ok=True)
    model32 = model64.float()
    model32.save_pretrained(out_dir, safe_serialization=True)
    with open(os.path.join(out_dir, "config.json")) as f:
        config_dict = json.load(f)
    if "rope_scaling" in spec:
        config_dict = legacy_config_json(config_dict, spec)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(config_dict, f, indent=2, sort_keys=True)
            f.write("\n")
    for extra in ("generation_config.json",):
        path = os.path.join(out_dir, extra)
        if os.path.exists(path):
            os.remove(path)

    tensors = {
        "input_ids": input_ids.to(torch.int64),
        "labels": labels.to(torch.int64),
        "logits": out.logits.detach().float(),
        "loss": out.loss.detach().float().reshape(1),
        "generate.prompt": prompt.to(torch.int64),
        "generate.output": sequence.to(torch.int64),
    }
    for pname, p in model64.named_parameters():
        tensors["grad." + pname] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(out_dir, "io.safetensors"),
              metadata={"transformers_version": transformers.__version__,
                        "torch_version": torch.__version__, "seed": str(seed)})

    # The rewritten config must load in transformers and give the same logits.
    reloaded = Qwen2ForCausalLM.from_pretrained(out_dir, attn_implementation="eager").double()
    with torch.no_grad():
        again = reloaded(input_ids=input_ids).logits
    err = (again - out.logits).abs().max().item()
    assert err < 1e-5, f"{name}: reloaded fixture differs from the original by {err}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures"))
    parser.add_argument("--extra", metavar="DIR",
                        help="write the large EXTRA_FIXTURES under DIR instead")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    if args.extra:
        for name, spec in EXTRA_FIXTURES.items():
            make_fixture(name, spec, os.path.join(args.extra, name))
        return
    for name, spec in FIXTURES.items():
        make_fixture(name, spec, os.path.join(args.out, name))
    with open(os.path.join(args.out, "VERSIONS"), "w") as f:
        f.write(f"transformers {transformers.__version__}\ntorch {torch.__version__}\n")


if __name__ == "__main__":
    main()
