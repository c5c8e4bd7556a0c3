"""A real Kubernetes control plane for tests and local development.

Three ways to get one, all handing back the same `Cluster`:

* KWOK (default): etcd, kube-apiserver (RBAC and admission on, loopback only),
  kube-controller-manager, kube-scheduler and the KWOK controller run as local processes
  through `kwokctl --runtime binary`, from binaries the Makefile built from the Go module
  proxy. Nodes are fake (hack/kwok/nodes.yaml): two with 8 `nvidia.com/gpu` each and one
  CPU-only node. Pod behaviour is scripted by hack/kwok/stages.yaml (see
  kwok_pods.py).
* kind (EVAL_TEST_CLUSTER=kind): a kind cluster (needs Docker); nodes are given fake
  `nvidia.com/gpu` capacity through the node status subresource.
* existing (EVAL_TEST_KUBECONFIG=/path): whatever cluster that kubeconfig points at.

Command line, used by `make cluster-up` / `make cluster-down`:

    python -m devcluster.cluster up --name NAME --dir DIR [--install-crds]
    python -m devcluster.cluster down --name NAME --dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devcluster.slots import all_slots
from devcluster.tools import REPO_ROOT, Toolchain, find_kubectl, toolchain

KWOK_DIR = REPO_ROOT / "hack" / "kwok"
NODES_FILE = KWOK_DIR / "nodes.yaml"
STAGES_FILE = KWOK_DIR / "stages.yaml"
CRDS_DIR = REPO_ROOT / "crds"
GPU_NODES = ("gpu-node-0", "gpu-node-1")
CPU_NODES = ("cpu-node-0",)
GPUS_PER_NODE = 8
CREATE_LOCK = Path("/tmp/evaluation-operator-kwokctl-create.lock")
FAKE_NODE_SELECTOR = "kwok.x-k8s.io/node=fake"
CREATE_ATTEMPTS = 3


class ClusterError(RuntimeError):
    pass


@dataclass
class Cluster:
    """A running cluster as the tests see it."""

    name: str
    kubeconfig: Path
    flavour: str  # "kwok", "kind" or "existing"
    kubectl_path: Path = field(default_factory=find_kubectl)

    @property
    def scripted_pods(self) -> bool:
        """True when pods are driven by KWOK stages (tests can finish them on demand)."""
        return self.flavour == "kwok"

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def api_client(self) -> Any:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]]) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump_all(
            manifest if isinstance(manifest, list) else [manifest]
        )
        self.kubectl("apply", "-f", "-", input=text)

    def wait_until(self, what: str, predicate: Any, timeout: float = 60, interval: float = 0.5
                   ) -> Any:
        """Poll `predicate()` until it returns something truthy; fail naming `what`."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    def install_crds(self) -> None:
        if not any(CRDS_DIR.glob("*.yaml")):
            return
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS_DIR))
        for crd in sorted(CRDS_DIR.glob("*.yaml")):
            for doc in yaml.safe_load_all(crd.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                                 f"crd/{doc['metadata']['name']}")


# --- KWOK -------------------------------------------------------------------------------------


def _kwokctl_config(tools: Toolchain, pki: Path | None = None) -> str:
    """kwokctl's configuration; `pki` is where kwokctl will write the cluster's certificates
    (the API server presents the admin one to real kubelets, for `kubectl logs` and exec)."""
    options = {
        "runtime": "binary",
        "kubeVersion": tools.kubernetes_version,
        "etcdVersion": tools.etcd_version,
        "kubeApiserverBinary": str(tools.kube_apiserver),
        "kubeControllerManagerBinary": str(tools.kube_controller_manager),
        "kubeSchedulerBinary": str(tools.kube_scheduler),
        "kwokControllerBinary": str(tools.kwok),
        "etcdBinary": str(tools.etcd),
        "kubectlBinary": str(tools.kubectl),
        "kubeAuthorization": True,
        "kubeAdmission": True,
        "bindAddress": "127.0.0.1",
        # Pods on a real node reach the API server through a forwarder on their bridge's
        # gateway address (devcluster.node); the serving certificate must name it.
        "kubeApiserverCertSANs": [str(slot.gateway) for slot in all_slots()],
    }
    patches: list[dict[str, Any]] = [{"name": "kwok-controller", "extraArgs": [
        {"key": "manage-all-nodes", "value": "false", "override": True},
        {"key": "manage-nodes-with-annotation-selector", "value": FAKE_NODE_SELECTOR},
    ]}]
    config = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": options,
        # KWOK plays only the fake nodes (hack/kwok/nodes.yaml annotates them): a real kubelet
        # (devcluster.node) joins the same control plane without KWOK taking it over.
        "componentsPatches": patches,
    }
    if pki is not None:
        # A real node has no resolvable hostname: reach its kubelet by its InternalIP, with a
        # client certificate the kubelet checks against the cluster CA.
        patches.append({"name": "kube-apiserver", "extraArgs": [
            {"key": "kubelet-preferred-address-types", "value": "InternalIP"},
            {"key": "kubelet-client-certificate", "value": str(pki / "admin.crt")},
            {"key": "kubelet-client-key", "value": str(pki / "admin.key")},
        ]})
    return yaml.safe_dump(config) + "---\n" + STAGES_FILE.read_text()


@dataclass
class KwokCluster:
    name: str
    state_dir: Path

    @property
    def workdir(self) -> Path:
        return self.state_dir / "kwok"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "KWOK_WORKDIR": str(self.workdir)}

    def _pid_files(self) -> list[Path]:
        return sorted((self.workdir / "clusters" / self.name / "pids").glob("*.pid"))

    def exists(self) -> bool:
        return (self.workdir / "clusters" / self.name).is_dir()

    def start(self, reuse: bool = False) -> Cluster:
        tools = toolchain()
        missing = tools.missing()
        if missing:
            raise ClusterError(
                "control-plane binaries missing (run `make tools`): "
                + ", ".join(str(p) for p in missing)
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.exists() and reuse and self.kubeconfig.exists():
            running = Cluster(name=self.name, kubeconfig=self.kubeconfig, flavour="kwok",
                              kubectl_path=tools.kubectl)
            if running.kubectl("get", "--raw", "/readyz", check=False).returncode == 0:
                return running
        if self.exists():
            # Left over from a run that was killed: start clean rather than half-reuse it.
            self.stop()
        config_path = self.state_dir / "kwokctl.yaml"
        config_path.write_text(
            _kwokctl_config(tools, self.workdir / "clusters" / self.name / "pki"))
        if self.kubeconfig.exists():
            self.kubeconfig.unlink()
        failures: list[str] = []
        for _ in range(CREATE_ATTEMPTS):
            failure = self._create(tools, config_path)
            if failure is None:
                break
            failures.append(failure)
            self.stop()
            if self.kubeconfig.exists():
                self.kubeconfig.unlink()
        else:
            raise ClusterError(
                f"kwokctl create cluster failed {CREATE_ATTEMPTS} times:\n" + "\n".join(failures)
            )
        cluster = Cluster(name=self.name, kubeconfig=self.kubeconfig, flavour="kwok",
                          kubectl_path=tools.kubectl)
        try:
            cluster.kubectl("apply", "-f", str(NODES_FILE))
            _wait_for_nodes(cluster)
            cluster.wait_until(
                "the default ServiceAccount (controller-manager running)",
                lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", "default",
                                        check=False).returncode == 0,
                timeout=120,
            )
        except Exception:
            self.stop()
            raise
        return cluster

    def _create(self, tools: Toolchain, config_path: Path) -> str | None:
        """One `kwokctl create cluster`; None when it worked, else why it did not. A component
        that exits while kwokctl waits for the cluster (two clusters picked the same ports:
        "address already in use") ends the attempt at once instead of after the whole wait."""
        # kwokctl picks free ports without reserving them: two clusters created at the same
        # moment get the same ports. One create at a time on this machine avoids most of that;
        # the watch below catches a port taken by something else in the meantime.
        # Output to a file, not a pipe: components started by kwokctl may inherit it and keep
        # a pipe open long after kwokctl is gone.
        log_path = self.state_dir / "kwokctl-create.log"
        with open(CREATE_LOCK, "w") as lock, open(log_path, "w") as log:
            fcntl.flock(lock, fcntl.LOCK_EX)
            create = subprocess.Popen(
                [str(tools.kwokctl), "create", "cluster", "--name", self.name,
                 "--config", str(config_path), "--kubeconfig", str(self.kubeconfig),
                 "--wait", "3m"],
                env=self._env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 300
            dead: list[str] = []
            while create.poll() is None and time.monotonic() < deadline:
                dead = self._dead_components()
                if dead:
                    break
                time.sleep(0.5)
            if create.poll() is None:
                create.kill()
            create.wait()
        output = log_path.read_text(errors="replace")
        if dead:
            return "component exited during start: " + "; ".join(
                f"{name}: {self._log_tail(name)}" for name in dead)
        if create.returncode != 0:
            return f"kwokctl exited {create.returncode}:\n{output}"
        return None

    def _dead_components(self) -> list[str]:
        dead = []
        for pid_file in self._pid_files():
            with contextlib.suppress(OSError, ValueError):
                if not _alive(int(pid_file.read_text().strip())):
                    dead.append(pid_file.stem)
        return dead

    def _log_tail(self, component: str) -> str:
        log = self.workdir / "clusters" / self.name / "logs" / f"{component}.log"
        try:
            lines = log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:])

    def stop(self) -> None:
        pids = []
        for pid_file in self._pid_files():
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().strip()))
        kwokctl = toolchain().kwokctl
        if kwokctl.is_file():
            subprocess.run(
                [str(kwokctl), "delete", "cluster", "--name", self.name],
                env=self._env(), capture_output=True, text=True, timeout=120, check=False,
            )
        _wait_for_exit(pids)
        shutil.rmtree(self.workdir / "clusters" / self.name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_exit(pids: list[int], grace: float = 20) -> None:
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_for_nodes(cluster: Cluster, names: tuple[str, ...] = GPU_NODES + CPU_NODES) -> None:
    def all_ready() -> bool:
        nodes = cluster.kubectl_json("get", "nodes")["items"]
        ready = {
            n["metadata"]["name"]
            for n in nodes
            for c in n.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        }
        return set(names) <= ready

    cluster.wait_until("nodes Ready", all_ready, timeout=120)


# --- kind and existing clusters -----------------------------------------------------------------


@dataclass
class KindCluster:
    name: str
    state_dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def start(self) -> Cluster:
        kind = shutil.which("kind")
        if not kind:
            raise ClusterError("EVAL_TEST_CLUSTER=kind needs `kind` on PATH and a Docker engine")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([kind, "create", "cluster", "--name", self.name, "--kubeconfig",
                        str(self.kubeconfig), "--wait", "3m"], check=True, timeout=600)
        cluster = Cluster(name=self.name, kubeconfig=self.kubeconfig, flavour="kind")
        # Advertise fake GPUs as an extended resource, as a device plugin would.
        for node in cluster.kubectl_json("get", "nodes")["items"]:
            patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu",
                      "value": str(GPUS_PER_NODE)}]
            cluster.kubectl("patch", "node", node["metadata"]["name"], "--subresource=status",
                            "--type=json", "-p", json.dumps(patch))
        return cluster

    def stop(self) -> None:
        kind = shutil.which("kind")
        if kind:
            subprocess.run([kind, "delete", "cluster", "--name", self.name], check=False,
                           timeout=300)


def cluster_from_environment(
    state_dir: Path, name: str
) -> tuple[Cluster, KwokCluster | KindCluster | None]:
    """The cluster the test session should use, and the owner that must stop it (if any)."""
    existing = os.environ.get("EVAL_TEST_KUBECONFIG")
    if existing:
        return Cluster(name="existing", kubeconfig=Path(existing), flavour="existing"), None
    owner: KwokCluster | KindCluster
    if os.environ.get("EVAL_TEST_CLUSTER", "kwok") == "kind":
        owner = KindCluster(name=name, state_dir=state_dir)
    else:
        owner = KwokCluster(name=name, state_dir=state_dir)
    return owner.start(), owner


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.cluster")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--name", default="evaluation-dev")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".cluster")
    parser.add_argument("--install-crds", action="store_true")
    args = parser.parse_args(argv)
    local = KwokCluster(name=args.name, state_dir=args.dir.resolve())
    if args.action == "down":
        local.stop()
        print(f"cluster {args.name} stopped")
        return 0
    cluster = local.start(reuse=True)
    if args.install_crds:
        cluster.install_crds()
    print(cluster.kubectl("get", "nodes", "-o",
                          "custom-columns=NAME:.metadata.name,"
                          "GPU:.status.allocatable.nvidia\\.com/gpu,"
                          "CPU:.status.allocatable.cpu").stdout, end="")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
