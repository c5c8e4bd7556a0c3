"""The real node's configuration, checked without starting anything: what keeps it from
touching the machine (sysctls, ip_forward, iptables) and from colliding with another node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from devcluster.cluster import FAKE_NODE_SELECTOR, _kwokctl_config
from devcluster.images import ImageName, ManifestError, parse_manifest
from devcluster.node import (
    KUBELET_SYSCTLS,
    TAINT,
    Paths,
    cni_config,
    containerd_config,
    kubelet_config,
    namespace_script,
)
from devcluster.slots import all_slots
from devcluster.tools import toolchain

PATHS = Paths(Path("/tmp/eval-real-node-0-x"))


def test_slots_never_share_a_bridge_subnet_port_or_cgroup() -> None:
    slots = all_slots()
    for attribute in ("bridge", "subnet", "gateway", "cgroup_root", "lock_path"):
        assert len({getattr(s, attribute) for s in slots}) == len(slots), attribute
    ports = [p for s in slots for p in (s.kubelet_port, s.healthz_port)]
    assert len(set(ports)) == len(ports)
    assert all(len(s.bridge) <= 15 for s in slots)  # IFNAMSIZ
    assert all(s.gateway in s.subnet for s in slots)


def test_cni_bridge_never_turns_on_forwarding_or_nat() -> None:
    slot = all_slots()[3]
    bridge = cni_config(PATHS, slot)["plugins"][0]
    assert bridge["bridge"] == slot.bridge
    assert bridge["isGateway"] is False and bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert "routes" not in ipam
    assert ipam["dataDir"].startswith(str(PATHS.root))
    assert ipam["ranges"][0][0]["gateway"] == str(slot.gateway)


def test_kubelet_adds_no_iptables_chains_and_listens_only_inside_its_slot() -> None:
    slot = all_slots()[2]
    config = kubelet_config(PATHS, slot)
    assert config["makeIPTablesUtilChains"] is False
    # reachable only from this host and the node's own pods, with a cluster-CA certificate
    assert config["address"] == str(slot.gateway)
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["healthzBindAddress"] == "127.0.0.1"
    assert (config["port"], config["healthzPort"]) == (slot.kubelet_port, slot.healthz_port)
    assert config["readOnlyPort"] == 0
    assert config["cgroupRoot"] == f"/{slot.cgroup_root}"
    assert config["cgroupDriver"] == "cgroupfs" and config["failCgroupV1"] is False
    assert config["podLogsDir"].startswith(str(PATHS.root))
    assert config["registerWithTaints"] == [
        {"key": TAINT["key"], "value": TAINT["value"], "effect": TAINT["effect"]}]


def test_containerd_keeps_its_state_in_the_node_directory() -> None:
    text = containerd_config(PATHS, "evaluation.local/pause:abc")
    for key in ("root", "state", "address", "Root", "conf_dir"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{key} ="))
        assert str(PATHS.root) in line, line
    assert 'sandbox_image = "evaluation.local/pause:abc"' in text


def test_namespace_gives_the_kubelet_its_sysctls_and_private_system_directories() -> None:
    script = namespace_script(PATHS, ["/bin/kubelet", "--v=2"])
    for name in KUBELET_SYSCTLS:
        assert f"/proc/sys/{name}\n" in script
    for private in ("/run", "/var/lib", "/var/log"):
        assert f" {private}\n" in script
    assert script.index("containerd --config") < script.index("/bin/kubelet --v=2")


def test_kwok_manages_only_the_fake_nodes_and_the_certificate_names_every_gateway() -> None:
    config = next(yaml.safe_load_all(_kwokctl_config(toolchain())))
    patches = {p["name"]: p for p in config["componentsPatches"]}
    assert "kube-apiserver" not in patches  # no pki given
    patch = patches["kwok-controller"]
    assert patch["name"] == "kwok-controller"
    args = {a["key"]: a["value"] for a in patch["extraArgs"]}
    assert args == {"manage-all-nodes": "false",
                    "manage-nodes-with-annotation-selector": FAKE_NODE_SELECTOR}
    nodes = list(yaml.safe_load_all(Path("hack/kwok/nodes.yaml").read_text()))
    key, value = FAKE_NODE_SELECTOR.split("=")
    assert all(n["metadata"]["annotations"][key] == value for n in nodes if n)
    sans = config["options"]["kubeApiserverCertSANs"]
    assert all(str(s.gateway) in sans for s in all_slots())


def manifest(**override: object) -> str:
    entry = {"name": "pause", "ref": "evaluation.local/pause:0123456789ab",
             "tarball": "/cache/pause.tar", "sha256": "ab" * 32, "bytes": 1024, **override}
    return json.dumps({"images": [entry]})


def test_image_manifest_parses_into_refs_and_names_a_missing_field() -> None:
    parsed = parse_manifest(manifest())
    assert parsed.ref(ImageName.PAUSE) == "evaluation.local/pause:0123456789ab"
    with pytest.raises(ManifestError, match=r"evaluation-runner.*make images"):
        parsed.ref(ImageName.RUNNER)
    broken = json.loads(manifest())
    del broken["images"][0]["ref"]
    with pytest.raises(ManifestError, match=r"images\[0\].*'ref'"):
        parse_manifest(json.dumps(broken))
    with pytest.raises(ManifestError, match="not an image manifest"):
        parse_manifest("[]")


def test_forwarder_relays_both_ways_and_stops_listening() -> None:
    import socket
    import threading

    from devcluster.forward import TcpForwarder

    upstream = socket.create_server(("127.0.0.1", 0))

    def echo_once() -> None:
        conn, _ = upstream.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data.upper())

    threading.Thread(target=echo_once, daemon=True).start()
    forwarder = TcpForwarder(listen=("127.0.0.1", 0),
                             target=("127.0.0.1", upstream.getsockname()[1])).start()
    try:
        with socket.create_connection(("127.0.0.1", forwarder.port), timeout=5) as client:
            client.sendall(b"hello")
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1024) == b"HELLO"
        port = forwarder.port
    finally:
        forwarder.stop()
        upstream.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
