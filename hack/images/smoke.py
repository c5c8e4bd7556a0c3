"""`python -m images smoke`: import the built tarballs into a throwaway containerd and run
each image once (root; needs containerd, ctr, runc, unshare).

Everything lives in a temporary directory and one private mount namespace (a tmpfs over /run
in it holds the shim sockets and runc state), which ends with the check: no mount, process or
file is left behind. Each Python image then runs `python -c 'import ...'` of its packages
and its own entrypoint with `--help`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from images.rootfs import mounts_under

# What each image must import (with its own Python, as its own user).
IMPORTS = {
    "evaluation-runner": ("evaluation_runner.runner", "numpy", "sklearn", "sacrebleu",
                          "rouge_score", "boto3"),
    "evaluation-runner-lm-eval": ("evaluation_runner.lm_eval_adapter", "lm_eval", "datasets",
                                  "numpy", "boto3"),
    "evaluation-operator": ("evaluation_operator.handlers", "kopf", "kubernetes", "boto3",
                            "prometheus_client"),
}

_CONFIG = """version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{dir}/containerd.sock"
"""


def entrypoint(tarball: Path) -> list[str]:
    with tarfile.open(tarball) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    return list(config["config"]["Entrypoint"] or [])


def _elapsed(what: str) -> str:
    return f'echo "{what} in $(awk "BEGIN {{print $(date +%s.%N) - $start}}") s"'


def _script(work: Path, images: list[dict[str, str]]) -> str:
    ctr = f"ctr -a {work}/containerd.sock -n k8s.io"
    lines = [
        "set -euo pipefail",
        "mount -t tmpfs -o size=64m tmpfs /run",  # private namespace: shim sockets, runc state
        f"containerd --config {work}/config.toml >{work}/containerd.log 2>&1 &",
        "daemon=$!",
        "trap 'kill $daemon; wait $daemon || true' EXIT",
        f"for _ in $(seq 100); do [ -S {work}/containerd.sock ] && break; sleep 0.1; done",
    ]
    for i, image in enumerate(images):
        name, ref, tarball = image["name"], image["ref"], image["tarball"]
        lines += [
            f"echo '== {name}'",
            f"start=$(date +%s.%N); {ctr} images import {shlex.quote(tarball)} >/dev/null",
            f"{ctr} images ls -q | grep -qx {shlex.quote(ref)}",
            _elapsed(f"imported {ref}"),
        ]
        if name not in IMPORTS:
            continue
        probe = (f"import importlib, os, sys; [importlib.import_module(m) for m in "
                 f"{list(IMPORTS[name])!r}]; print('imported', {', '.join(IMPORTS[name])!r}, "
                 f"'as uid', os.getuid(), 'with Python', sys.version.split()[0])")
        run = f"{ctr} run --rm --cgroup '' {shlex.quote(ref)}"
        help_args = " ".join(shlex.quote(a) for a in [*entrypoint(Path(tarball)), "--help"])
        lines += [
            f"start=$(date +%s.%N); {run} import-{i} python -c {shlex.quote(probe)}",
            _elapsed("ran python -c 'import ...'"),
            f"start=$(date +%s.%N); out=$({run} entrypoint-{i} {help_args})",
            'echo "$out" | head -1',
            _elapsed(f"ran {' '.join(entrypoint(Path(tarball)))} --help"),
        ]
    return "\n".join(lines) + "\n"


def _leftover_processes(work: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(work).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def smoke(manifest: Path, names: list[str] | None = None) -> int:
    missing = [tool for tool in ("containerd", "ctr", "runc", "unshare")
               if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        print(f"images smoke: needs root and {', '.join(missing) or 'nothing else'}",
              file=sys.stderr)
        return 2
    if not manifest.is_file():
        print(f"images smoke: no {manifest}: run `make images` first", file=sys.stderr)
        return 2
    images = [i for i in json.loads(manifest.read_text())["images"]
              if names is None or i["name"] in names]
    work = Path(tempfile.mkdtemp(prefix="eval-images-smoke-"))
    try:
        (work / "config.toml").write_text(_CONFIG.format(dir=work))
        started = time.monotonic()
        result = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c",
                                 _script(work, images)], check=False)
        print(f"smoke: {time.monotonic() - started:.1f} s, exit {result.returncode}")
        if result.returncode != 0:
            print((work / "containerd.log").read_text()[-3000:], file=sys.stderr)
        return result.returncode
    finally:
        for pid in _leftover_processes(work):  # a shim outliving a failed run
            os.kill(pid, 9)
        if mounts := mounts_under(work):
            print(f"smoke: mounts left under {work}: {mounts}", file=sys.stderr)
        else:
            shutil.rmtree(work)
