#!/usr/bin/env python3
"""Checks pod templates against the restricted Pod Security Standard, plus a read-only root.

The controls are those of the Kubernetes documentation's Pod Security Standards (baseline and
restricted, https://kubernetes.io/docs/concepts/security/pod-security-standards/) that apply to
a pod spec, for containers, initContainers and ephemeralContainers, on every object that holds
a pod template: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
Job, CronJob and PodTemplate. qtrain's own rule on top: every container has
readOnlyRootFilesystem: true (the daemons write only to mounted volumes).

Usage:
  check_pod_security.py FILE...                   every violation, exit 1 if any
  check_pod_security.py --expect CONTROL FILE...  exit 0 only if the files violate CONTROL and
                                                  nothing else (the failing fixtures)
"""

import argparse
import sys
from dataclasses import dataclass

import yaml

# Control names (the fixtures in fixtures/pss/ are named for them).
HOST_PROCESS = "host-process"
HOST_NAMESPACES = "host-namespaces"
PRIVILEGED = "privileged"
CAPABILITIES = "capabilities"
HOST_PATH_VOLUMES = "host-path-volumes"
HOST_PORTS = "host-ports"
APPARMOR = "apparmor"
SELINUX = "selinux"
PROC_MOUNT = "proc-mount"
SECCOMP = "seccomp"
SYSCTLS = "sysctls"
VOLUME_TYPES = "volume-types"
PRIVILEGE_ESCALATION = "privilege-escalation"
RUN_AS_NON_ROOT = "run-as-non-root"
RUN_AS_USER = "run-as-user"
READ_ONLY_ROOT_FILESYSTEM = "read-only-root-filesystem"

CONTROLS = (HOST_PROCESS, HOST_NAMESPACES, PRIVILEGED, CAPABILITIES, HOST_PATH_VOLUMES,
            HOST_PORTS, APPARMOR, SELINUX, PROC_MOUNT, SECCOMP, SYSCTLS, VOLUME_TYPES,
            PRIVILEGE_ESCALATION, RUN_AS_NON_ROOT, RUN_AS_USER, READ_ONLY_ROOT_FILESYSTEM)

CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")

# Restricted: the only volume sources allowed.
ALLOWED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                        "persistentVolumeClaim", "projected", "secret"}
# Restricted: the only capability that may be added.
ALLOWED_ADD_CAPABILITIES = {"NET_BIND_SERVICE"}
# Baseline: the sysctls a pod may set.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}
ALLOWED_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t",
                         "container_engine_t"}
ALLOWED_SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
ALLOWED_APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_ANNOTATION_POD = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_ANNOTATION_CONTAINER = "container.seccomp.security.alpha.kubernetes.io/"


@dataclass(frozen=True)
class Violation:
    where: str  # e.g. 'StatefulSet/qtrain-worker container "worker"'
    control: str
    message: str

    def __str__(self):
        return f"{self.where}: {self.control}: {self.message}"


def pod_templates(obj):
    """(metadata, spec) of the pod (template) an object holds, or None."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return obj.get("metadata") or {}, spec
    if kind == "PodTemplate":
        template = obj.get("template") or {}
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet",
                  "ReplicationController", "Job"):
        template = spec.get("template") or {}
    elif kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    else:
        return None
    return template.get("metadata") or {}, template.get("spec") or {}


def _containers(spec):
    for field in CONTAINER_FIELDS:
        for c in spec.get(field) or []:
            yield field, c


def _container_where(base, field, c):
    noun = {"initContainers": "initContainer", "containers": "container",
            "ephemeralContainers": "ephemeralContainer"}[field]
    return f'{base} {noun} "{c.get("name", "?")}"'


def check_pod(where, metadata, spec):
    """Every violation of the pod spec `spec` (with its metadata), as a list of Violation."""
    out = []

    def bad(w, control, message):
        out.append(Violation(w, control, message))

    psc = spec.get("securityContext") or {}
    windows = ((spec.get("os") or {}).get("name")) == "windows"
    annotations = metadata.get("annotations") or {}

    # Baseline: HostProcess.
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad(where, HOST_PROCESS, "securityContext.windowsOptions.hostProcess is true")
    # Baseline: host namespaces.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad(where, HOST_NAMESPACES, f"{field} is true")
    # Baseline: hostPath volumes; restricted: only the allowed volume types.
    for v in spec.get("volumes") or []:
        sources = [k for k in v if k != "name"]
        for source in sources:
            if source == "hostPath":
                bad(where, HOST_PATH_VOLUMES, f'volume "{v.get("name")}" is a hostPath')
            elif source not in ALLOWED_VOLUME_TYPES:
                bad(where, VOLUME_TYPES,
                    f'volume "{v.get("name")}" has type {source} (allowed: '
                    f'{", ".join(sorted(ALLOWED_VOLUME_TYPES))})')
    # Baseline: AppArmor (pod level and the beta annotations).
    pod_apparmor = (psc.get("appArmorProfile") or {}).get("type")
    if pod_apparmor is not None and pod_apparmor not in ALLOWED_APPARMOR_TYPES:
        bad(where, APPARMOR, f"securityContext.appArmorProfile.type is {pod_apparmor}")
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION):
            if not (value in ("", "runtime/default") or str(value).startswith("localhost/")):
                bad(where, APPARMOR, f"annotation {key} is {value}")
    # Baseline: SELinux (pod level).
    out.extend(_check_selinux(where, psc.get("seLinuxOptions")))
    # Baseline: sysctls.
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            bad(where, SYSCTLS, f'sysctl {s.get("name")} is not in the safe set')
    # Seccomp: baseline forbids Unconfined, restricted requires RuntimeDefault or Localhost at
    # the pod level or on every container.
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP_TYPES:
        bad(where, SECCOMP, f"securityContext.seccompProfile.type is {pod_seccomp}")
    for key, value in annotations.items():
        if key == SECCOMP_ANNOTATION_POD or key.startswith(SECCOMP_ANNOTATION_CONTAINER):
            if value == "unconfined":
                bad(where, SECCOMP, f"annotation {key} is unconfined")
    # Restricted: runAsNonRoot and runAsUser (pod level).
    pod_non_root = psc.get("runAsNonRoot")
    if pod_non_root is False:
        bad(where, RUN_AS_NON_ROOT, "securityContext.runAsNonRoot is false")
    if psc.get("runAsUser") == 0:
        bad(where, RUN_AS_USER, "securityContext.runAsUser is 0 (root)")

    for field, c in _containers(spec):
        out.extend(_check_container(_container_where(where, field, c), c, pod_seccomp,
                                    pod_non_root, windows))
    return out


def _check_selinux(where, options):
    out = []
    if not options:
        return out
    if options.get("type", "") not in ALLOWED_SELINUX_TYPES:
        out.append(Violation(where, SELINUX, f'seLinuxOptions.type is {options.get("type")}'))
    for field in ("user", "role"):
        if options.get(field, ""):
            out.append(Violation(where, SELINUX, f"seLinuxOptions.{field} is set"))
    return out


def _check_container(where, c, pod_seccomp, pod_non_root, windows):
    out = []

    def bad(control, message):
        out.append(Violation(where, control, message))

    sc = c.get("securityContext") or {}
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        bad(HOST_PROCESS, "securityContext.windowsOptions.hostProcess is true")
    if sc.get("privileged"):
        bad(PRIVILEGED, "securityContext.privileged is true")
    for p in c.get("ports") or []:
        if p.get("hostPort"):
            bad(HOST_PORTS, f'port {p.get("containerPort")} has hostPort {p.get("hostPort")}')
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in ALLOWED_APPARMOR_TYPES:
        bad(APPARMOR, f"securityContext.appArmorProfile.type is {apparmor}")
    out.extend(_check_selinux(where, sc.get("seLinuxOptions")))
    proc_mount = sc.get("procMount")
    if proc_mount is not None and proc_mount != "Default":
        bad(PROC_MOUNT, f"securityContext.procMount is {proc_mount}")
    if sc.get("runAsUser") == 0:
        bad(RUN_AS_USER, "securityContext.runAsUser is 0 (root)")
    non_root = sc.get("runAsNonRoot")
    if non_root is False:
        bad(RUN_AS_NON_ROOT, "securityContext.runAsNonRoot is false")
    elif non_root is None and pod_non_root is not True:
        bad(RUN_AS_NON_ROOT, "runAsNonRoot is set neither on the container nor on the pod")
    if sc.get("readOnlyRootFilesystem") is not True:
        bad(READ_ONLY_ROOT_FILESYSTEM, "securityContext.readOnlyRootFilesystem is not true")

    seccomp = (sc.get("seccompProfile") or {}).get("type")
    caps = sc.get("capabilities") or {}
    added = set(caps.get("add") or [])
    dropped = set(caps.get("drop") or [])
    if windows:
        # The restricted policy exempts Windows pods from the Linux-only controls below.
        if seccomp is not None and seccomp not in ALLOWED_SECCOMP_TYPES:
            bad(SECCOMP, f"securityContext.seccompProfile.type is {seccomp}")
        return out
    if seccomp is not None and seccomp not in ALLOWED_SECCOMP_TYPES:
        bad(SECCOMP, f"securityContext.seccompProfile.type is {seccomp}")
    elif seccomp is None and pod_seccomp is None:
        bad(SECCOMP, "seccompProfile is set neither on the container nor on the pod "
                     "(RuntimeDefault or Localhost)")
    if "ALL" not in dropped:
        bad(CAPABILITIES, "capabilities.drop does not include ALL")
    extra = sorted(added - ALLOWED_ADD_CAPABILITIES)
    if extra:
        bad(CAPABILITIES, f"capabilities.add has {', '.join(extra)} (only NET_BIND_SERVICE may "
                          f"be added)")
    if sc.get("allowPrivilegeEscalation") is not False:
        bad(PRIVILEGE_ESCALATION, "securityContext.allowPrivilegeEscalation is not false")
    return out


def describe(obj):
    meta = obj.get("metadata") or {}
    return f'{obj.get("kind")}/{meta.get("name", "?")}'


def check_objects(objects):
    """Violations of every object holding a pod template; (violations, number of pods checked)."""
    violations, checked = [], 0
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        template = pod_templates(obj)
        if template is None:
            continue
        checked += 1
        violations.extend(check_pod(describe(obj), *template))
    return violations, checked


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expect", choices=CONTROLS,
                        help="succeed only if CONTROL, and no other control, is violated")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)

    violations, checked = [], 0
    for path in args.files:
        try:
            objects = load(path)
        except (OSError, yaml.YAMLError) as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            return 2
        v, n = check_objects(objects)
        checked += n
        violations.extend(Violation(f"{path}: {x.where}", x.control, x.message) for x in v)
    if checked == 0:
        print(f"no object with a pod template in {', '.join(args.files)}", file=sys.stderr)
        return 2
    for v in violations:
        print(v)
    if args.expect:
        seen = {v.control for v in violations}
        if seen != {args.expect}:
            print(f"expected exactly the {args.expect} violation, got: "
                  f"{', '.join(sorted(seen)) or 'none'}", file=sys.stderr)
            return 1
        return 0
    if violations:
        print(f"{len(violations)} pod security violation(s)", file=sys.stderr)
        return 1
    print(f"{checked} pod template(s) meet the restricted Pod Security Standard")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
