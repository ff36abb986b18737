#!/usr/bin/env python3
"""Checks deploy/prometheus/prometheus.yml.

1. `promtool check config` accepts it (and the rule files it names). A promtool built without
   Kubernetes service discovery (Debian's) rejects `kubernetes_sd_configs`; then the check
   runs on a copy whose Kubernetes discovery is replaced by a file discovery, which checks
   everything else, the relabelling included.
2. Its shape: the scrape jobs qtrain-coordinator and qtrain-worker, each with a static target
   and pod discovery (role pod), and rules.yml among the rule files.
3. With --prometheus, the relabelling in a real Prometheus: the copy above serves synthetic
   pods (the __meta_kubernetes_* labels Kubernetes discovery gives) and each job must keep
   exactly the annotated qtrain pods of its component, on their prometheus.io/port, labelled
   with pod and namespace, besides its static target.

Usage: check_prometheus_config.py CONFIG --promtool PATH [--prometheus PATH] [--expect-error TEXT]
With --expect-error the check must fail with an error containing TEXT (exit 0 then): the
failing fixtures use it, so that the checker is seen to catch what it claims to.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

JOBS = {"qtrain-coordinator": ("coordinator", "localhost:9401"),
        "qtrain-worker": ("worker", "localhost:9402")}
NO_KUBERNETES = "field kubernetes_sd_configs not found"


def pod(name, component, ip, port=None, scrape="true", app="qtrain", phase="Running",
        annotation_port=None):
    labels = {
        "__meta_kubernetes_namespace": "qtrain",
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_node_name": "node-1",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
        "__meta_kubernetes_pod_label_app_kubernetes_io_component": component,
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
    }
    if annotation_port:
        labels["__meta_kubernetes_pod_annotation_prometheus_io_port"] = str(annotation_port)
    return {"targets": [f"{ip}:{port}" if port else ip], "labels": labels}


# What Kubernetes discovery could find, and what each job must make of it: (address, pod).
SYNTHETIC_PODS = [
    pod("qtrain-coordinator-0", "coordinator", "10.9.0.1", 7070, annotation_port=9401),
    pod("qtrain-worker-0", "worker", "10.9.0.2", None, annotation_port=9402),
    pod("qtrain-worker-1", "worker", "10.9.0.3", 9402, annotation_port=9402),
    pod("qtrain-worker-2", "worker", "10.9.0.4", 9402, scrape="false", annotation_port=9402),
    pod("other-0", "worker", "10.9.0.5", 9402, app="other", annotation_port=9402),
    pod("qtrain-worker-3", "worker", "10.9.0.6", 9402, phase="Pending", annotation_port=9402),
]
EXPECTED = {
    "qtrain-coordinator": {("localhost:9401", ""), ("10.9.0.1:9401", "qtrain-coordinator-0")},
    "qtrain-worker": {("localhost:9402", ""), ("10.9.0.2:9402", "qtrain-worker-0"),
                      ("10.9.0.3:9402", "qtrain-worker-1")},
}


def promtool_check(promtool, config):
    result = subprocess.run([promtool, "check", "config", config], capture_output=True,
                            text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def shape_errors(config):
    errors = []
    if "rules.yml" not in (config.get("rule_files") or []):
        errors.append("rule_files does not name rules.yml")
    jobs = {c.get("job_name"): c for c in config.get("scrape_configs") or []}
    for name, (component, target) in JOBS.items():
        job = jobs.get(name)
        if job is None:
            errors.append(f"no scrape job {name}")
            continue
        targets = [t for s in job.get("static_configs") or [] for t in s.get("targets") or []]
        if target not in targets:
            errors.append(f"{name}: no static target {target}")
        if not any(k.get("role") == "pod" for k in job.get("kubernetes_sd_configs") or []):
            errors.append(f"{name}: no Kubernetes pod discovery")
        labels = {r.get("target_label") for r in job.get("relabel_configs") or []}
        for label in ("pod", "namespace"):
            if label not in labels:
                errors.append(f"{name}: no relabelling to the label {label}")
    return errors


def file_discovery_copy(config, source_dir, out_dir):
    """A copy of the configuration whose Kubernetes discovery is a file of synthetic pods."""
    pods_file = os.path.join(out_dir, "pods.json")
    with open(pods_file, "w") as f:
        json.dump(SYNTHETIC_PODS, f)
    copy = json.loads(json.dumps(config))
    for job in copy.get("scrape_configs") or []:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["file_sd_configs"] = [{"files": [pods_file], "refresh_interval": "1s"}]
    for rule_file in copy.get("rule_files") or []:
        shutil.copy(os.path.join(source_dir, rule_file), os.path.join(out_dir, rule_file))
    path = os.path.join(out_dir, "prometheus.yml")
    with open(path, "w") as f:
        yaml.safe_dump(copy, f)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def relabel_errors(prometheus, config_path, work_dir):
    """Runs Prometheus on the file-discovery copy; the targets each job keeps, against EXPECTED."""
    expected_count = len(SYNTHETIC_PODS) * len(JOBS) + len(JOBS)
    for _ in range(5):  # another process may take the port between free_port() and the bind
        port = free_port()
        log = open(os.path.join(work_dir, "prometheus.log"), "w")
        process = subprocess.Popen(
            [prometheus, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={os.path.join(work_dir, 'data')}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            targets, deadline = None, time.monotonic() + 30
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    data = get_json(f"http://127.0.0.1:{port}/api/v1/targets?state=any")["data"]
                    if len(data["activeTargets"]) + len(data["droppedTargets"]) >= expected_count:
                        targets = data["activeTargets"]
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            if targets is not None:
                break
            if process.poll() is None:
                return [f"Prometheus did not discover the {expected_count} targets in 30s"]
            with open(os.path.join(work_dir, "prometheus.log")) as f:
                text = f.read()
            if "address already in use" not in text:
                return [f"Prometheus exited: {text[-2000:]}"]
        finally:
            process.kill()
            process.wait()
            log.close()
    else:
        return ["Prometheus could not bind a port"]
    got = {job: set() for job in JOBS}
    errors = []
    for target in targets:
        labels = target["labels"]
        got.setdefault(labels.get("job"), set()).add((labels.get("instance"), labels.get("pod", "")))
        if labels.get("pod") and labels.get("namespace") != "qtrain":
            errors.append(f"{labels.get('job')} {labels.get('instance')}: no namespace label")
    for job, expected in EXPECTED.items():
        if got.get(job) != expected:
            errors.append(f"{job} keeps {sorted(got.get(job, set()))}, not {sorted(expected)}")
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--promtool", required=True)
    parser.add_argument("--prometheus")
    parser.add_argument("--expect-error", help="the check must fail with this in an error")
    args = parser.parse_args()
    for tool in (args.promtool, args.prometheus):
        if tool and not os.access(tool, os.X_OK):
            print(f"{tool!r} is not an executable (scripts/setup.sh installs Prometheus)",
                  file=sys.stderr)
            return 2
    try:
        with open(args.config) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as error:
        print(f"FAIL: {args.config}: {error}", file=sys.stderr)
        return 1
    if not isinstance(config, dict):
        print(f"FAIL: {args.config}: not a YAML mapping", file=sys.stderr)
        return 1
    errors = shape_errors(config)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            copy_path = file_discovery_copy(config, os.path.dirname(os.path.abspath(args.config)),
                                            tmp)
        except OSError as error:
            print(f"FAIL: {args.config}: a rule file cannot be copied: {error}", file=sys.stderr)
            return 1
        rc, text = promtool_check(args.promtool, args.config)
        print(text.strip())
        if rc != 0 and NO_KUBERNETES in text:
            print("this promtool has no Kubernetes discovery: checking the file-discovery copy")
            rc, text = promtool_check(args.promtool, copy_path)
            print(text.strip())
        if rc != 0:
            errors.append("promtool check config failed")
        elif args.prometheus:
            errors += relabel_errors(args.prometheus, copy_path, tmp)
    for error in errors:
        print(f"FAIL: {error}", file=sys.stderr if args.expect_error is None else sys.stdout)
    if args.expect_error is not None:
        if any(args.expect_error in e for e in errors):
            print(f"OK: {args.config} is refused with {args.expect_error!r}")
            return 0
        print(f"FAIL: expected an error containing {args.expect_error!r}", file=sys.stderr)
        return 1
    if not errors:
        print(f"OK: {args.config}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
