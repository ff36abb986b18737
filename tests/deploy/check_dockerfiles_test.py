#!/usr/bin/env python3
"""The Dockerfile checks fail on broken Dockerfiles: each case copies what they read, breaks
one thing and expects check_dockerfiles.py to name it.

  check_dockerfiles_test.py [BINARY...]   (the built binaries, for the runtime-package cases)
"""

import os
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import check_dockerfiles  # noqa: E402

BINARIES = []


class BrokenDockerfiles(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qtrain-docker-")
        shutil.copytree(os.path.join(ROOT, "deploy"), os.path.join(self.tmp, "deploy"))
        os.makedirs(os.path.join(self.tmp, "scripts"))
        shutil.copy(os.path.join(ROOT, "scripts", "setup.sh"), os.path.join(self.tmp, "scripts"))
        shutil.copy(os.path.join(ROOT, ".dockerignore"), self.tmp)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def edit(self, path, old, new, count=1):
        full = os.path.join(self.tmp, path)
        with open(full, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual(text.count(old), count, f"{old!r} is not {count}x in {path}")
        with open(full, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))

    def problems(self, binaries=()):
        out = []
        for device in ("cpu", "cuda"):
            check_dockerfiles.check_dockerfile(self.tmp, device, list(binaries), out)
        check_dockerfiles.check_dockerignore(self.tmp, out)
        return out

    def assert_problem(self, needle, binaries=()):
        problems = self.problems(binaries)
        self.assertTrue(any(needle in p for p in problems),
                        f"no problem naming {needle!r} in: {problems}")

    def test_unchanged_copy_passes(self):
        self.assertEqual(self.problems(BINARIES), [])

    def test_root_user(self):
        self.edit("deploy/docker/cpu.Dockerfile", "USER 10001:10001", "USER 0:0")
        self.assert_problem("USER is root")

    def test_named_user(self):
        self.edit("deploy/docker/cuda.Dockerfile", "USER 10001:10001", "USER qtrain")
        self.assert_problem("give a numeric UID:GID")

    def test_uid_differs_from_the_manifests(self):
        self.edit("deploy/docker/cpu.Dockerfile", "USER 10001:10001", "USER 10002:10001")
        self.assert_problem("USER 10002 is not the manifests' runAsUser [10001]")

    def test_no_user(self):
        self.edit("deploy/docker/cpu.Dockerfile", "USER 10001:10001\n", "")
        self.assert_problem("sets no USER")

    def test_unpinned_image(self):
        self.edit("deploy/docker/cpu.Dockerfile", "FROM debian:12.11-slim AS runtime",
                  "FROM debian:latest AS runtime")
        self.assert_problem("pin a tag")

    def test_not_debian_12(self):
        self.edit("deploy/docker/cpu.Dockerfile", "FROM debian:12.11 AS build",
                  "FROM ubuntu:24.04 AS build")
        self.assert_problem("is not Debian 12")

    def test_cuda_runtime_of_another_version(self):
        self.edit("deploy/docker/cuda.Dockerfile",
                  "FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS runtime",
                  "FROM nvidia/cuda:12.4.1-runtime-${UBUNTU} AS runtime")
        self.assert_problem("differ in CUDA version or OS")

    def test_cpu_build_with_cuda(self):
        self.edit("deploy/docker/cpu.Dockerfile", "-DQTRAIN_CUDA=OFF", "-DQTRAIN_CUDA=ON")
        self.assert_problem("lacks -DQTRAIN_CUDA=OFF")

    def test_missing_build_package(self):
        self.edit("deploy/docker/cpu.Dockerfile", " libsqlite3-dev ", " ")
        self.assert_problem("does not install libsqlite3-dev")

    @unittest.skipUnless(check_dockerfiles.apt_lookup_possible(), "not Debian 12 with apt lists")
    def test_unknown_package(self):
        self.edit("deploy/docker/cpu.Dockerfile", " libsqlite3-0 ", " libsqlite3-0 libsqlite9 ")
        self.assert_problem("Debian 12 has no package libsqlite9")

    def test_recommends(self):
        self.edit("deploy/docker/cuda.Dockerfile",
                  "xargs -r apt-get install -y --no-install-recommends",
                  "xargs -r apt-get install -y")
        self.assert_problem("without --no-install-recommends")

    def test_dev_package_at_runtime(self):
        self.edit("deploy/docker/cpu.Dockerfile", "libstdc++6 libutf8proc2",
                  "libstdc++6 libutf8proc-dev")
        self.assert_problem("installs build packages libutf8proc-dev")

    def test_binary_not_copied(self):
        self.edit("deploy/docker/cpu.Dockerfile", "/src/build/bin/qtrain-worker /usr/local/bin/",
                  "/usr/local/bin/")
        self.assert_problem("does not copy qtrain-worker")

    def test_secret_in_env(self):
        self.edit("deploy/docker/cuda.Dockerfile", "ENV NVIDIA_VISIBLE_DEVICES=all",
                  "ENV QTRAIN_TOKEN=abc NVIDIA_VISIBLE_DEVICES=all")
        self.assert_problem("no secrets in images")

    def test_dockerignore_without_git(self):
        self.edit(".dockerignore", ".git\n.github\n", ".github\n")
        self.assert_problem("does not leave out .git")

    @unittest.skipUnless(BINARIES or len(sys.argv) > 1, "no built binaries given")
    def test_missing_runtime_library(self):
        self.edit("deploy/docker/cpu.Dockerfile", " libprotobuf32 ", " ")
        self.assert_problem("lacks libprotobuf32", BINARIES)


if __name__ == "__main__":
    BINARIES.extend(sys.argv[1:])
    unittest.main(argv=sys.argv[:1])
