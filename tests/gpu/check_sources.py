#!/usr/bin/env python3
"""The GPU-only build (tests/gpu/CMakeLists.txt) lists by hand the sources of qtrain_common,
qtrain_kernels and qtrain_model it compiles. This check fails when one of those libraries gains a
source the list lacks (the GPU-only link would fail, and only on a GPU machine).

  check_sources.py [repository root]
"""

import os
import re
import sys


def library_sources(cmake_text, name):
    """The SRCS of qtrain_cc_library(NAME <name> ...), and target_sources(<name> PRIVATE ...)."""
    out = []
    m = re.search(r"qtrain_cc_library\(\s*NAME\s+%s\b(.*?)\)" % re.escape(name), cmake_text, re.S)
    if not m:
        raise SystemExit(f"check_sources: no qtrain_cc_library {name}")
    srcs = re.search(r"\bSRCS\b(.*?)(?:\bHDRS\b|\bDEPS\b|$)", m.group(1), re.S)
    out += [w for w in srcs.group(1).split() if w.endswith(".cc")]
    for extra in re.finditer(r"target_sources\(\s*%s\s+PRIVATE(.*?)\)" % re.escape(name),
                             cmake_text, re.S):
        out += [w for w in extra.group(1).split() if w.endswith(".cc")]
    return out


def main(argv):
    root = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    read = lambda *p: open(os.path.join(root, *p)).read()
    gpu = read("tests", "gpu", "CMakeLists.txt")
    listed = {p.lstrip("/") for p in re.findall(r"[\w/]+\.cc", gpu)}
    missing = []
    for directory, library in (("common", "qtrain_common"), ("kernels", "qtrain_kernels"),
                               ("worker/model", "qtrain_model")):
        for src in library_sources(read(directory, "CMakeLists.txt"), library):
            if f"{directory}/{src}" not in listed:
                missing.append(f"{directory}/{src} ({library})")
    if missing:
        print("tests/gpu/CMakeLists.txt lacks: " + ", ".join(missing))
        return 1
    print(f"tests/gpu/CMakeLists.txt lists every source ({len(listed)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
