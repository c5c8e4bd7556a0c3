"""The task's results in S3: where they live, reading them, and purging them for good.

Everything is scoped to `<prefix>/<namespace>/<task>/<uid>/`. The uid means a new task with an
old name never sees or deletes the old task's data, and every key is checked against the
prefix before it is deleted, so nothing outside a task's own results is ever touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from evaluation_operator.config import OperatorSettings

_DNS_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_UID = re.compile(r"^[0-9a-fA-F-]{8,64}$")
DELETE_BATCH = 1000


class UnsafePrefixError(ValueError):
    pass


class PurgeIncompleteError(RuntimeError):
    """S3 answered, but some objects could not be deleted (e.g. object lock)."""


@dataclass(frozen=True)
class ResultsLocation:
    bucket: str
    prefix: str  # always ends with "/"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def bundle_uri(self) -> str:
        return f"{self.uri}results.zip"

    @property
    def log_uri(self) -> str:
        """The runner's own log (evaluation_runner.layout.RUNNER_LOG), also after a failure
        and after the Job's TTL removed the pod and its log."""
        return f"{self.uri}runner.log"

    @classmethod
    def from_uri(cls, uri: str) -> ResultsLocation:
        match = re.match(r"^s3://([^/]+)/(.+/)$", uri)
        if not match:
            raise UnsafePrefixError(f"{uri!r} is not s3://bucket/prefix/")
        location = cls(match.group(1), match.group(2))
        _check_prefix(location.prefix)
        return location


def _check_prefix(prefix: str) -> None:
    parts = prefix.rstrip("/").split("/")
    if not prefix.endswith("/") or len(parts) < 3 or any(p in ("", ".", "..") for p in parts):
        raise UnsafePrefixError(f"refusing unsafe results prefix {prefix!r}")


def results_location(bucket: str, base_prefix: str, namespace: str, name: str, uid: str
                     ) -> ResultsLocation:
    for what, value in (("namespace", namespace), ("name", name)):
        if not _DNS_NAME.match(value) or ".." in value:
            raise UnsafePrefixError(f"task {what} {value!r} is not a DNS name")
    if not _UID.match(uid):
        raise UnsafePrefixError(f"task uid {uid!r} is not a uid")
    base = base_prefix.strip("/")
    prefix = f"{base}/{namespace}/{name}/{uid}/" if base else f"{namespace}/{name}/{uid}/"
    _check_prefix(prefix)
    return ResultsLocation(bucket=bucket, prefix=prefix)


_shared: dict[OperatorSettings, Any] = {}


def shared_client(settings: OperatorSettings) -> Any:
    """One client for the whole operator (boto3 clients are thread-safe; making one costs
    ~0.1 s and ~0.2 MiB, which per call added up to most of the operator's CPU and memory)."""
    client = _shared.get(settings)
    if client is None:
        client = _shared[settings] = s3_client(settings)
    return client


def warm_up(settings: OperatorSettings) -> str | None:
    """Make the shared client at start-up; the reason if it cannot be made (None: made).

    Making it loads botocore's S3 model: ~215,000 small objects and ~20 MiB that stay for
    the operator's life, so they count in its RSS at start rather than appearing in the
    middle of the first burst of events, and a client that cannot be made (no credentials)
    is said at start. (Measured: it did not by itself change the RSS left after the tasks
    were deleted; bench/README.md.) Nothing is sent to S3; a request of each kind the
    operator makes is signed, and the purge's paginator made: botocore loads their models on
    first use, and what it loads then stays among the pages a sweep of deletions frees.
    """
    if not settings.s3_bucket:
        return None
    bucket, key = settings.s3_bucket, "warm-up"
    try:
        client = shared_client(settings)
        client.get_paginator("list_object_versions")
        for operation, params in (
                ("get_object", {"Bucket": bucket, "Key": key, "Range": "bytes=0-0"}),
                ("list_object_versions", {"Bucket": bucket, "Prefix": key}),
                ("delete_objects", {"Bucket": bucket, "Delete": {"Objects": [{"Key": key}],
                                                                 "Quiet": True}})):
            client.generate_presigned_url(operation, Params=params, ExpiresIn=60)
    except Exception as error:  # no credentials yet, say: each call will try again
        return f"{type(error).__name__}: {error}"
    return None


def s3_client(settings: OperatorSettings) -> Any:
    import boto3
    from botocore.config import Config

    # "when_required": MinIO and Ceph reject the CRC32 checksums boto3 >= 1.36 sends by default.
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5, read_timeout=30,
        max_pool_connections=settings.api_workers,
    )
    return boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                        config=config)


class ObjectTooLargeError(ValueError):
    """An object is bigger than the caller is willing to hold in memory."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"{key} is {size} bytes, more than the limit of {limit} bytes")
        self.key, self.size, self.limit = key, size, limit


def read_capped(client: Any, location: ResultsLocation, key: str, limit: int) -> bytes | None:
    """The object at `<prefix><key>`, or None when it does not exist; never more than
    `limit` bytes in memory. One ranged GET: an object over the limit is refused from its
    size (Content-Range or Content-Length) without reading its body.

    Raises ObjectTooLargeError when it is bigger, and S3's own errors otherwise.
    """
    try:
        response = client.get_object(Bucket=location.bucket, Key=location.prefix + key,
                                     Range=f"bytes=0-{limit}")
    except Exception as error:
        code = _error_code(error)
        if code in ("NoSuchKey", "404", "NotFound"):
            return None
        if code in ("InvalidRange", "416"):
            return b""  # a range of an empty object
        raise
    body = response["Body"]
    try:
        size = _object_size(response)
        if size is not None and size > limit:
            raise ObjectTooLargeError(key, size, limit)
        data: bytes = body.read(limit + 1)
        if len(data) > limit:
            raise ObjectTooLargeError(key, len(data), limit)
        return data
    finally:
        body.close()  # unread bytes are dropped with the connection, not downloaded


def _object_size(response: dict[str, Any]) -> int | None:
    """The whole object's size: from `Content-Range: bytes 0-N/SIZE` of a ranged answer, or
    Content-Length when the server ignored the range."""
    content_range = str(response.get("ContentRange") or "")
    match = re.match(r"^bytes \d+-\d+/(\d+)$", content_range)
    if match:
        return int(match.group(1))
    length = response.get("ContentLength")
    return int(length) if isinstance(length, int) else None


def is_unreachable(error: BaseException) -> bool:
    """True when S3 itself cannot be reached or is failing (connection errors, timeouts,
    5xx): worth waiting for. False when S3 answered (missing object, access denied...)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    if isinstance(error, BotoConnectionError | HTTPClientError | OSError | TimeoutError):
        return True
    response = getattr(error, "response", None) or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (isinstance(status, int) and status >= 500) or _error_code(error) in (
        "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")


def _error_code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def purge(client: Any, location: ResultsLocation) -> int:
    """Delete every object version and delete marker under the prefix; return how many.

    Paginates and deletes in batches of at most 1,000 keys. DeleteObjects reports per-key
    failures inside a successful response, so those are raised, never ignored.
    """
    _check_prefix(location.prefix)
    deleted = 0
    while True:
        batch = list(_versions(client, location, limit=DELETE_BATCH))
        if not batch:
            return deleted
        response = client.delete_objects(
            Bucket=location.bucket, Delete={"Objects": batch, "Quiet": True}
        )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise PurgeIncompleteError(
                f"{len(errors)} of {len(batch)} objects under {location.uri} could not be "
                f"deleted; first: {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
        deleted += len(batch)


# The folders a runner writes one level of subfolders into (evaluation_runner.storage.
# RUNNER_DIRECTORIES is the source; tests/runner/test_layout.py checks both against a run).
RUNNER_DIRECTORIES = ("benchmarks", "checkpoints")
# A sharded run's folder and the files of each shard (evaluation_runner.layout.SHARDS_DIR and
# SHARD_FILES are the source; tests/runner/test_sharding.py checks both against a run).
SHARDS_DIRECTORY = "shards"
SHARD_FILES = ("progress.json", "runner.log", "shard.json")


def is_task_key(relative: str) -> bool:
    """Whether a key below a task's prefix can be the task's own.

    A runner writes at most `benchmarks/<name>/<file>` or `checkpoints/<name>/<file>` below
    its prefix. Deeper keys belong to another task whose prefix nests inside this one (a
    custom spec.output.s3.prefix such as `runs/team-a/<task>/<uid>` can arrange that), so a
    purge must leave them alone.
    """
    parts = relative.split("/")
    if len(parts) <= 2 or (len(parts) == 3 and parts[0] in RUNNER_DIRECTORIES):
        return True
    # A sharded run: `shards/<i>/` holds the shard's files and the same two folders, one
    # level down. A nested task's keys there would have its uid at parts[2]: never matched.
    return (parts[0] == SHARDS_DIRECTORY and parts[1].isdigit()
            and ((len(parts) == 3 and parts[2] in SHARD_FILES)
                 or (len(parts) == 5 and parts[2] in RUNNER_DIRECTORIES)))


def _versions(client: Any, location: ResultsLocation, limit: int) -> Any:
    count = 0
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=location.prefix):
        for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            key = item["Key"]
            if not key.startswith(location.prefix):
                raise UnsafePrefixError(f"S3 listed {key!r} outside {location.prefix!r}")
            if not is_task_key(key[len(location.prefix):]):
                continue
            entry = {"Key": key}
            if item.get("VersionId"):
                # Unversioned buckets list VersionId "null", which S3 accepts back.
                entry["VersionId"] = item["VersionId"]
            yield entry
            count += 1
            if count >= limit:
                return
