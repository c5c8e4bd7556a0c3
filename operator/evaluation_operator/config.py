"""Operator configuration, read once from the environment (the Helm chart sets it)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_RUNNER_IMAGE = "ghcr.io/evaluation-operator/runner:0.1.0"


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
    # Default Secret (in the task's namespace) with the runner's S3 credentials.
    s3_credentials_secret: str = "evaluation-s3-credentials"
    progress_interval_seconds: int = 30
    purge_retry_max_seconds: int = 300
    metrics_port: int = 0  # 0: no metrics server
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pod_s3_endpoint(self) -> str | None:
        return self.runner_s3_endpoint or self.s3_endpoint

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        raw_namespaces = env.get("EVAL_NAMESPACES", "").split(",")
        namespaces = tuple(n.strip() for n in raw_namespaces if n.strip())
        pull_policy = env.get("EVAL_RUNNER_IMAGE_PULL_POLICY", "IfNotPresent")
        if pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(
                f"EVAL_RUNNER_IMAGE_PULL_POLICY={pull_policy!r}: use Always, IfNotPresent or Never"
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
            purge_retry_max_seconds=_int(env, "EVAL_PURGE_RETRY_MAX_SECONDS", 300, minimum=1),
            metrics_port=_int(env, "EVAL_METRICS_PORT", 0),
        )
