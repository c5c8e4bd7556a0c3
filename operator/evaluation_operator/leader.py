"""Leader election on a `coordination.k8s.io/v1` Lease: of several replicas, exactly one runs
Kopf (the leader); the others wait (standbys) and one of them takes over when the leader is
gone.

Why not Kopf's peering: it is priority-based pausing, not an election. Replicas of one
Deployment share one priority, and Kopf pauses *every* operator when it sees a live peer of
the same priority, so two identical replicas would both freeze; a dead peer blocks the others
for its whole `lifetime` (60 s by default), judged by comparing its wall-clock `lastseen` with
the local clock; and it needs Kopf's peering CRDs (a cluster-scoped one for a cluster-wide
operator). A Lease is what Kubernetes' own controllers use: one namespaced object, no CRD, no
clock comparison across machines, and `kubectl get lease` says who leads.

The protocol is client-go's (k8s.io/client-go/tools/leaderelection):

* a candidate reads the Lease every `retry_period`; it may take it when there is none, when it
  names no holder (released), or when its record has not changed for `lease_duration` as
  measured by the candidate's own monotonic clock (so clock skew between machines is
  irrelevant). Taking it is an update carrying the resourceVersion read: of two candidates
  only one succeeds, the other gets 409.
* the leader renews every `retry_period`. If it cannot renew for `renew_deadline` (shorter
  than `lease_duration`), or finds another holder, it stops at once: the process exits and
  Kubernetes restarts it as a standby. So the old leader has stopped before any standby can
  consider the Lease expired.
* on a clean shutdown (SIGTERM, after Kopf has stopped) the leader releases the Lease, so a
  standby takes over within one `retry_period` instead of `lease_duration`.

Even a brief overlap would not duplicate work: Job and ConfigMap names are derived from the
task and a create answered 409 counts as done (kube.py), which tests/chart/test_ha.py checks
with two operators running at once.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from evaluation_operator import apiclient, metrics
from evaluation_operator.apiclient import ApiError, RestClient
from evaluation_operator.config import OperatorSettings

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Exit status of a leader that lost its Lease (the container restarts as a standby).
EXIT_LEADERSHIP_LOST = 3


class LeaderElectionError(RuntimeError):
    pass


def micro_time(moment: datetime.datetime) -> str:
    """A Kubernetes MicroTime: always six fractional digits (Python's isoformat drops them
    when they are zero, which the API server refuses)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """Without a configured identity (the chart sets the pod name): the host name plus a
    random suffix, so that two processes on one machine never share one."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def resolve_namespace(settings: OperatorSettings, path: str = SERVICE_ACCOUNT_NAMESPACE
                      ) -> str:
    if settings.leader_election_namespace:
        return settings.leader_election_namespace
    with contextlib.suppress(OSError), open(path) as file:
        namespace = file.read().strip()
        if namespace:
            return namespace
    raise LeaderElectionError(
        "EVAL_LEADER_ELECTION_NAMESPACE (--leader-election-namespace) is not set and the "
        "operator is not running in a pod: name the namespace of the Lease")


# --- the decision, without I/O ---------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """What matters of a Lease read from the API server."""

    holder: str
    renew_time: str
    version: str  # metadata.resourceVersion
    duration: int  # spec.leaseDurationSeconds

    @classmethod
    def of(cls, lease: dict[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or "",
                   renew_time=str(spec.get("renewTime") or ""),
                   version=str(lease["metadata"].get("resourceVersion") or ""),
                   duration=int(spec.get("leaseDurationSeconds") or 0))


class Verdict(enum.Enum):
    CREATE = "create"  # no Lease yet
    TAKE = "take"  # free, expired or ours: update it to name us
    WAIT = "wait"  # another candidate holds it


class Candidate:
    """Decides from successive reads of the Lease when it may be taken. Expiry is measured on
    this process's monotonic clock from the moment the record was last seen to change."""

    def __init__(self, identity: str, lease_duration: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity
        self.lease_duration = lease_duration
        self.clock = clock
        self.seen: tuple[str, str, str] | None = None
        self.seen_at = 0.0

    def judge(self, record: Record | None) -> Verdict:
        if record is None:
            return Verdict.CREATE
        # Our own name as holder: this pod's previous container led and died (a restarted
        # container keeps the pod name); nobody else can be leading, so no need to wait.
        if not record.holder or record.holder == self.identity:
            return Verdict.TAKE
        now = self.clock()
        key = (record.holder, record.renew_time, record.version)
        if key != self.seen:
            self.seen, self.seen_at = key, now
        # The holder's own duration when it set one (a release sets 1 s), else ours.
        duration = record.duration or self.lease_duration
        return Verdict.TAKE if now - self.seen_at >= duration else Verdict.WAIT


def claim(name: str, namespace: str, identity: str, duration: int, now: datetime.datetime,
          current: dict[str, Any] | None) -> dict[str, Any]:
    """The Lease naming `identity` as holder, as an update of `current` (None: a create)."""
    spec = dict((current or {}).get("spec") or {})
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if current is not None:
        metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
    if spec.get("holderIdentity") != identity:
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
            1 if current is not None else 0)
        spec["acquireTime"] = micro_time(now)
    spec.update(holderIdentity=identity, leaseDurationSeconds=duration,
                renewTime=micro_time(now))
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": spec}


def released(current: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """The Lease given up: no holder, and a 1 s duration for any reader that still waits."""
    spec = {**current["spec"], "leaseDurationSeconds": 1, "renewTime": micro_time(now)}
    spec.pop("holderIdentity", None)
    return {**current, "spec": spec}


# --- talking to the API server ---------------------------------------------------------------


class LeaseStore:
    """Reads and writes one Lease as plain JSON."""

    def __init__(self, api: RestClient | None, name: str, namespace: str, timeout: float
                 ) -> None:
        self.api = api
        self.name, self.namespace = name, namespace
        self.timeout = timeout

    def _path(self, *name: str) -> str:
        return apiclient.path("apis", "coordination.k8s.io", "v1", "namespaces",
                              self.namespace, "leases", *name)

    def read(self) -> dict[str, Any] | None:
        assert self.api is not None
        try:
            return self.api.json("GET", self._path(self.name), timeout=self.timeout)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def write(self, lease: dict[str, Any]) -> dict[str, Any] | None:
        """Create or update; None when another writer got there first (409)."""
        assert self.api is not None
        try:
            if "resourceVersion" in lease["metadata"]:
                return self.api.json("PUT", self._path(self.name), body=lease,
                                     timeout=self.timeout)
            return self.api.json("POST", self._path(), body=lease, timeout=self.timeout)
        except ApiError as error:
            if error.status == 409:
                return None
            raise


# Any error of a read or write is retried (network, API server, timeouts, and bugs alike):
# a leader that keeps failing gives up after renew_deadline, which is the safe outcome.
TRANSIENT = (Exception,)


def _lost_forever(reason: str) -> None:
    log.critical("leader election: lost the Lease (%s); exiting so that a standby takes over",
                 reason)
    logging.shutdown()
    os._exit(EXIT_LEADERSHIP_LOST)


class Elector:
    def __init__(self, store: LeaseStore, identity: str, lease_duration: int,
                 renew_deadline: float, retry_period: float,
                 on_lost: Callable[[str], None] = _lost_forever,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.identity = identity
        self.lease_duration, self.renew_deadline = lease_duration, renew_deadline
        self.retry_period = retry_period
        self.on_lost = on_lost
        self.clock = clock
        self.lease: dict[str, Any] | None = None  # as last written by us, while we lead
        self.stopping = threading.Event()
        self.renewer: threading.Thread | None = None

    def _now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def try_acquire(self, candidate: Candidate) -> bool:
        current = self.store.read()
        verdict = candidate.judge(Record.of(current) if current else None)
        if verdict is Verdict.WAIT:
            return False
        lease = claim(self.store.name, self.store.namespace, self.identity,
                      self.lease_duration, self._now(), current)
        self.lease = self.store.write(lease)
        return self.lease is not None

    def acquire(self, timeout: float | None = None) -> None:
        """Block until this candidate holds the Lease (or `timeout` passes: TimeoutError)."""
        candidate = Candidate(self.identity, self.lease_duration, self.clock)
        started = self.clock()
        reported = ""
        while True:
            try:
                if self.try_acquire(candidate):
                    log.info("leader election: %s leads (Lease %s/%s) after %.1f s",
                             self.identity, self.store.namespace, self.store.name,
                             self.clock() - started)
                    return
                holder = candidate.seen[0] if candidate.seen else "?"
                if holder != reported:
                    log.info("leader election: standby; Lease %s/%s is held by %s",
                             self.store.namespace, self.store.name, holder)
                    reported = holder
            except TRANSIENT as error:
                log.warning("leader election: cannot read or take the Lease: %s", error)
            if timeout is not None and self.clock() - started > timeout:
                raise TimeoutError(f"no leadership within {timeout} s")
            time.sleep(self.retry_period)

    def renew_once(self) -> bool:
        """Renew the Lease; False when it can no longer be ours (another holder)."""
        assert self.lease is not None
        lease = claim(self.store.name, self.store.namespace, self.identity,
                      self.lease_duration, self._now(), self.lease)
        written = self.store.write(lease)
        if written is None:  # changed behind our back: whose is it now?
            current = self.store.read()
            if current is None or Record.of(current).holder != self.identity:
                return False
            written = self.store.write(claim(self.store.name, self.store.namespace,
                                             self.identity, self.lease_duration, self._now(),
                                             current))
            if written is None:
                return False
        self.lease = written
        return True

    def keep_renewing(self) -> None:
        last_renewed = self.clock()
        while not self.stopping.wait(self.retry_period):
            remaining = self.renew_deadline - (self.clock() - last_renewed)
            if remaining <= 0:
                self.on_lost(f"not renewed for {self.renew_deadline} s")
                return
            # A hanging request must not outlast the deadline (the API client tries a timed
            # out request once more, hence half).
            self.store.timeout = max(0.5, remaining / 2)
            try:
                if not self.renew_once():
                    self.on_lost("another candidate holds it")
                    return
                last_renewed = self.clock()
            except TRANSIENT as error:
                log.warning("leader election: renewing the Lease failed: %s", error)
            if self.clock() - last_renewed > self.renew_deadline:
                self.on_lost(f"not renewed for {self.renew_deadline} s")
                return

    def start_renewing(self) -> None:
        self.renewer = threading.Thread(target=self.keep_renewing, name="lease-renewer",
                                        daemon=True)
        self.renewer.start()

    def release(self) -> None:
        """Stop renewing and give the Lease up (best effort: it expires anyway)."""
        self.stopping.set()
        if self.renewer is not None:
            self.renewer.join(timeout=self.retry_period + self.store.timeout)
        if self.lease is None:
            return
        try:
            if self.store.write(released(self.lease, self._now())) is not None:
                log.info("leader election: released the Lease")
        except TRANSIENT as error:
            log.warning("leader election: could not release the Lease: %s", error)
        self.lease = None


# --- while waiting: answer the liveness probe ------------------------------------------------


def liveness_address(kopf_args: list[str]) -> tuple[str, int, str] | None:
    """(host, port, path) of Kopf's `--liveness=URL` option, if given."""
    for index, arg in enumerate(kopf_args):
        url = None
        if arg.startswith("--liveness="):
            url = arg.split("=", 1)[1]
        elif arg == "--liveness" and index + 1 < len(kopf_args):
            url = kopf_args[index + 1]
        if url:
            parts = urlsplit(url)
            return parts.hostname or "0.0.0.0", parts.port or 80, parts.path or "/"
    return None


@contextlib.contextmanager
def standby_health(address: tuple[str, int, str] | None) -> Iterator[None]:
    """Kopf serves the liveness endpoint only once it runs: until then (a standby) this
    answers it, so that Kubernetes does not restart a healthy standby."""
    if address is None:
        yield
        return
    host, port, path = address

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?", 1)[0] == path
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"standby": true}' if ok else b"{}")

        def log_message(self, *_: Any) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Health)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()  # the port is Kopf's from now on
        thread.join(timeout=5)


@contextlib.contextmanager
def standby_logging() -> Iterator[None]:
    """Kopf sets up logging only when it starts; until then this module logs on its own."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        "[%(asctime)s] %(name)-20.20s [%(levelname)-8.8s] %(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


@contextlib.contextmanager
def leadership(settings: OperatorSettings, kopf_args: list[str]) -> Iterator[None]:
    """Wait to lead (when leader election is on), keep the Lease renewed while the body runs,
    release it afterwards."""
    if not settings.leader_election_lease:
        metrics.LEADER.set(1)
        yield
        return
    # A standby is scraped too (the metrics Service selects every replica): serve it now.
    metrics.LEADER.set(0)
    if settings.metrics_port:
        metrics.start_metrics_server(settings.metrics_port)
    namespace = resolve_namespace(settings)
    identity = settings.leader_election_identity or default_identity()
    store = LeaseStore(apiclient.rest_client(settings, pool_size=1),
                       settings.leader_election_lease, namespace,
                       timeout=max(1.0, settings.lease_renew_deadline_seconds / 2))
    elector = Elector(store, identity, settings.lease_duration_seconds,
                      settings.lease_renew_deadline_seconds, settings.lease_retry_period_seconds)
    with standby_health(liveness_address(kopf_args)), standby_logging():
        elector.acquire()
    metrics.LEADER.set(1)
    elector.start_renewing()
    try:
        yield
    finally:
        elector.release()
