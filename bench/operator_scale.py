"""The operator at N tasks, against a bare client in the same run, on a private KWOK cluster.

    .venv/bin/python bench/operator_scale.py --tasks 1000

What it does (one private control plane, audit log on, extra fake GPU nodes so every task
gets a GPU at once; moto's S3 server as its own process):

1. Baseline: a bare Python client (16 threads, like the operator's default `api_workers`)
   creates the same N ConfigMaps and Jobs the operator would (built by the operator's own
   `manifests`), timed from the first request to the N-th Job: once with the Jobs suspended
   (no pods follow), once as the operator creates them (the cluster runs their pods meanwhile).
2. The operator, started as `hack/run_local.py` starts it (`python -m evaluation_operator`),
   is warmed up with WARM_UP_TASKS tasks (deleted again), then gets N tasks (created by 16
   threads): time from the first task to the N-th Job, counted in the audit log (no watch
   of the bench's open meanwhile, as in the baseline). `--creation-only --pairs K`: K such
   pairs of windows, and their median.
3. Once every task is Running and no Job, pod or task has changed for 5 s: RSS, and CPU and
   API reads over an idle window.
4. Every pod finishes (exit 0 with a full termination message, as the runner writes it);
   status latency = task seen Completed - pod seen Succeeded (whichever of pod Succeeded
   and Job Complete the bench saw first), from the bench's own watches.
5. SIGTERM with N tasks: shutdown time. Restart: time to settle, Jobs created twice (0).
6. All tasks deleted: time until gone; RSS after.

API calls are counted from the API server's audit log by user agent: the operator's are
Kopf's (`kopf/...`) and its own client's (`evaluation-operator/...`, apiclient.USER_AGENT; an
operator from before it said `OpenAPI-Generator/...`, the kubernetes client's); the bench's
own client identifies itself as `operator-scale-bench`. "Writes" are create, update, patch and
delete; per task = total / N.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from devcluster import cluster as cluster_module  # noqa: E402
from devcluster import kwok_pods  # noqa: E402
from devcluster.cluster import Cluster, KwokCluster  # noqa: E402
from devcluster.tools import REPO_ROOT, Toolchain, toolchain  # noqa: E402
from evaluation_operator import memory, naming  # noqa: E402
from evaluation_operator.config import OperatorSettings  # noqa: E402
from evaluation_operator.manifests import build_configmap, build_job  # noqa: E402
from evaluation_operator.runner_config import build_runner_config  # noqa: E402
from evaluation_operator.task import Task  # noqa: E402
from kubernetes import client, watch  # noqa: E402

from tests.support.s3 import free_port  # noqa: E402

BUCKET = "eval-results"
AGENT = "operator-scale-bench"
THREADS = 16
WARM_UP_TASKS = 200  # through the operator before its first window (`warm_up`)
QUIET_SECONDS = 5.0  # "nothing happening": no Job, pod or task changed for this long
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the cluster ------------------------------------------------------------------------------


def start_cluster(state: Path, controller_qps: int = 0) -> tuple[KwokCluster, Cluster]:
    """`controller_qps`: the controller manager's and scheduler's API rate (0: Kubernetes'
    defaults, 20 and 50 per second: the Job controller then creates ~8 pods/s, so 5,000
    tasks wait ~10 minutes for their pods whatever the operator does)."""
    policy = state / "audit-policy.yaml"
    state.mkdir(parents=True, exist_ok=True)
    policy.write_text(AUDIT_POLICY)
    plain = cluster_module._kwokctl_config

    def with_audit(tools: Toolchain, pki: Path | None = None) -> str:
        first, rest = plain(tools, pki).split("---\n", 1)
        config = yaml.safe_load(first)
        config["options"]["kubeAuditPolicy"] = str(policy)
        # One controller manager and one scheduler: no leases to renew. On a saturated
        # machine a lease renewal timed out, the controller manager stopped (kwokctl does
        # not restart it) and no Job got a pod any more.
        for component in ("kube-controller-manager", "kube-scheduler"):
            config["componentsPatches"].append({"name": component, "extraArgs": [
                {"key": "leader-elect", "value": "false"}, *([
                    {"key": "kube-api-qps", "value": str(controller_qps)},
                    {"key": "kube-api-burst", "value": str(2 * controller_qps)}]
                    if controller_qps else [])]})
        return str(yaml.safe_dump(config)) + "---\n" + rest

    cluster_module._kwokctl_config = with_audit
    owner = KwokCluster(name=f"eval-bench-{os.getpid()}", state_dir=state)
    return owner, owner.start()


def audit_log(owner: KwokCluster) -> Path:
    found = sorted(owner.workdir.glob("clusters/*/logs/audit.log"))
    if not found:
        raise RuntimeError(f"no audit log under {owner.workdir}")
    return found[0]


def add_gpu_nodes(cluster: Cluster, count: int, gpus: int) -> None:
    nodes = [{
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": f"bench-gpu-{i}",
                     "annotations": {"kwok.x-k8s.io/node": "fake",
                                     "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"kubernetes.io/hostname": f"bench-gpu-{i}", "type": "kwok",
                                "kubernetes.io/os": "linux"}},
        "status": {"capacity": {"cpu": "1000", "memory": "4Ti", "pods": str(gpus + 10),
                                "nvidia.com/gpu": str(gpus)},
                   "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": str(gpus + 10),
                                   "nvidia.com/gpu": str(gpus)}},
    } for i in range(count)]
    cluster.apply(nodes)


def start_s3() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.create_bucket(Bucket=BUCKET)
            return process, url
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def api(cluster: Cluster) -> client.ApiClient:
    api_client = cluster.api_client()
    api_client.user_agent = AGENT
    api_client.configuration.connection_pool_maxsize = THREADS
    # The pool is sized at construction: make a new client with the bigger pool.
    fresh = client.ApiClient(api_client.configuration)
    fresh.user_agent = AGENT
    return fresh


def in_parallel(work: Callable[[int], Any], count: int) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        for result in pool.map(work, range(count)):
            del result


# --- process figures --------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_of(stat: str) -> float:
    """User + system CPU seconds from a /proc/<pid>/stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    return _cpu_of(Path(f"/proc/{pid}/stat").read_text())


def cpu_by_process(names: dict[int, str]) -> dict[int, tuple[str, float]]:
    """By pid: the command name (or the name given for that pid: several are `python`) and
    the CPU seconds it used so far, for every process on the machine."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        pid = int(entry.name)
        command = names.get(pid, stat[stat.index("(") + 1:stat.rindex(")")])
        found[pid] = (command, _cpu_of(stat))
    return found


def cpu_split(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
              seconds: float) -> dict[str, float]:
    """Cores used in a window, by process name (a process started meanwhile counts whole),
    busiest first; under 0.01 core left out. Kernel threads rename themselves: by pid."""
    cores: dict[str, float] = {}
    for pid, (name, used) in after.items():
        cores[name] = cores.get(name, 0.0) + (used - before.get(pid, (name, 0.0))[1]) / seconds
    return {name: round(core, 2) for name, core in sorted(cores.items(), key=lambda kv: -kv[1])
            if core >= 0.01}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- the bench --------------------------------------------------------------------------------


def spec(index: int) -> dict[str, Any]:
    return {
        "model": {"name": "tiny-llm", "endpoint": {"url": "http://tiny-llm.models.svc:8000/v1"}},
        "benchmarks": [{"name": "arc-easy", "dataset": {"uri": "s3://datasets/arc-easy.jsonl"},
                        "task": "multiple-choice", "metrics": ["accuracy"]}],
        "resources": {"gpu": 1, "cpu": "1", "memory": "1Gi"},
    }


def baseline(cluster: Cluster, namespace: str, count: int, suspend: bool) -> float:
    """Seconds for a bare client to create `count` ConfigMaps and the operator's Jobs;
    `suspend`: no pods follow, so the cluster has nothing else to do meanwhile."""
    settings = OperatorSettings(s3_bucket=BUCKET)
    core, batch = client.CoreV1Api(api(cluster)), client.BatchV1Api(api(cluster))
    manifests = []
    for i in range(count):
        body = {"metadata": {"name": f"bare-{i}", "namespace": namespace,
                             "uid": str(uuid.uuid4())}, "spec": spec(i)}
        task = Task.from_body(body, settings)
        assert task.spec is not None and task.location is not None
        config = build_runner_config(task.spec, name=task.name, namespace=namespace,
                                     uid=task.uid, location=task.location, settings=settings)
        job = build_job(task, task.spec, settings)
        if suspend:
            job["spec"]["suspend"] = True
        configmap = build_configmap(task, config)
        for manifest in (configmap, job):  # no task object to own them
            manifest["metadata"].pop("ownerReferences")
        # Not the operator's (its watches select Jobs and pods by this label): a running
        # operator would otherwise get every event of them, in the bare client's window.
        for labels in (configmap["metadata"]["labels"], job["metadata"]["labels"],
                       job["spec"]["template"]["metadata"]["labels"]):
            labels[naming.LABEL_MANAGED_BY] = AGENT
        manifests.append((configmap, job))

    def create(i: int) -> None:
        configmap, job = manifests[i]
        core.create_namespaced_config_map(namespace, configmap)
        batch.create_namespaced_job(namespace, job)

    started = time.monotonic()
    in_parallel(create, count)
    return time.monotonic() - started


def clear_namespace(cluster: Cluster, namespace: str) -> None:
    """Delete a namespace with running pods, and wait until it is gone. Left to the
    namespace controller and KWOK, 1,000 running pods took over 2 minutes to go."""
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")  # no new pods now
    cluster.kubectl("delete", "pods", "--all", "-n", namespace, "--force", "--grace-period=0",
                    "--wait=false", timeout=600)
    cluster.kubectl("wait", "--for=delete", f"namespace/{namespace}", "--timeout=600s",
                    timeout=620)


class Watcher:
    """First time the bench sees each task's Job, pod Succeeded, Job Complete, task state."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.namespace = namespace
        self.api = api(cluster)
        self.jobs: dict[str, float] = {}
        self.job_done: dict[str, float] = {}
        self.pod_done: dict[str, float] = {}
        self.pod_done_wall: dict[str, float] = {}  # the same, by the wall clock (audit log's)
        self.running: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.phases: dict[str, str] = {}
        self.results: dict[str, str] = {}
        # Changes (a new resourceVersion, not a watch's re-list) by kind, and when the last one
        # was seen: the Job controller writes Job status for a minute after every pod runs.
        self.versions: dict[tuple[str, str], str] = {}
        self.changes: Counter[str] = Counter()
        self.last_change = time.monotonic()
        self.resumes: dict[str, str | None] = {}  # by kind: the last resourceVersion seen
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(what,), daemon=True)
                        for what in ("jobs", "pods", "tasks")]
        for thread in self.threads:
            thread.start()

    def _stream(self, what: str) -> Iterator[dict[str, Any]]:
        w = watch.Watch()
        if what == "jobs":
            function: Any = client.BatchV1Api(self.api).list_namespaced_job
            args: tuple[Any, ...] = (self.namespace,)
        elif what == "pods":
            function, args = client.CoreV1Api(self.api).list_namespaced_pod, (self.namespace,)
        else:
            function = client.CustomObjectsApi(self.api).list_namespaced_custom_object
            args = ("evaluation.dev", "v1alpha1", self.namespace, "evaluationtasks")
        # Plain JSON, not the client's models: decoding every Job and pod event into V1Job /
        # V1Pod and back took the bench's watches seconds of CPU per thousand tasks, on the
        # cores the operator and the API server share, while the operator was measured (and
        # not while the bare client was); until 2026-11-30 04:15 UTC they did.
        # Each watch resumes where the last one ended: one started afresh gets every object
        # again (1,000 tasks), which the API server cut short while the bench fell behind,
        # over and over, on the cores the operator shares (until 2026-11-30 10:10 UTC).
        resume = {"resource_version": self.resumes[what]} if self.resumes.get(what) else {}
        self.resumes[what] = None  # unless this watch ends well: an ERROR (410) starts afresh
        last = resume.get("resource_version")
        for event in w.stream(function, *args, timeout_seconds=60, deserialize=False,
                              allow_watch_bookmarks=True, **resume):
            last = event["object"]["metadata"]["resourceVersion"]
            if event["type"] != "BOOKMARK":
                yield event["object"]
            if self.stop.is_set():
                w.stop()
        self.resumes[what] = last

    def _loop(self, what: str) -> None:
        while not self.stop.is_set():
            try:
                for obj in self._stream(what):
                    self._seen(what, obj, time.monotonic())
            except Exception as error:  # a watch that expires or breaks: start again
                if not self.stop.is_set():
                    # The client reads an ERROR event's `raw_object`, which it sets only
                    # when it decodes into models: a KeyError here is that event (e.g. "too
                    # large resource version" while the watch cache catches up).
                    said = ("an ERROR event" if isinstance(error, KeyError) and
                            error.args == ("raw_object",) else str(error))
                    log(f"watch {what}: {said}; listing again")
                    time.sleep(0.5)

    def _seen(self, what: str, obj: dict[str, Any], now: float) -> None:
        labels = obj["metadata"].get("labels") or {}
        key, version = (what, obj["metadata"]["name"]), obj["metadata"]["resourceVersion"]
        if self.versions.get(key) != version:
            self.versions[key] = version
            self.changes[what] += 1
            self.last_change = now
        if what == "tasks":
            name = obj["metadata"]["name"]
            status = obj.get("status") or {}
            self.phases[name] = str(status.get("reason") or "")
            if status.get("results"):
                self.results[name] = status["results"]["uri"]
            if status.get("reason") == "Running":
                self.running.setdefault(name, now)
            if status.get("phase") in ("Completed", "Failed"):
                self.finished.setdefault(name, now)
            return
        task = labels.get("evaluation.dev/task")
        if not task:
            return
        if what == "jobs":
            self.jobs.setdefault(task, now)
            conditions = (obj.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Complete" and c["status"] == "True" for c in conditions):
                self.job_done.setdefault(task, now)
        elif (obj.get("status") or {}).get("phase") == "Succeeded":
            self.pod_done.setdefault(task, now)
            self.pod_done_wall.setdefault(task, time.time())

    def close(self) -> None:
        self.stop.set()


class JobsCreated:
    """Counts the Jobs created in a namespace as the API server's audit log records them,
    reading only what was appended since the last look: the bench waits for the operator's
    Jobs without a watch of its own, so the operator's window carries no more load than the
    bare client's (which has none). Until 2026-11-30 19:20 UTC the bench watched Jobs, pods
    and tasks through it."""

    def __init__(self, path: Path, namespace: str) -> None:
        self.path, self.namespace = path, namespace
        self.count = 0
        self.marker = f'"namespace":"{namespace}"'
        # Only Jobs created from now on count: start after the last whole line, found in
        # the log's last 64 KiB (a line is a few KiB) rather than by reading all of it.
        with path.open("rb") as log_file:
            end = log_file.seek(0, os.SEEK_END)
            tail_start = max(0, end - (1 << 16))
            log_file.seek(tail_start)
            self.offset = tail_start + log_file.read().rfind(b"\n") + 1

    def poll(self) -> int:
        with self.path.open("rb") as log_file:
            log_file.seek(self.offset)
            chunk = log_file.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a line being written waits for later
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            if '"create"' not in line or self.marker not in line:
                continue  # cheap: most lines are not a create in this namespace
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            if (entry["verb"], ref.get("resource"), ref.get("namespace")) == (
                    "create", "jobs", self.namespace) and (
                    entry.get("responseStatus") or {}).get("code") == 201:
                self.count += 1
        return self.count


def wait_time(work: Callable[[], None]) -> float:
    started = time.monotonic()
    work()
    return time.monotonic() - started


def wait(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s: {what}")
        time.sleep(0.2)
    return time.monotonic() - started


class Operator:
    def __init__(self, cluster: Cluster, s3_url: str, log_path: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
                    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                    "EVAL_S3_ENDPOINT": s3_url, "EVAL_S3_BUCKET": BUCKET,
                    "EVAL_S3_REGION": "us-east-1", "PYTHONPATH": str(ROOT),
                    **memory.PROCESS_ENV}  # as `make run` and the image start it
        # BENCH_OPERATOR_ENV="PYTHONMALLOC=malloc ...": the operator's environment only.
        for item in os.environ.get("BENCH_OPERATOR_ENV", "").split():
            key, _, value = item.partition("=")
            self.env[key] = value
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        out = open(self.log_path, "ab")  # noqa: SIM115
        wrapper = os.environ.get("BENCH_OPERATOR_WRAPPER")
        command = [sys.executable, wrapper] if wrapper else [sys.executable, "-m",
                                                             "evaluation_operator"]
        self.process = subprocess.Popen(command,
                                        env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self.process.pid

    def stop(self, timeout: float = 60) -> float:
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - started


# The operator's user agents: Kopf's, its own client's, the kubernetes client's (before).
OPERATOR_AGENTS = ("kopf/", "evaluation-operator/", "OpenAPI-Generator/")


def audit_counts(path: Path, since: str, until: str) -> tuple[Counter[str], Counter[str]]:
    """(operator writes, operator reads) by "verb resource[/subresource]" in [since, until)."""
    writes: Counter[str] = Counter()
    reads: Counter[str] = Counter()
    with path.open() as lines:
        for line in lines:
            entry = json.loads(line)
            stamp = entry.get("requestReceivedTimestamp", "")
            if not since <= stamp < until:
                continue
            agent = entry.get("userAgent", "")
            if not agent.startswith(OPERATOR_AGENTS):
                continue
            ref = entry.get("objectRef") or {}
            key = f"{entry['verb']} {ref.get('resource', '?')}"
            if ref.get("subresource"):
                key += f"/{ref['subresource']}"
            (writes if entry["verb"] in WRITE_VERBS else reads)[key] += 1
    return writes, reads


def _stamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def audit_status_latencies(path: Path, since: str, until: str, tail: list[str] | None = None,
                           seen: dict[str, float] | None = None,
                           split: dict[str, list[float]] | None = None) -> list[float]:
    """Per task, from the API server's own clock (no watch lag): the last pods/status write
    by the fake kubelet (KWOK: the pod finished) -> the operator's last status write of the
    task (Completed), in [since, until). Tasks whose status was written before their pod
    finished (none expected) are left out. `tail` gets the five slowest: seconds from the
    window's first finished pod to their pod's finish, to the bench's own watch delivering
    it (`seen`: wall-clock seconds by task; a late one is the API server's watch fan-out,
    which every watcher waits for, the operator's included) and to each status write.
    `split` gets, per task seen by the bench, that delivery ("delivery": pod finished ->
    the bench's watch has it) and the rest ("after delivery": -> the operator's write)."""
    seen = seen or {}
    pod_done: dict[str, datetime.datetime] = {}
    written: dict[str, datetime.datetime] = {}
    every: dict[str, list[datetime.datetime]] = {}
    with path.open() as lines:
        for line in lines:
            entry = json.loads(line)
            stamp = entry.get("requestReceivedTimestamp", "")
            if not since <= stamp < until or entry["verb"] not in ("patch", "update"):
                continue
            ref = entry.get("objectRef") or {}
            agent = entry.get("userAgent", "")
            if (ref.get("resource"), ref.get("subresource")) == ("pods", "status") and (
                    agent.startswith("kwok")):
                task = str(ref.get("name", "")).rsplit("-eval-", 1)[0]
                pod_done[task] = _stamp(entry["stageTimestamp"])
            elif ((ref.get("resource"), ref.get("subresource")) == ("evaluationtasks", "status")
                  and agent.startswith(OPERATOR_AGENTS)):
                written[str(ref.get("name"))] = _stamp(stamp)
                every.setdefault(str(ref.get("name")), []).append(_stamp(stamp))
    late = sorted(((written[t] - done).total_seconds(), t) for t, done in pod_done.items()
                  if t in written and written[t] >= done)
    if split is not None:
        for _, t in late:
            if t in seen:
                delivered = seen[t]
                split.setdefault("delivery", []).append(delivered - pod_done[t].timestamp())
                split.setdefault("after delivery", []).append(
                    max(0.0, written[t].timestamp() - delivered))
    if tail is not None and late:
        start = min(pod_done.values())
        tail.append(f"seconds below count from the first pod finished, at {start.isoformat()}")
        for seconds, t in late[-5:]:
            when = f"{seen[t] - start.timestamp():.2f} s" if t in seen else "?"
            tail.append(f"{t}: {seconds:.2f} s; pod finished at "
                        f"{(pod_done[t] - start).total_seconds():.2f} s, seen by the bench's "
                        f"watch at {when}, status written at "
                        f"{[round((w - start).total_seconds(), 2) for w in every[t]]}")
    return [seconds for seconds, _ in late]


def watches_cut_short(path: Path, since: str, until: str) -> list[str]:
    """Watches that ended in [since, until) before their own timeout: the API server closes
    a watch whose client does not keep up with its events (and, until it does, every other
    watcher of that resource waits too), so these say whose watch lagged, and when."""
    cut: list[str] = []
    with path.open() as lines:
        for line in lines:
            entry = json.loads(line)
            ended = entry.get("stageTimestamp", "")
            if entry["verb"] != "watch" or not since <= ended < until:
                continue
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(entry["requestURI"]).query)
            timeout = float((query.get("timeoutSeconds") or ["0"])[0])
            lasted = (_stamp(ended) - _stamp(entry["requestReceivedTimestamp"])).total_seconds()
            if timeout and lasted < timeout - 1:
                resource = (entry.get("objectRef") or {}).get("resource", "?")
                cut.append(f"{agent_class(entry.get('userAgent', ''))} {resource}: ended at "
                           f"{(_stamp(ended) - _stamp(since)).total_seconds():.1f} s after "
                           f"{lasted:.1f} of {timeout:.0f} s")
    return cut


def agent_class(agent: str) -> str:
    for prefix, name in (("kopf/", "operator"), ("evaluation-operator/", "operator"),
                         (AGENT, "bench"), ("kube-controller-manager", "controller manager"),
                         ("kube-scheduler", "scheduler"), ("kwok", "kwok")):
        if agent.startswith(prefix):
            return name
    return agent.split("/", 1)[0] or "?"


def audit_window(path: Path, since: str, until: str) -> dict[str, Any]:
    """Where the API server's time went in [since, until): per client and "verb resource",
    the writes and the sum of their server-side durations (received -> response), and the
    reads (get, list) counted; per task, the operator's stages after the task's create (Job
    names end in -eval); and the window's span as the API server timed it: the bench's
    first create received -> the last Job created (whoever created it)."""
    spent: dict[str, list[float]] = {}
    reads: Counter[str] = Counter()
    first_create: datetime.datetime | None = None
    last_job: datetime.datetime | None = None
    created: dict[str, datetime.datetime] = {}
    stages: dict[str, dict[str, datetime.datetime]] = {}
    with path.open() as lines:
        for line in lines:
            entry = json.loads(line)
            stamp = entry.get("requestReceivedTimestamp", "")
            if not since <= stamp < until or entry["verb"] == "watch":
                continue
            ref = entry.get("objectRef") or {}
            resource = ref.get("resource", "?") + (
                f"/{ref['subresource']}" if ref.get("subresource") else "")
            who = agent_class(entry.get("userAgent", ""))
            if entry["verb"] in ("list", "get"):
                reads[f"{who}: {entry['verb']} {resource}"] += 1
                continue
            received, done = _stamp(stamp), _stamp(entry["stageTimestamp"])
            row = spent.setdefault(f"{who}: {entry['verb']} {resource}", [0, 0.0])
            row[0] += 1
            row[1] += (done - received).total_seconds()
            name = str(ref.get("name") or "")
            if who == "bench" and entry["verb"] == "create":
                first_create = min(received, first_create or received)
            if (entry["verb"], resource) == ("create", "jobs") and (
                    entry.get("responseStatus") or {}).get("code") == 201:
                last_job = max(done, last_job or done)
            if who == "bench" and entry["verb"] == "create" and resource == "evaluationtasks":
                created[name] = done
            elif who == "operator" and entry["verb"] in ("create", "patch"):
                task = name.removesuffix("-eval").removesuffix("-config")
                stages.setdefault(task, {}).setdefault(f"{entry['verb']} {resource}", received)
    delays: dict[str, list[float]] = {}
    for task, seen in stages.items():
        if task in created:
            for stage, at in seen.items():
                delays.setdefault(stage, []).append((at - created[task]).total_seconds())
    span = (last_job - first_create).total_seconds() if first_create and last_job else 0.0
    return {"span_seconds": round(span, 3),
            "server_seconds": {k: [v[0], round(v[1], 1)] for k, v in sorted(
                spent.items(), key=lambda kv: -kv[1][1])},
            "after_task_created": {k: [len(v), round(percentile(v, 0.5), 2),
                                       round(percentile(v, 0.99), 2)]
                                   for k, v in delays.items()},
            "reads": dict(reads.most_common())}


def utc_now() -> str:
    """As the audit log writes its timestamps (compared as strings)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def probe(pid: int, what: str, seconds: float = 0) -> None:
    """Investigation hooks (BENCH_PROBE=/dir): a memory dump (SIGUSR1 to the wrapper, when
    there is one) or a py-spy profile of the next `seconds`. The audit log goes there too
    (`keep_for_probe`)."""
    out = os.environ.get("BENCH_PROBE")
    if not out:
        return
    if seconds:
        spy = Path(sys.executable).parent / "py-spy"
        if spy.exists():
            subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration",
                              str(int(seconds)), "--format", "raw", "--nonblocking",
                              "-o", f"{out}/{what}.txt"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    elif os.environ.get("BENCH_OPERATOR_WRAPPER"):
        # Only the wrapper (operator_probe.py) handles it: SIGUSR1 would end the operator.
        os.kill(pid, signal.SIGUSR1)
        time.sleep(5)


def profile_api_server(cluster: Cluster, what: str, seconds: int) -> None:
    """BENCH_APISERVER_PROFILE=/dir: the API server's own CPU profile (Go's pprof, which it
    serves to an admin) over the next `seconds`, to `/dir/<what>.pb.gz`, in the background.
    Read it with `go tool pprof -top <file>`."""
    out = os.environ.get("BENCH_APISERVER_PROFILE")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(f"{out}/{what}.pb.gz", "wb") as sink:  # the child keeps its own descriptor
        subprocess.Popen([str(cluster.kubectl_path), "--kubeconfig", str(cluster.kubeconfig),
                          "get", "--raw", f"/debug/pprof/profile?seconds={seconds}"],
                         stdout=sink, stderr=subprocess.DEVNULL)


def keep_for_probe(audit: Path) -> None:
    """The audit log, for a look after the run (BENCH_PROBE=/dir), before the cluster goes."""
    if os.environ.get("BENCH_PROBE"):
        shutil.copy(audit, os.environ["BENCH_PROBE"])


def install_finalizer_policy(cluster: Cluster, *namespaces: str) -> None:
    """The chart's finalizer policy for the operator's namespaces, as `helm install` would
    make it on this cluster, so the bench measures what the chart deploys."""
    namespace = namespaces[0]
    rendered = subprocess.run(
        [str(toolchain().helm), "template", "bench", str(REPO_ROOT / "charts" /
                                                         "evaluation-operator"),
         "--kube-version", toolchain().kubernetes_version,
         "--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
         "--set-json", f"watchNamespaces={json.dumps(list(namespaces))}",
         "--show-only", "templates/finalizerpolicy.yaml"],
        capture_output=True, text=True, check=True).stdout
    cluster.apply(rendered)
    probe = {"apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
             "metadata": {"name": "probe", "namespace": namespace}, "spec": spec(0)}

    def finalized() -> bool:
        # The API server loads a new policy within a few seconds, and refuses creates
        # (503) while it has not yet loaded the schema of a CRD this new.
        made = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                               input=json.dumps(probe), check=False)
        return made.returncode == 0 and naming.FINALIZER in (
            json.loads(made.stdout)["metadata"].get("finalizers") or [])
    cluster.wait_until("the finalizer policy to take effect", finalized, timeout=60)


def prepare(cluster: Cluster, gpus: int, namespaces: tuple[str, ...],
            finalizer_policy: bool = True, operator_namespaces: tuple[str, ...] = ("bench-op",)
            ) -> tuple[subprocess.Popen[bytes], str]:
    """CRDs, GPU nodes enough for `gpus` tasks running at once, moto's S3 (its process and
    URL), the namespaces, the chart's finalizer policy and the operator's S3 credentials in
    the operator namespaces."""
    cluster.install_crds()
    node_count = gpus // 100 + 1
    add_gpu_nodes(cluster, node_count, 110)
    cluster.wait_until("bench nodes Ready", lambda: cluster.kubectl(
        "get", "nodes", "-o", "json", check=False).stdout.count('"Ready"') >= 3 + node_count,
        timeout=120)
    s3 = start_s3()
    for namespace in namespaces:
        cluster.kubectl("create", "namespace", namespace)
    if finalizer_policy:
        install_finalizer_policy(cluster, *operator_namespaces)
    for namespace in operator_namespaces:
        cluster.kubectl("create", "secret", "generic", "evaluation-s3-credentials", "-n",
                        namespace, "--from-literal=AWS_ACCESS_KEY_ID=bench",
                        "--from-literal=AWS_SECRET_ACCESS_KEY=bench")
    return s3


def tear_down(owner: KwokCluster, s3_process: subprocess.Popen[bytes] | None,
              operator: Operator | None) -> None:
    """Stop whatever a run started, however far it got."""
    if operator is not None and operator.process is not None:
        with contextlib.suppress(Exception):
            operator.stop(timeout=20)
    if s3_process is not None:
        s3_process.terminate()
        s3_process.wait(timeout=20)
    owner.stop()


@dataclass
class Window:
    """One creation window: seconds by the bench's clock, the cores each process used, and
    its bounds as the audit log stamps them."""
    seconds: float
    cpu: dict[str, float]
    since: str
    until: str
    started: float = 0.0  # the bench's monotonic clock at its start
    create_tasks_seconds: float = 0.0  # the operator's: the bench's own task creates


def bare_window(cluster: Cluster, namespace: str, count: int, names: dict[int, str]) -> Window:
    """The bare client creates `count` ConfigMaps and running Jobs in `namespace`, which is
    then cleared."""
    log(f"baseline: a bare client creates {count} ConfigMaps and the same Jobs, running "
        f"({namespace})")
    since, cpu_before = utc_now(), cpu_by_process(names)
    profile_api_server(cluster, namespace, 4)
    seconds = baseline(cluster, namespace, count, suspend=False)
    window = Window(seconds, cpu_split(cpu_before, cpu_by_process(names), seconds), since,
                    utc_now())
    clear_namespace(cluster, namespace)
    return window


def create_tasks(cluster: Cluster, namespace: str, count: int) -> None:
    custom = client.CustomObjectsApi(api(cluster))

    def create(i: int) -> None:
        custom.create_namespaced_custom_object(
            "evaluation.dev", "v1alpha1", namespace, "evaluationtasks",
            {"apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
             "metadata": {"name": f"t-{i}"}, "spec": spec(i)})

    in_parallel(create, count)


def warm_up(cluster: Cluster, audit: Path, namespace: str, count: int) -> None:
    """The operator's path warmed before its first window, as the suspended baseline warms
    the bare client's (the API server's handlers for ConfigMaps and Jobs, the bench's
    client): `count` tasks through the operator to their Jobs, then their namespace
    deleted (tasks purged, Jobs and pods gone). Without it the first window also carried
    the API server's first use of the CRD (bench/README.md, task_admission.py)."""
    log(f"warm-up: {count} tasks through the operator ({namespace}), then deleted")
    jobs = JobsCreated(audit, namespace)
    create_tasks(cluster, namespace, count)
    wait("every warm-up Job", lambda: jobs.poll() >= count, timeout=300)
    clear_namespace(cluster, namespace)


def operator_window(cluster: Cluster, audit: Path, namespace: str, count: int,
                    names: dict[int, str], pid: int) -> Window:
    """The bench creates `count` tasks in `namespace`; the window ends at the operator's
    `count`-th Job there, counted in the audit log."""
    jobs = JobsCreated(audit, namespace)
    log(f"operator: {count} tasks ({namespace})")
    since, started, cpu_before = utc_now(), time.monotonic(), cpu_by_process(names)
    probe(pid, f"create-{namespace}", 60)
    profile_api_server(cluster, namespace, 8)
    create_tasks(cluster, namespace, count)
    created = time.monotonic() - started
    wait("every Job", lambda: jobs.poll() >= count, timeout=max(300, count))
    seconds = time.monotonic() - started  # to within a poll (0.2 s)
    return Window(seconds, cpu_split(cpu_before, cpu_by_process(names), seconds), since,
                  utc_now(), started, created)


def all_running(watcher: Watcher, count: int) -> None:
    wait("every task Running", lambda: len(watcher.running) >= count, timeout=max(300, count))


def quiet(watcher: Watcher, count: int) -> float:
    """Seconds until no Job, pod or task the watcher sees changed for QUIET_SECONDS."""
    return wait(f"no Job, pod or task changed for {QUIET_SECONDS:.0f} s",
                lambda: time.monotonic() - watcher.last_change >= QUIET_SECONDS,
                timeout=max(300, count))


def pair_figures(audit: Path, bare: Window, made: Window) -> dict[str, Any]:
    return {"bare_seconds": bare.seconds, "operator_seconds": made.seconds,
            "bare_cpu_split": bare.cpu, "operator_cpu_split": made.cpu,
            "bare_window": audit_window(audit, bare.since, bare.until),
            "creation_window": audit_window(audit, made.since, made.until)}


def more_pairs(cluster: Cluster, audit: Path, watcher: Watcher, count: int, pairs: int,
               names: dict[int, str], pid: int) -> list[tuple[Window, Window]]:
    """Pairs 2..`pairs` of creation windows, each in namespaces of its own once the cluster
    has settled (the tasks before stay, Running): the machine's speed drifts between two
    windows minutes apart, so one pair's ratio is a sample, and several give its spread."""
    made: list[tuple[Window, Window]] = []
    for k in range(2, pairs + 1):
        quiet(watcher, count)
        watcher.close()
        bare = bare_window(cluster, f"bench-bare-{k}", count, names)
        operator = operator_window(cluster, audit, f"bench-op-{k}", count, names, pid)
        made.append((bare, operator))
        watcher = Watcher(cluster, f"bench-op-{k}")
        all_running(watcher, count)
    watcher.close()
    return made


def run(count: int, idle_seconds: float, state: Path, controller_qps: int = 0,
        finalizer_policy: bool = True, creation_only: bool = False, pairs: int = 1
        ) -> dict[str, Any]:
    """The whole run; `creation_only`: the baselines and the operator's creation (to every
    task Running), nothing after, `pairs` times."""
    owner, cluster = start_cluster(state, controller_qps)
    s3_process: subprocess.Popen[bytes] | None = None
    operator: Operator | None = None
    figures: dict[str, Any] = {"tasks": count, "load_before": load(),
                               "controller_qps": controller_qps,
                               "finalizer_policy": finalizer_policy}
    extra = [(f"bench-bare-{k}", f"bench-op-{k}") for k in range(2, pairs + 1)]
    try:
        s3_process, s3_url = prepare(
            cluster, count * pairs, ("bench-bare-suspended", "bench-bare", "bench-warm",
                                     "bench-op", *(name for both in extra for name in both)),
            finalizer_policy, ("bench-warm", "bench-op", *(op for _, op in extra)))

        log(f"baseline: a bare client creates {count} ConfigMaps and suspended Jobs")
        figures["bare_suspended_seconds"] = baseline(cluster, "bench-bare-suspended", count,
                                                     suspend=True)
        cluster.kubectl("delete", "namespace", "bench-bare-suspended", "--timeout=300s")
        # The operator's Jobs are not suspended: the Job controller, the scheduler and KWOK
        # make and run their pods while it creates the rest, on the same cores. The baseline
        # that compares like with like has the cluster doing the same.
        names = {os.getpid(): "bench", s3_process.pid: "moto"}
        bare = bare_window(cluster, "bench-bare", count, names)
        figures["bare_seconds"], figures["bare_cpu_split"] = bare.seconds, bare.cpu

        operator = Operator(cluster, s3_url, state / "operator.log")
        pid = operator.start()
        time.sleep(10)
        figures["rss_start_mib"] = rss_mib(pid)
        probe(pid, "start")
        audit = audit_log(owner)
        figures["warm_up_seconds"] = wait_time(
            lambda: warm_up(cluster, audit, "bench-warm", WARM_UP_TASKS))

        cpu_create = cpu_seconds(pid)
        names[pid] = "operator"
        made = operator_window(cluster, audit, "bench-op", count, names, pid)
        phase_start, creation_end, started = made.since, made.until, made.started
        custom = client.CustomObjectsApi(api(cluster))
        figures["create_tasks_seconds"] = made.create_tasks_seconds
        figures["operator_seconds"], figures["operator_cpu_split"] = made.seconds, made.cpu
        watcher = Watcher(cluster, "bench-op")  # sees every task, Job and pod there so far
        all_running(watcher, count)
        figures["to_running_seconds"] = max(watcher.running.values()) - started
        figures["cpu_to_running_s"] = cpu_seconds(pid) - cpu_create
        time.sleep(5)
        figures["rss_running_mib"] = rss_mib(pid)
        probe(pid, "running")
        if creation_only:
            later = more_pairs(cluster, audit, watcher, count, pairs, names, pid)
            time.sleep(2)  # the audit log is flushed in batches
            figures["bare_window"] = audit_window(audit, bare.since, bare.until)
            figures["creation_window"] = audit_window(audit, phase_start, creation_end)
            figures["pairs"] = [pair_figures(audit, *pair) for pair in later]
            return figures

        figures["settle_seconds"] = quiet(watcher, count)
        log(f"idle window: {idle_seconds:.0f}s with {count} running tasks")
        idle_start, cpu0, t0 = utc_now(), cpu_seconds(pid), time.monotonic()
        changes0 = Counter(watcher.changes)
        probe(pid, "idle", idle_seconds)
        time.sleep(max(0.0, idle_seconds - (time.monotonic() - t0)))
        figures["idle_core"] = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        figures["idle_changes"] = dict(watcher.changes - changes0)
        idle_end = utc_now()
        figures["load_idle"] = load()

        log("finishing every pod")
        core = client.CoreV1Api(api(cluster))
        pods = {p.metadata.labels["evaluation.dev/task"]: p.metadata.name
                for p in core.list_namespaced_pod("bench-op").items
                if p.status.phase == "Running"}

        def finish(i: int) -> None:
            name = f"t-{i}"
            uri = watcher.results.get(name, "")
            message = json.dumps({"v": 1, "status": "Succeeded", "overallScore": 0.5,
                                  "benchmarks": [{"name": "arc-easy", "score": 0.5,
                                                  "metrics": {"accuracy": 0.5},
                                                  "samples": 4}],
                                  "results": {"uri": uri, "bundle": uri + "results.zip"}})
            core.patch_namespaced_pod(pods[name], "bench-op", {"metadata": {"annotations": {
                kwok_pods.EXIT_CODE: "0", kwok_pods.MESSAGE: message}}})

        finish_start = time.monotonic()
        finish_audit_start = utc_now()
        cpu_finish = cpu_seconds(pid)
        in_parallel(finish, count)
        wait("every task Completed", lambda: len(watcher.finished) >= count,
             timeout=max(300, count))
        figures["to_completed_seconds"] = max(watcher.finished.values()) - finish_start
        figures["cpu_finishing_s"] = cpu_seconds(pid) - cpu_finish
        latencies = []
        for name, done in watcher.finished.items():
            seen = [t for t in (watcher.pod_done.get(name), watcher.job_done.get(name)) if t]
            if seen:
                latencies.append(max(0.0, done - min(seen)))
        figures["latency_p50"] = percentile(latencies, 0.5)
        figures["latency_p99"] = percentile(latencies, 0.99)
        figures["latency_samples"] = len(latencies)
        figures["phases"] = dict(Counter(watcher.phases.values()))
        time.sleep(3)
        lifecycle_end = utc_now()

        figures["events"] = dict(Counter(
            f"{e.source.component or e.reporting_component}: {e.reason}"
            for e in core.list_namespaced_event("bench-op").items))

        log("shutdown and restart")
        figures["shutdown_seconds"] = operator.stop()
        restart_start = utc_now()
        pid = operator.start()
        time.sleep(max(20.0, count / 50))
        figures["rss_restarted_mib"] = rss_mib(pid)
        probe(pid, "restarted")
        restart_end = utc_now()

        log("deleting every task")
        delete_start = utc_now()
        started = time.monotonic()
        cluster.kubectl("delete", "evaluationtasks", "--all", "-n", "bench-op", "--wait=false",
                        timeout=600)
        wait("every task gone", lambda: not custom.list_namespaced_custom_object(
            "evaluation.dev", "v1alpha1", "bench-op", "evaluationtasks",
            limit=1)["items"], timeout=max(300, count))
        figures["delete_seconds"] = time.monotonic() - started
        # Their Jobs and pods go after them (the garbage collector, at its API rate), and the
        # operator holds each until its deletion arrives: memory is measured once they are
        # gone too, and the operator's trim (5 s after the last deletion) has run.
        children = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
        gone = client.BatchV1Api(api(cluster)), client.CoreV1Api(api(cluster))
        wait("every Job and pod gone", lambda: not (
            gone[0].list_namespaced_job("bench-op", label_selector=children, limit=1).items
            or gone[1].list_namespaced_pod("bench-op", label_selector=children, limit=1).items),
            timeout=max(600, count))
        figures["children_gone_seconds"] = time.monotonic() - started
        time.sleep(10)
        figures["rss_after_delete_mib"] = rss_mib(pid)
        probe(pid, "deleted")
        delete_end = utc_now()
        watcher.close()
        time.sleep(2)  # the audit log is flushed in batches

        writes, _reads = audit_counts(audit, phase_start, lifecycle_end)
        del_writes, _ = audit_counts(audit, delete_start, delete_end)
        restart_writes, restart_reads = audit_counts(audit, restart_start, restart_end)
        _, idle_reads = audit_counts(audit, idle_start, idle_end)
        _, finish_reads = audit_counts(audit, finish_audit_start, lifecycle_end)
        figures["finish_reads"] = dict(finish_reads)
        figures["finish_watches_cut"] = watches_cut_short(audit, finish_audit_start,
                                                          lifecycle_end)
        figures["writes"] = dict(writes)
        figures["bare_window"] = audit_window(audit, bare.since, bare.until)
        figures["creation_window"] = audit_window(audit, phase_start, creation_end)
        figures["latency_server_tail"] = []
        split: dict[str, list[float]] = {}
        server_latencies = audit_status_latencies(audit, finish_audit_start, lifecycle_end,
                                                  figures["latency_server_tail"],
                                                  watcher.pod_done_wall, split)
        figures["latency_server_p50"] = percentile(server_latencies or [0.0], 0.5)
        figures["latency_server_p99"] = percentile(server_latencies or [0.0], 0.99)
        figures["latency_server_samples"] = len(server_latencies)
        figures["latency_split_p99"] = {part: round(percentile(values, 0.99), 2)
                                        for part, values in split.items()}
        figures["delete_writes"] = dict(del_writes)
        figures["restart_writes"] = dict(restart_writes)
        figures["restart_reads"] = dict(restart_reads)
        figures["idle_reads_per_s"] = sum(idle_reads.values()) / idle_seconds
        figures["idle_reads"] = dict(idle_reads)
        figures["writes_per_task"] = (sum(writes.values()) + sum(del_writes.values())) / count
        figures["duplicate_job_posts"] = writes["create jobs"] - count + restart_writes[
            "create jobs"]
        figures["load_after"] = load()
        keep_for_probe(audit)
        return figures
    finally:
        tear_down(owner, s3_process, operator)


# --- shutdown and restart at N running tasks (--restart-only) ---------------------------------


def settle(pid: int, timeout: float, window: float = 3.0, core: float = 0.05) -> float:
    """Seconds until the process's CPU over `window` drops below `core` (its start-up work:
    listing every task, Job and pod and handling each once, is done)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(window)
        if (cpu_seconds(pid) - before) / window < core:
            return time.monotonic() - started - window
    raise TimeoutError(f"the operator was still busy {timeout:.0f}s after its start")


def restart_phase(operator: Operator, audit: Path, count: int) -> dict[str, Any]:
    """SIGTERM with `count` live tasks (shutdown time), start again: time until it is idle,
    what it wrote meanwhile (Jobs created twice must be 0), RSS once idle."""
    figures: dict[str, Any] = {"shutdown_seconds": operator.stop()}
    restart_start = utc_now()
    started = time.monotonic()
    pid = operator.start()
    try:
        figures["restart_settle_seconds"] = settle(pid, timeout=max(300.0, count / 5))
    except TimeoutError as error:  # still report what it wrote meanwhile (no duplicates?)
        log(str(error))
        figures["restart_settle_seconds"] = float("nan")
    figures["restart_wall_seconds"] = time.monotonic() - started
    figures["rss_restarted_mib"] = rss_mib(pid)
    time.sleep(5)  # a late write would still be counted; the audit log is flushed in batches
    writes, reads = audit_counts(audit, restart_start, utc_now())
    figures["restart_writes"] = dict(writes)
    figures["restart_reads"] = dict(reads)
    figures["restart_job_posts"] = writes["create jobs"]
    figures["restart_configmap_posts"] = writes["create configmaps"]
    return figures


def run_restart(count: int, state: Path, controller_qps: int, finalizer_policy: bool = True
                ) -> dict[str, Any]:
    """`count` tasks brought to Running by the operator, then `restart_phase`. No bare-client
    baseline, no finishing, no deletion (the cluster goes with its tasks): the parts of the
    full run that cost minutes per thousand tasks on a small machine."""
    owner, cluster = start_cluster(state, controller_qps)
    s3_process: subprocess.Popen[bytes] | None = None
    operator: Operator | None = None
    figures: dict[str, Any] = {"tasks": count, "load_before": load(),
                               "controller_qps": controller_qps,
                               "finalizer_policy": finalizer_policy}
    try:
        s3_process, s3_url = prepare(cluster, count, ("bench-op",), finalizer_policy)
        operator = Operator(cluster, s3_url, state / "operator.log")
        operator.start()
        watcher = Watcher(cluster, "bench-op")
        audit = audit_log(owner)
        time.sleep(10)
        log(f"operator: {count} tasks")
        phase_start = utc_now()
        started = time.monotonic()
        create_tasks(cluster, "bench-op", count)
        figures["create_tasks_seconds"] = time.monotonic() - started
        wait("every Job", lambda: len(watcher.jobs) >= count, timeout=max(600, count))
        figures["operator_seconds"] = max(watcher.jobs.values()) - started
        wait("every task Running", lambda: len(watcher.running) >= count,
             timeout=max(600, count))
        figures["to_running_seconds"] = max(watcher.running.values()) - started
        watcher.close()
        time.sleep(5)
        writes, _ = audit_counts(audit, phase_start, utc_now())
        figures["writes_to_running"] = dict(writes)
        figures["load_running"] = load()
        log(f"shutdown and restart with {count} running tasks")
        figures.update(restart_phase(operator, audit, count))
        figures["load_after"] = load()
        keep_for_probe(audit)
        return figures
    finally:
        tear_down(owner, s3_process, operator)


def restart_report(f: dict[str, Any]) -> str:
    n = f["tasks"]
    return "\n".join([
        f"| with {n} running tasks | operator | target |",
        "| --- | --- | --- |",
        f"| shutdown (SIGTERM -> exit) | {f['shutdown_seconds']:.1f} s | <= 10 s |",
        f"| restart: start -> idle (CPU < 0.05 core over 3 s; nan: not idle in time) | "
        f"{f['restart_settle_seconds']:.1f} s (measured over "
        f"{f['restart_wall_seconds']:.0f} s) | |",
        f"| Jobs / ConfigMaps created after the restart | {f['restart_job_posts']} / "
        f"{f['restart_configmap_posts']} | 0 / 0 |",
        f"| RSS once idle after the restart | {f['rss_restarted_mib']:.0f} MiB | |",
        f"(controller manager and scheduler API rate: {f['controller_qps'] or 'default'}; "
        f"finalizer: {FINALIZER_BY[f.get('finalizer_policy', False)]})",
        "",
        f"operator writes/reads after restart: {f['restart_writes']} / {f['restart_reads']}",
        f"operator writes, first task -> all Running: {f['writes_to_running']}",
        f"tasks created by the bench in {f['create_tasks_seconds']:.1f} s; {n}th Job after "
        f"{f['operator_seconds']:.1f} s; all Running after {f['to_running_seconds']:.1f} s",
        f"load average before / all running / after: {f['load_before']} / "
        f"{f['load_running']} / {f['load_after']} (2 vCPUs, shared)",
    ])


FINALIZER_BY = {True: "set at admission (the chart's MutatingAdmissionPolicy)",
                False: "added by the operator (a PATCH per task)"}


def report(f: dict[str, Any]) -> str:
    n = f["tasks"]
    ratio = f["operator_seconds"] / f["bare_seconds"]
    audit_op, audit_bare = audit_spans(f)
    lines = [
        f"| at {n} tasks | operator | bare client / target |",
        "| --- | --- | --- |",
        f"| first task created -> {n}th Job | {f['operator_seconds']:.1f} s | "
        f"{f['bare_seconds']:.1f} s; {ratio:.2f}x (target <= 2x) |",
        f"| the same against suspended Jobs (no pods: the cluster otherwise idle) | "
        f"{f['operator_seconds']:.1f} s | {f['bare_suspended_seconds']:.1f} s; "
        f"{f['operator_seconds'] / f['bare_suspended_seconds']:.2f}x |",
        f"| the same timed by the API server (audit log: first create received -> {n}th Job "
        f"created) | {audit_op:.2f} s | {audit_bare:.2f} s; {audit_op / audit_bare:.2f}x |",
        f"| status latency, pod Succeeded or Job Complete -> task Completed, p50 / p99 | "
        f"{f['latency_p50']:.2f} s / {f['latency_p99']:.2f} s | target p99 <= 2 s |",
        f"| the same from the audit log (KWOK's pod status write -> the operator's last "
        f"status write), p50 / p99 | {f['latency_server_p50']:.2f} s / "
        f"{f['latency_server_p99']:.2f} s ({f['latency_server_samples']} tasks) | |",
        f"| API writes per task, create -> run -> complete -> delete | "
        f"{f['writes_per_task']:.2f} | target <= 8; bare client 2 |",
        f"| Jobs created twice (POSTs beyond one per task, restart included) | "
        f"{f['duplicate_job_posts']} | 0 |",
        f"| RSS at start / {n} running / after restart / after deletion | "
        f"{f['rss_start_mib']:.0f} / {f['rss_running_mib']:.0f} / "
        f"{f['rss_restarted_mib']:.0f} / {f['rss_after_delete_mib']:.0f} MiB | "
        "target <= 150 MiB running; after deletion within 20 % of start |",
        f"| CPU with {n} running tasks, nothing happening | {f['idle_core']:.3f} core, "
        f"{f['idle_reads_per_s']:.2f} API reads/s | target <= 0.05 core |",
        f"| the cluster settling first (Job status writes after every pod runs) | "
        f"{f['settle_seconds']:.0f} s; changes seen in the window: "
        f"{f['idle_changes'] or 'none'} | |",
        f"| shutdown with {n} tasks | {f['shutdown_seconds']:.1f} s | target <= 10 s |",
        f"| deleting {n} tasks (purges included) / until their Jobs and pods are gone too | "
        f"{f['delete_seconds']:.1f} s / {f['children_gone_seconds']:.1f} s | |",
        "",
        f"operator writes create->complete: {f['writes']}",
        f"operator writes during deletion: {f['delete_writes']}",
        f"slowest status writes by the audit log: {f['latency_server_tail']}",
        f"operator writes/reads after restart: {f['restart_writes']} / {f['restart_reads']}",
        f"operator reads while idle: {f['idle_reads']}",
        f"operator reads while pods finished: {f['finish_reads']}",
        "watches the API server ended early while pods finished (seconds from the bench's "
        f"first finish): {f['finish_watches_cut']}",
        "the audit log's status latency, p99 of each part (delivery: pod finished -> the "
        f"bench's own watch has it; after: -> the operator's write): {f['latency_split_p99']}",
        f"task reasons last seen: {f['phases']}",
        f"Events in the namespace after the pods finished (by source: reason): {f['events']}",
        f"tasks created by the bench in {f['create_tasks_seconds']:.1f} s; all Running after "
        f"{f['to_running_seconds']:.1f} s; all Completed {f['to_completed_seconds']:.1f} s "
        f"after the bench started finishing pods; warm-up ({WARM_UP_TASKS} tasks, then "
        f"deleted) {f['warm_up_seconds']:.0f} s",
        f"operator CPU: {f['cpu_to_running_s']:.1f} s from the first task to all Running, "
        f"{f['cpu_finishing_s']:.1f} s while pods finished",
        f"finalizer: {FINALIZER_BY[f.get('finalizer_policy', False)]}",
        f"controller manager and scheduler API rate: {f['controller_qps'] or 'default'}; "
        f"load average before / idle / after: {f['load_before']} / {f['load_idle']} / "
        f"{f['load_after']} (2 vCPUs, shared)",
        *window_report("bare client, running Jobs", f["bare_window"], f["bare_cpu_split"]),
        *window_report("operator, first task -> last Job", f["creation_window"],
                       f["operator_cpu_split"]),
    ]
    return "\n".join(lines)


def audit_spans(f: dict[str, Any]) -> tuple[float, float]:
    """(operator, bare client): first create -> N-th Job, timed by the API server."""
    return (f["creation_window"]["span_seconds"],
            max(1e-3, f["bare_window"]["span_seconds"]))


def pairs_report(f: dict[str, Any]) -> list[str]:
    """Every pair's ratio, timed by the API server, and their median (`--pairs`)."""
    if not f.get("pairs"):
        return []
    spans = [audit_spans(pair) for pair in [f, *f["pairs"]]]
    ratios = [op / bare for op, bare in spans]
    lines = ["", "pairs of creation windows, timed by the API server (operator / bare client):"]
    lines += [f"  {k}: {op:.2f} / {bare:.2f} s: {op / bare:.2f}x"
              for k, (op, bare) in enumerate(spans, start=1)]
    lines.append(f"  median of {len(ratios)}: {statistics.median(ratios):.2f}x (target <= 2x); "
                 f"{sum(r <= 2 for r in ratios)} of {len(ratios)} at or under 2x")
    for k, pair in enumerate(f["pairs"], start=2):
        lines += window_report(f"pair {k}, operator", pair["creation_window"],
                               pair["operator_cpu_split"])[:2]
    return lines


def creation_report(f: dict[str, Any]) -> str:
    n = f["tasks"]
    audit_op, audit_bare = audit_spans(f)
    return "\n".join([
        f"first task created -> {n}th Job: operator {f['operator_seconds']:.1f} s, bare "
        f"client {f['bare_seconds']:.1f} s: {f['operator_seconds'] / f['bare_seconds']:.2f}x "
        f"(suspended Jobs {f['bare_suspended_seconds']:.1f} s; timed by the API server "
        f"{audit_op:.2f} / {audit_bare:.2f} s: {audit_op / audit_bare:.2f}x)",
        f"tasks created by the bench in {f['create_tasks_seconds']:.1f} s; all Running after "
        f"{f['to_running_seconds']:.1f} s; operator CPU {f['cpu_to_running_s']:.1f} s; RSS "
        f"{f['rss_start_mib']:.0f} / {f['rss_running_mib']:.0f} MiB; warm-up "
        f"({WARM_UP_TASKS} tasks, then deleted) {f['warm_up_seconds']:.0f} s",
        f"finalizer: {FINALIZER_BY[f['finalizer_policy']]}; load before {f['load_before']}",
        *window_report("bare client, running Jobs", f["bare_window"], f["bare_cpu_split"]),
        *window_report("operator, first task -> last Job", f["creation_window"],
                       f["operator_cpu_split"]),
        *pairs_report(f),
    ])


def window_report(title: str, window: dict[str, Any], cpu: dict[str, float]) -> list[str]:
    """The API server's write work in a window, heaviest first, the operator's stages, and
    the cores each process used."""
    lines = ["", f"cores used while creating ({title}), by process: {cpu}",
             f"API writes while creating ({title}): requests, server seconds summed",
             *(f"  {key}: {n}, {seconds} s"
               for key, (n, seconds) in list(window["server_seconds"].items())[:10]),
             f"API reads while creating ({title}): "
             + (", ".join(f"{key}: {n}" for key, n in window.get("reads", {}).items())
                or "none")]
    for stage, (n, p50, p99) in window["after_task_created"].items():
        lines.append(f"  task created -> operator's first {stage}: p50 {p50} s, p99 {p99} s "
                     f"({n} tasks)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    parser.add_argument("--restart-only", action="store_true",
                        help="only N running tasks, then shutdown and restart (no baseline, "
                        "no finishing, no deletion): how 5,000 tasks are measured")
    parser.add_argument("--controller-qps", type=int, default=0,
                        help="API rate of the cluster's controller manager and scheduler "
                        "(0: Kubernetes' defaults)")
    parser.add_argument("--creation-only", action="store_true",
                        help="the baselines and the operator's creation only (minutes less)")
    parser.add_argument("--pairs", type=int, default=1,
                        help="with --creation-only: this many pairs of creation windows (bare "
                        "client, operator), each in namespaces of its own, and their median")
    parser.add_argument("--no-finalizer-policy", action="store_true",
                        help="leave out the chart's finalizer policy: the operator adds the "
                        "finalizer with a PATCH per task, as on clusters before 1.36")
    args = parser.parse_args()
    if args.pairs < 1 or (args.pairs > 1 and not args.creation_only):
        parser.error("--pairs takes a count of 1 or more, and more than 1 only with "
                     "--creation-only (the full run's later phases need exactly --tasks tasks)")
    state = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    try:
        bench(args, state)
    except BaseException:
        log(f"the cluster's and the operator's logs are kept in {state}")
        raise
    shutil.rmtree(state, ignore_errors=True)  # a run that went well leaves nothing behind
    return 0


def bench(args: argparse.Namespace, state: Path) -> None:
    if args.restart_only:
        figures = run_restart(args.tasks, state, args.controller_qps,
                              not args.no_finalizer_policy)
        print(restart_report(figures))
    else:
        figures = run(args.tasks, args.idle_seconds, state, args.controller_qps,
                      not args.no_finalizer_policy, args.creation_only, args.pairs)
        print(creation_report(figures) if args.creation_only else report(figures))
    if args.json:
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    sys.exit(main())
