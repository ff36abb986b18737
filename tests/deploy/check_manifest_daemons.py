#!/usr/bin/env python3
"""Runs the real daemons with the command lines a rendered overlay gives its pods.

  check_manifest_daemons.py --coordinator BIN --worker BIN --cli BIN OVERLAY_DIR

The coordinator and one worker start with exactly the container's command and args, with
$(VAR) expanded the way the kubelet does (from the ConfigMap, the downward API with pod IP
127.0.0.1), each mount path mapped to a temporary directory holding what the volume would (the
Secret's token files, the ConfigMap's files) and the fixed ports (7070, 9401, 9402) replaced
by port 0, learnt from --address-file/--metrics-address-file. It checks that both start, that
what the probes ask answers (the coordinator's API with the user token, both /metrics), that the
worker registers under its pod name, and that SIGTERM stops both with status 0.
"""

import argparse
import base64
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check_manifests  # noqa: E402

TIMEOUT = 60


class Failure(Exception):
    pass


def containers(objects):
    """{component: (pod spec, container)} of the overlay's workloads."""
    out = {}
    for _, meta, spec in check_manifests._workloads(objects):
        component = (meta.get("labels") or {}).get("app.kubernetes.io/component")
        out[component] = (spec, spec["containers"][0])
    return out


def materialize(spec, container, objects, root, pod_name):
    """(argv, env) for the container, its mounts mapped under root."""
    by_kind = check_manifests._index(objects)
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mapping = {}
    for m in container.get("volumeMounts") or []:
        volume = volumes.get(m["name"], {})
        # A claim of the pod spec (not of a volumeClaimTemplate) is shared by every pod.
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        directory = os.path.join(root, f"claim-{claim}" if claim else os.path.join(pod_name,
                                                                                  m["name"]))
        os.makedirs(directory, exist_ok=True)
        mapping[m["mountPath"].rstrip("/")] = directory
        if "secret" in volume:
            secret = by_kind["Secret"][volume["secret"]["secretName"]]
            items = volume["secret"].get("items") or [{"key": k, "path": k}
                                                      for k in secret["data"]]
            for item in items:
                path = os.path.join(directory, item["path"])
                with open(path, "wb") as f:
                    f.write(base64.b64decode(secret["data"][item["key"]]))
                os.chmod(path, 0o440)
        if "configMap" in volume:
            for key, value in by_kind["ConfigMap"][volume["configMap"]["name"]]["data"].items():
                with open(os.path.join(directory, key), "w", encoding="utf-8") as f:
                    f.write(value)

    env = {}
    for e in container.get("env") or []:
        source = e.get("valueFrom") or {}
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[e["name"]] = by_kind["ConfigMap"][ref["name"]]["data"][ref["key"]]
        elif "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": pod_name, "status.podIP": "127.0.0.1"}[field]
        else:
            raise Failure(f"env {e['name']}: unsupported source {source}")

    def expand(arg):
        arg = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                     lambda m: env.get(m.group(1), m.group(0)), arg)
        # One pass, longest mount path first (a mapped path may lie under another mount).
        paths = "|".join(re.escape(p) for p in sorted(mapping, key=len, reverse=True))
        if paths:
            arg = re.sub(rf"(?<![^=])({paths})(?=/|$)", lambda m: mapping[m.group(1)], arg)
        return re.sub(r":(7070|9401|9402)$", ":0", arg)

    argv = [expand(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    return argv, env


def wait_file(path, proc, what):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.endswith("\n"):
                return text.strip()
        if proc.poll() is not None:
            raise Failure(f"{what} exited with status {proc.returncode} before serving")
        time.sleep(0.1)
    raise Failure(f"{what} wrote no {os.path.basename(path)} within {TIMEOUT}s")


def http_get(address, path):
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as r:
        return r.status, r.read().decode("utf-8")


def loopback(address):
    return "127.0.0.1:" + address.rpartition(":")[2]


def start(argv, env, log_path):
    log = open(log_path, "wb")
    full_env = dict(os.environ, **env)
    return subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True), log


def stop(proc, what, problems):
    """SIGTERM (the kubelet's stop), then SIGKILL to the process group past the timeout."""
    if proc.poll() is not None:
        return  # it ended early: reported where that was noticed
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        problems.append(f"{what} did not stop within {TIMEOUT}s of SIGTERM")
        return
    if proc.returncode != 0:
        problems.append(f"{what} exited with status {proc.returncode} after SIGTERM")


class Daemons:
    """The coordinator and the worker of one check; stop() ends whatever was started."""

    def __init__(self, args, objects, found, root):
        self.args, self.objects, self.found, self.root = args, objects, found, root
        self.binaries = {"/usr/local/bin/qtrain-coordinator": args.coordinator,
                         "/usr/local/bin/qtrain-worker": args.worker}
        self.started = []  # (process, log file, what)

    def launch(self, component, pod_name, extra_args, extra_env=None):
        spec, ctr = self.found[component]
        argv, env = materialize(spec, ctr, self.objects, self.root, pod_name)
        argv[0] = self.binaries.get(argv[0], argv[0])
        env.update(extra_env or {})
        proc, log = start(argv + extra_args, env, os.path.join(self.root, f"{component}.log"))
        self.started.append((proc, log, f"the {component}"))
        return proc

    def check(self, problems):
        address_file = os.path.join(self.root, "coordinator.address")
        metrics_file = os.path.join(self.root, "coordinator.metrics")
        coordinator = self.launch("coordinator", "qtrain-coordinator-0",
                                  [f"--address-file={address_file}",
                                   f"--metrics-address-file={metrics_file}"])
        address = loopback(wait_file(address_file, coordinator, "the coordinator"))
        metrics = wait_file(metrics_file, coordinator, "the coordinator")
        status, _ = http_get(metrics, "/metrics")
        if status != 200:
            problems.append(f"coordinator /metrics answered {status}")

        worker_metrics_file = os.path.join(self.root, "worker.metrics")
        worker = self.launch("worker", "qtrain-worker-0",
                             [f"--metrics-address-file={worker_metrics_file}"],
                             {"QTRAIN_COORDINATOR": address})
        worker_metrics = wait_file(worker_metrics_file, worker, "the worker")

        token = os.path.join(self.root, "qtrain-coordinator-0", "tokens", "auth-token")
        deadline, out = time.monotonic() + TIMEOUT, ""
        while True:
            proc = subprocess.run([self.args.cli, "--coordinator", address, "--auth-token-file",
                                   token, "workers", "-o", "json"], capture_output=True,
                                  text=True, timeout=TIMEOUT)
            out = (proc.stdout + proc.stderr).strip()
            if proc.returncode == 0 and "qtrain-worker-0" in proc.stdout:
                break
            if time.monotonic() > deadline:
                problems.append(f"the worker did not register as qtrain-worker-0: {out}")
                break
            time.sleep(0.2)
        deadline = time.monotonic() + TIMEOUT
        while True:
            status, body = http_get(worker_metrics, "/metrics")
            if status == 200 and re.search(r"^qtrain_worker_up 1(\.0)?$", body, re.M):
                break
            if time.monotonic() > deadline:
                problems.append("the worker's /metrics never showed qtrain_worker_up 1")
                break
            time.sleep(0.2)

    def stop(self, problems):
        # The worker first: it drains, then the coordinator.
        for proc, log, what in reversed(self.started):
            stop(proc, what, problems)
            log.close()

    def print_logs(self):
        for _, log, what in self.started:
            with open(log.name, encoding="utf-8", errors="replace") as f:
                print(f"--- {what}'s log\n{f.read()}")


def run(args):
    _, objects = check_manifests.render(args.overlay)
    found = containers(objects)
    for component in ("coordinator", "worker"):
        if component not in found:
            raise Failure(f"no {component} in {args.overlay}")
    problems = []
    with tempfile.TemporaryDirectory(prefix="qtrain-manifest-") as root:
        daemons = Daemons(args, objects, found, root)
        try:
            daemons.check(problems)
        except (Failure, OSError, ValueError) as e:
            problems.append(str(e))
        finally:
            daemons.stop(problems)
            if problems:
                daemons.print_logs()
    return problems


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--cli", required=True)
    parser.add_argument("overlay")
    args = parser.parse_args(argv)
    try:
        problems = run(args)
    except (Failure, check_manifests.CheckError, OSError) as e:
        print(f"check_manifest_daemons: {e}", file=sys.stderr)
        return 1
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"{args.overlay}: the daemons run with the manifests' command lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
