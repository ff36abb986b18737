#!/usr/bin/env python3
"""tests/gpu/report.py: the table of run.sh from its checks' outputs, complete and partial."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

REPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.py")


def write(directory, name, content):
    with open(os.path.join(directory, name), "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))


def render(directory, *extra):
    result = subprocess.run([sys.executable, REPORT, "--out", directory, *extra],
                            capture_output=True, text=True, check=True)
    with open(os.path.join(directory, "table.md")) as f:
        assert f.read() == result.stdout
    return result.stdout


class ReportTest(unittest.TestCase):
    def test_every_part(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "ops.txt", "...\ngpu_ops_check: 212 checks, 0 failed\n")
            write(d, "conformance.txt", "1044 cases, 0 failed\n")
            write(d, "conformance_kernel.txt", "1044 cases, 1 failed (AttentionBackward)\n")
            write(d, "model.json", {
                "attention": "cudnn",
                "gradients": [{"dtype": "bf16", "passed": True, "loss_error": 1e-5,
                               "worst_gradient_error": 0.0147,
                               "worst_tensor": "model.layers.0.self_attn.k_proj.bias"}],
                "training_curve": {"passed": False, "losses": [8.35, 4.99],
                                   "reference_losses": [8.35, 4.98], "worst_error": 0.03},
                "throughput": [
                    {"seq_len": 4096, "tokens_per_second": 60000.0, "seconds_per_step": 0.068,
                     "model_tflops": 300.0, "mfu": 0.303, "recompute": False,
                     "peak_backend_bytes": 1 << 33},
                    {"seq_len": 32768, "tokens_per_second": 20000.0, "seconds_per_step": 1.6,
                     "model_tflops": 200.0, "mfu": 0.2, "recompute": True,
                     "peak_backend_bytes": 3 << 30}],
            })
            write(d, "peer.json", {"points": [{"seq_len": 4096, "tokens_per_second": 40000.0}]})
            table = render(d, "--build-seconds", "120", "--total-seconds", "400")
        self.assertIn("| build | 120 s |", table)
        self.assertIn("| (a) kernels and GEMMs vs reference | gpu_ops_check: 212 checks, 0 failed |",
                      table)
        self.assertIn("| (a') CUDA backend conformance | 1044 cases, 0 failed |", table)
        self.assertIn("ok: loss error 1.0e-05, worst gradient 1.5e-02 "
                      "(model.layers.0.self_attn.k_proj.bias)", table)
        self.assertIn("MISMATCH: loss 8.350 -> 4.990 (CPU 4.980), worst step 3.0e-02", table)
        self.assertIn("| (a') the same with attention.cu instead of cuDNN | 1044 cases, 1 failed "
                      "(AttentionBackward) |", table)
        self.assertIn("| (d) qwen2-0.5b bf16, 4096 tokens, cuDNN SDPA | 60000 tokens/s, 0.068 s/step, "
                      "300 TFLOP/s, MFU 30.3% |", table)
        self.assertIn("qtrain / torch = 1.50x", table)
        self.assertIn("recomputation, peak 3.0 GiB", table)
        self.assertIn("| total | 400 s |", table)

    def test_missing_parts_say_why(self):
        with tempfile.TemporaryDirectory() as d:
            write(d, "model.txt", "gpu_model_check did not build (see build.log)\n")
            table = render(d)
        self.assertIn("| (a) kernels and GEMMs vs reference | not run |", table)
        self.assertNotIn("attention.cu instead", table)
        self.assertIn("| (b)-(d) model on the GPU | not run: gpu_model_check did not build "
                      "(see build.log) |", table)


if __name__ == "__main__":
    unittest.main()
