"""High availability as the chart deploys it: replicas elect a leader on a Lease, under the
chart's ServiceAccount. Killing the leader mid-run hands its work to the standby with no task
lost and no Job created twice; and even two operators active at once (the overlap leader
election exists to prevent) create exactly one Job per task.

Each replica is the Deployment's container run as a process, authenticated with a token of
the chart's ServiceAccount, with its own health and metrics ports (they share this machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster.cluster import Cluster
from devcluster.kwok_pods import finish_pod
from evaluation_operator.naming import job_name
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.chart.conftest import new_namespace, release
from tests.chart.test_install import (
    _get,
    container_env,
    only_this_operator,
    service_account,
    token_kubeconfig,
)
from tests.integration.conftest import (
    create_task,
    running_pod,
    success_message,
    task_manifest,
    wait_status,
)
from tests.support.s3 import S3Endpoint, free_port
from tests.support.tcp_proxy import SilenceableProxy

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]
BUCKET = "ha-results"


class Replica:
    """One operator pod of the chart, as a process."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path,
                 health: int) -> None:
        self.name, self.command, self.env, self.health = name, command, env, health
        self.metrics = int(env["EVAL_METRICS_PORT"])
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, number: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(number)

    def stop(self, timeout: float = 20) -> None:
        if self.process is None:
            return
        if self.alive:
            self.process.send_signal(signal.SIGCONT)  # in case a test paused it
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    """Every replica a test makes is stopped at the end, whatever happened."""
    made: list[Replica] = []
    yield made
    for replica in made:
        replica.stop()
    for replica in made:  # shown when the test failed
        print(f"--- {replica.name}\n{replica.log()[-6000:]}")


@contextlib.contextmanager
def stopped_at_exit(replicas: list[Replica]) -> Iterator[None]:
    """Stop the replicas before the release (and their RBAC) is uninstalled."""
    try:
        yield
    finally:
        for replica in replicas:
            replica.stop()


@dataclass
class JobWatch:
    """Every Job event in a namespace, from before the first task exists (a Job deleted and
    made again between two polls would still show up here as a second uid)."""

    batch: Any
    namespace: str
    events: list[tuple[str, str, str, float]] = field(default_factory=list)  # type name uid t
    stopping: threading.Event = field(default_factory=threading.Event)
    failure: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        version = self.batch.list_namespaced_job(self.namespace).metadata.resource_version
        while not self.stopping.is_set():
            try:
                for event in watch.Watch().stream(
                        self.batch.list_namespaced_job, self.namespace, timeout_seconds=5,
                        resource_version=version):
                    job = event["object"]
                    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                        self.failure.append(AssertionError(f"watch ended: {event}"))
                        return
                    version = job.metadata.resource_version
                    with self.lock:
                        self.events.append((event["type"], job.metadata.name,
                                            job.metadata.uid, time.monotonic()))
                    if self.stopping.is_set():
                        return
            except ApiException as error:
                self.failure.append(error)
                return

    def uids(self, task: str) -> set[str]:
        """Every Job of this task ever seen."""
        with self.lock:
            return {uid for _, job, uid, _ in self.events if job == job_name(task)}

    def added(self, task: str) -> list[float]:
        """When its Jobs were created."""
        with self.lock:
            return [t for kind, job, _, t in self.events
                    if kind == "ADDED" and job == job_name(task)]


@contextlib.contextmanager
def watching_jobs(cluster: Cluster, namespace: str) -> Iterator[JobWatch]:
    jobs = JobWatch(client.BatchV1Api(cluster.api_client()), namespace)
    thread = threading.Thread(target=jobs.run, name="job-watch", daemon=True)
    thread.start()
    try:
        yield jobs
    finally:
        jobs.stopping.set()
        thread.join(timeout=15)
    assert not jobs.failure, jobs.failure


@dataclass
class Install:
    release_ns: str
    team: str
    name: str
    command: list[str]
    env: dict[str, str]
    kubeconfig: Path


@contextlib.contextmanager
def installed(cluster: Cluster, namespaces: list[str], s3_server: S3Endpoint, tmp_path: Path,
              values: dict[str, Any]) -> Iterator[Install]:
    s3 = s3_server.client()
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    release_ns = new_namespace(cluster, namespaces, "eval-sys")
    team = new_namespace(cluster, namespaces, "team")
    for ns, secret in ((release_ns, "operator-s3"), (team, "evaluation-s3-credentials")):
        cluster.kubectl("create", "secret", "generic", secret, "-n", ns,
                        f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
                        f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}")
    values = {
        "watchNamespaces": [team],
        "s3": {"endpoint": s3_server.endpoint_url, "bucket": BUCKET,
               "region": s3_server.region, "credentialsSecret": "operator-s3"},
        "runner": {"image": "registry.example/evaluation-runner:ha-test",
                   "progressIntervalSeconds": 2},
        **values,
    }
    with release(cluster, release_ns, values, "--no-hooks") as name:
        deployment = cluster.kubectl_json("get", "deployment", f"{name}-evaluation-operator",
                                          "-n", release_ns)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = container_env(cluster, release_ns, container)
        kubeconfig = token_kubeconfig(cluster, release_ns, service_account(name),
                                      tmp_path / "kubeconfig")
        command = [sys.executable if c == "python" else c for c in container["command"]]
        yield Install(release_ns, team, name, [*command, *container["args"], "--verbose"],
                      env, kubeconfig)


def replica(install: Install, name: str, log_dir: Path, **env: str) -> Replica:
    """The chart's container with ports of its own; its identity is what a pod name is."""
    health = free_port()
    command = [re.sub(r"^--liveness=http://0\.0\.0\.0:\d+/",
                      f"--liveness=http://127.0.0.1:{health}/", arg)
               for arg in install.command]
    environment = {"PATH": os.environ["PATH"], **install.env, "KUBECONFIG": str(
        install.kubeconfig), "HOME": str(log_dir), "EVAL_METRICS_PORT": str(free_port()),
        "EVAL_LEADER_ELECTION_IDENTITY": name, **env}
    return Replica(name, command, environment, log_dir, health)


def leader_gauge(r: Replica) -> str:
    """The replica's `evaluation_operator_leader` metric, as scraped."""
    _, text = _get(f"http://127.0.0.1:{r.metrics}/metrics")
    found = re.search(r"^evaluation_operator_leader (\S+)$", text, re.MULTILINE)
    return found.group(1) if found else ""


def lease_holder(cluster: Cluster, install: Install) -> str:
    result = cluster.kubectl("get", "lease", f"{install.name}-evaluation-operator", "-n",
                             install.release_ns, "-o", "jsonpath={.spec.holderIdentity}",
                             check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def start_leader_then_standby(cluster: Cluster, install: Install, a: Replica,
                              b: Replica) -> None:
    """`a` takes the Lease first; `b` then waits as its standby."""
    a.start()
    cluster.wait_until(f"{a.name} to lead", lambda: lease_holder(cluster, install) == a.name,
                       timeout=60)
    b.start()
    cluster.wait_until(f"{b.name} to wait as a standby",
                       lambda: "standby; Lease" in b.log(), timeout=60)


def refused(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if re.search(r"cannot \w+ resource", line) or "(RBAC)" in line
            or "Not enough permissions" in line]


def finish(cluster: Cluster, core: Any, team: str, task: str) -> None:
    pod = running_pod(cluster, team, task, timeout=120)
    status = wait_status(cluster, team, task, "a results URI",
                         lambda s: bool((s.get("results") or {}).get("uri")), timeout=120)
    uri = status["results"]["uri"]
    benchmarks = [{"name": "arc-easy", "score": 0.5, "primaryMetric": "accuracy",
                   "metrics": {"accuracy": 0.5}, "samples": 4},
                  {"name": "wmt-de-en", "score": 0.25, "primaryMetric": "bleu",
                   "metrics": {"bleu": 25.0}, "samples": 4}]
    finish_pod(core, team, pod["metadata"]["name"], 0,
               message=success_message(0.3333, benchmarks, uri))


def completed(cluster: Cluster, team: str, task: str, timeout: float = 120) -> None:
    wait_status(cluster, team, task, "Completed", lambda s: s.get("phase") == "Completed",
                timeout=timeout)


def test_a_standby_takes_over_when_the_leader_is_killed_mid_run(
        cluster: Cluster, namespaces: list[str], s3_server: S3Endpoint, tmp_path: Path,
        replicas: list[Replica]) -> None:
    core = client.CoreV1Api(cluster.api_client())
    with (installed(cluster, namespaces, s3_server, tmp_path, {}) as install,
          only_this_operator(), stopped_at_exit(replicas)):
        # The chart's own lease timings (15 s / 10 s / 2 s): the failover measured is a
        # user's.
        assert install.env["EVAL_LEASE_DURATION_SECONDS"] == "15"
        a = replica(install, "replica-a", tmp_path)
        b = replica(install, "replica-b", tmp_path)
        replicas += [a, b]
        start_leader_then_standby(cluster, install, a, b)
        # A standby answers its liveness probe and is scraped like any replica.
        assert _get(f"http://127.0.0.1:{b.health}/healthz") == (200, '{"standby": true}')
        cluster.wait_until("replica-b's metrics", lambda: leader_gauge(b) == "0.0",
                           timeout=30)
        assert leader_gauge(a) == "1.0"

        tasks = [f"ha-{i}" for i in range(1, 7)]
        with watching_jobs(cluster, install.team) as jobs:
            for task in tasks[:4]:
                create_task(cluster, install.team, task_manifest(task))
            for task in tasks[:4]:
                running_pod(cluster, install.team, task, timeout=120)
            assert "Starting Kopf" not in b.log(), "the standby must not run Kopf"
            finish(cluster, core, install.team, tasks[0])
            completed(cluster, install.team, tasks[0])
            # Mid-run: one task done, one just finished (status not necessarily written),
            # two running; then the leader dies without any cleanup, and tasks keep coming.
            finish(cluster, core, install.team, tasks[1])
            killed = time.monotonic()
            a.signal(signal.SIGKILL)
            assert a.process is not None
            a.process.wait(timeout=10)
            create_task(cluster, install.team, task_manifest(tasks[4]))

            cluster.wait_until("replica-b to take the Lease", lambda: lease_holder(
                cluster, install) == "replica-b", timeout=60, interval=0.2)
            lease_taken = time.monotonic() - killed
            cluster.wait_until(f"a Job for {tasks[4]}", lambda: jobs.added(tasks[4]),
                               timeout=60, interval=0.2)
            first_job = jobs.added(tasks[4])[0] - killed
            print(f"\nfailover after SIGKILL of the leader: Lease taken by the standby after "
                  f"{lease_taken:.1f} s, its first Job after {first_job:.1f} s")
            # Kopf now serves b's liveness endpoint and metrics (the standby's are gone).
            status, body = _get(f"http://127.0.0.1:{b.health}/healthz")
            assert status == 200 and "standby" not in body, body
            assert "Starting Kopf" in b.log()  # what it must not have logged before
            assert leader_gauge(b) == "1.0"

            # The killed pod restarts (as Kubernetes would restart it): now a standby.
            a.start()
            cluster.wait_until("the restarted replica-a to wait", lambda: a.log().count(
                "standby; Lease") >= 1 and "held by replica-b" in a.log(), timeout=60)
            create_task(cluster, install.team, task_manifest(tasks[5]))
            for task in tasks[2:]:
                finish(cluster, core, install.team, task)
            for task in tasks:
                completed(cluster, install.team, task)
            assert lease_holder(cluster, install) == "replica-b"

            # A clean stop (a rollout, a drain) releases the Lease: handover at once.
            stopped = time.monotonic()
            b.stop()
            cluster.wait_until("replica-a to lead again", lambda: lease_holder(
                cluster, install) == "replica-a", timeout=30, interval=0.2)
            handover = time.monotonic() - stopped
            print(f"handover after SIGTERM of the leader: {handover:.1f} s")
            assert handover < 15, "a released Lease is taken without waiting it out"
            time.sleep(3)  # let late Job events arrive

        for task in tasks:
            assert len(jobs.uids(task)) == 1, (task, jobs.events)
            assert len(jobs.added(task)) == 1, (task, jobs.events)
        assert "released the Lease" in b.log()
        for r in (a, b):
            assert not refused(r.log()), f"{r.name} was refused something:\n" + "\n".join(
                refused(r.log())[:20])


def test_two_operators_active_at_once_create_one_job_per_task(
        cluster: Cluster, namespaces: list[str], s3_server: S3Endpoint, tmp_path: Path,
        replicas: list[Replica]) -> None:
    """What leader election prevents, made to happen: both operators see the same new tasks
    at the same moment. Deterministic names and 409-means-done keep it to one Job each."""
    values = {"replicas": 1, "leaderElection": {"enabled": False}}
    with (installed(cluster, namespaces, s3_server, tmp_path, values) as install,
          only_this_operator(), stopped_at_exit(replicas)):
        assert "EVAL_LEADER_ELECTION_LEASE" not in install.env
        both = [replica(install, name, tmp_path) for name in ("one", "two")]
        replicas += both
        for r in both:
            r.start()
        for r in both:
            cluster.wait_until(f"operator {r.name} to serve its health endpoint",
                               lambda r=r: _get(f"http://127.0.0.1:{r.health}/healthz")[0]
                               == 200, timeout=60)
        time.sleep(5)  # both have listed (no task yet) and are watching
        tasks = [f"both-{i}" for i in range(8)]
        with watching_jobs(cluster, install.team) as jobs:
            for r in both:
                r.signal(signal.SIGSTOP)
            try:
                for task in tasks:
                    create_task(cluster, install.team, task_manifest(task))
            finally:
                for r in both:
                    r.signal(signal.SIGCONT)
            for task in tasks:
                cluster.wait_until(f"a Job for {task}", lambda task=task: jobs.added(task),
                                   timeout=120)
            for task in tasks:
                running_pod(cluster, install.team, task, timeout=120)
            time.sleep(3)  # late duplicates, if any, would show up by now
        for task in tasks:
            assert len(jobs.uids(task)) == 1, (task, jobs.events)
            assert len(jobs.added(task)) == 1, (task, jobs.events)
        # Both really handled every task (this is a race both took part in).
        for r in both:
            log = r.log()
            assert all(task in log for task in tasks), (r.name, log[-3000:])


def behind(proxy: SilenceableProxy, kubeconfig: Path, path: Path) -> Path:
    """The same credentials, talking to the API server through the proxy."""
    config = yaml.safe_load(kubeconfig.read_text())
    for entry in config["clusters"]:
        server = entry["cluster"]["server"]
        entry["cluster"]["server"] = f"{server.rsplit(':', 1)[0]}:{proxy.port}"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_leader_cut_off_from_the_api_server_stops_before_a_standby_takes_over(
        cluster: Cluster, namespaces: list[str], s3_server: S3Endpoint, tmp_path: Path,
        replicas: list[Replica]) -> None:
    """A silent network (no reset) between the leader and the API server: the leader cannot
    renew and exits after the renew deadline, before the standby may take the Lease, so
    the two never run at once; the standby then carries on with the work."""
    core = client.CoreV1Api(cluster.api_client())
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, port = server.split("://", 1)[1].rsplit(":", 1)
    proxy = SilenceableProxy(host, int(port))
    proxy.start()
    try:
        with (installed(cluster, namespaces, s3_server, tmp_path, {}) as install,
              only_this_operator(), stopped_at_exit(replicas)):
            a = replica(install, "replica-a", tmp_path, KUBECONFIG=str(
                behind(proxy, install.kubeconfig, tmp_path / "proxied-kubeconfig")))
            b = replica(install, "replica-b", tmp_path)
            replicas += [a, b]
            start_leader_then_standby(cluster, install, a, b)
            with watching_jobs(cluster, install.team) as jobs:
                create_task(cluster, install.team, task_manifest("cut-1"))
                running_pod(cluster, install.team, "cut-1", timeout=120)

                proxy.silence()
                silenced = time.monotonic()
                exited = taken = None
                deadline = silenced + 60
                while (exited is None or taken is None) and time.monotonic() < deadline:
                    if exited is None and not a.alive:
                        exited = time.monotonic() - silenced
                    if taken is None and lease_holder(cluster, install) == "replica-b":
                        taken = time.monotonic() - silenced
                    time.sleep(0.2)
                assert exited is not None, "the cut-off leader kept running:\n" + a.log()[-3000:]
                assert taken is not None, "the standby never took over:\n" + b.log()[-3000:]
                print(f"\ncut-off leader exited after {exited:.1f} s; the standby took the "
                      f"Lease after {taken:.1f} s")
                assert exited < taken, "the old leader still ran when the standby took over"
                assert a.process is not None and a.process.returncode == 3
                assert "lost the Lease" in a.log()

                create_task(cluster, install.team, task_manifest("cut-2"))
                for task in ("cut-1", "cut-2"):
                    finish(cluster, core, install.team, task)
                for task in ("cut-1", "cut-2"):
                    completed(cluster, install.team, task)
                time.sleep(3)  # let late Job events arrive
            for task in ("cut-1", "cut-2"):
                assert len(jobs.uids(task)) == 1, (task, jobs.events)
    finally:
        proxy.heal()
        proxy.stop()
