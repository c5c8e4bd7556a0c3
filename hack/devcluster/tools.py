"""Where the Makefile puts the binaries it builds (see hack/versions.mk)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.mk"


def pinned_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Z_]+)\s*:?=\s*(\S+)\s*", line)
        if match:
            versions[match.group(1)] = match.group(2)
    return versions


def tools_dir() -> Path:
    default = Path.home() / ".cache" / "evaluation-operator" / "bin"
    return Path(os.environ.get("TOOLS_DIR", default))


@dataclass(frozen=True)
class Toolchain:
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubelet: Path
    etcd: Path
    kwok: Path
    kwokctl: Path
    helm: Path
    kubectl: Path
    kubernetes_version: str
    etcd_version: str

    def missing(self) -> list[Path]:
        paths = [
            self.kube_apiserver, self.kube_controller_manager, self.kube_scheduler,
            self.etcd, self.kwok, self.kwokctl, self.helm, self.kubectl,
        ]
        return [p for p in paths if not p.is_file()]


def find_kubectl() -> Path:
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("kubectl")
    return Path(found) if found else beside_python


def toolchain() -> Toolchain:
    v = pinned_versions()
    base = tools_dir()
    k8s = base / f"kubernetes-{v['KUBERNETES_VERSION']}"
    kwok = base / f"kwok-{v['KWOK_VERSION']}"
    return Toolchain(
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubelet=k8s / "kubelet",
        etcd=base / f"etcd-{v['ETCD_VERSION']}" / "etcd",
        kwok=kwok / "kwok",
        kwokctl=kwok / "kwokctl",
        helm=base / f"helm-{v['HELM_VERSION']}" / "helm",
        kubectl=find_kubectl(),
        kubernetes_version=v["KUBERNETES_VERSION"],
        etcd_version=v["ETCD_VERSION"],
    )
