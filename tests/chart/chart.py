"""Running Helm on the chart from tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from devcluster.tools import REPO_ROOT, toolchain

CHART = REPO_ROOT / "charts" / "evaluation-operator"
KUBE_VERSION = toolchain().kubernetes_version


def helm_path() -> Path:
    return toolchain().helm


def helm(*args: str, check: bool = True, kubeconfig: Path | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [str(helm_path()), *args]
    if kubeconfig is not None:
        command += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def set_args(values: dict[str, Any] | None) -> list[str]:
    """Values as --set-json flags, one per top-level key."""
    return [arg for key, value in (values or {}).items()
            for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def render_text(values: dict[str, Any] | None = None, release: str = "eval",
                namespace: str = "evaluation-system", check: bool = True
                ) -> subprocess.CompletedProcess[str]:
    return helm("template", release, str(CHART), "--namespace", namespace,
                "--kube-version", KUBE_VERSION, *set_args(values), check=check)


def render(values: dict[str, Any] | None = None, release: str = "eval",
           namespace: str = "evaluation-system") -> list[dict[str, Any]]:
    """The chart's templates (not its CRDs) rendered with these values."""
    text = render_text(values, release, namespace).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None
         ) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (a string) or valueFrom (a dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}
