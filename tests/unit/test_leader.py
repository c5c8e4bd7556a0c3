"""Leader election on a Lease (leader.py): the decisions, with a fake clock and an in-memory
Lease that answers 409 like the API server; tests/chart/test_ha.py runs it for real."""

from __future__ import annotations

import copy
import datetime
import threading
import time
import urllib.request
from typing import Any

import pytest
from evaluation_operator import leader, metrics
from evaluation_operator.config import OperatorSettings, SettingsError
from evaluation_operator.leader import (
    Candidate,
    Elector,
    LeaderElectionError,
    LeaseStore,
    Record,
    Verdict,
    claim,
    liveness_address,
    micro_time,
    released,
    resolve_namespace,
    standby_health,
)

from tests.support.s3 import free_port

NOW = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=datetime.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class MemoryStore(LeaseStore):
    """One Lease with resourceVersion checks, as the API server keeps it."""

    def __init__(self) -> None:
        super().__init__(api=None, name="op", namespace="sys", timeout=1)
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.failing = False

    def read(self) -> dict[str, Any] | None:
        if self.failing:
            raise OSError("connection refused")
        return copy.deepcopy(self.lease)

    def write(self, lease: dict[str, Any]) -> dict[str, Any] | None:
        if self.failing:
            raise OSError("connection refused")
        expected = lease["metadata"].get("resourceVersion")
        current = self.lease["metadata"]["resourceVersion"] if self.lease else None
        if expected != current:
            return None
        self.version += 1
        self.lease = copy.deepcopy(lease)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    def holder(self) -> str:
        return Record.of(self.lease).holder if self.lease else ""


def lease(holder: str, renewed: str = "t1", version: str = "7", duration: int = 15
          ) -> Record:
    return Record(holder=holder, renew_time=renewed, version=version, duration=duration)


def test_micro_time_always_has_six_fractional_digits() -> None:
    assert micro_time(NOW) == "2026-11-29T12:00:00.000000Z"


def test_a_candidate_takes_a_missing_free_or_own_lease_at_once() -> None:
    candidate = Candidate("me", 15, Clock())
    assert candidate.judge(None) is Verdict.CREATE
    assert candidate.judge(lease("")) is Verdict.TAKE
    assert candidate.judge(lease("me")) is Verdict.TAKE


def test_a_held_lease_is_taken_only_after_it_went_unrenewed_for_its_duration() -> None:
    clock = Clock()
    candidate = Candidate("me", 15, clock)
    assert candidate.judge(lease("other", "t1")) is Verdict.WAIT
    clock.now += 14
    assert candidate.judge(lease("other", "t1")) is Verdict.WAIT
    # A renewal restarts the wait: measured from when *we* saw it change, not its timestamp.
    assert candidate.judge(lease("other", "t2", "8")) is Verdict.WAIT
    clock.now += 14.9
    assert candidate.judge(lease("other", "t2", "8")) is Verdict.WAIT
    clock.now += 0.2
    assert candidate.judge(lease("other", "t2", "8")) is Verdict.TAKE


def test_a_fresh_candidate_waits_a_whole_duration_whatever_the_timestamps_say() -> None:
    """Clocks of other machines are never compared with ours."""
    clock = Clock()
    candidate = Candidate("me", 15, clock)
    ancient = Record(holder="other", renew_time="1999-01-01T00:00:00.000000Z", version="1",
                     duration=15)
    assert candidate.judge(ancient) is Verdict.WAIT
    clock.now += 15
    assert candidate.judge(ancient) is Verdict.TAKE


def test_claim_counts_transitions_and_keeps_the_acquire_time_on_renewal() -> None:
    first = claim("op", "sys", "a", 15, NOW, None)
    assert "resourceVersion" not in first["metadata"]
    assert first["spec"] == {"holderIdentity": "a", "leaseDurationSeconds": 15,
                             "acquireTime": micro_time(NOW), "renewTime": micro_time(NOW),
                             "leaseTransitions": 0}
    first["metadata"]["resourceVersion"] = "5"
    later = NOW + datetime.timedelta(seconds=2)
    renewed = claim("op", "sys", "a", 15, later, first)
    assert renewed["metadata"]["resourceVersion"] == "5"
    assert renewed["spec"]["acquireTime"] == micro_time(NOW)
    assert renewed["spec"]["renewTime"] == micro_time(later)
    assert renewed["spec"]["leaseTransitions"] == 0
    taken = claim("op", "sys", "b", 15, later, first)
    assert taken["spec"]["holderIdentity"] == "b"
    assert taken["spec"]["leaseTransitions"] == 1
    assert taken["spec"]["acquireTime"] == micro_time(later)


def test_a_released_lease_names_no_holder() -> None:
    held = claim("op", "sys", "a", 15, NOW, None)
    held["metadata"]["resourceVersion"] = "5"
    free = released(held, NOW)
    assert "holderIdentity" not in free["spec"]
    assert free["spec"]["leaseDurationSeconds"] == 1
    assert free["metadata"]["resourceVersion"] == "5"
    assert Candidate("b", 15, Clock()).judge(Record.of(free)) is Verdict.TAKE


def electors(store: MemoryStore, clock: Clock, *names: str) -> list[Elector]:
    return [Elector(store, name, 15, 10, 2, on_lost=lambda _: None, clock=clock)
            for name in names]


def test_of_two_candidates_exactly_one_leads_and_the_other_takes_over_when_it_dies() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = electors(store, clock, "a", "b")
    ca, cb = Candidate("a", 15, clock), Candidate("b", 15, clock)
    assert a.try_acquire(ca) is True
    assert b.try_acquire(cb) is False
    for _ in range(10):  # a renews every 2 s: b never gets it
        clock.now += 2
        assert a.renew_once() is True
        assert b.try_acquire(cb) is False
    assert store.holder() == "a"
    # a dies (no more renewals): b waits out the duration from the last change it saw.
    clock.now += 14
    assert b.try_acquire(cb) is False
    clock.now += 1
    assert b.try_acquire(cb) is True
    assert store.holder() == "b"
    assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1
    # a, if it came back without noticing, cannot renew: it learns it lost.
    assert a.renew_once() is False


def test_two_candidates_racing_for_a_free_lease_cannot_both_win() -> None:
    store, clock = MemoryStore(), Clock()
    (a,) = electors(store, clock, "a")
    ca, cb = Candidate("a", 15, clock), Candidate("b", 15, clock)
    assert a.try_acquire(ca) is True
    b_read = None  # b read "no Lease" before a created it: its create now conflicts
    assert cb.judge(b_read) is Verdict.CREATE
    assert store.write(claim("op", "sys", "b", 15, NOW, None)) is None
    assert store.holder() == "a"


def test_a_released_lease_is_taken_at_the_next_check() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = electors(store, clock, "a", "b")
    cb = Candidate("b", 15, clock)
    assert a.try_acquire(Candidate("a", 15, clock))
    assert b.try_acquire(cb) is False
    a.release()
    assert store.holder() == ""
    assert b.try_acquire(cb) is True


def test_a_leader_that_cannot_renew_gives_up_after_the_renew_deadline() -> None:
    store = MemoryStore()
    lost: list[str] = []
    elector = Elector(store, "a", 3, 0.3, 0.05, on_lost=lost.append)
    assert elector.try_acquire(Candidate("a", 3))
    store.failing = True
    thread = threading.Thread(target=elector.keep_renewing)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert lost == ["not renewed for 0.3 s"]


def test_a_leader_whose_lease_was_taken_gives_up_at_once() -> None:
    store = MemoryStore()
    lost: list[str] = []
    elector = Elector(store, "a", 3, 2, 0.05, on_lost=lost.append)
    assert elector.try_acquire(Candidate("a", 3))
    assert store.lease is not None
    store.write(claim("op", "sys", "b", 3, NOW, store.lease))
    thread = threading.Thread(target=elector.keep_renewing)
    thread.start()
    thread.join(timeout=5)
    assert lost == ["another candidate holds it"]


def test_the_liveness_address_comes_from_kopfs_flag() -> None:
    assert liveness_address(["--verbose", "--liveness=http://0.0.0.0:8181/healthz"]) == (
        "0.0.0.0", 8181, "/healthz")
    assert liveness_address(["--liveness", "http://127.0.0.1:9/h"]) == ("127.0.0.1", 9, "/h")
    assert liveness_address(["--verbose"]) is None


def test_a_standby_answers_the_liveness_probe_and_frees_the_port() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    with standby_health(("127.0.0.1", port, "/healthz")), urllib.request.urlopen(
            url, timeout=5) as answer:
        assert answer.status == 200
    with standby_health(("127.0.0.1", port, "/healthz")):  # free again for Kopf
        pass


def test_the_lease_namespace_defaults_to_the_pods(tmp_path: Any) -> None:
    path = tmp_path / "namespace"
    path.write_text("evaluation-system\n")
    assert resolve_namespace(OperatorSettings(), str(path)) == "evaluation-system"
    named = OperatorSettings(leader_election_namespace="ops")
    assert resolve_namespace(named, str(path)) == "ops"
    with pytest.raises(LeaderElectionError, match="EVAL_LEADER_ELECTION_NAMESPACE"):
        resolve_namespace(OperatorSettings(), str(tmp_path / "missing"))


def test_leader_election_is_off_unless_a_lease_is_named() -> None:
    assert OperatorSettings.from_env({}).leader_election_lease is None
    with leader.leadership(OperatorSettings(), []):  # no API server needed
        assert metrics.REGISTRY.get_sample_value("evaluation_operator_leader") == 1


def test_the_metrics_server_started_by_a_standby_is_reused_once_it_leads() -> None:
    port = free_port()
    first = metrics.start_metrics_server(port, addr="127.0.0.1")
    try:
        assert metrics.start_metrics_server(port, addr="127.0.0.1") is first
    finally:
        first.shutdown()
        metrics._servers.clear()


@pytest.mark.parametrize("env", [
    {"EVAL_LEASE_DURATION_SECONDS": "10", "EVAL_LEASE_RENEW_DEADLINE_SECONDS": "10"},
    {"EVAL_LEASE_RETRY_PERIOD_SECONDS": "10"},
])
def test_lease_timings_that_could_overlap_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="EVAL_LEASE_RENEW_DEADLINE_SECONDS"):
        OperatorSettings.from_env(env)


class HangingStore(MemoryStore):
    """An API server that answers nothing: every call takes its whole timeout, twice (the
    client retries a timed out request once)."""

    def write(self, lease: dict[str, Any]) -> dict[str, Any] | None:
        if self.failing:
            time.sleep(2 * self.timeout)
            raise TimeoutError("read timed out")
        return super().write(lease)


def test_a_hanging_api_server_cannot_keep_a_leader_past_its_renew_deadline() -> None:
    """The leader must have stopped before a standby may take over (lease duration)."""
    store = HangingStore()
    lost: list[float] = []
    elector = Elector(store, "a", 3, 1.0, 0.2, on_lost=lambda _: lost.append(time.monotonic()))
    assert elector.try_acquire(Candidate("a", 3))
    last_renewed = time.monotonic()
    store.failing = True
    thread = threading.Thread(target=elector.keep_renewing)
    thread.start()
    thread.join(timeout=10)
    assert lost and lost[0] - last_renewed < 1.0 + 0.2 + 0.3
