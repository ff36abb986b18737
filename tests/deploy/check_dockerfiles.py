#!/usr/bin/env python3
"""Checks deploy/docker/{cpu,cuda}.Dockerfile and .dockerignore offline (no Docker daemon).

  check_dockerfiles.py [--root DIR] [--binaries BIN...]

Rules (each failure names the file, the line and the rule):
  - every FROM image has a pinned tag (not latest, none omitted); stages are named and
    COPY --from names an earlier stage; no ADD; no ARG or ENV that looks like a secret;
  - apt-get: update and install in the same RUN, --no-install-recommends, lists removed;
  - the build stage installs every package of scripts/setup.sh but those only the tests use,
    and configures with -DQTRAIN_CUDA=OFF (cpu) or ON (cuda), tests and benchmarks off, and
    builds the three binaries;
  - the runtime stage installs no -dev package and no compiler, copies qtrain,
    qtrain-coordinator and qtrain-worker to /usr/local/bin (the paths the manifests run), and
    runs as the numeric non-root USER UID:GID that deploy/k8s's pods use (runAsUser/runAsGroup);
  - cpu: Debian 12 images; every package it installs exists in Debian 12 (looked up with
    apt-cache when run on Debian 12); the runtime packages cover the libraries the binaries link
    (with --binaries: deploy/docker/runtime-packages.sh on the built binaries);
  - cuda: nvidia/cuda devel image for the build, the runtime image of the same CUDA version and
    OS for the runtime, and the runtime packages computed from the built binaries;
  - .dockerignore leaves out .git and the build trees.
"""

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

BINARIES = ("qtrain", "qtrain-coordinator", "qtrain-worker")
# setup.sh packages that only the tests, sanitizer and fuzz builds or the end-to-end test use.
TEST_ONLY_PACKAGES = {"libgtest-dev", "libgmock-dev", "libbenchmark-dev", "openssl", "clang",
                      "libclang-rt-14-dev", "libomp-14-dev", "prometheus",
                      "python3-numpy"}
# In every Debian image (essential): no need to list them.
BASE_PACKAGES = {"libc6", "libgcc-s1"}
COMPILERS = {"build-essential", "gcc", "g++", "clang", "cmake", "ninja-build"}
SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE", re.IGNORECASE)


class Instruction:
    def __init__(self, line, keyword, args):
        self.line, self.keyword, self.args = line, keyword, args


class Stage:
    def __init__(self, line, image, name):
        self.line, self.image, self.name = line, image, name
        self.instructions = []


def parse(text):
    """Instructions (continuations joined, comments dropped) of a Dockerfile."""
    out, buf, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        buf = ""
    if buf:
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
    return out


def stages_of(instructions, problems, where):
    """Stages with their instructions; global ARG defaults substituted in FROM."""
    global_args, stages = {}, []
    for ins in instructions:
        if ins.keyword == "ARG" and not stages:
            name, _, default = ins.args.partition("=")
            global_args[name] = default.strip('"')
            continue
        if ins.keyword == "FROM":
            words = ins.args.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                           lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)),
                           words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if name is None:
                problems.append(f"{where}:{ins.line}: FROM {words[0]} has no stage name (AS ...)")
            stages.append(Stage(ins.line, image, name))
            continue
        if not stages:
            problems.append(f"{where}:{ins.line}: {ins.keyword} before the first FROM")
            continue
        stages[-1].instructions.append(ins)
    return stages


def apt_packages(command):
    """Packages of every `apt-get install` in a RUN command."""
    packages = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part.replace("\\\n", " "))
        if len(words) >= 2 and words[0] == "apt-get" and "install" in words:
            packages.extend(w for w in words[words.index("install") + 1:]
                            if not w.startswith("-"))
    return packages


def setup_packages(root):
    """The `packages=( ... )` array of scripts/setup.sh."""
    with open(os.path.join(root, "scripts", "setup.sh"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^packages=\((.*?)^\)", text, re.S | re.M)
    if not m:
        raise SystemExit("scripts/setup.sh: no packages=( ... ) array")
    body = "\n".join(line.split("#", 1)[0] for line in m.group(1).splitlines())
    return set(body.split())


def manifest_identity(root):
    """(runAsUser values, runAsGroup values, command paths) in deploy/k8s."""
    users, groups, commands = set(), set(), set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "runAsUser":
                    users.add(v)
                elif k == "runAsGroup":
                    groups.add(v)
                elif k == "command" and isinstance(v, list) and v:
                    commands.add(v[0])
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in glob.glob(os.path.join(root, "deploy", "k8s", "**", "*.yaml"), recursive=True):
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                walk(doc)
    return users, groups, commands


def check_common(where, stages, problems):
    names = set()
    for stage in stages:
        image = stage.image
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        if not tag or tag == "latest" or "$" in image:
            problems.append(f"{where}:{stage.line}: FROM {image}: pin a tag (not latest)")
        for ins in stage.instructions:
            if ins.keyword == "ADD":
                problems.append(f"{where}:{ins.line}: ADD: use COPY")
            if ins.keyword in ("ARG", "ENV") and SECRET_WORDS.search(ins.args.split("=")[0]):
                problems.append(f"{where}:{ins.line}: {ins.keyword} {ins.args}: no secrets in "
                                f"images (the pods mount them)")
            if ins.keyword == "COPY":
                m = re.search(r"--from=(\S+)", ins.args)
                if m and m.group(1) not in names:
                    problems.append(f"{where}:{ins.line}: COPY --from={m.group(1)}: no earlier "
                                    f"stage of that name")
            if ins.keyword == "RUN" and "apt-get" in ins.args:
                check_apt(where, ins, problems)
        if stage.name:
            names.add(stage.name)


def check_apt(where, ins, problems):
    cmd = ins.args
    if "apt-get install" in cmd or re.search(r"apt-get\s+install", cmd):
        if "apt-get update" not in cmd:
            problems.append(f"{where}:{ins.line}: apt-get install without apt-get update in the "
                            f"same RUN (a cached, stale index)")
        if "--no-install-recommends" not in cmd:
            problems.append(f"{where}:{ins.line}: apt-get install without "
                            f"--no-install-recommends")
        if "rm -rf /var/lib/apt/lists" not in cmd:
            problems.append(f"{where}:{ins.line}: the apt lists are not removed in the same RUN")


def check_build_stage(where, stage, device, root, problems):
    runs = " ".join(i.args for i in stage.instructions if i.keyword == "RUN")
    installed = set()
    for ins in stage.instructions:
        if ins.keyword == "RUN":
            installed.update(apt_packages(ins.args))
    missing = sorted(setup_packages(root) - TEST_ONLY_PACKAGES - installed)
    if missing:
        problems.append(f"{where}:{stage.line}: the build stage does not install "
                        f"{', '.join(missing)} (scripts/setup.sh)")
    wasted = sorted(installed & TEST_ONLY_PACKAGES)
    if wasted:
        problems.append(f"{where}:{stage.line}: the build stage installs test-only packages "
                        f"{', '.join(wasted)}")
    want = "ON" if device == "cuda" else "OFF"
    for flag in (f"-DQTRAIN_CUDA={want}", "-DQTRAIN_BUILD_TESTS=OFF", "-DQTRAIN_BUILD_BENCH=OFF",
                 "-DCMAKE_BUILD_TYPE=Release"):
        if flag not in runs:
            problems.append(f"{where}:{stage.line}: the build stage's cmake lacks {flag}")
    m = re.search(r"--target ([^&]*)", runs)
    targets = set(m.group(1).split()) if m else set()
    if not set(BINARIES) <= targets:
        problems.append(f"{where}:{stage.line}: the build does not build --target "
                        f"{' '.join(BINARIES)}")


def check_runtime_stage(where, stage, build, root, problems):
    installed = []
    for ins in stage.instructions:
        if ins.keyword == "RUN":
            installed.extend(apt_packages(ins.args))
    dev = sorted(p for p in installed if p.endswith("-dev") or p in COMPILERS)
    if dev:
        problems.append(f"{where}:{stage.line}: the runtime stage installs build packages "
                        f"{', '.join(dev)}")
    copied = set()
    for ins in stage.instructions:
        if ins.keyword == "COPY" and f"--from={build.name}" in ins.args:
            words = ins.args.split()
            sources = [w for w in words[:-1] if not w.startswith("--")]
            if words[-1].rstrip("/") == "/usr/local/bin":
                copied.update(os.path.basename(s) for s in sources)
    for b in BINARIES:
        if b not in copied:
            problems.append(f"{where}:{stage.line}: the runtime stage does not copy {b} from "
                            f"the build stage to /usr/local/bin")
    users, groups, commands = manifest_identity(root)
    for command in sorted(commands):
        if not command.startswith("/usr/local/bin/") or os.path.basename(command) not in copied:
            problems.append(f"{where}: the manifests run {command}, which the image does not have")
    user = [i for i in stage.instructions if i.keyword == "USER"]
    if not user:
        problems.append(f"{where}:{stage.line}: the runtime stage sets no USER (it would run "
                        f"as root)")
        return installed
    uid, _, gid = user[-1].args.partition(":")
    if not uid.isdigit() or not gid.isdigit():
        problems.append(f"{where}:{user[-1].line}: USER {user[-1].args}: give a numeric UID:GID "
                        f"(runAsNonRoot can only verify a numeric user)")
    elif int(uid) == 0:
        problems.append(f"{where}:{user[-1].line}: USER is root")
    else:
        if users != {int(uid)}:
            problems.append(f"{where}:{user[-1].line}: USER {uid} is not the manifests' "
                            f"runAsUser {sorted(users)}")
        if groups != {int(gid)}:
            problems.append(f"{where}:{user[-1].line}: group {gid} is not the manifests' "
                            f"runAsGroup {sorted(groups)}")
        runs = " ".join(i.args for i in stage.instructions if i.keyword == "RUN")
        if f"--uid {uid}" not in runs or f"--gid {gid}" not in runs:
            problems.append(f"{where}: the runtime stage does not create the user {uid}:{gid}")
    return installed


_NEEDED = {}


def needed_packages(root, binaries):
    """The packages the binaries link, less the CUDA toolkit's libraries: the CPU image builds
    with QTRAIN_CUDA=OFF, and the binaries checked may come from a CUDA build."""
    script = os.path.join(root, "deploy", "docker", "runtime-packages.sh")
    with open(script, "rb") as f:
        key = (f.read(), tuple(binaries))
    if key not in _NEEDED:  # dpkg -S is slow: once per script and binaries
        proc = subprocess.run([script, "--without-cuda", *binaries], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"runtime-packages.sh failed: {proc.stderr.strip()}")
        _NEEDED[key] = set(proc.stdout.split())
    return _NEEDED[key]


def apt_lookup_possible():
    """Whether this machine can look package names up: Debian 12 with apt package lists."""
    try:
        with open("/etc/debian_version", encoding="utf-8") as f:
            debian_12 = f.read().startswith("12")
    except OSError:
        return False
    return bool(debian_12 and shutil.which("apt-cache")
                and glob.glob("/var/lib/apt/lists/*_Packages*"))


_KNOWN = {}


def known_packages(packages):
    """The packages of `packages` apt knows (one apt-cache call for those not asked before)."""
    new = sorted(set(packages) - set(_KNOWN))
    if new:
        proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *new],
                              capture_output=True, text=True, timeout=300)
        found = set(re.findall(r"^Package: (\S+)$", proc.stdout, re.M))
        _KNOWN.update({p: p in found for p in new})
    return {p for p in packages if _KNOWN[p]}


def check_known_to_apt(where, stages, problems):
    """On Debian 12 with package lists, every package the Dockerfile installs exists."""
    if not apt_lookup_possible():
        print(f"{where}: not on Debian 12 with apt package lists: package names not looked up")
        return
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword != "RUN":
                continue
            packages = apt_packages(ins.args)
            for package in sorted(set(packages) - known_packages(packages)):
                problems.append(f"{where}:{ins.line}: Debian 12 has no package {package}")


def check_dockerfile(root, device, binaries, problems):
    path = os.path.join(root, "deploy", "docker", f"{device}.Dockerfile")
    where = os.path.relpath(path, root)
    with open(path, encoding="utf-8") as f:
        stages = stages_of(parse(f.read()), problems, where)
    if len(stages) < 2:
        problems.append(f"{where}: needs a build stage and a runtime stage")
        return
    check_common(where, stages, problems)
    build, runtime = stages[0], stages[-1]
    check_build_stage(where, build, device, root, problems)
    installed = check_runtime_stage(where, runtime, build, root, problems)
    if device == "cpu":
        for stage in stages:
            if not re.match(r"debian:(12|bookworm)([.\-]|$)", stage.image):
                problems.append(f"{where}:{stage.line}: FROM {stage.image} is not Debian 12")
        check_known_to_apt(where, stages, problems)
        if binaries:
            missing = sorted(needed_packages(root, binaries) - BASE_PACKAGES - set(installed))
            if missing:
                problems.append(f"{where}:{runtime.line}: the runtime stage lacks "
                                f"{', '.join(missing)}, which the binaries link")
    else:
        m_build = re.match(r"nvidia/cuda:(\d+\.\d+(?:\.\d+)?)-devel-(\S+)$", build.image)
        m_run = re.match(r"nvidia/cuda:(\d+\.\d+(?:\.\d+)?)-runtime-(\S+)$", runtime.image)
        if not m_build:
            problems.append(f"{where}:{build.line}: the build stage is not an nvidia/cuda devel "
                            f"image")
        if not m_run:
            problems.append(f"{where}:{runtime.line}: the runtime stage is not an nvidia/cuda "
                            f"runtime image")
        if m_build and m_run and m_build.groups() != m_run.groups():
            problems.append(f"{where}: build {build.image} and runtime {runtime.image} differ in "
                            f"CUDA version or OS")
        runs = " ".join(i.args for i in build.instructions if i.keyword == "RUN")
        if "runtime-packages.sh" not in runs:
            problems.append(f"{where}: the build stage does not compute the runtime packages")
        copies = " ".join(i.args for i in runtime.instructions if i.keyword in ("COPY", "RUN"))
        if "runtime-packages.txt" not in copies:
            problems.append(f"{where}: the runtime stage does not install the computed packages")


def check_dockerignore(root, problems):
    path = os.path.join(root, ".dockerignore")
    if not os.path.exists(path):
        problems.append(".dockerignore: missing (the whole build tree would be sent)")
        return
    with open(path, encoding="utf-8") as f:
        entries = {line.strip().rstrip("/") for line in f if line.strip()
                   and not line.startswith("#")}
    for want in (".git", "build"):
        if want not in entries and f"/{want}" not in entries:
            problems.append(f".dockerignore: does not leave out {want}")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--root", default=os.path.normpath(os.path.join(here, "..", "..")))
    parser.add_argument("--binaries", nargs="*", default=[],
                        help="built qtrain binaries: the CPU runtime packages must cover them")
    args = parser.parse_args(argv)
    problems = []
    for device in ("cpu", "cuda"):
        check_dockerfile(args.root, device, args.binaries, problems)
    check_dockerignore(args.root, problems)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("the Dockerfiles pass" + (" (runtime packages checked against the binaries)"
                                    if args.binaries else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
