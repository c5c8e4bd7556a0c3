"""S3 access for datasets and results."""

from __future__ import annotations

import time
from typing import Any

from evaluation_runner import layout
from evaluation_runner.config import OutputConfig
from evaluation_runner.errors import ConfigurationError, TransientError

UPLOAD_ATTEMPTS = 4
# Everything a runner writes below its task's prefix: these files, and one level of folders
# below the two directories (benchmarks/<name>/..., checkpoints/<name>/...). The operator's
# purge (evaluation_operator.s3.RUNNER_FILES / RUNNER_DIRECTORIES) must cover exactly these;
# tests/runner/test_layout.py checks both sides against a real run.
RUNNER_FILES = layout.FILES
RUNNER_DIRECTORIES = layout.DIRECTORIES
_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")


def s3_client(endpoint_url: str | None, region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    # "when_required": MinIO and Ceph reject the CRC32 checksums boto3 >= 1.36 sends by default.
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60))


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def split_s3_uri(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise ConfigurationError(f"{uri!r} is not s3://bucket/key")
    return bucket, key


class ResultsWriter:
    """Writes below the task's prefix only, retrying; failure after retries is transient."""

    def __init__(self, output: OutputConfig, client: Any | None = None,
                 backoff_seconds: float = 1.0) -> None:
        self.output = output
        self.client = client or s3_client(output.endpoint_url, output.region)
        self.backoff_seconds = backoff_seconds

    def below(self, folder: str) -> ResultsWriter:
        """A writer for a folder of this prefix (a shard's `shards/<i>/`), same client."""
        if not folder.endswith("/") or folder.startswith("/") or ".." in folder.split("/"):
            raise ValueError(f"not a folder below the results prefix: {folder!r}")
        output = OutputConfig(self.output.bucket, self.output.prefix + folder,
                              self.output.endpoint_url, self.output.region)
        return ResultsWriter(output, self.client, self.backoff_seconds)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.output.bucket}/{self.output.prefix}{key}"

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"refusing to write outside the results prefix: {key!r}")
        last: Exception | None = None
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                self.client.put_object(Bucket=self.output.bucket, Key=self.output.prefix + key,
                                       Body=body, ContentType=content_type)
                return
            except Exception as error:
                if error_code(error) in _AUTH_CODES or error_code(error) == "NoSuchBucket":
                    raise ConfigurationError(
                        f"output.s3: cannot write {self.uri(key)}: {error_code(error)} "
                        "(check the bucket and the credentials Secret)") from error
                last = error
                if attempt + 1 < UPLOAD_ATTEMPTS:
                    time.sleep(self.backoff_seconds * 2 ** attempt)
        raise TransientError(f"uploading {self.uri(key)} failed after {UPLOAD_ATTEMPTS} "
                             f"attempts: {last}", reason="UploadFailed")


def list_keys(writer: ResultsWriter, below: str) -> list[str]:
    """Keys (relative to the task's prefix) under `below`, a folder of the prefix."""
    keys: list[str] = []
    paginator = writer.client.get_paginator("list_objects_v2")
    prefix = writer.output.prefix + below
    for page in paginator.paginate(Bucket=writer.output.bucket, Prefix=prefix):
        keys.extend(item["Key"][len(writer.output.prefix):] for item in page.get("Contents", []))
    return sorted(keys)


def read_key(writer: ResultsWriter, key: str) -> bytes:
    body: bytes = writer.client.get_object(Bucket=writer.output.bucket,
                                           Key=writer.output.prefix + key)["Body"].read()
    return body
