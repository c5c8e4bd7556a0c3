"""A real node for the local control plane: containerd + kubelet running real pods.

The node joins a devcluster.cluster control plane next to the KWOK nodes (KWOK manages only
nodes annotated `kwok.x-k8s.io/node: fake`). It must leave the machine as it found it, so:

* containerd and the kubelet run in ONE private mount namespace (`unshare -m`). Every mount
  they make (overlay root filesystems, volume tmpfs, network namespace pins) lives and dies
  with that namespace. Inside it, fresh tmpfs cover /run, /var/lib and /var/log (containerd's
  shim sockets and netns pins, the CNI result cache, the kubelet's /var/log/containers links
  all have hard-coded paths there), and small files holding the values the kubelet wants are
  bind-mounted over the four sysctls it would otherwise rewrite for the whole machine.
* The pod bridge is made here with its gateway address; the CNI bridge plugin runs with
  `isGateway: false`, `ipMasq: false` and no routes, so `net.ipv4.ip_forward` and iptables
  stay untouched; pods reach only the gateway (where the host binds S3, the model server and
  an API server forwarder) and each other. The kubelet runs with `makeIPTablesUtilChains:
  false`.
* Every name a node uses (bridge, subnet, kubelet ports, cgroup root, state directory) comes
  from a slot (devcluster.slots) held for the node's lifetime, so two sessions never collide.

Teardown deletes the node's pods through the API (so the kubelet runs CNI DEL), stops the
kubelet, kills whatever still runs in the node's cgroups or mount namespace (containerd,
shims, containers), then removes the bridge, the cgroups and the state directory.

Command line (a node for `make cluster-up`'s cluster; stays up until Ctrl-C):

    python -m devcluster.node --kubeconfig .cluster/kubeconfig
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devcluster.cluster import Cluster, ClusterError
from devcluster.forward import TcpForwarder
from devcluster.images import ImageManifest, ImageName, load_manifest
from devcluster.slots import HeldSlot, Slot, take_slot
from devcluster.tools import toolchain

NODE_NAME = "real-node"
# Label and taint of the real node: KWOK-driven tests never land on it (they carry no
# toleration); e2e tasks pin themselves with a nodeSelector on the label and tolerate the taint.
NODE_LABEL = "evaluation.dev/real-node"
TAINT = {"key": NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
CGROUP_FS = Path("/sys/fs/cgroup")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
HOST_BINARIES = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "ip",
                 "openssl", "mount")
# What the kubelet's container manager wants (pkg/kubelet/cm/container_manager_linux.go,
# setupKernelTunables); it rewrites the host's values unless it sees these.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
}
READY_TIMEOUT = 120.0


class NodeError(RuntimeError):
    pass


def _cap_effective() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def missing_requirements(kubelet: Path | None = None) -> list[str]:
    """Why this machine cannot run a real node (empty when it can)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("not root")
    caps = _cap_effective()
    for cap, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")):
        if not caps & (1 << cap):
            missing.append(f"no {name}")
    for binary in HOST_BINARIES:
        if shutil.which(binary) is None:
            missing.append(f"no `{binary}` (make node-deps)")
    for plugin in CNI_PLUGINS:
        if not (CNI_BIN_DIR / plugin).is_file():
            missing.append(f"no CNI plugin {CNI_BIN_DIR / plugin} (make node-deps)")
    kubelet = kubelet or toolchain().kubelet
    if not os.access(kubelet, os.X_OK):
        missing.append(f"no kubelet at {kubelet} (make kubelet)")
    if not _cgroup_hierarchies(v1_only=True):
        missing.append(f"no writable cgroup v1 hierarchies under {CGROUP_FS}")
    return missing


def _cgroup_hierarchies(v1_only: bool = False) -> list[Path]:
    """The cgroup hierarchies mounted under /sys/fs/cgroup: the kubelet's cgroupfs driver makes
    its cgroups in each of them, the hybrid layout's cgroup2 `unified` one included."""
    kinds = ("cgroup",) if v1_only else ("cgroup", "cgroup2")
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] in kinds and fields[1].startswith(f"{CGROUP_FS}/"):
            path = Path(fields[1])
            if os.access(path, os.W_OK):
                found.append(path)
    return found


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def state_prefix(slot: Slot) -> Path:
    """State directories of the slot's nodes are `<tmp>/eval-real-node-<index>-<random>`."""
    return Path(tempfile.gettempdir()) / f"eval-real-node-{slot.index}-"


def reclaim_slot(slot: Slot) -> None:
    """Remove what a node of this slot left when its session was killed (no teardown ran).
    Called with the slot's lock held, so no live node owns any of it: its processes (found by
    their state directory on the command line or by the slot's cgroups), bridge, cgroups and
    state directories."""
    prefix = str(state_prefix(slot))
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if prefix.encode() in (proc / "cmdline").read_bytes():
                    pids.add(int(proc.name))
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / slot.cgroup_root
        for procs in root.rglob("cgroup.procs") if root.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    pids.discard(os.getpid())
    if pids:
        _terminate(sorted(pids), grace=5, signal_first=signal.SIGKILL)
    if Path(f"/sys/class/net/{slot.bridge}").exists() and any(
            Path(tempfile.gettempdir()).glob(f"{state_prefix(slot).name}*")):
        _run("ip", "link", "del", slot.bridge, check=False)
    _remove_cgroups(slot.cgroup_root)
    for stale in Path(tempfile.gettempdir()).glob(f"{state_prefix(slot).name}*"):
        _run("rm", "-rf", "--one-file-system", str(stale), check=False, timeout=300)


def slot_usable(slot: Slot) -> bool:
    """A slot whose bridge, subnet or ports something else on the machine already uses is
    skipped (the slot lock only excludes other real nodes). Leftovers of a killed node of
    this slot are removed first."""
    reclaim_slot(slot)
    if Path(f"/sys/class/net/{slot.bridge}").exists():
        return False
    routes = _run("ip", "-4", "route", "show", "match", str(slot.gateway), check=False).stdout
    if any(not line.startswith("default") for line in routes.splitlines() if line.strip()):
        return False
    return _port_free(slot.kubelet_port) and _port_free(slot.healthz_port)


@dataclass
class Paths:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def sysctls(self) -> Path:
        return self.root / "sysctl"

    @property
    def pids(self) -> Path:
        return self.root / "pids"


def containerd_config(paths: Paths, pause_ref: str) -> str:
    root = paths.root
    # TOML basic strings are JSON strings for these values (paths and refs).
    q = json.dumps
    return f"""# containerd for one real node (devcluster.node): all state under {root}
version = 2
root = {q(str(root / "containerd" / "root"))}
state = {q(str(root / "containerd" / "state"))}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = {q(str(paths.containerd_socket))}
[plugins."io.containerd.grpc.v1.cri"]
  # without CAP_SYS_RESOURCE runc cannot lower oom_score_adj below containerd's own
  restrict_oom_score_adj = true
  # no registry: the pause image is imported from the image manifest
  sandbox_image = {q(pause_ref)}
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = {q(shutil.which("runc") or "runc")}
        Root = {q(str(root / "runc"))}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {q(str(CNI_BIN_DIR))}
    conf_dir = {q(str(root / "cni" / "net.d"))}
    max_conf_num = 1
"""


def cni_config(paths: Paths, slot: Slot) -> dict[str, Any]:
    hosts = list(slot.subnet.hosts())
    return {
        "cniVersion": "1.0.0",
        "name": f"evaluation-{slot.bridge}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": slot.bridge,
                # The gateway address is ours (put on the bridge before the node starts):
                # isGateway would switch on net.ipv4.ip_forward for the whole machine.
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.root / "cni" / "ipam"),
                    "ranges": [[{"subnet": str(slot.subnet), "rangeStart": str(hosts[9]),
                                 "rangeEnd": str(hosts[-5]), "gateway": str(slot.gateway)}]],
                },
            },
            {"type": "loopback"},
        ],
    }


def kubelet_config(paths: Paths, slot: Slot) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The API server reaches the kubelet on the node's InternalIP (`kubectl logs`, exec):
        # the gateway, reachable only from this host and the node's pods. Clients need a
        # certificate from the cluster CA.
        "address": str(slot.gateway),
        "port": slot.kubelet_port,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": slot.healthz_port,
        "readOnlyPort": 0,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(paths.pki / "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{slot.cgroup_root}",
        # cgroup v1 (hybrid) machines: the kubelet refuses v1 unless told otherwise.
        "failCgroupV1": False,
        "failSwapOn": False,
        # without CAP_SYS_RESOURCE the kubelet cannot lower its own oom_score_adj
        "oomScoreAdj": 0,
        # else the kubelet adds KUBE-FIREWALL / KUBE-KUBELET-CANARY chains to the host
        "makeIPTablesUtilChains": False,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "maxPods": 16,
        "podPidsLimit": 4096,
        "serializeImagePulls": False,
        # the imported images cannot be pulled again: never garbage-collect them
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "evictionPressureTransitionPeriod": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "staticPodPath": "",
        "podLogsDir": str(paths.root / "pod-logs"),
        "registerWithTaints": [{k: v for k, v in TAINT.items() if k != "operator"}],
    }


def namespace_script(paths: Paths, kubelet_argv: list[str]) -> str:
    """What runs inside the private mount namespace: private /run, /var/lib, /var/log and the
    kubelet's sysctl values, then containerd and the kubelet (pids recorded for teardown)."""
    binds = "\n".join(
        f"mount --bind {paths.sysctls / name.replace('/', '.')} /proc/sys/{name}"
        for name in KUBELET_SYSCTLS
    )
    kubelet = " ".join(kubelet_argv)
    return f"""set -eu
mount -t tmpfs -o mode=755 node-run /run
mount -t tmpfs -o mode=755 node-varlib /var/lib
mount -t tmpfs -o mode=755 node-varlog /var/log
{binds}
containerd --config {paths.root / "containerd.toml"} >{paths.logs / "containerd.log"} 2>&1 &
echo $! >{paths.pids / "containerd"}
for _ in $(seq 100); do [ -S {paths.containerd_socket} ] && break; sleep 0.1; done
{kubelet} >{paths.logs / "kubelet.log"} 2>&1 &
echo $! >{paths.pids / "kubelet"}
wait
"""


@dataclass
class RealNode:
    """A real node joined to `cluster`; `start()` returns once it is Ready."""

    cluster: Cluster
    images: ImageManifest
    name: str = NODE_NAME
    state_dir: Path | None = None
    kubelet: Path = field(default_factory=lambda: toolchain().kubelet)
    held: HeldSlot | None = None
    holder: subprocess.Popen[bytes] | None = None
    forwarder: TcpForwarder | None = None
    api_server_port: int = 0
    mount_ns: str | None = None
    imported: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)

    # --- what tests use ----------------------------------------------------------------------

    @property
    def slot(self) -> Slot:
        if self.held is None:
            raise NodeError("the node is not started")
        return self.held.slot

    @property
    def gateway(self) -> str:
        """The bridge's address: host services bound here are what pods can reach."""
        return str(self.slot.gateway)

    @property
    def paths(self) -> Paths:
        if self.state_dir is None:
            raise NodeError("the node is not started")
        return Paths(self.state_dir)

    @property
    def bridge(self) -> str:
        return self.slot.bridge

    @property
    def cgroup_root(self) -> str:
        return self.slot.cgroup_root

    def image_ref(self, name: ImageName) -> str:
        """The image's reference, imported into the node's containerd on first use (pods run
        it with `imagePullPolicy: Never`: there is no registry)."""
        ref = self.images.ref(name)
        if self.state_dir is not None and ref not in self.imported:
            self.import_image(ref)
        return ref

    def pin(self) -> dict[str, Any]:
        """Scheduling fields that put a pod (or an EvaluationTask's runner) on this node."""
        return {"nodeSelector": {"kubernetes.io/hostname": self.name},
                "tolerations": [dict(TAINT)]}

    def api_server_env(self) -> dict[str, str]:
        """Env for a pod that talks to the API server with in-cluster config (the `kubernetes`
        Service IP does not route: no kube-proxy). These override the kubelet's values."""
        if self.forwarder is None:
            raise NodeError("the node is not started")
        return {"KUBERNETES_SERVICE_HOST": self.gateway,
                "KUBERNETES_SERVICE_PORT": str(self.forwarder.port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.forwarder.port)}

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's log as the kubelet wrote it (the newest attempt)."""
        logs = sorted(
            (self.paths.root / "pod-logs").glob(f"{namespace}_{pod}_*/{container}/*.log"),
            key=lambda p: p.stat().st_mtime,
        )
        return logs[-1].read_text(errors="replace") if logs else ""

    def log_tail(self, component: str, lines: int = 20) -> str:
        try:
            text = (self.paths.logs / f"{component}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- start ----------------------------------------------------------------------------

    def start(self) -> RealNode:
        missing = missing_requirements(self.kubelet)
        if missing:
            raise NodeError("cannot run a real node here: " + "; ".join(missing))
        begin = time.monotonic()
        self.held = take_slot(slot_usable)
        if self.held is None:
            raise NodeError("every real-node slot on this machine is in use")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["up_to_ready_s"] = time.monotonic() - begin
        return self

    def _start(self) -> None:
        slot = self.slot
        prefix = state_prefix(slot)
        self.state_dir = Path(tempfile.mkdtemp(prefix=prefix.name, dir=prefix.parent))
        paths = self.paths
        for d in (paths.pki, paths.logs, paths.sysctls, paths.pids, paths.root / "cni" / "net.d",
                  paths.root / "cni" / "ipam", paths.root / "kubelet", paths.root / "pod-logs",
                  paths.containerd_socket.parent):
            d.mkdir(parents=True, exist_ok=True)
        server, ca = self._cluster_ca()
        self._node_certificate(ca)
        self._write_kubeconfig(server)
        for name, value in KUBELET_SYSCTLS.items():
            (paths.sysctls / name.replace("/", ".")).write_text(value + "\n")
        (paths.root / "containerd.toml").write_text(
            containerd_config(paths, self.images.ref(ImageName.PAUSE)))
        (paths.root / "cni" / "net.d" / "10-evaluation.conflist").write_text(
            json.dumps(cni_config(paths, slot), indent=2))
        (paths.root / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(paths, slot)))
        self._make_bridge()
        self._make_cgroup_root()
        self.api_server_port = int(server.rsplit(":", 1)[1])
        self.forwarder = TcpForwarder(listen=(self.gateway, self.api_server_port),
                                      target=("127.0.0.1", self.api_server_port)).start()
        script = paths.root / "namespace.sh"
        script.write_text(namespace_script(paths, self._kubelet_argv()))
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", str(script)],
            stdout=open(paths.logs / "namespace.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        launched = time.monotonic()
        self._wait_for("containerd's socket", lambda: paths.containerd_socket.exists(), 30)
        self.mount_ns = self._holder_mount_ns()
        self._import_images()
        self._wait_for("the node Ready", self._ready, READY_TIMEOUT)
        # The kubelet registers while the images are imported: Ready comes with the import.
        self.timings["launch_to_ready_s"] = time.monotonic() - launched

    def _cluster_ca(self) -> tuple[str, Path]:
        config = yaml.safe_load(self.cluster.kubeconfig.read_text())
        entry = config["clusters"][0]["cluster"]
        ca = Path(entry.get("certificate-authority", ""))
        if not ca.is_file():
            # kwokctl's layout: <state dir>/kubeconfig beside <state dir>/kwok/clusters/<name>/pki
            found = sorted(self.cluster.kubeconfig.parent.glob("kwok/clusters/*/pki/ca.crt"))
            ca = found[0] if len(found) == 1 else ca
        if not ca.is_file() or not ca.with_suffix(".key").is_file():
            raise NodeError(
                f"the cluster's CA key is not beside {ca or 'its kubeconfig'}: a real node "
                "joins only a local control plane (devcluster.cluster)")
        return str(entry["server"]), ca

    def _node_certificate(self, ca: Path) -> None:
        pki = self.paths.pki
        shutil.copy(ca, pki / "ca.crt")
        _run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(pki / "node.key"),
             "-subj", f"/O=system:nodes/CN=system:node:{self.name}", "-out",
             str(pki / "node.csr"))
        _run("openssl", "x509", "-req", "-in", str(pki / "node.csr"), "-CA", str(ca),
             "-CAkey", str(ca.with_suffix(".key")), "-set_serial",
             str(int.from_bytes(os.urandom(8), "big")), "-days", "7",
             "-out", str(pki / "node.crt"))

    def _write_kubeconfig(self, server: str) -> None:
        pki = self.paths.pki
        # Names are plain words: YAML 1.1 (the kubelet's parser) reads a bare `n` as false.
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": server, "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "node", "user": {
                "client-certificate": str(pki / "node.crt"),
                "client-key": str(pki / "node.key")}}],
            "contexts": [{"name": "node", "context": {"cluster": "local", "user": "node"}}],
            "current-context": "node",
        }
        (self.paths.root / "kubeconfig").write_text(yaml.safe_dump(config))

    def _make_bridge(self) -> None:
        slot = self.slot
        _run("ip", "link", "add", slot.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{slot.gateway}/{slot.subnet.prefixlen}", "dev", slot.bridge)
        _run("ip", "link", "set", slot.bridge, "up")

    def _make_cgroup_root(self) -> None:
        # The kubelet insists its cgroup root exists in every hierarchy.
        for hierarchy in _cgroup_hierarchies():
            path = hierarchy / self.cgroup_root
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((hierarchy / knob).read_text())

    def _kubelet_argv(self) -> list[str]:
        paths = self.paths
        return [
            str(self.kubelet), "--config", str(paths.root / "kubelet.yaml"),
            "--kubeconfig", str(paths.root / "kubeconfig"),
            "--root-dir", str(paths.root / "kubelet"),
            "--cert-dir", str(paths.pki / "serving"),
            "--hostname-override", self.name, "--node-ip", self.gateway,
            "--node-labels", f"{NODE_LABEL}=true", "--v=2",
        ]

    def _ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.paths.containerd_socket), "--namespace",
                    "k8s.io", *args, timeout=timeout)

    def _import_images(self) -> None:
        """The sandbox image and the runner now; the others (operator, lm-eval runner: big and
        used by few tests) when a test first asks for their reference."""
        begin = time.monotonic()
        for name in (ImageName.PAUSE, ImageName.RUNNER):
            self.import_image(self.images.ref(name))
        self.timings["image_import_s"] = time.monotonic() - begin

    def import_image(self, ref: str) -> None:
        image = next((i for i in self.images.images.values() if i.ref == ref), None)
        if image is None:
            raise NodeError(f"{ref} is not in the image manifest")
        self._ctr("images", "import", str(image.tarball))
        listed = self._ctr("images", "ls", "-q").stdout.split()
        if image.ref not in listed:
            raise NodeError(f"importing {image.tarball} did not register {image.ref}")
        self.imported.add(image.ref)

    def _daemon_pid(self, name: str) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.paths.pids / name).read_text().strip())
        return None

    def _check_alive(self) -> None:
        if self.holder is not None and self.holder.poll() is not None:
            raise NodeError(f"the node's namespace exited {self.holder.returncode}: "
                            f"{self.log_tail('namespace')}")
        for daemon in ("containerd", "kubelet"):
            pid = self._daemon_pid(daemon)
            if pid is not None and not _alive(pid):
                raise NodeError(f"{daemon} exited at start:\n{self.log_tail(daemon)}")

    def _wait_for(self, what: str, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if predicate():
                return
            time.sleep(0.2)
        raise NodeError(f"timed out after {timeout}s waiting for {what}; kubelet log:\n"
                        f"{self.log_tail('kubelet')}")

    def _ready(self) -> bool:
        result = self.cluster.kubectl("get", "node", self.name, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # --- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Tear everything down; safe to call on a node that failed half-way through start."""
        begin = time.monotonic()
        if self.state_dir is not None and self.holder is not None:
            self._delete_pods()
        self.timings["down_pods_s"] = time.monotonic() - begin
        kubelet = self._daemon_pid("kubelet") if self.state_dir else None
        if kubelet is not None:
            _terminate([kubelet], grace=10)
        if self.state_dir is not None:
            self.cluster.kubectl("delete", "node", self.name, "--ignore-not-found",
                                 "--wait=false", check=False)
        self.timings["down_kubelet_s"] = time.monotonic() - begin
        self._kill_namespace()
        self.timings["down_processes_s"] = time.monotonic() - begin
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None
        if self.held is not None:
            self._remove_cgroups()
            if Path(f"/sys/class/net/{self.bridge}").exists():
                _run("ip", "link", "del", self.bridge, check=False)
        self.timings["down_cgroups_bridge_s"] = time.monotonic() - begin
        if self.state_dir is not None:
            # rm is several times faster than shutil.rmtree on unpacked images; nothing is
            # mounted there any more, and --one-file-system would not follow a mount if it were.
            _run("rm", "-rf", "--one-file-system", str(self.state_dir), check=False, timeout=300)
            self.imported.clear()
        self.holder = None
        self.state_dir = None
        self.mount_ns = None
        if self.held is not None:
            self.held.release()
            self.held = None
        self.timings["down_s"] = time.monotonic() - begin

    def _delete_pods(self) -> None:
        """Through the API, so the kubelet stops the containers and runs CNI DEL."""
        self.cluster.kubectl(
            "delete", "pods", "--all-namespaces", "--field-selector",
            f"spec.nodeName={self.name}", "--grace-period=5", "--timeout=60s",
            check=False, timeout=90)

    def _namespace_pids(self) -> list[int]:
        """Processes in the node's mount namespace (containerd, kubelet, shims) and in its
        cgroups (containers, which have mount namespaces of their own)."""
        pids: set[int] = set()
        ns = self.mount_ns or self._holder_mount_ns()
        if self.holder is not None and self.holder.poll() is None:
            pids.add(self.holder.pid)
        if ns is not None:
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        if os.readlink(proc / "ns" / "mnt") == ns:
                            pids.add(int(proc.name))
        if self.held is not None:
            for hierarchy in _cgroup_hierarchies():
                root = hierarchy / self.cgroup_root
                for procs in root.rglob("cgroup.procs") if root.is_dir() else []:
                    with contextlib.suppress(OSError, ValueError):
                        pids.update(int(p) for p in procs.read_text().split())
        for daemon in ("containerd", "kubelet") if self.state_dir else ():
            pid = self._daemon_pid(daemon)
            if pid is not None and _alive(pid):
                pids.add(pid)
        pids.discard(os.getpid())
        return sorted(p for p in pids if _alive(p))

    def _holder_mount_ns(self) -> str | None:
        """The node's mount namespace; None until `unshare` has made it (never the host's)."""
        if self.holder is None or self.holder.poll() is not None:
            return None
        try:
            ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        except OSError:
            return None
        return None if ns == os.readlink("/proc/self/ns/mnt") else ns

    def _kill_namespace(self) -> None:
        containerd = self._daemon_pid("containerd") if self.state_dir else None
        if containerd is not None:
            _terminate([containerd], grace=5)
        for _ in range(5):
            pids = self._namespace_pids()
            if not pids:
                break
            _terminate(pids, grace=5, signal_first=signal.SIGKILL)
        if self.holder is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(timeout=10)

    def _remove_cgroups(self) -> None:
        _remove_cgroups(self.cgroup_root)


def _remove_cgroups(name: str) -> None:
    """rmdir the cgroup `name` and everything under it, in every hierarchy (deepest first; a
    cgroup goes once its last process has been reaped)."""
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / name
        if not root.is_dir():
            continue
        deadline = time.monotonic() + 10
        while root.exists() and time.monotonic() < deadline:
            inner = sorted((p for p in root.rglob("*") if p.is_dir()),
                           key=lambda p: len(p.parts), reverse=True)
            for path in [*inner, root]:
                with contextlib.suppress(OSError):
                    path.rmdir()
            if root.exists():
                time.sleep(0.2)


def _terminate(pids: list[int], grace: float,
               signal_first: signal.Signals = signal.SIGTERM) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal_first)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.node")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--name", default=NODE_NAME)
    args = parser.parse_args(argv)
    cluster = Cluster(name="local", kubeconfig=args.kubeconfig.resolve(), flavour="kwok")
    node = RealNode(cluster=cluster, images=load_manifest(), name=args.name)
    try:
        node.start()
    except (NodeError, ClusterError) as error:
        print(error, file=sys.stderr)
        return 1
    print(f"node {node.name} Ready in {node.timings['up_to_ready_s']:.1f}s; "
          f"gateway {node.gateway}; state in {node.state_dir}")
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
