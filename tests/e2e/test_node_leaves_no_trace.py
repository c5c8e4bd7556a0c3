"""A real node runs pods for real, and leaves the machine as it found it.

The node changes nothing outside its own state: no sysctl (the kubelet would rewrite three,
the CNI bridge plugin in gateway mode would switch on ip_forward), no iptables chains, no
mounts, no processes, network devices or cgroups left once it is down.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.node import RealNode, slot_usable
from devcluster.slots import Slot

from tests.e2e.conftest import node_prerequisites
from tests.e2e.realpods import API_VERSION, FETCH, HostServer, run_pod

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

WATCHED_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "net/ipv4/ip_forward")
IPTABLES_TABLES = ("filter", "nat", "mangle")


def sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text().strip() for name in WATCHED_SYSCTLS}


def iptables_rules() -> dict[str, str]:
    rules = {}
    for tool in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            result = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True,
                                    check=False, timeout=30)
            rules[f"{tool} -t {table}"] = result.stdout
    return rules


def links() -> dict[str, dict[str, Any]]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(path) in line]


def processes_mentioning(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def cgroups_named(name: str) -> list[Path]:
    return sorted(Path("/sys/fs/cgroup").glob(f"*/{name}"))


HOST_PATHS = (Path("/run/netns"), Path("/run/containerd"), Path("/var/lib/cni"),
              Path("/var/log/containers"), Path("/var/log/pods"))


def host_paths() -> dict[str, list[str]]:
    return {str(p): sorted(c.name for c in p.iterdir()) if p.is_dir() else []
            for p in HOST_PATHS if p.exists()}


@dataclass
class Snapshot:
    sysctls: dict[str, str]
    iptables: dict[str, str]
    links: dict[str, dict[str, Any]]
    host_paths: dict[str, list[str]]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(sysctls(), iptables_rules(), links(), host_paths())


def test_real_pods_run_and_the_node_leaves_no_trace(cluster: Cluster, pod_namespace: str) -> None:
    namespace = pod_namespace
    manifest = node_prerequisites(cluster)
    before = Snapshot.take()
    node = RealNode(cluster=cluster, images=manifest, name=f"trace-{uuid.uuid4().hex[:6]}")
    server: HostServer | None = None
    try:
        node.start()
        assert node.state_dir is not None
        state_dir, bridge, cgroup_root = node.state_dir, node.bridge, node.cgroup_root
        server = HostServer(node.gateway)

        # A pod of the runner image, pinned to the node, reaches a host server on the gateway.
        pod = run_pod(cluster, node, namespace, "fetch",
                      FETCH.replace("URL", repr(server.url)))
        assert pod["status"]["phase"] == "Succeeded", (pod["status"],
                                                       node.pod_log(namespace, "fetch", "main"))
        assert HostServer.BODY.decode() in node.pod_log(namespace, "fetch", "main")
        assert pod["spec"]["nodeName"] == node.name

        # ...and the API server, with in-cluster credentials, through the gateway forwarder.
        pod = run_pod(cluster, node, namespace, "apiserver", API_VERSION)
        log = node.pod_log(namespace, "apiserver", "main")
        assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
        assert "apiserver v1." in log

        # While the node runs, the host is untouched too: the kubelet saw its sysctl values
        # in its own mount namespace only, and none of its mounts shows here.
        during = Snapshot.take()
        assert during.sysctls == before.sysctls
        assert during.iptables == before.iptables
        assert mounts_under(state_dir) == []
        assert during.host_paths == before.host_paths
    finally:
        if server is not None:
            server.stop()
        node.stop()

    after = Snapshot.take()
    assert after.sysctls == before.sysctls
    assert after.iptables == before.iptables
    assert not any("KUBE-" in rules for rules in after.iptables.values())
    assert mounts_under(state_dir) == []
    assert processes_mentioning(state_dir) == []
    assert not state_dir.exists()
    assert bridge not in after.links
    # Devices that appeared meanwhile belong to other live bridges (another session's node),
    # never to ours: a veth of ours would be left without a master.
    new = {name: link for name, link in after.links.items() if name not in before.links}
    assert all(link.get("master") in after.links for link in new.values()), new
    assert cgroups_named(cgroup_root) == []
    assert after.host_paths == before.host_paths
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "node", node.name, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"node {node.name} still registered"
        time.sleep(0.5)


def test_a_node_whose_session_was_killed_is_cleaned_up_by_the_next_one(cluster: Cluster) -> None:
    """SIGKILL skips every teardown: the next node to take the slot removes the leftovers
    (processes, bridge, cgroups, state directory) before using it."""
    node_prerequisites(cluster)
    child = subprocess.Popen(
        [sys.executable, "-m", "devcluster.node", "--kubeconfig", str(cluster.kubeconfig),
         "--name", "killed-node"],
        stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert "Ready" in line, line
        state_dir = Path(line.rsplit("state in ", 1)[1].strip())
    finally:
        child.kill()
        child.wait()
    slot = Slot(int(state_dir.name.split("-")[3]))
    assert processes_mentioning(state_dir), "nothing tore the killed node down"
    assert slot.bridge in links()

    with open(slot.lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the next node taking this slot does
        assert slot_usable(slot)
    assert processes_mentioning(state_dir) == []
    assert not state_dir.exists()
    assert slot.bridge not in links()
    assert cgroups_named(slot.cgroup_root) == []
    cluster.kubectl("delete", "node", "killed-node", "--ignore-not-found", check=False)
