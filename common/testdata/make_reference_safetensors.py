"""Writes reference.safetensors with the reference `safetensors` Python package (pip), so that
common/safetensors_test.cc checks that qtrain reads what the reference writer produces.

    python3 common/testdata/make_reference_safetensors.py
"""
import os

import numpy as np
from safetensors.numpy import save_file

here = os.path.dirname(os.path.abspath(__file__))
tensors = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
    "f16": np.array([1.5, -2.25, 65504.0, 6.1035156e-05], dtype=np.float16),
    "i64": np.array([[-1, 2**40]], dtype=np.int64),
    "i32": np.array([7, -8, 9], dtype=np.int32),
    "scalar": np.array(3.0, dtype=np.float32),
    "empty": np.zeros((0, 4), dtype=np.float32),
}
save_file(tensors, os.path.join(here, "reference.safetensors"), metadata={"format": "pt"})
