#!/usr/bin/env python3
"""The manifest checks fail on broken manifests: each case copies deploy/k8s, breaks one thing
and expects check_manifests.py to name it."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check_manifests  # noqa: E402

SOURCE = os.path.join(HERE, "..", "..", "deploy", "k8s")


class BrokenManifests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qtrain-k8s-")
        self.root = os.path.join(self.tmp, "k8s")
        shutil.copytree(SOURCE, self.root)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def edit(self, path, old, new):
        full = os.path.join(self.root, path)
        with open(full, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual(text.count(old), 1, f"{old!r} is not once in {path}")
        with open(full, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))

    def overlay(self, name="cpu-dev"):
        return os.path.join(self.root, "overlays", name)

    def assert_problem(self, needle, overlay="cpu-dev"):
        _, problems = check_manifests.check_overlay(self.overlay(overlay))
        self.assertTrue(any(needle in p for p in problems),
                        f"no problem naming {needle!r} in: {problems}")

    def test_unchanged_copy_passes(self):
        for name in ("cpu-dev", "gpu"):
            _, problems = check_manifests.check_overlay(self.overlay(name))
            self.assertEqual(problems, [])

    def test_misspelled_kubernetes_field(self):
        self.edit("base/worker.yaml", "terminationGracePeriodSeconds: 330",
                  "terminationGracePeriodSecond: 330")
        self.assert_problem("terminationGracePeriodSecond", overlay="gpu")

    def test_writable_root_filesystem(self):
        self.edit("base/worker.yaml", "readOnlyRootFilesystem: true",
                  "readOnlyRootFilesystem: false")
        self.assert_problem("read-only-root-filesystem")

    def test_privilege_escalation(self):
        self.edit("base/coordinator.yaml", "allowPrivilegeEscalation: false",
                  "allowPrivilegeEscalation: true")
        self.assert_problem("privilege-escalation")

    def test_service_targets_missing_port(self):
        self.edit("base/coordinator.yaml", "      targetPort: metrics\n",
                  "      targetPort: metric\n")
        self.assert_problem("targets metric,")

    def test_missing_configmap_key(self):
        self.edit("base/worker.yaml", "key: QTRAIN_THREADS}", "key: QTRAIN_THREAD}")
        self.assert_problem("QTRAIN_THREAD")

    def test_undefined_variable_in_args(self):
        self.edit("base/worker.yaml", "--threads=$(QTRAIN_THREADS)", "--threads=$(THREADS)")
        self.assert_problem("$(THREADS)")

    def test_token_file_outside_the_secret(self):
        self.edit("base/worker.yaml", "--cluster-token-file=/etc/qtrain/tokens/cluster-token",
                  "--cluster-token-file=/etc/qtrain/tokens/auth-token")
        self.assert_problem("no file auth-token")

    def test_misspelled_podmonitor_key(self):
        self.edit("base/podmonitor.yaml", "      interval: 15s\n      relabelings:\n"
                  "        - action: replace\n          targetLabel: job\n"
                  "          replacement: qtrain-worker",
                  "      intervall: 15s\n      relabelings:\n"
                  "        - action: replace\n          targetLabel: job\n"
                  "          replacement: qtrain-worker")
        self.assert_problem("'intervall' was unexpected")

    def test_namespace_not_restricted(self):
        self.edit("base/namespace.yaml", "enforce: restricted", "enforce: baseline")
        self.assert_problem("pod-security.kubernetes.io/enforce is not restricted")

    def test_metrics_open_to_everyone(self):
        self.edit("base/networkpolicy.yaml", """    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: monitoring
      ports:
        - {protocol: TCP, port: 9402}""", """    - from:
        - namespaceSelector: {}
      ports:
        - {protocol: TCP, port: 9402}""")
        self.assert_problem("worker 9402 is open to more than the monitoring namespace")

    def test_no_default_deny(self):
        self.edit("base/networkpolicy.yaml", "  policyTypes: [Ingress, Egress]\n---",
                  "  policyTypes: [Ingress]\n---")
        self.assert_problem("no default-deny NetworkPolicy")

    def test_no_probe(self):
        self.edit("base/coordinator.yaml", "          livenessProbe:\n", "          x-probe:\n")
        self.assert_problem("no livenessProbe")

    def test_no_worker_budget(self):
        self.edit("base/poddisruptionbudget.yaml", "      app.kubernetes.io/component: worker",
                  "      app.kubernetes.io/component: workers")
        self.assert_problem("no PodDisruptionBudget covers the worker")

    def test_real_looking_token(self):
        with open(os.path.join(self.root, "base", "tokens", "auth-token.placeholder"), "w") as f:
            f.write("q8Z3vN1xK7pR2mT9wY4bC6dF0hJ5sL8a\n")
        _, problems = check_manifests.check_overlay(self.overlay())
        self.assertTrue(any("auth-token is not an obvious placeholder" in p for p in problems),
                        problems)
        self.assertTrue(any("auth-token looks like a real token" in p for p in problems),
                        problems)

    def test_token_in_a_configmap(self):
        self.edit("base/kustomization.yaml", "      - QTRAIN_LOG_LEVEL=INFO\n",
                  "      - QTRAIN_LOG_LEVEL=INFO\n      - TOKEN=Zk3r9Qw7Lm2Xp5Vb8Nc1Ty4Hj6Gd0Sa\n")
        self.assert_problem("looks like a real token")

    def test_gpu_overlay_without_gpu(self):
        self.edit("overlays/gpu/worker-gpu.yaml",
                  "limits: {cpu: \"16\", memory: 128Gi, ephemeral-storage: 4Gi, nvidia.com/gpu: 1}",
                  "limits: {cpu: \"16\", memory: 128Gi, ephemeral-storage: 4Gi}")
        problems = check_manifests.compare_overlays(self.overlay("cpu-dev"), self.overlay("gpu"))
        self.assertIn("gpu overlay: the worker's limits do not have nvidia.com/gpu: 1", problems)

    def test_cpu_overlay_with_gpu(self):
        self.edit("overlays/cpu-dev/worker-resources.yaml",
                  "limits: {cpu: \"2\", memory: 2Gi, ephemeral-storage: 1Gi}",
                  "limits: {cpu: \"2\", memory: 2Gi, ephemeral-storage: 1Gi, nvidia.com/gpu: 1}")
        problems = check_manifests.compare_overlays(self.overlay("cpu-dev"), self.overlay("gpu"))
        self.assertTrue(any("mentions nvidia.com/gpu" in p for p in problems), problems)

    def test_gpu_patch_refuses_a_changed_base(self):
        # The GPU overlay replaces the first worker argument only while it is --device=cpu.
        self.edit("base/worker.yaml",
                  "            - --device=cpu\n            - --name=$(POD_NAME)\n",
                  "            - --name=$(POD_NAME)\n            - --device=cpu\n")
        with self.assertRaises(check_manifests.CheckError) as e:
            check_manifests.check_overlay(self.overlay("gpu"))
        self.assertIn("kubectl kustomize", str(e.exception))

    def test_missing_kubectl(self):
        env = dict(os.environ, PATH=os.path.join(self.tmp, "empty"))
        proc = subprocess.run([sys.executable, os.path.join(HERE, "check_manifests.py"),
                               "overlay", self.overlay()], env=env, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("kubectl is not installed", proc.stderr)


if __name__ == "__main__":
    unittest.main()
