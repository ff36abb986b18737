#!/usr/bin/env python3
"""`qtrain eval --task multiple-choice` against lm-evaluation-harness's scoring computed with
transformers (fixtures/mc/, written by make_mc_fixture.py): every log-likelihood within 1e-4,
and pred, pred_norm, acc, acc_norm and count equal.

  check_mc.py --qtrain build/bin/qtrain           # against expected.json (no torch needed)
  check_mc.py --qtrain build/bin/qtrain --live    # and against transformers, recomputed now
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness_mc  # noqa: E402

TOLERANCE = 1e-4


def run_qtrain(qtrain, fixture):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "mc.json")
        subprocess.run([qtrain, "eval", "--model", os.path.join(fixture, "model"),
                        "--tokenizer", os.path.join(fixture, "tokenizer.json"),
                        "--task", "multiple-choice", "--data",
                        os.path.join(fixture, "rows.jsonl"), "--per-example", "--threads", "2",
                        "--out", out], check=True, timeout=300, stderr=subprocess.DEVNULL)
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def live_reference(fixture):
    """The harness's numbers recomputed with transformers from the fixture's files."""
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM
    import make_mc_fixture
    model = Qwen2ForCausalLM.from_pretrained(os.path.join(fixture, "model"),
                                             attn_implementation="eager").double().eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(fixture, "tokenizer.json"),
                                  eos_token=make_mc_fixture.EOS)
    with open(os.path.join(fixture, "rows.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    scored = make_mc_fixture.score_rows(model, tok, rows)
    return {"metrics": make_mc_fixture.metrics(scored), "examples": scored}


def compare(name, want, got):
    """Failures (strings) and the largest log-likelihood difference."""
    failures, worst = [], 0.0
    if len(got["examples"]) != len(want["examples"]):
        return [f"{name}: {len(got['examples'])} examples, want {len(want['examples'])}"], 0.0
    for i, (w, g) in enumerate(zip(want["examples"], got["examples"])):
        where = f"{name}: row {i + 1} ({w.get('note', '')})"
        if len(g["loglikelihoods"]) != len(w["loglikelihoods"]):
            failures.append(f"{where}: {len(g['loglikelihoods'])} choices scored, "
                            f"want {len(w['loglikelihoods'])}")
            continue
        for k, (a, b) in enumerate(zip(g["loglikelihoods"], w["loglikelihoods"])):
            worst = max(worst, abs(a - b))
            if not abs(a - b) <= TOLERANCE:
                failures.append(f"{where}: choice {k} loglikelihood {a!r}, want {b!r}")
        for key in ("pred", "pred_norm"):
            if g[key] != w[key]:
                failures.append(f"{where}: {key} {g[key]}, want {w[key]}")
    for key in ("acc", "acc_norm", "count"):
        if got["metrics"][key] != want["metrics"][key]:
            failures.append(f"{name}: {key} {got['metrics'][key]!r}, "
                            f"want {want['metrics'][key]!r}")
    return failures, worst


def self_consistent(expected, fixture):
    """expected.json's preds and metrics follow from its own log-likelihoods by the harness's
    rule, so that a hand edit of one without the other shows."""
    with open(os.path.join(fixture, "rows.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == len(expected["examples"]), "rows.jsonl and expected.json disagree"
    results = [harness_mc.process_results(e["loglikelihoods"], r["choices"], r["label"])
               for r, e in zip(rows, expected["examples"])]
    for r, e in zip(results, expected["examples"]):
        assert (r["pred"], r["pred_norm"]) == (e["pred"], e["pred_norm"]), e
    assert harness_mc.mean([r["acc"] for r in results]) == expected["metrics"]["acc"]
    assert harness_mc.mean([r["acc_norm"] for r in results]) == expected["metrics"]["acc_norm"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qtrain", required=True)
    ap.add_argument("--fixture", default=os.path.join(HERE, "fixtures", "mc"))
    ap.add_argument("--live", action="store_true",
                    help="also recompute the reference with transformers (needs torch)")
    args = ap.parse_args()
    with open(os.path.join(args.fixture, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    self_consistent(expected, args.fixture)
    got = run_qtrain(args.qtrain, args.fixture)
    failures, worst = compare("qtrain vs expected.json", expected, got)
    print(f"qtrain vs expected.json: {len(got['examples'])} rows, max |loglikelihood diff| "
          f"{worst:.3g}, acc {got['metrics']['acc']:.6f}, acc_norm "
          f"{got['metrics']['acc_norm']:.6f}")
    if args.live:
        live = live_reference(args.fixture)
        for name, want, have in (("qtrain vs transformers", live, got),
                                 ("transformers vs expected.json", expected, live)):
            more, diff = compare(name, want, have)
            failures += more
            print(f"{name}: max |loglikelihood diff| {diff:.3g}")
    for line in failures:
        print("FAIL " + line)
    print(f"tolerance {TOLERANCE}: {'FAIL' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
