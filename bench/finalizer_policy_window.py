"""How long task creates are refused (503) when the chart's finalizer policy meets a new CRD.

On a private KWOK control plane: (1) the CRD created, the policy applied at once (a first
`helm install`); (2) the policy applied again over the existing CRD (an upgrade). For each,
tasks are created every ~0.2 s until one comes back carrying the finalizer; it prints the
refusals seen ("Resource kind ... not found": the API server has not yet loaded the new
CRD's schema for the mutation) and the seconds until the finalizer was set.

    .venv/bin/python bench/finalizer_policy_window.py      # needs `make tools`
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "operator"), str(ROOT)]

from devcluster.cluster import Cluster, KwokCluster  # noqa: E402
from devcluster.tools import toolchain  # noqa: E402

from tests.integration.conftest import task_manifest  # noqa: E402

NAMESPACE = "watched"


def rendered_policy() -> str:
    return subprocess.run(
        [str(toolchain().helm), "template", "bench", str(ROOT / "charts" / "evaluation-operator"),
         "--kube-version", toolchain().kubernetes_version,
         "--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
         "--set-json", f'watchNamespaces=["{NAMESPACE}"]',
         "--show-only", "templates/finalizerpolicy.yaml"],
        capture_output=True, text=True, check=True).stdout


def until_finalized(cluster: Cluster, prefix: str, started: float) -> tuple[int, float | None]:
    """(503 refusals, seconds from `started` to the first task created with the finalizer)."""
    refusals = 0
    for i in range(450):
        manifest = task_manifest(f"{prefix}-{i}")
        manifest["metadata"]["namespace"] = NAMESPACE
        made = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(manifest),
                               check=False)
        if made.returncode == 0 and json.loads(made.stdout)["metadata"].get("finalizers"):
            return refusals, time.monotonic() - started
        refusals += "Resource kind" in made.stderr
        time.sleep(0.2)
    return refusals, None


def report(case: str, refusals: int, seconds: float | None) -> None:
    after = f"{seconds:.1f} s" if seconds is not None else "never (90 s)"
    print(f"{case}: {refusals} creates refused (503), finalizer set after {after}")


def main() -> None:
    owner = KwokCluster(name="finalizer-window",
                        state_dir=Path(tempfile.mkdtemp(prefix="eval-bench-window-")))
    cluster = owner.start()
    try:
        cluster.kubectl("create", "namespace", NAMESPACE)
        policy = rendered_policy()
        cluster.install_crds()
        started = time.monotonic()
        cluster.apply(policy)
        report("new CRD, policy applied at once", *until_finalized(cluster, "first", started))
        cluster.kubectl("delete", "mutatingadmissionpolicybinding,mutatingadmissionpolicy",
                        "--all")
        time.sleep(3)
        started = time.monotonic()
        cluster.apply(policy)
        report("existing CRD, policy applied again",
               *until_finalized(cluster, "again", started))
    finally:
        owner.stop()


if __name__ == "__main__":
    main()
