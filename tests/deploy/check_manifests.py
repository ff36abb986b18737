#!/usr/bin/env python3
"""Checks qtrain's Kubernetes manifests (deploy/k8s) offline.

  check_manifests.py overlay DIR
      Renders DIR with `kubectl kustomize` and checks every object: Kubernetes schemas
      (kubernetes-validate --strict, Kubernetes 1.30.0), PodMonitors against the
      prometheus-operator types with no unknown key anywhere, the restricted Pod Security
      Standard on every pod template (check_pod_security.py), the namespace's pod-security
      label, references between objects (ConfigMaps, Secrets, claims, Service and PodMonitor
      ports, selectors, $(VAR) in args), the contract's labels, annotations and ports, and that
      no real-looking token is in the output.
  check_manifests.py overlays CPU_DIR GPU_DIR
      Renders both and checks that they differ as expected: the GPU overlay's workers take one
      nvidia.com/gpu each and run --device=cuda; the CPU overlay has no GPU anywhere.
  check_manifests.py validate FILE...
      Schema checks only (kubernetes-validate, or the PodMonitor schema) of the objects in FILEs.
  check_manifests.py podmonitor [--expect-invalid KEY] FILE...
      The PodMonitor schema check alone; with --expect-invalid, succeed only when the check fails
      and its error names KEY (a misspelled key must be refused).
"""

import argparse
import base64
import binascii
import math
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_pod_security  # noqa: E402

KUBERNETES_VERSION = "1.30.0"
PODMONITOR_API = "monitoring.coreos.com/v1"
METRICS_PORTS = {"coordinator": 9401, "worker": 9402}
GRPC_PORT = 7070
# A Secret value that is a placeholder says so.
PLACEHOLDER = re.compile(r"REPLACE-ME|placeholder|not-a-secret|changeme", re.IGNORECASE)


class CheckError(Exception):
    pass


# --- Rendering ---------------------------------------------------------------------------------

def render(directory):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise CheckError("kubectl is not installed (not found on PATH): it renders the "
                         "kustomize overlays (`kubectl kustomize`); install kubectl 1.27 or newer")
    if not os.path.isdir(directory):
        raise CheckError(f"{directory}: no such overlay directory")
    proc = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise CheckError(f"kubectl kustomize {directory} failed:\n{proc.stderr.strip()}")
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    if not objects:
        raise CheckError(f"kubectl kustomize {directory} rendered nothing")
    return proc.stdout, objects


def name_of(obj):
    meta = obj.get("metadata") or {}
    return f'{obj.get("kind")}/{meta.get("name", "?")}'


# --- Schemas -----------------------------------------------------------------------------------

def _strict(schema):
    """The schema with additionalProperties: false on every object that lists its properties
    (pydantic's schema lets unknown keys through), and pydantic's Optional (anyOf X or null)
    as X: a key is left out rather than null, and errors then point at the bad key itself."""
    if isinstance(schema, dict):
        alternatives = schema.get("anyOf")
        if isinstance(alternatives, list):
            non_null = [a for a in alternatives if a != {"type": "null"}]
            if len(non_null) == 1 and len(non_null) < len(alternatives):
                rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
                return _strict({**rest, **non_null[0]})
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


_PODMONITOR_VALIDATOR = None


def podmonitor_validator():
    global _PODMONITOR_VALIDATOR
    if _PODMONITOR_VALIDATOR is None:
        from cloudcoil.models.prometheus_operator.v1 import PodMonitor
        schema = _strict(PodMonitor.model_json_schema(mode="validation", by_alias=True))
        jsonschema.Draft202012Validator.check_schema(schema)
        _PODMONITOR_VALIDATOR = jsonschema.Draft202012Validator(schema)
    return _PODMONITOR_VALIDATOR


def _error_path(error):
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def validate_podmonitor(obj):
    """Problems of a PodMonitor against the prometheus-operator types, as strings."""
    problems = []
    if obj.get("apiVersion") != PODMONITOR_API:
        problems.append(f"apiVersion is {obj.get('apiVersion')!r}, not {PODMONITOR_API}")
    if not (obj.get("spec") or {}).get("podMetricsEndpoints"):
        problems.append("spec.podMetricsEndpoints is empty or missing")
    for error in sorted(podmonitor_validator().iter_errors(obj), key=lambda e: list(e.path)):
        where = _error_path(error) or "(top)"
        problems.append(f"{where}: {error.message}")
    return problems


def validate_object(obj):
    """Schema problems of one object, as strings."""
    if obj.get("kind") == "PodMonitor":
        return validate_podmonitor(obj)
    import kubernetes_validate
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    except kubernetes_validate.ValidationError as e:
        return [f"{_error_path(e) or '(top)'}: {e.message}"]
    return []


def schema_problems(objects):
    out = []
    for obj in objects:
        out.extend(f"{name_of(obj)}: {p}" for p in validate_object(obj))
    return out


# --- References between objects ----------------------------------------------------------------

def _index(objects):
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj.get("kind"), {})[(obj.get("metadata") or {}).get("name")] = obj
    return by_kind


def _matches(selector, labels):
    labels = labels or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _workloads(objects):
    """(object, pod metadata, pod spec) of every object with a pod template."""
    for obj in objects:
        template = check_pod_security.pod_templates(obj)
        if template is not None:
            yield obj, template[0], template[1]


def _container_ports(spec):
    ports = {}
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            ports[p.get("containerPort")] = p
            if p.get("name"):
                ports[p["name"]] = p
    return ports


def _check_pod_references(obj, spec, by_kind, claim_templates):
    out = []
    where = name_of(obj)
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for v in volumes.values():
        if "configMap" in v and v["configMap"].get("name") not in by_kind.get("ConfigMap", {}):
            out.append(f'{where}: volume "{v["name"]}" names a missing ConfigMap '
                       f'{v["configMap"].get("name")}')
        if "secret" in v:
            secret = by_kind.get("Secret", {}).get(v["secret"].get("secretName"))
            if secret is None:
                out.append(f'{where}: volume "{v["name"]}" names a missing Secret '
                           f'{v["secret"].get("secretName")}')
            else:
                for item in v["secret"].get("items") or []:
                    if item.get("key") not in (secret.get("data") or {}):
                        out.append(f'{where}: volume "{v["name"]}" names a missing key '
                                   f'{item.get("key")} of Secret {v["secret"]["secretName"]}')
        if "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"].get("claimName")
            if claim not in by_kind.get("PersistentVolumeClaim", {}):
                out.append(f'{where}: volume "{v["name"]}" names a missing claim {claim}')
    for c in check_pod_security._containers(spec):
        c = c[1]
        cwhere = f'{where} container "{c.get("name")}"'
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes and m.get("name") not in claim_templates:
                out.append(f'{cwhere}: mount {m.get("mountPath")} names a missing volume '
                           f'{m.get("name")}')
        env_names = set()
        for e in c.get("env") or []:
            env_names.add(e.get("name"))
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                cm = by_kind.get("ConfigMap", {}).get(ref.get("name"))
                if cm is None or ref.get("key") not in (cm.get("data") or {}):
                    out.append(f'{cwhere}: env {e.get("name")} names a missing ConfigMap key '
                               f'{ref.get("name")}/{ref.get("key")}')
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                secret = by_kind.get("Secret", {}).get(ref.get("name"))
                if secret is None or ref.get("key") not in (secret.get("data") or {}):
                    out.append(f'{cwhere}: env {e.get("name")} names a missing Secret key '
                               f'{ref.get("name")}/{ref.get("key")}')
        for arg in (c.get("command") or []) + (c.get("args") or []):
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                if var not in env_names:
                    out.append(f"{cwhere}: argument {arg} uses $({var}), which is not in env")
        out.extend(_check_file_flags(cwhere, c, volumes, by_kind))
    return out


def _check_file_flags(cwhere, c, volumes, by_kind):
    """Every --*-token-file flag names a key of a Secret mounted at that directory."""
    out = []
    mounts = {m.get("mountPath").rstrip("/"): m for m in c.get("volumeMounts") or []}
    for arg in c.get("args") or []:
        m = re.match(r"--([a-z-]+-token-file)=(.+)$", arg)
        if not m:
            continue
        flag, path = m.group(1), m.group(2)
        directory, key = os.path.dirname(path), os.path.basename(path)
        mount = mounts.get(directory)
        volume = volumes.get(mount.get("name")) if mount else None
        if volume is None or "secret" not in volume:
            out.append(f"{cwhere}: --{flag}={path} is not in a mounted Secret volume")
            continue
        secret = by_kind.get("Secret", {}).get(volume["secret"].get("secretName")) or {}
        items = volume["secret"].get("items")
        keys = ({i.get("path"): i.get("key") for i in items} if items
                else {k: k for k in secret.get("data") or {}})
        if key not in keys:
            out.append(f"{cwhere}: --{flag}={path}: the Secret volume has no file {key}")
        elif not mount.get("readOnly"):
            out.append(f"{cwhere}: the token volume at {directory} is not mounted readOnly")
    return out


def _check_selectors(objects, by_kind, pods):
    out = []
    for svc in by_kind.get("Service", {}).values():
        selector = (svc.get("spec") or {}).get("selector") or {}
        matched = [p for p in pods if _matches({"matchLabels": selector}, p[1].get("labels"))]
        if not matched:
            out.append(f"{name_of(svc)}: its selector matches no pod template")
        for port in (svc.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for _, _, spec in matched:
                if target not in _container_ports(spec):
                    out.append(f"{name_of(svc)}: port {port.get('name')} targets {target}, "
                               f"which a selected pod does not expose")
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        for obj in by_kind.get(kind, {}).values():
            selector = (obj.get("spec") or {}).get("selector") or {}
            matched = [p for p in pods if _matches(selector, p[1].get("labels"))]
            if not matched:
                out.append(f"{name_of(obj)}: its selector matches no pod template")
            if kind == "PodMonitor":
                for ep in obj["spec"].get("podMetricsEndpoints") or []:
                    for _, _, spec in matched:
                        if ep.get("port") not in _container_ports(spec):
                            out.append(f"{name_of(obj)}: port {ep.get('port')} is not a named "
                                       f"port of the selected pods")
    for np in by_kind.get("NetworkPolicy", {}).values():
        spec = np.get("spec") or {}
        selector = spec.get("podSelector") or {}
        if selector and not any(_matches(selector, p[1].get("labels")) for p in pods):
            out.append(f"{name_of(np)}: its podSelector matches no pod template")
    for obj, _, _ in pods:
        spec = obj.get("spec") or {}
        if "selector" in spec and obj.get("kind") in ("StatefulSet", "Deployment", "DaemonSet",
                                                      "ReplicaSet"):
            labels = (spec.get("template") or {}).get("metadata", {}).get("labels")
            if not _matches(spec["selector"], labels):
                out.append(f"{name_of(obj)}: its selector does not match its pod template")
        service = spec.get("serviceName")
        if obj.get("kind") == "StatefulSet" and service not in by_kind.get("Service", {}):
            out.append(f"{name_of(obj)}: serviceName {service} is not a Service here")
    return out


def reference_problems(objects):
    by_kind = _index(objects)
    pods = list(_workloads(objects))
    out = []
    for obj, _, spec in pods:
        templates = {t.get("metadata", {}).get("name")
                     for t in (obj.get("spec") or {}).get("volumeClaimTemplates") or []}
        out.extend(_check_pod_references(obj, spec, by_kind, templates))
    out.extend(_check_selectors(objects, by_kind, pods))
    return out


# --- qtrain's contract ---------------------------------------------------------------------------

def _flag(args, name):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def contract_problems(objects):
    """The labels, annotations, ports and flags CONTRACT.md fixes for the daemons' pods."""
    out = []
    by_kind = _index(objects)
    components = {}
    for obj, meta, spec in _workloads(objects):
        where = name_of(obj)
        labels = meta.get("labels") or {}
        if labels.get("app.kubernetes.io/name") != "qtrain":
            out.append(f"{where}: pod label app.kubernetes.io/name is not qtrain")
        component = labels.get("app.kubernetes.io/component")
        if component not in METRICS_PORTS:
            out.append(f"{where}: pod label app.kubernetes.io/component is {component!r}")
            continue
        components[component] = obj
        port = METRICS_PORTS[component]
        annotations = meta.get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true":
            out.append(f'{where}: annotation prometheus.io/scrape is not "true"')
        if annotations.get("prometheus.io/port") != str(port):
            out.append(f'{where}: annotation prometheus.io/port is not "{port}"')
        containers = spec.get("containers") or []
        args = containers[0].get("args") or [] if containers else []
        if _flag(args, "metrics-listen") != f"0.0.0.0:{port}":
            out.append(f"{where}: --metrics-listen is not 0.0.0.0:{port}")
        ports = _container_ports(spec)
        if (ports.get("metrics") or {}).get("containerPort") != port:
            out.append(f"{where}: container port 'metrics' is not {port}")
        if spec.get("automountServiceAccountToken") is not False:
            out.append(f"{where}: automountServiceAccountToken is not false")
        if component == "coordinator":
            out.extend(_coordinator_problems(where, obj, args, ports, containers[0]))
        else:
            out.extend(_worker_problems(where, args, containers[0]))
    for component in METRICS_PORTS:
        if component not in components:
            out.append(f"no {component} workload")
    for ns in by_kind.get("Namespace", {}).values():
        labels = (ns.get("metadata") or {}).get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            out.append(f"{name_of(ns)}: label pod-security.kubernetes.io/enforce is not restricted")
    namespaces = set(by_kind.get("Namespace", {}))
    if not namespaces:
        out.append("no Namespace object (it carries the pod-security label)")
    for obj in objects:
        ns = (obj.get("metadata") or {}).get("namespace")
        if obj.get("kind") != "Namespace" and ns not in namespaces:
            out.append(f"{name_of(obj)}: namespace {ns!r} is not the labelled Namespace")
    return out


def _coordinator_problems(where, obj, args, ports, container):
    out = []
    if obj.get("kind") != "StatefulSet" or (obj.get("spec") or {}).get("replicas") != 1:
        out.append(f"{where}: the coordinator is not a StatefulSet of 1 replica")
    if (ports.get("grpc") or {}).get("containerPort") != GRPC_PORT:
        out.append(f"{where}: container port 'grpc' is not {GRPC_PORT}")
    if _flag(args, "listen") != f"0.0.0.0:{GRPC_PORT}":
        out.append(f"{where}: --listen is not 0.0.0.0:{GRPC_PORT}")
    for flag in ("state-dir", "run-root", "auth-token-file", "cluster-token-file"):
        if not _flag(args, flag):
            out.append(f"{where}: no --{flag}")
    state = _flag(args, "state-dir") or ""
    templates = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates") or []}
    mounted = {m.get("name") for m in container.get("volumeMounts") or []
               if state.startswith(m.get("mountPath", "\0"))}
    if not mounted & templates:
        out.append(f"{where}: --state-dir {state} is not on a volumeClaimTemplate")
    for probe in ("readinessProbe", "livenessProbe"):
        if ((container.get(probe) or {}).get("grpc") or {}).get("port") != GRPC_PORT:
            out.append(f"{where}: {probe} is not a grpc probe on {GRPC_PORT}")
    return out


def _worker_problems(where, args, container):
    out = []
    if _flag(args, "name") != "$(POD_NAME)" or _flag(args, "peer-host") != "$(POD_IP)":
        out.append(f"{where}: --name and --peer-host are not $(POD_NAME) and $(POD_IP)")
    fields = {e.get("name"): ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
              for e in container.get("env") or []}
    if fields.get("POD_NAME") != "metadata.name" or fields.get("POD_IP") != "status.podIP":
        out.append(f"{where}: POD_NAME and POD_IP do not come from the downward API")
    if _flag(args, "device") not in ("cpu", "cuda"):
        out.append(f"{where}: --device is neither cpu nor cuda")
    if not _flag(args, "cluster-token-file") or not _flag(args, "work-dir"):
        out.append(f"{where}: no --cluster-token-file or --work-dir")
    return out


# --- Resources, probes, policies and budgets ------------------------------------------------

def _rule_ports(rule):
    return {(p.get("port"), p.get("endPort")) for p in rule.get("ports") or []}


def policy_problems(objects):
    """Requests, limits and probes on every daemon; the network policies and budgets qtrain
    relies on."""
    out = []
    by_kind = _index(objects)
    components = {}
    for obj, meta, spec in _workloads(objects):
        component = (meta.get("labels") or {}).get("app.kubernetes.io/component")
        components[component] = meta.get("labels") or {}
        for c in spec.get("containers") or []:
            where = f'{name_of(obj)} container "{c.get("name")}"'
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(part) or {}):
                        out.append(f"{where}: no {resource} in resources.{part}")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    out.append(f"{where}: no {probe}")

    policies = list(by_kind.get("NetworkPolicy", {}).values())
    if not any((np["spec"].get("podSelector") or {}) == {}
               and set(np["spec"].get("policyTypes") or []) == {"Ingress", "Egress"}
               and not np["spec"].get("ingress") and not np["spec"].get("egress")
               for np in policies):
        out.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")

    def ingress_rules(component):
        labels = components.get(component) or {}
        for np in policies:
            selector = np["spec"].get("podSelector") or {}
            if selector and _matches(selector, labels):
                yield from np["spec"].get("ingress") or []

    for component, port in METRICS_PORTS.items():
        rules = [r for r in ingress_rules(component) if (port, None) in _rule_ports(r)]
        if not rules:
            out.append(f"no NetworkPolicy admits the monitoring namespace to {component} {port}")
        for r in rules:
            sources = r.get("from") or []
            if not sources or any(s.get("namespaceSelector") != {"matchLabels": {
                    "kubernetes.io/metadata.name": "monitoring"}} or "podSelector" in s
                    for s in sources):
                out.append(f"{component} {port} is open to more than the monitoring namespace")
    if not any((GRPC_PORT, None) in _rule_ports(r) for r in ingress_rules("coordinator")):
        out.append(f"no NetworkPolicy admits clients to the coordinator's {GRPC_PORT}")
    if not any((32768, 60999) in _rule_ports(r) for r in ingress_rules("worker")):
        out.append("no NetworkPolicy admits workers to each other on 32768-60999")

    budgets = by_kind.get("PodDisruptionBudget", {}).values()
    for component, labels in components.items():
        if not any(_matches(b["spec"].get("selector") or {}, labels) for b in budgets):
            out.append(f"no PodDisruptionBudget covers the {component}")
    return out


# --- Secrets -------------------------------------------------------------------------------------

def _entropy(s):
    counts = {c: s.count(c) for c in set(s)}
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values())


# Long runs of token-like characters; a hashed generator suffix (10 characters) is shorter.
TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/=_\-]{24,}")


def looks_like_token(text):
    """A high-entropy run that has no word-like hyphenation (e.g. base64 of random bytes)."""
    for m in TOKEN_LIKE.finditer(text):
        run = m.group(0)
        if PLACEHOLDER.search(run):
            continue
        parts = re.split(r"[-_./]", run)
        if all(len(p) <= 20 for p in parts):  # hyphenated words and names, not a token
            continue
        if _entropy(run) >= 4.0 and sum(c.isdigit() for c in run) >= 2:
            return run
    return None


def secret_problems(objects):
    out = []
    for secret in (o for o in objects if o.get("kind") == "Secret"):
        values = dict(secret.get("stringData") or {})
        for key, value in (secret.get("data") or {}).items():
            try:
                values[key] = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                out.append(f"{name_of(secret)}: data.{key} is not base64 of UTF-8 text")
                continue
        if not values:
            out.append(f"{name_of(secret)}: no data")
        for key, value in values.items():
            if not PLACEHOLDER.search(value):
                out.append(f"{name_of(secret)}: {key} is not an obvious placeholder (it must say "
                           f"REPLACE-ME; real tokens never go in the manifests)")
            if looks_like_token(value):
                out.append(f"{name_of(secret)}: {key} looks like a real token")
    for obj in objects:
        if obj.get("kind") == "Secret":
            continue
        hit = looks_like_token(yaml.safe_dump(obj))
        if hit:
            out.append(f"{name_of(obj)}: {hit[:6]}... looks like a real token")
    return out


# --- Commands ------------------------------------------------------------------------------------

def check_overlay(directory):
    _, objects = render(directory)
    problems = schema_problems(objects)
    violations, checked = check_pod_security.check_objects(objects)
    problems.extend(f"pod security: {v}" for v in violations)
    if checked == 0:
        problems.append("no pod template to check")
    problems.extend(reference_problems(objects))
    problems.extend(contract_problems(objects))
    problems.extend(policy_problems(objects))
    problems.extend(secret_problems(objects))
    return objects, problems


def _worker_of(objects):
    for obj, meta, spec in _workloads(objects):
        if (meta.get("labels") or {}).get("app.kubernetes.io/component") == "worker":
            return obj, spec
    raise CheckError("no worker workload")


def compare_overlays(cpu_dir, gpu_dir):
    cpu_text, cpu = render(cpu_dir)
    _, gpu = render(gpu_dir)
    out = []
    if "nvidia.com/gpu" in cpu_text:
        out.append(f"{cpu_dir}: mentions nvidia.com/gpu (the CPU overlay must not)")
    _, cpu_spec = _worker_of(cpu)
    gpu_obj, gpu_spec = _worker_of(gpu)
    for label, spec, device, image in (("cpu", cpu_spec, "cpu", "qtrain-cpu"),
                                       ("gpu", gpu_spec, "cuda", "qtrain-cuda")):
        c = spec["containers"][0]
        if _flag(c.get("args") or [], "device") != device:
            out.append(f"{label} overlay: the worker does not run --device={device}")
        for obj, _, pspec in _workloads(cpu if label == "cpu" else gpu):
            for ctr in pspec.get("containers") or []:
                if ctr.get("image", "").split(":")[0] != image:
                    out.append(f"{label} overlay: {name_of(obj)} runs image {ctr.get('image')}, "
                               f"not {image}")
    c = gpu_spec["containers"][0]
    limits = (c.get("resources") or {}).get("limits") or {}
    if str(limits.get("nvidia.com/gpu")) != "1":
        out.append("gpu overlay: the worker's limits do not have nvidia.com/gpu: 1")
    tolerations = gpu_spec.get("tolerations") or []
    if not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
        out.append("gpu overlay: no toleration of the nvidia.com/gpu taint")
    if not gpu_spec.get("nodeSelector") and not (gpu_spec.get("affinity") or {}).get(
            "nodeAffinity"):
        out.append("gpu overlay: no nodeSelector or node affinity on GPU nodes")
    anti = ((gpu_spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or []
    spread = [t for t in gpu_spec.get("topologySpreadConstraints") or []
              if t.get("whenUnsatisfiable") == "DoNotSchedule" and t.get("maxSkew") == 1]
    if not any(t.get("topologyKey") == "kubernetes.io/hostname" for t in anti + spread):
        out.append("gpu overlay: nothing keeps two workers off the same node")
    shm = [v for v in gpu_spec.get("volumes") or []
           if (v.get("emptyDir") or {}).get("medium") == "Memory"]
    mounts = {m.get("name"): m.get("mountPath") for m in c.get("volumeMounts") or []}
    if not any(mounts.get(v["name"]) == "/dev/shm" for v in shm):
        out.append("gpu overlay: no memory-backed emptyDir at /dev/shm")
    if (gpu_obj.get("spec") or {}).get("replicas", 1) < 1:
        out.append("gpu overlay: no worker replicas")
    return out


def report(problems, ok_message):
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(ok_message)
    return 0


def load_files(paths):
    objects = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            objects.extend(d for d in yaml.safe_load_all(f) if d is not None)
    return objects


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("overlay")
    p.add_argument("directory")
    p = sub.add_parser("overlays")
    p.add_argument("cpu_directory")
    p.add_argument("gpu_directory")
    p = sub.add_parser("validate")
    p.add_argument("files", nargs="+")
    p = sub.add_parser("podmonitor")
    p.add_argument("--expect-invalid", metavar="KEY")
    p.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "overlay":
            objects, problems = check_overlay(args.directory)
            return report(problems, f"{args.directory}: {len(objects)} objects valid")
        if args.command == "overlays":
            return report(compare_overlays(args.cpu_directory, args.gpu_directory),
                          "the overlays differ as expected")
        objects = load_files(args.files)
        if args.command == "validate":
            return report(schema_problems(objects), f"{len(objects)} objects valid")
        monitors = [o for o in objects if o.get("kind") == "PodMonitor"]
        if not monitors:
            raise CheckError(f"no PodMonitor in {', '.join(args.files)}")
        problems = [f"{name_of(o)}: {p}" for o in monitors for p in validate_podmonitor(o)]
        if args.expect_invalid:
            for p in problems:
                print(p)
            if any(args.expect_invalid in p for p in problems):
                print(f"refused, naming {args.expect_invalid}, as expected")
                return 0
            print(f"expected an error naming {args.expect_invalid}", file=sys.stderr)
            return 1
        return report(problems, f"{len(monitors)} PodMonitor(s) valid")
    except (CheckError, OSError, yaml.YAMLError, subprocess.TimeoutExpired) as e:
        print(f"check_manifests: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
