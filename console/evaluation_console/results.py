"""A task's results in S3, read with the user's own credentials.

Credentials, in order: the user's own (the standard AWS chain: environment, profile, SSO,
instance role; `AWS_ENDPOINT_URL` for MinIO and other S3-compatible stores), then the task
namespace's credentials Secret when the user may read it. The endpoint is `AWS_ENDPOINT_URL`
when set, else the one the runner was given (its ConfigMap). When nothing works, the error
lists every attempt. Nothing is written to disk: objects are streamed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from evaluation_operator.s3 import ResultsLocation, UnsafePrefixError
from evaluation_runner import layout

from evaluation_console.errors import ConsoleError, NotFoundError, ResultsUnavailableError
from evaluation_console.kube import Kube

DEFAULT_SECRET = "evaluation-s3-credentials"  # the operator's default (EVAL_S3_CREDENTIALS_SECRET)
_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
               "ExpiredToken", "InvalidToken")
_MISSING_CODES = ("NoSuchKey", "404", "NotFound")


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def make_client(endpoint: str | None, region: str | None, keys: dict[str, str] | None) -> Any:
    import boto3
    from botocore.config import Config

    # "when_required": MinIO and Ceph reject the CRC32 checksums boto3 >= 1.36 sends by default.
    config = Config(request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5, read_timeout=60)
    kwargs: dict[str, Any] = {"endpoint_url": endpoint, "region_name": region, "config": config}
    if keys is not None:
        kwargs.update(aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
                      aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
                      aws_session_token=keys.get("AWS_SESSION_TOKEN") or None)
    return boto3.client("s3", **kwargs)


def own_credentials_found() -> bool:
    import boto3

    return boto3.Session().get_credentials() is not None


@dataclass
class TaskResults:
    """Reads one task's bundle; `source` says whose credentials opened it."""

    client: Any
    location: ResultsLocation
    source: str

    def key(self, name: str) -> str:
        return self.location.prefix + name

    def uri(self, name: str = "") -> str:
        return self.location.uri + name

    def _get(self, name: str, **extra: Any) -> Any:
        try:
            return self.client.get_object(Bucket=self.location.bucket, Key=self.key(name),
                                          **extra)
        except Exception as error:
            if error_code(error) in _MISSING_CODES:
                raise NotFoundError(f"{self.uri(name)} does not exist") from error
            raise ResultsUnavailableError(
                f"cannot read {self.uri(name)} with {self.source}: "
                f"{error_code(error) or error}") from error

    def read(self, name: str) -> bytes:
        body: bytes = self._get(name)["Body"].read()
        return body

    def size(self, name: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=self.key(name))
        except Exception as error:
            if error_code(error) in _MISSING_CODES:
                raise NotFoundError(f"{self.uri(name)} does not exist") from error
            raise ResultsUnavailableError(f"cannot read {self.uri(name)}: {error}") from error
        return int(head["ContentLength"])

    def stream(self, name: str, chunk: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        """(size, chunks) of an object, streamed."""
        response = self._get(name)
        body = response["Body"]
        return int(response["ContentLength"]), iter(lambda: body.read(chunk), b"")

    def lines(self, name: str) -> Iterator[bytes]:
        body = self._get(name)["Body"]
        yield from body.iter_lines()

    def count_objects(self) -> int:
        """Object versions and delete markers under the prefix: what a purge removes."""
        count = 0
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self.location.prefix):
            count += len(page.get("Versions") or []) + len(page.get("DeleteMarkers") or [])
        return count


@dataclass
class Attempt:
    what: str
    outcome: str


@dataclass
class _Plan:
    endpoint: str | None
    region: str | None
    secret_names: list[str] = field(default_factory=list)


def _plan(kube: Kube, task: dict[str, Any]) -> _Plan:
    namespace = task["metadata"]["namespace"]
    status = task.get("status") or {}
    spec = task.get("spec") or {}
    config = kube.runner_config(namespace, status.get("configMapName")
                                or f"{task['metadata']['name']}-config") or {}
    s3_out = ((config.get("output") or {}).get("s3")) or {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL") or s3_out.get("endpointUrl") or None
    region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or s3_out.get("region") or "us-east-1")
    names: list[str] = []
    ref = (((spec.get("output") or {}).get("s3") or {}).get("credentialsSecretRef") or {})
    for name in (ref.get("name"), status.get("jobName") and kube.job_secret_name(
            namespace, status["jobName"]), DEFAULT_SECRET):
        if name and name not in names:
            names.append(str(name))
    return _Plan(endpoint, region, names)


def _probe(client: Any, location: ResultsLocation) -> str | None:
    """None when the credentials may read the prefix, else what S3 said."""
    try:
        client.head_object(Bucket=location.bucket, Key=location.prefix + layout.SUMMARY_JSON)
    except Exception as error:
        code = error_code(error)
        if code in _MISSING_CODES:
            return None  # allowed in, the object is just not there (yet)
        return code or str(error)
    return None


def open_results(kube: Kube, task: dict[str, Any]) -> TaskResults:
    """The task's results, opened with the first credentials that can read them."""
    meta = task.get("metadata") or {}
    uri = ((task.get("status") or {}).get("results") or {}).get("uri")
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    if not uri:
        raise ResultsUnavailableError(
            f"task {key} has no results location in its status yet "
            f"(phase {(task.get('status') or {}).get('phase') or 'unknown'})")
    try:
        location = ResultsLocation.from_uri(uri)
    except UnsafePrefixError as error:
        raise ResultsUnavailableError(f"task {key}: {error}") from error
    plan = _plan(kube, task)
    where = f" at {plan.endpoint}" if plan.endpoint else ""
    attempts: list[Attempt] = []
    if own_credentials_found():
        client = make_client(plan.endpoint, plan.region, None)
        problem = _probe(client, location)
        if problem is None:
            return TaskResults(client, location, "your AWS credentials")
        attempts.append(Attempt("your AWS credentials", f"S3{where} said {problem}"))
    else:
        attempts.append(Attempt("your AWS credentials",
                                "none found (AWS_ACCESS_KEY_ID/AWS_PROFILE, ~/.aws)"))
    namespace = str(meta.get("namespace"))
    for name in plan.secret_names:
        what = f"Secret {namespace}/{name}"
        try:
            keys = kube.read_secret(namespace, name)
        except NotFoundError:
            attempts.append(Attempt(what, "not found"))
            continue
        except ConsoleError as error:
            attempts.append(Attempt(what, "you may not read it" if "refused" in str(error)
                                    else str(error)))
            continue
        if not keys.get("AWS_ACCESS_KEY_ID"):
            attempts.append(Attempt(what, "has no AWS_ACCESS_KEY_ID"))
            continue
        client = make_client(plan.endpoint, plan.region, keys)
        problem = _probe(client, location)
        if problem is None:
            return TaskResults(client, location, what)
        attempts.append(Attempt(what, f"S3{where} said {problem}"))
    tried = "; ".join(f"{a.what}: {a.outcome}" for a in attempts)
    raise ResultsUnavailableError(
        f"cannot read {location.uri}{where}. Tried {tried}. Set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for MinIO, or ask for "
        "read access to the task namespace's credentials Secret.")
