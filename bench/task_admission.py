"""What admitting an EvaluationTask costs the API server, against a ConfigMap, with and
without the CRD's CEL rules, and with the chart's finalizer policy.

    .venv/bin/python bench/task_admission.py --objects 1000      # needs `make tools`

One private KWOK control plane, nothing else running on it (no operator, no controllers'
work: no Jobs). The same 16 client threads as bench/operator_scale.py create, in turn:
`objects` ConfigMaps carrying the runner config the operator would write, `objects`
EvaluationTasks through the real CRD (crds/), and `objects` EvaluationTasks through a copy
of the CRD with every `x-kubernetes-validations` rule removed (another group), and
`objects` EvaluationTasks in a namespace where the chart's finalizer policy (a
MutatingAdmissionPolicy, as `helm install` renders it) sets the finalizer. Printed per
kind: wall time, per-request latency p50 / p99, and the API server's CPU seconds per 1,000
creates (from /proc), so the cost of schema validation and of the CEL rules can be told
apart from the cost of a write.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from devcluster.cluster import Cluster, KwokCluster  # noqa: E402
from kubernetes import client  # noqa: E402

from bench.operator_scale import (  # noqa: E402
    THREADS,
    api,
    cpu_seconds,
    in_parallel,
    install_finalizer_policy,
    load,
    spec,
)

CRD_PATH = ROOT / "crds" / "evaluation.dev_evaluationtasks.yaml"
BARE_GROUP = "no-cel.bench.evaluation.dev"


def without_rules(document: Any) -> Any:
    """The document with every `x-kubernetes-validations` list removed, at any depth."""
    if isinstance(document, dict):
        return {key: without_rules(value) for key, value in document.items()
                if key != "x-kubernetes-validations"}
    if isinstance(document, list):
        return [without_rules(item) for item in document]
    return document


def bare_crd() -> dict[str, Any]:
    crd = copy.deepcopy(yaml.safe_load(CRD_PATH.read_text()))
    crd["spec"]["group"] = BARE_GROUP
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{BARE_GROUP}"
    return dict(without_rules(crd))


def count_rules(document: Any) -> int:
    if isinstance(document, dict):
        return len(document.get("x-kubernetes-validations") or []) + sum(
            count_rules(value) for value in document.values())
    if isinstance(document, list):
        return sum(count_rules(item) for item in document)
    return 0


def apiserver_pid(owner: KwokCluster) -> int:
    found = sorted(owner.workdir.glob("clusters/*/pids/kube-apiserver.pid"))
    return int(found[0].read_text().strip())


def timed(create: Callable[[int], None], count: int, pid: int) -> dict[str, float]:
    latencies: list[float] = []

    def one(i: int) -> None:
        started = time.monotonic()
        create(i)
        latencies.append(time.monotonic() - started)

    cpu_before, started = cpu_seconds(pid), time.monotonic()
    in_parallel(one, count)
    wall = time.monotonic() - started
    latencies.sort()
    return {"wall_s": wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "apiserver_cpu_s_per_1000": 1000 * (cpu_seconds(pid) - cpu_before) / count}


def measure(cluster: Cluster, pid: int, count: int) -> dict[str, dict[str, float]]:
    custom, core = client.CustomObjectsApi(api(cluster)), client.CoreV1Api(api(cluster))
    crd = yaml.safe_load(CRD_PATH.read_text())
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    cluster.kubectl("create", "namespace", "admission")

    def task(group_name: str, prefix: str, namespace: str = "admission"
             ) -> Callable[[int], None]:
        def create(i: int) -> None:
            custom.create_namespaced_custom_object(group_name, version, namespace, plural, {
                "apiVersion": f"{group_name}/{version}", "kind": crd["spec"]["names"]["kind"],
                "metadata": {"name": f"{prefix}-{i}"}, "spec": spec(i)})
        return create

    def configmap(i: int) -> None:
        core.create_namespaced_config_map("admission", {
            "metadata": {"name": f"cm-{i}"}, "data": {"config.json": str(spec(i)) * 4}})

    figures = {"ConfigMap": timed(configmap, count, pid),
               "EvaluationTask, CEL rules": timed(task(group, "cel"), count, pid),
               "EvaluationTask, no CEL rules": timed(task(BARE_GROUP, "plain"), count, pid)}
    # The chart's finalizer policy, as operator_scale.py installs it: another namespace.
    cluster.kubectl("create", "namespace", "admission-finalizer")
    install_finalizer_policy(cluster, "admission-finalizer")
    figures["EvaluationTask, CEL rules, the chart's finalizer policy"] = timed(
        task(group, "fin", "admission-finalizer"), count, pid)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval-admission-") as state:
        owner = KwokCluster(name="eval-admission", state_dir=Path(state))
        cluster = owner.start()
        try:
            cluster.install_crds()
            cluster.apply(bare_crd())
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            f"crd/{bare_crd()['metadata']['name']}")
            load_before = load()
            figures = measure(cluster, apiserver_pid(owner), args.objects)
        finally:
            owner.stop()
    rules = count_rules(yaml.safe_load(CRD_PATH.read_text()))
    print(f"| {args.objects} creates, {THREADS} threads | wall | p50 / p99 per create "
          "| API server CPU per 1,000 |")
    print("| --- | --- | --- | --- |")
    for kind, row in figures.items():
        print(f"| {kind} | {row['wall_s']:.1f} s | {row['p50_ms']:.0f} / {row['p99_ms']:.0f} ms "
              f"| {row['apiserver_cpu_s_per_1000']:.1f} s |")
    print(f"\nCEL rules in the CRD: {rules}; load average before / after: {load_before} / "
          f"{load()} (2 vCPUs)")


if __name__ == "__main__":
    main()
