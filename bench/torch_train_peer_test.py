#!/usr/bin/env python3
"""bench/torch_train_peer.py on the CPU, eager, with a tiny Qwen2 config: it trains (the loss
is finite), times every requested length and writes its JSON; bad input is refused."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_train_peer.py")
TINY = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 16,
        "intermediate_size": 24, "max_position_embeddings": 256, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "vocab_size": 32}


def run(*args):
    return subprocess.run([sys.executable, PEER, *args], capture_output=True, text=True,
                          timeout=300)


class TorchTrainPeerTest(unittest.TestCase):
    def test_trains_and_reports_every_length(self):
        with tempfile.TemporaryDirectory() as d:
            config, out = os.path.join(d, "config.json"), os.path.join(d, "peer.json")
            with open(config, "w") as f:
                json.dump(TINY, f)
            r = run("--config", config, "--seq-len", "8", "16", "--device", "cpu", "--no-compile",
                    "--warmup", "1", "--steps", "2", "--json", out)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out) as f:
                results = json.load(f)
        self.assertEqual([p["seq_len"] for p in results["points"]], [8, 16])
        for p in results["points"]:
            self.assertGreater(p["tokens_per_second"], 0)
            self.assertAlmostEqual(p["tokens_per_second"] * p["seconds_per_step"], p["seq_len"])
            self.assertLess(p["loss"], 10)  # about ln(32) at the start
        self.assertFalse(results["compile"])

    def test_bad_input_is_refused(self):
        self.assertNotEqual(run("--config", "/nonexistent.json", "--seq-len", "8",
                                "--device", "cpu").returncode, 0)
        r = run("--config", "x.json", "--seq-len", "1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--seq-len", r.stderr)


if __name__ == "__main__":
    unittest.main()
