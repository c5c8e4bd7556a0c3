"""Operator configuration: environment variables (the Helm chart sets them), each overridable
by a command-line flag of `python -m evaluation_operator`.

| variable | flag | meaning |
| --- | --- | --- |
| EVAL_NAMESPACES | --namespace (repeat) | namespaces to watch, comma-separated; empty: all |
| EVAL_RUNNER_IMAGE | --runner-image | the runner image (a task may override it) |
| EVAL_RUNNER_IMAGE_PULL_POLICY | --runner-image-pull-policy | Always, IfNotPresent, Never |
| EVAL_GPU_RESOURCE | --gpu-resource | extended resource name of a GPU |
| EVAL_S3_ENDPOINT | --s3-endpoint | S3 endpoint of the operator (purge, summaries) |
| EVAL_RUNNER_S3_ENDPOINT | --runner-s3-endpoint | S3 endpoint given to runner pods |
| EVAL_S3_BUCKET | --s3-bucket | default results bucket |
| EVAL_S3_REGION | --s3-region | S3 region |
| EVAL_S3_PREFIX | --s3-prefix | default key prefix above `<namespace>/<task>/<uid>/` |
| EVAL_S3_CREDENTIALS_SECRET | --s3-credentials-secret | runner S3 keys Secret (task namespace) |
| EVAL_PROGRESS_INTERVAL_SECONDS | --progress-interval | how often progress.json is read |
| EVAL_PROGRESS_READS_PER_SECOND | --progress-reads-per-second | cap on those reads, all tasks |
| EVAL_PURGE_RETRY_MAX_SECONDS | --purge-retry-max | longest back-off between purge attempts |
| EVAL_START_FAILURE_GRACE_SECONDS | --start-failure-grace | image pull / Secret error grace |
| EVAL_METRICS_PORT | --metrics-port | Prometheus port; 0: off |
| EVAL_API_TIMEOUT_SECONDS | --api-timeout | longest wait for one API answer |
| EVAL_API_CONNECT_TIMEOUT_SECONDS | --api-connect-timeout | longest wait to connect (TCP+TLS) |
| EVAL_WATCH_TIMEOUT_SECONDS | --watch-timeout | one watch request's length (server side) |
| EVAL_RESULTS_TIMEOUT_SECONDS | --results-timeout | scores unreadable this long: Failed |
| EVAL_API_WORKERS | --api-workers | threads making API and S3 calls (bounds calls in flight) |
| EVAL_API_QPS | --api-qps | API calls per second, on average, across all workers |
| EVAL_API_BURST | --api-burst | API calls allowed at once above that rate |
| EVAL_KOPF_CONNECTIONS | --kopf-connections | Kopf's requests in flight at once (watches extra) |
| EVAL_LIST_CHUNK_SIZE | --list-chunk-size | objects per page of initial lists; 0: one page |
| EVAL_STATUS_DEBOUNCE_MS | --status-debounce-ms | in-progress changes merged this long |
| EVAL_STATUS_SETTLE_MS | --status-settle-ms | steps before Running written once this old |
| EVAL_STATUS_BURST_HOLD_MS | --status-burst-hold-ms | longest hold while children are created |
| EVAL_JOB_TTL_SECONDS | --job-ttl | finished Jobs and pods go this long after; 0: kept |
| EVAL_LEADER_ELECTION_LEASE | --leader-election-lease | Lease to elect a leader on; empty: off |
| EVAL_LEADER_ELECTION_NAMESPACE | --leader-election-namespace | its namespace (default: pod's) |
| EVAL_LEADER_ELECTION_IDENTITY | --leader-election-identity | this replica (default: host+random) |
| EVAL_LEASE_DURATION_SECONDS | --lease-duration | a standby takes a Lease unrenewed this long |
| EVAL_LEASE_RENEW_DEADLINE_SECONDS | --lease-renew-deadline | a leader unable to renew: exits |
| EVAL_LEASE_RETRY_PERIOD_SECONDS | --lease-retry-period | how often it is renewed or checked |

The operator's own S3 credentials come from the standard AWS variables or files
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE...).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_RUNNER_IMAGE = "ghcr.io/evaluation-operator/runner:0.1.0"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

# flag -> environment variable
FLAGS: dict[str, str] = {
    "--runner-image": "EVAL_RUNNER_IMAGE",
    "--runner-image-pull-policy": "EVAL_RUNNER_IMAGE_PULL_POLICY",
    "--gpu-resource": "EVAL_GPU_RESOURCE",
    "--s3-endpoint": "EVAL_S3_ENDPOINT",
    "--runner-s3-endpoint": "EVAL_RUNNER_S3_ENDPOINT",
    "--s3-bucket": "EVAL_S3_BUCKET",
    "--s3-region": "EVAL_S3_REGION",
    "--s3-prefix": "EVAL_S3_PREFIX",
    "--s3-credentials-secret": "EVAL_S3_CREDENTIALS_SECRET",
    "--progress-interval": "EVAL_PROGRESS_INTERVAL_SECONDS",
    "--progress-reads-per-second": "EVAL_PROGRESS_READS_PER_SECOND",
    "--purge-retry-max": "EVAL_PURGE_RETRY_MAX_SECONDS",
    "--start-failure-grace": "EVAL_START_FAILURE_GRACE_SECONDS",
    "--metrics-port": "EVAL_METRICS_PORT",
    "--results-timeout": "EVAL_RESULTS_TIMEOUT_SECONDS",
    "--api-timeout": "EVAL_API_TIMEOUT_SECONDS",
    "--api-connect-timeout": "EVAL_API_CONNECT_TIMEOUT_SECONDS",
    "--watch-timeout": "EVAL_WATCH_TIMEOUT_SECONDS",
    "--api-workers": "EVAL_API_WORKERS",
    "--api-qps": "EVAL_API_QPS",
    "--api-burst": "EVAL_API_BURST",
    "--kopf-connections": "EVAL_KOPF_CONNECTIONS",
    "--list-chunk-size": "EVAL_LIST_CHUNK_SIZE",
    "--status-debounce-ms": "EVAL_STATUS_DEBOUNCE_MS",
    "--status-settle-ms": "EVAL_STATUS_SETTLE_MS",
    "--status-burst-hold-ms": "EVAL_STATUS_BURST_HOLD_MS",
    "--job-ttl": "EVAL_JOB_TTL_SECONDS",
    # leader election (leader.py)
    "--leader-election-lease": "EVAL_LEADER_ELECTION_LEASE",
    "--leader-election-namespace": "EVAL_LEADER_ELECTION_NAMESPACE",
    "--leader-election-identity": "EVAL_LEADER_ELECTION_IDENTITY",
    "--lease-duration": "EVAL_LEASE_DURATION_SECONDS",
    "--lease-renew-deadline": "EVAL_LEASE_RENEW_DEADLINE_SECONDS",
    "--lease-retry-period": "EVAL_LEASE_RETRY_PERIOD_SECONDS",
}


class SettingsError(ValueError):
    pass


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise SettingsError(f"{name}={raw!r} is not an integer") from error
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    runner_image: str = DEFAULT_RUNNER_IMAGE
    runner_image_pull_policy: str = "IfNotPresent"
    gpu_resource: str = "nvidia.com/gpu"
    s3_endpoint: str | None = None  # what the operator uses (purge, reading summaries)
    runner_s3_endpoint: str | None = None  # what runner pods use; defaults to s3_endpoint
    s3_bucket: str | None = None
    s3_region: str | None = None
    s3_prefix: str = "runs"
    s3_credentials_secret: str = "evaluation-s3-credentials"
    progress_interval_seconds: int = 30
    # A budget over all running tasks: each S3 read costs the operator ~4 ms of CPU, so
    # 1,000 running tasks read every 30 s kept an eighth of a core busy doing nothing
    # visible (bench/README.md). Beyond `progress_interval_seconds x this` running tasks,
    # each task's progress is read less often.
    progress_reads_per_second: int = 5
    purge_retry_max_seconds: int = 300
    # Registries and Secrets can be briefly missing (rate limits, GitOps apply order): an
    # image pull or container config error fails the task only after lasting this long.
    start_failure_grace_seconds: int = 180
    metrics_port: int = 0
    # A runner uploads summary.json before it exits, so missing scores after this long mean
    # they will not come (an unreachable S3 does not count: that is waited out).
    results_timeout_seconds: int = 300
    # Deadlines against silent network partitions (apiclient.py): with these defaults every
    # watch and request recovers within a minute of the network healing.
    api_timeout_seconds: int = 30
    api_connect_timeout_seconds: int = 5
    watch_timeout_seconds: int = 30

    # Concurrency by design: a fixed pool of threads makes every blocking call (API and S3),
    # so calls in flight never exceed api_workers, and a token bucket caps their rate (a
    # sweep of 1,000 tasks costs ~3,000 calls: at 400/s they take seconds, not minutes).
    api_workers: int = 16
    api_qps: int = 400
    api_burst: int = 800
    # Kopf's own requests (finalizers, Events) share a pool of this many connections besides
    # its watches (connections.py): each TLS connection costs ~320 KiB, and Kopf otherwise
    # opens one per request in flight (~950 while 1,000 tasks were deleted).
    kopf_connections: int = 16
    # A watch starts with a list of what exists: in pages of this many objects, not one answer
    # holding every task, Job or pod at once (5,000 pods: ~200 MiB parsed in one go).
    list_chunk_size: int = 250
    # Pod Pending -> Scheduled -> Running often happens within a second: one write, not three.
    status_debounce_ms: int = 1500
    # JobPending, PodPending, Scheduling, Starting are written only once they last this long
    # (status_writes.py): a pod running within it costs no status write before Running.
    status_settle_ms: int = 10000
    # While ConfigMaps and Jobs are being created (a sweep applied at once), in-progress
    # status changes wait for a pause in creating, at most this long (status_writes.py).
    status_burst_hold_ms: int = 30000
    # A day: long enough to read the pods' logs; the task's status and results stay anyway.
    job_ttl_seconds: int = 86400
    # Cap on remembered per-task facts (last status written, Jobs just created): entries
    # also go when their task goes; the cap only bounds what a leak could cost.
    memory_tasks: int = 20000

    # Leader election on a Lease (leader.py): off without a Lease name. client-go's defaults:
    # a dead leader is replaced within about lease_duration + retry_period.
    leader_election_lease: str | None = None
    leader_election_namespace: str | None = None
    leader_election_identity: str | None = None
    lease_duration_seconds: int = 15
    lease_renew_deadline_seconds: int = 10
    lease_retry_period_seconds: int = 2

    @property
    def watch_client_timeout_seconds(self) -> int:
        """A watch still open this long after the server should have ended it is dead."""
        return self.watch_timeout_seconds + 2 * self.api_connect_timeout_seconds

    def progress_interval(self, running: int) -> float:
        """Seconds between two reads of one task's progress.json with `running` tasks read:
        the configured interval, stretched so all of them together stay within budget."""
        return max(float(self.progress_interval_seconds),
                   running / self.progress_reads_per_second)

    @property
    def pod_s3_endpoint(self) -> str | None:
        return self.runner_s3_endpoint or self.s3_endpoint

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        raw_namespaces = env.get("EVAL_NAMESPACES", "").split(",")
        namespaces = tuple(n.strip() for n in raw_namespaces if n.strip())
        pull_policy = env.get("EVAL_RUNNER_IMAGE_PULL_POLICY") or "IfNotPresent"
        if pull_policy not in PULL_POLICIES:
            raise SettingsError(
                f"EVAL_RUNNER_IMAGE_PULL_POLICY={pull_policy!r}: use {', '.join(PULL_POLICIES)}"
            )
        return cls(
            namespaces=namespaces,
            runner_image=env.get("EVAL_RUNNER_IMAGE") or DEFAULT_RUNNER_IMAGE,
            runner_image_pull_policy=pull_policy,
            gpu_resource=env.get("EVAL_GPU_RESOURCE") or "nvidia.com/gpu",
            s3_endpoint=env.get("EVAL_S3_ENDPOINT") or None,
            runner_s3_endpoint=env.get("EVAL_RUNNER_S3_ENDPOINT") or None,
            s3_bucket=env.get("EVAL_S3_BUCKET") or None,
            s3_region=env.get("EVAL_S3_REGION") or None,
            s3_prefix=(env.get("EVAL_S3_PREFIX") or "runs").strip("/"),
            s3_credentials_secret=env.get("EVAL_S3_CREDENTIALS_SECRET")
            or "evaluation-s3-credentials",
            progress_interval_seconds=_int(env, "EVAL_PROGRESS_INTERVAL_SECONDS", 30, minimum=1),
            progress_reads_per_second=_int(env, "EVAL_PROGRESS_READS_PER_SECOND", 5, minimum=1),
            purge_retry_max_seconds=_int(env, "EVAL_PURGE_RETRY_MAX_SECONDS", 300, minimum=1),
            start_failure_grace_seconds=_int(env, "EVAL_START_FAILURE_GRACE_SECONDS", 180),
            metrics_port=_int(env, "EVAL_METRICS_PORT", 0),
            results_timeout_seconds=_int(env, "EVAL_RESULTS_TIMEOUT_SECONDS", 300, minimum=1),
            api_timeout_seconds=_int(env, "EVAL_API_TIMEOUT_SECONDS", 30, minimum=1),
            api_connect_timeout_seconds=_int(env, "EVAL_API_CONNECT_TIMEOUT_SECONDS", 5,
                                             minimum=1),
            watch_timeout_seconds=_int(env, "EVAL_WATCH_TIMEOUT_SECONDS", 30, minimum=1),
            api_workers=_int(env, "EVAL_API_WORKERS", 16, minimum=1),
            api_qps=_int(env, "EVAL_API_QPS", 400, minimum=1),
            api_burst=_int(env, "EVAL_API_BURST", 800, minimum=1),
            kopf_connections=_int(env, "EVAL_KOPF_CONNECTIONS", 16, minimum=1),
            list_chunk_size=_int(env, "EVAL_LIST_CHUNK_SIZE", 250),
            status_debounce_ms=_int(env, "EVAL_STATUS_DEBOUNCE_MS", 1500),
            status_settle_ms=_int(env, "EVAL_STATUS_SETTLE_MS", 10000),
            status_burst_hold_ms=_int(env, "EVAL_STATUS_BURST_HOLD_MS", 30000),
            job_ttl_seconds=_int(env, "EVAL_JOB_TTL_SECONDS", 86400),
            **_leader_election(env),
        )


def _leader_election(env: Mapping[str, str]) -> dict[str, Any]:
    duration = _int(env, "EVAL_LEASE_DURATION_SECONDS", 15, minimum=2)
    deadline = _int(env, "EVAL_LEASE_RENEW_DEADLINE_SECONDS", 10, minimum=1)
    retry = _int(env, "EVAL_LEASE_RETRY_PERIOD_SECONDS", 2, minimum=1)
    # The leader must give up before a standby may take over, and try more than once first.
    if not retry < deadline < duration:
        raise SettingsError(
            f"EVAL_LEASE_RETRY_PERIOD_SECONDS={retry} < EVAL_LEASE_RENEW_DEADLINE_SECONDS="
            f"{deadline} < EVAL_LEASE_DURATION_SECONDS={duration} must hold")
    return {
        "leader_election_lease": env.get("EVAL_LEADER_ELECTION_LEASE") or None,
        "leader_election_namespace": env.get("EVAL_LEADER_ELECTION_NAMESPACE") or None,
        "leader_election_identity": env.get("EVAL_LEADER_ELECTION_IDENTITY") or None,
        "lease_duration_seconds": duration,
        "lease_renew_deadline_seconds": deadline,
        "lease_retry_period_seconds": retry,
    }


def apply_flags(argv: Sequence[str], env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Fold our flags into a copy of the environment; return it and the arguments left for
    Kopf (e.g. --verbose, --liveness)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--namespace", "-n", action="append", default=[])
    parser.add_argument("--all-namespaces", "-A", action="store_true")
    for flag in FLAGS:
        parser.add_argument(flag)
    known, rest = parser.parse_known_args(list(argv))
    merged = dict(env)
    for flag, variable in FLAGS.items():
        value = getattr(known, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            merged[variable] = value
    if known.all_namespaces:
        merged["EVAL_NAMESPACES"] = ""
    elif known.namespace:
        merged["EVAL_NAMESPACES"] = ",".join(known.namespace)
    return merged, rest
