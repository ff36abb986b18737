#!/usr/bin/env python3
"""Generates tests/parity/fixtures/mc/: `qtrain eval --task multiple-choice` against
lm-evaluation-harness's scoring computed with transformers.

  tokenizer.json   a byte-level BPE tokenizer in Qwen2's layout (NFC, Qwen2 split regex,
                   ByteLevel), trained here with the `tokenizers` library on CORPUS, plus
                   <|endoftext|>
  model/           a random Qwen2ForCausalLM (config.json, model.safetensors; fp32) whose
                   vocabulary covers the tokenizer; max_position_embeddings 64, so that one row
                   is truncated from the left; eos_token_id <|endoftext|> and no BOS, so that an
                   empty context is scored after <|endoftext|> (the harness's prefix_token_id)
  rows.jsonl       ROWS, the multiple-choice data
  expected.json    per row: the harness's token split of every request, the log-likelihoods
                   (float64 math with the fp32 weights, eager attention), pred and pred_norm;
                   the metrics acc, acc_norm and count

The harness's rule is harness_mc.py. The script refuses a model whose choices come within
MIN_MARGIN of a tie (in log-likelihood or in log-likelihood per character), and checks that the
rows exercise what they are there for (see ROWS' notes).

Usage: python3 tests/parity/make_mc_fixture.py [--out tests/parity/fixtures/mc]
"""
import argparse
import copy
import json
import os
import sys

import torch
import tokenizers
import transformers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness_mc  # noqa: E402

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
EOS = "<|endoftext|>"
TOKENIZER_VOCAB = 448  # byte alphabet + merges; <|endoftext|> comes after
MODEL_VOCAB = 512  # > the tokenizer's, as released models pad theirs
MAX_POSITIONS = 64
MIN_MARGIN = 1e-3  # 10x the comparison tolerance

CORPUS = """\
Question: What is the capital of France?
Answer: Paris

Question: What is the capital of Germany?
Answer: Berlin

Question: 2 + 2 = ?
Answer:
4

Question: Which animal says meow?
Answer:
the cat

The sky is blue. The grass is green. The sun is bright and the night is very dark.
The quick brown fox jumps over the lazy dog. The dog sleeps. The hunters run away quickly.
Once upon a time, there was a small village near the sea. Once upon a time, the end was near.
Fill in the blank: the cat sat on the mat. A bird sang in the tree.
Le café est très chaud. Le thé est froid. Une idée naïve. Über den Wolken.
中文的问题：答案是什么？这不是答案。 価格は高い。価格は安い。
The year was 1999. The year was 1984. In 2000 the year changed. Total: $5, or 5 dollars.
yes no maybe. Yes, no, maybe so. Is it true? It's true, it isn't, we'll see, they're here.
"""

# (row, what it exercises); the notes are checked by check_row_purpose.
ROWS = [
    ({"context": "Question: What is the capital of France?\nAnswer:",
      "choices": ["Paris", "London", "Berlin", "Madrid"], "label": 0}, "plain"),
    ({"context": "The sky is ", "choices": ["blue", "green", "very dark at night"], "label": 0},
     "trailing space"),
    ({"context": "Question: 2 + 2 = ?\nAnswer:\n", "choices": ["4", "five", "22"], "label": 0},
     "boundary merge"),  # ":" + "\n" is one token of the whole text; "\n" is never scored
    ({"context": "", "choices": ["yes", "no", "maybe"], "label": 1}, "empty context"),
    ({"context": "The quick brown fox",
      "choices": ["jumps over the lazy dog", "sleeps", "runs away from the hunters quickly"],
      "label": 0}, "multi-token"),
    ({"context": "Le café est", "choices": ["très chaud", "froid", "naïve"], "label": 0},
     "unicode"),
    ({"context": "中文的问题：", "choices": ["答案", "不是答案", "🙂"], "label": 0},
     "unicode"),  # characters, not bytes, for acc_norm (the emoji is 4 bytes)
    ({"context": "価格は\u3000", "choices": ["高い", "安い"], "label": 1},
     "unicode whitespace"),  # str.rstrip() moves U+3000
    ({"context": "Note:\u00a0", "choices": ["the cat", "a bird"], "label": 1},
     "unicode whitespace"),  # and U+00A0
    ({"context": "Fill in the blank:\t \n", "choices": ["cat", "dog", "a bird"], "label": 0},
     "trailing space"),
    ({"context": "Cafe\u0301 au lait is", "choices": ["cafe\u0301", "the\u0301", "froid"],
      "label": 0}, "unicode"),  # NFC in the tokenizer; len() counts the raw code points
    ({"context": "Once upon a time, " * 12 + "the end was", "choices": ["near", "far away"],
      "label": 0}, "truncated"),
    ({"context": "The year was 19", "choices": ["99", "84", "2000", " spaced"], "label": 0},
     "multi-token"),
    ({"context": "Is it true?", "choices": ["", "yes", "It's true"], "label": 1},
     "empty choice"),  # len 0: -inf per character, as numpy divides
]


def train_tokenizer():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                              use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    tok.add_special_tokens([EOS])
    return tok


def save_tokenizer(tok, path):
    """Saves `tok` with every ByteLevel step spelled as Qwen2's tokenizer.json spells it (the
    decoder's settings are not settable from Python), and returns the tokenizer read back."""
    tok.save(path)
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    j["decoder"] = dict(byte_level)
    j["post_processor"] = dict(byte_level)
    j["pre_tokenizer"]["pretokenizers"][1] = dict(byte_level)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
        f.write("\n")
    return tokenizers.Tokenizer.from_file(path)


def build_model(eos_id, seed):
    config = Qwen2Config(vocab_size=MODEL_VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=MAX_POSITIONS, rope_theta=10000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                         bos_token_id=None, eos_token_id=eos_id, pad_token_id=None)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model.eval()


def hf_tokenizer(tok):
    """The tokenizer as HFLM holds it; tok_encode is encode(add_special_tokens=False)."""
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def prefix_token_id(hf_tok):
    # HFLM.prefix_token_id: BOS, else EOS.
    return hf_tok.bos_token_id if hf_tok.bos_token_id is not None else hf_tok.eos_token_id


def score_rows(model64, hf_tok, rows):
    """The harness's requests, log-likelihoods and per-row results (float64)."""
    def tok_encode(text):
        return hf_tok.encode(text, add_special_tokens=False)

    prefix = prefix_token_id(hf_tok)
    max_length = model64.config.max_position_embeddings  # HFLM.max_length
    out = []
    for row in rows:
        requests, lls = [], []
        for context, continuation in harness_mc.construct_requests(row["context"],
                                                                   row["choices"]):
            context_enc, continuation_enc = harness_mc.request_tokens(tok_encode, prefix,
                                                                      context, continuation)
            inp, positions = harness_mc.model_input(context_enc, continuation_enc, max_length)
            with torch.no_grad():
                logits = model64(input_ids=torch.tensor([inp])).logits[0]
            logprobs = torch.log_softmax(logits, dim=-1)
            ll = sum(float(logprobs[p, t]) for p, t in zip(positions, continuation_enc))
            requests.append({"context_ids": context_enc, "continuation_ids": continuation_enc,
                             "truncated": len(context_enc) + len(continuation_enc) >
                             max_length + 1})
            lls.append(ll)
        result = harness_mc.process_results(lls, row["choices"], row["label"])
        out.append({"requests": requests, "loglikelihoods": lls, **result})
    return out


def metrics(scored):
    return {"acc": harness_mc.mean([s["acc"] for s in scored]),
            "acc_norm": harness_mc.mean([s["acc_norm"] for s in scored]),
            "count": len(scored)}


def smallest_margin(row, scored):
    def gap(values):
        finite = sorted(v for v in values if v != float("-inf"))
        return min((b - a for a, b in zip(finite, finite[1:])), default=float("inf"))
    lls = scored["loglikelihoods"]
    per_char = [ll / len(c) if c else float("-inf") for ll, c in zip(lls, row["choices"])]
    return min(gap(lls), gap(per_char))


def check_row_purpose(tok_encode, row, note, scored):
    """Each row must exercise what its note says, or the fixture would not test it."""
    context = row["context"]
    for choice, req in zip(row["choices"], scored["requests"]):
        cont = " " + choice
        naive = (tok_encode(context), tok_encode(cont))
        split = (req["context_ids"], req["continuation_ids"])
        ascii_strip = context.rstrip(" \t\n\r\v\f")
        if note == "boundary merge":
            # A token of the whole text straddles the split: context + continuation ids are
            # not the whole text's ids.
            assert split[0] + split[1] != tok_encode(context + cont), (note, row)
        elif note in ("trailing space", "unicode whitespace"):
            assert context != context.rstrip() and split != naive, (note, row)
            if note == "unicode whitespace":
                assert ascii_strip == context, (note, row)
        elif note == "empty context":
            assert context == "" and len(split[0]) == 1, (note, row)
        elif note == "truncated":
            assert req["truncated"], (note, row)
        elif note == "multi-token":
            assert len(row["choices"]) > 1
        elif note == "empty choice":
            assert "" in row["choices"]
    if note == "multi-token":
        assert max(len(r["continuation_ids"]) for r in scored["requests"]) >= 3, (note, row)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures",
                                                      "mc"))
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"tokenizers {tokenizers.__version__}")
    os.makedirs(args.out, exist_ok=True)
    tok = save_tokenizer(train_tokenizer(), os.path.join(args.out, "tokenizer.json"))
    assert tok.get_vocab_size() <= MODEL_VOCAB, tok.get_vocab_size()
    hf_tok = hf_tokenizer(tok)
    eos_id = hf_tok.eos_token_id
    rows = [r for r, _ in ROWS]
    for seed in range(200):
        model = build_model(eos_id, seed)
        model64 = copy.deepcopy(model).double()
        scored = score_rows(model64, hf_tok, rows)
        m = metrics(scored)
        margin = min(smallest_margin(r, s) for r, s in zip(rows, scored))
        # Informative metrics: neither 0 nor 1, and acc_norm differs from acc.
        if margin >= MIN_MARGIN and 0 < m["acc"] < 1 and 0 < m["acc_norm"] < 1 and \
                m["acc"] != m["acc_norm"]:
            break
    else:
        raise RuntimeError("no seed gave well-separated choices and informative metrics")
    print(f"seed {seed}: acc {m['acc']:.4f}, acc_norm {m['acc_norm']:.4f}, "
          f"smallest margin {margin:.4g}")
    for (row, note), s in zip(ROWS, scored):
        check_row_purpose(lambda t: hf_tok.encode(t, add_special_tokens=False), row, note, s)

    model_dir = os.path.join(args.out, "model")
    os.makedirs(model_dir, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    for extra in ("generation_config.json",):
        path = os.path.join(model_dir, extra)
        if os.path.exists(path):
            os.remove(path)
    with open(os.path.join(args.out, "rows.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    examples = [dict(line=i + 1, note=note, **s) for i, ((_, note), s) in
                enumerate(zip(ROWS, scored))]
    expected = {"seed": seed, "max_length": MAX_POSITIONS, "prefix_token_id": eos_id,
                "metrics": m, "examples": examples}
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(args.out, "VERSIONS"), "w") as f:
        f.write(f"transformers {transformers.__version__}\ntorch {torch.__version__}\n"
                f"tokenizers {tokenizers.__version__}\n")

    # The saved files must give the same numbers when loaded back.
    reloaded = Qwen2ForCausalLM.from_pretrained(model_dir, attn_implementation="eager").double()
    hf_again = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.out, "tokenizer.json"),
                                       eos_token=EOS)
    again = score_rows(reloaded.eval(), hf_again, rows)
    diff = max(abs(a - b) for s, t in zip(scored, again)
               for a, b in zip(s["loglikelihoods"], t["loglikelihoods"]))
    assert diff == 0.0, f"reloaded fixture differs by {diff}"
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
