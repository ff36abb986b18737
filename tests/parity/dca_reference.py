#!/usr/bin/env python3
"""Float64 Dual Chunk Attention reference of a Qwen2 model directory (numpy only).

Reads config.json and model.safetensors, computes log p(ids[i+1] | ids[..i]) with DCA written
from its definition (docs/model-math.md, "Dual Chunk Attention"): keys rotated at j mod s, the
query at i mod s (same chunk), min(i mod s + s, C) (previous chunk), min(2s - 1, C) (older),
one softmax, logits scaled by lambda^2 when original_max_position_embeddings > 0.

  dca_reference.py --model DIR --dca C,L --ids ids.json   -> JSON list of log-probs on stdout
"""
import argparse
import json
import math
import struct

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16}


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        if info["dtype"] == "BF16":
            raw = np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], dtype=DTYPES[info["dtype"]])
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def rope(x, pos, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    lo, hi = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([lo * c - hi * s, hi * c + lo * s], axis=-1)


def rmsnorm(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def logprobs(model_dir, ids, chunk, local, original):
    cfg = json.load(open(f"{model_dir}/config.json"))
    w = load_safetensors(f"{model_dir}/model.safetensors")
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    theta, eps = cfg["rope_theta"], cfg["rms_norm_eps"]
    T = len(ids)
    s = chunk - local
    i = np.arange(T)
    off = (i % s).astype(np.float64)
    pos_succ = np.minimum(off + s, chunk)
    pos_inter = np.full(T, float(min(2 * s - 1, chunk)))
    lam = 1.0
    if original > 0:
        lam = max(1.0, 0.1 * math.log(T / original) + 1.0)
    cq, ck = i[:, None] // s, i[None, :] // s
    causal = i[None, :] <= i[:, None]
    masks = [causal & (ck == cq), causal & (ck == cq - 1), causal & (ck <= cq - 2)]
    x = w["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = (a @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]).reshape(T, H, D)
        k = (a @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]).reshape(T, Hkv, D)
        v = (a @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]).reshape(T, Hkv, D)
        k = rope(k, off, theta) * lam
        qs = [rope(q, pos, theta) * lam for pos in (off, pos_succ, pos_inter)]
        o = np.zeros((T, H, D))
        for h in range(H):
            g = h // (H // Hkv)
            scores = np.full((T, T), -np.inf)
            for qv, m in zip(qs, masks):
                sc = qv[:, h, :] @ k[:, g, :].T / math.sqrt(D)
                scores[m] = sc[m]
            scores -= scores.max(axis=1, keepdims=True)
            pr = np.exp(scores)
            pr /= pr.sum(axis=1, keepdims=True)
            o[:, h, :] = pr @ v[:, g, :]
        x = x + o.reshape(T, H * D) @ w[p + "self_attn.o_proj.weight"].T
        m = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = m @ w[p + "mlp.gate_proj.weight"].T
        up = m @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    y = rmsnorm(x, w["model.norm.weight"], eps)
    logits = y @ w["model.embed_tokens.weight"].T
    mx = logits.max(axis=1, keepdims=True)
    lse = (mx + np.log(np.exp(logits - mx).sum(axis=1, keepdims=True)))[:, 0]
    return [float(logits[t, ids[t + 1]] - lse[t]) for t in range(T - 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dca", required=True, help="CHUNK,LOCAL")
    ap.add_argument("--ids", required=True, help="JSON file with a list of ids or {'ids': [...]}")
    args = ap.parse_args()
    chunk, local = (int(v) for v in args.dca.split(","))
    cfg = json.load(open(f"{args.model}/config.json"))
    original = (cfg.get("dual_chunk_attention_config") or {}).get(
        "original_max_position_embeddings", 0) or 0
    ids = json.load(open(args.ids))
    if isinstance(ids, dict):
        ids = ids["ids"]
    print(json.dumps(logprobs(args.model, ids, chunk, local, original)))


if __name__ == "__main__":
    main()
