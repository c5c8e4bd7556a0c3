"""Purging a task's results from a real (moto) S3 endpoint, and never anything else."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from evaluation_operator import s3
from evaluation_operator.config import OperatorSettings
from evaluation_operator.s3 import (
    PurgeIncompleteError,
    ResultsLocation,
    UnsafePrefixError,
    purge,
    read_capped,
    results_location,
    shared_client,
    warm_up,
)

from tests.support.s3 import S3Endpoint

UID = "6f1d2c3b-aaaa-bbbb-cccc-ddddeeeeffff"


@pytest.fixture
def bucket(s3_server: S3Endpoint) -> Iterator[Any]:
    s3 = s3_server.client()
    name = "purge-unit"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    yield s3
    listing = s3.list_object_versions(Bucket=name)
    for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
        s3.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
    s3.delete_bucket(Bucket=name)


def count(s3: Any, prefix: str) -> int:
    total = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket="purge-unit",
                                                                  Prefix=prefix):
        total += len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
    return total


def test_purges_versions_and_markers_across_pages_and_batches(bucket: Any) -> None:
    location = results_location("purge-unit", "runs", "team-a", "big", UID)
    neighbour = results_location("purge-unit", "runs", "team-a", "big-2", UID)
    for i in range(1100):  # more than one DeleteObjects batch
        bucket.put_object(Bucket="purge-unit", Key=f"{location.prefix}samples/{i}", Body=b"x")
    bucket.put_object(Bucket="purge-unit", Key=location.prefix + "summary.json", Body=b"1")
    bucket.put_object(Bucket="purge-unit", Key=location.prefix + "summary.json", Body=b"2")
    bucket.delete_object(Bucket="purge-unit", Key=location.prefix + "summary.json")
    bucket.put_object(Bucket="purge-unit", Key=neighbour.prefix + "summary.json", Body=b"n")
    assert count(bucket, location.prefix) == 1103
    assert purge(bucket, location) == 1103
    assert count(bucket, location.prefix) == 0
    assert count(bucket, neighbour.prefix) == 1


def test_purge_of_an_empty_prefix_is_quick_and_fine(bucket: Any) -> None:
    assert purge(bucket, results_location("purge-unit", "runs", "team-a", "none", UID)) == 0


@pytest.mark.parametrize(("namespace", "name", "uid"), [
    ("team-a", "..", UID), ("..", "x", UID), ("team-a", "a/b", UID), ("team-a", "x", "../../"),
    ("", "x", UID),
])
def test_unsafe_locations_are_refused(namespace: str, name: str, uid: str) -> None:
    with pytest.raises(UnsafePrefixError):
        results_location("b", "runs", namespace, name, uid)


def test_prefix_from_status_uri_is_checked() -> None:
    assert ResultsLocation.from_uri(f"s3://b/runs/ns/t/{UID}/").prefix == f"runs/ns/t/{UID}/"
    for bad in ("s3://b/", "s3://b/runs/", "s3://b/runs/../x/y/", "s3://b/a//b/"):
        with pytest.raises(UnsafePrefixError):
            ResultsLocation.from_uri(bad)


class RefusingS3:
    """An S3 that answers DeleteObjects with per-key errors (e.g. object lock)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def get_paginator(self, name: str) -> Any:
        return self.real.get_paginator(name)

    def delete_objects(self, **kwargs: Any) -> dict[str, Any]:
        objects = kwargs["Delete"]["Objects"]
        return {"Errors": [{"Key": o["Key"], "Code": "AccessDenied",
                            "Message": "object is under legal hold"} for o in objects]}


def test_per_key_errors_are_raised_not_ignored(bucket: Any) -> None:
    location = results_location("purge-unit", "runs", "team-a", "locked", UID)
    bucket.put_object(Bucket="purge-unit", Key=location.prefix + "summary.json", Body=b"x")
    with pytest.raises(PurgeIncompleteError, match="legal hold"):
        purge(RefusingS3(bucket), location)
    assert count(bucket, location.prefix) == 1


def test_purge_never_touches_a_task_nested_below_this_prefix(bucket: Any) -> None:
    """Team B picks spec.output.s3.prefix so that its results land below team A's prefix;
    deleting team A's task must still leave team B's results alone."""
    team_a = results_location("purge-unit", "runs", "team-a", "eval", UID)
    team_b = results_location("purge-unit", team_a.prefix.rstrip("/"), "team-b", "eval",
                              "11111111-2222-3333-4444-555555555555")
    assert team_b.prefix.startswith(team_a.prefix)
    for location in (team_a, team_b):
        for key in ("summary.json", "results.zip", "benchmarks/arc/samples.jsonl"):
            bucket.put_object(Bucket="purge-unit", Key=location.prefix + key, Body=b"x")
    assert purge(bucket, team_a) == 3
    assert count(bucket, team_b.prefix) == 3
    assert count(bucket, team_a.prefix) == 3  # exactly team B's objects remain


def test_capped_reads_refuse_big_objects_from_their_size(bucket: Any) -> None:
    from evaluation_operator.s3 import ObjectTooLargeError, read_capped

    where = results_location("purge-unit", "capped", "team-a", "t", UID)
    bucket.put_object(Bucket="purge-unit", Key=where.prefix + "small.json", Body=b"{}")
    bucket.put_object(Bucket="purge-unit", Key=where.prefix + "empty.json", Body=b"")
    bucket.put_object(Bucket="purge-unit", Key=where.prefix + "big.json", Body=b"x" * 5000)
    bucket.put_object(Bucket="purge-unit", Key=where.prefix + "edge.json", Body=b"x" * 1000)
    assert read_capped(bucket, where, "small.json", 1000) == b"{}"
    assert read_capped(bucket, where, "empty.json", 1000) == b""
    assert read_capped(bucket, where, "edge.json", 1000) == b"x" * 1000
    assert read_capped(bucket, where, "missing.json", 1000) is None
    with pytest.raises(ObjectTooLargeError) as caught:
        read_capped(bucket, where, "big.json", 1000)
    assert (caught.value.size, caught.value.limit) == (5000, 1000)


def test_unreachable_means_s3_did_not_answer_or_failed() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
    from evaluation_operator.s3 import is_unreachable

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code},
                            "ResponseMetadata": {
                                "RequestId": "", "HostId": "", "HTTPStatusCode": status,
                                "HTTPHeaders": {}, "RetryAttempts": 0}}, "GetObject")

    assert is_unreachable(EndpointConnectionError(endpoint_url="http://s3"))
    assert is_unreachable(ReadTimeoutError(endpoint_url="http://s3"))
    assert is_unreachable(client_error("InternalError", 500))
    assert is_unreachable(client_error("SlowDown", 503))
    assert not is_unreachable(client_error("AccessDenied", 403))
    assert not is_unreachable(client_error("NoSuchBucket", 404))


def test_the_shared_client_is_made_at_start_and_serves_every_later_call(
        s3_server: S3Endpoint, bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    settings = OperatorSettings(s3_bucket="purge-unit", s3_endpoint=s3_server.endpoint_url,
                                s3_region=s3_server.region)
    bucket.put_object(Bucket="purge-unit", Key="t/summary.json", Body=b"{}")
    assert warm_up(settings) is None
    made = s3._shared[settings]
    assert shared_client(settings) is made
    assert read_capped(made, ResultsLocation("purge-unit", "t/"), "summary.json", 10) == b"{}"
    s3._shared.pop(settings)


def test_warming_up_loads_what_the_purge_uses_without_a_request() -> None:
    # Loaded later, in the middle of a sweep of deletions, these stay among the pages it
    # frees (memory.py); nothing listens at this endpoint, so any request would fail.
    settings = OperatorSettings(s3_bucket="b", s3_endpoint="http://127.0.0.1:9",
                                s3_region="us-east-1")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "id")
        env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        assert warm_up(settings) is None
    loaded = {key[2] for key in s3._shared[settings]._loader._cache
              if key[0] == "load_service_model"}
    assert {"service-2", "paginators-1"} <= loaded
    s3._shared.pop(settings)


def test_no_bucket_means_no_client_and_a_broken_client_is_named() -> None:
    assert warm_up(OperatorSettings()) is None and OperatorSettings() not in s3._shared
    settings = OperatorSettings(s3_bucket="b", s3_endpoint="not a url")
    problem = warm_up(settings)
    assert problem is not None and "not a url" in problem
    assert settings not in s3._shared
