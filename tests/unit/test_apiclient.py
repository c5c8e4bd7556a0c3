"""The operator's REST client (apiclient.py) and the calls on it (kube.py), against real local
servers: every request has a deadline (a server that accepts and then says nothing costs a
bounded time, not a thread forever), a timed-out request is tried once more on a new
connection, and the API server's answers mean what the reconciler expects (409 "exists",
404 "gone", 403 "not allowed to look")."""

from __future__ import annotations

import datetime
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kopf
import pytest
import urllib3
import yaml
from evaluation_operator import apiclient, naming
from evaluation_operator.apiclient import USER_AGENT, ApiError, RestClient, configure_kopf, login
from evaluation_operator.config import OperatorSettings
from evaluation_operator.kube import FailedCreate, Found, Kube, failed_creates_of

SETTINGS = OperatorSettings(api_qps=1000, api_burst=1000)


def credentials(port: int, token: str = "t0k3n") -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token=token)


# --- deadlines -------------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """Accepts connections and never answers (nor closes them)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join(5)
    for sock in [*accepted, listener]:
        sock.close()


def test_a_silent_api_server_costs_two_timeouts_not_forever(
    silent_server: tuple[int, list[socket.socket]],
) -> None:
    port, accepted = silent_server
    rest = RestClient(lambda: credentials(port), timeout=(1, 1))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        rest.request("GET", "/api/v1/namespaces/default/pods")
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 6, elapsed
    assert len(accepted) == 2, "the retry must use a new connection"


def test_after_a_timeout_the_pool_is_dropped_and_the_retry_answers() -> None:
    """The first connection goes silent after the request (a dead NAT entry); the request is
    sent again on a new connection, which answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    connections: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(10)
        silent = listener.accept()[0]  # reads the request, never answers
        connections.append(silent)
        silent.recv(65536)
        answering = listener.accept()[0]
        connections.append(answering)
        answering.recv(65536)
        body = b'{"kind": "ConfigMap", "data": {"a": "1"}}'
        answering.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        rest = RestClient(lambda: credentials(port), timeout=(1, 1))
        started = time.monotonic()
        answer = rest.json("GET", "/api/v1/namespaces/ns/configmaps/a")
        assert answer["data"] == {"a": "1"}
        assert 0.9 < time.monotonic() - started < 4
        thread.join(5)
        assert len(connections) == 2
    finally:
        for sock in [*connections, listener]:
            sock.close()


def test_kopf_watches_and_requests_get_the_configured_deadlines() -> None:
    ours = OperatorSettings.from_env({"EVAL_API_TIMEOUT_SECONDS": "12",
                                      "EVAL_API_CONNECT_TIMEOUT_SECONDS": "3",
                                      "EVAL_WATCH_TIMEOUT_SECONDS": "20"})
    settings = kopf.OperatorSettings()
    configure_kopf(settings, ours)
    assert (settings.watching.server_timeout, settings.watching.client_timeout,
            settings.watching.connect_timeout) == (20, 26, 3)
    assert (settings.networking.request_timeout, settings.networking.connect_timeout) == (12, 3)


# --- answers ---------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeApiServer:
    """A local HTTP server answering `routes[(method, path)] = (status, body)` (anything
    else: 404 with an empty Status, as for a resource the server does not serve)."""

    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    accepted_token: str | None = None
    port: int = 0

    def answer(self, method: str, target: str, headers: dict[str, str], raw: bytes
               ) -> tuple[int, bytes]:
        self.seen.append(Seen(method, target, headers, json.loads(raw) if raw else None))
        if self.accepted_token and headers.get("Authorization") != f"Bearer {self.accepted_token}":
            return 401, b'{"kind": "Status", "message": "Unauthorized"}'
        status, body = self.routes.get((method, target), (404, {"kind": "Status"}))
        return status, body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, body = fake.answer(self.command, self.path, dict(self.headers.items()),
                                       self.rfile.read(length))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, *_: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(5)


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "code": code, "reason": reason,
            "message": message, **({"details": details} if details else {})}


def kube(fake: FakeApiServer) -> Kube:
    return Kube(RestClient(lambda: credentials(fake.port), timeout=(2, 5)), SETTINGS)


JOBS = "/apis/batch/v1/namespaces/ns/jobs"
CONFIGMAPS = "/api/v1/namespaces/ns/configmaps"


def test_an_error_carries_status_reason_and_the_api_servers_message(
    api_server: FakeApiServer,
) -> None:
    api_server.routes["GET", f"{CONFIGMAPS}/x"] = (
        422, status_body(422, "Invalid", 'ConfigMap "x" is invalid', name="x"))
    api_server.routes["GET", f"{CONFIGMAPS}/y"] = (500, b"<html>proxy error</html>")
    rest = RestClient(lambda: credentials(api_server.port), timeout=(2, 5))
    with pytest.raises(ApiError) as invalid:
        rest.request("GET", f"{CONFIGMAPS}/x")
    assert (invalid.value.status, invalid.value.reason) == (422, "Unprocessable Entity")
    assert invalid.value.message == 'ConfigMap "x" is invalid'
    assert invalid.value.details == {"name": "x"}
    assert 'ConfigMap "x" is invalid' in str(invalid.value)
    with pytest.raises(ApiError) as not_json:
        rest.request("GET", f"{CONFIGMAPS}/y")
    assert (not_json.value.status, not_json.value.message) == (500, "Internal Server Error")
    assert not_json.value.body == "<html>proxy error</html>"


def test_requests_say_who_sends_them_and_with_which_credentials(
    api_server: FakeApiServer,
) -> None:
    api_server.routes["POST", CONFIGMAPS] = (201, {"kind": "ConfigMap"})
    assert kube(api_server).create({"kind": "ConfigMap", "metadata": {"namespace": "ns"}})
    [seen] = api_server.seen
    assert seen.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("evaluation-operator/")
    assert seen.headers["Authorization"] == "Bearer t0k3n"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body == {"kind": "ConfigMap", "metadata": {"namespace": "ns"}}


def test_create_says_whether_it_created_and_raises_other_refusals(
    api_server: FakeApiServer,
) -> None:
    job = {"kind": "Job", "metadata": {"namespace": "ns", "name": "j"}}
    api_server.routes["POST", JOBS] = (201, job)
    assert kube(api_server).create(job) is True
    api_server.routes["POST", JOBS] = (409, status_body(409, "AlreadyExists", "exists"))
    assert kube(api_server).create(job) is False
    api_server.routes["POST", JOBS] = (403, status_body(403, "Forbidden", "cannot create"))
    with pytest.raises(ApiError) as refused:
        kube(api_server).create(job)
    assert (refused.value.status, refused.value.message) == (403, "cannot create")


def test_owner_uid_reads_the_tasks_owner_reference(api_server: FakeApiServer) -> None:
    owners = [{"kind": "Deployment", "uid": "d"}, {"kind": naming.KIND, "uid": "u-1"}]
    api_server.routes["GET", f"{JOBS}/mine"] = (
        200, {"metadata": {"name": "mine", "ownerReferences": owners}})
    api_server.routes["GET", f"{CONFIGMAPS}/nobodys"] = (200, {"metadata": {"name": "n"}})
    api = kube(api_server)
    assert api.owner_uid("Job", "ns", "mine") == "u-1"
    assert api.owner_uid("ConfigMap", "ns", "nobodys") is None
    assert api.owner_uid("Job", "ns", "gone") == ""


def test_status_patches_are_merge_patches_and_a_deleted_task_is_no_error(
    api_server: FakeApiServer,
) -> None:
    target = f"/apis/{naming.GROUP}/{naming.VERSION}/namespaces/ns/{naming.PLURAL}/t/status"
    api_server.routes["PATCH", target] = (200, {})
    api = kube(api_server)
    api.patch_task_status("ns", "t", {"phase": "Running"})
    assert api_server.seen[-1].headers["Content-Type"] == "application/merge-patch+json"
    assert api_server.seen[-1].body == {"status": {"phase": "Running"}}
    api.patch_task_status("ns", "deleted", {"phase": "Running"})  # 404: nothing to report on
    api_server.routes["PATCH", target] = (500, status_body(500, "InternalError", "etcd"))
    with pytest.raises(ApiError):
        api.patch_task_status("ns", "t", {"phase": "Running"})


def test_a_job_is_deleted_in_the_background_and_a_gone_one_is_no_error(
    api_server: FakeApiServer,
) -> None:
    api_server.routes["DELETE", f"{JOBS}/j?propagationPolicy=Background"] = (200, {})
    api = kube(api_server)
    api.delete_job("ns", "j")
    api.delete_job("ns", "gone")
    assert [s.path for s in api_server.seen] == [
        f"{JOBS}/j?propagationPolicy=Background", f"{JOBS}/gone?propagationPolicy=Background"]


def test_configmap_keys_none_when_missing_and_403_raises(api_server: FakeApiServer) -> None:
    api_server.routes["GET", f"{CONFIGMAPS}/data"] = (
        200, {"data": {"q.jsonl": "x"}, "binaryData": {"img.bin": "eA=="}})
    api_server.routes["GET", f"{CONFIGMAPS}/secret"] = (
        403, status_body(403, "Forbidden", "cannot get configmaps"))
    api = kube(api_server)
    assert api.configmap_keys("ns", "data") == frozenset({"q.jsonl", "img.bin"})
    assert api.configmap_keys("ns", "missing") is None
    with pytest.raises(ApiError) as refused:
        api.configmap_keys("ns", "secret")
    assert refused.value.status == 403


def test_local_queue_tells_missing_queue_from_missing_kueue_and_no_permission(
    api_server: FakeApiServer,
) -> None:
    queues = "/apis/kueue.x-k8s.io/{}/namespaces/ns/localqueues/{}"
    api_server.routes["GET", queues.format("v1beta1", "q")] = (200, {"kind": "LocalQueue"})
    api_server.routes["GET", queues.format("v1beta2", "absent")] = (
        404, status_body(404, "NotFound", "not found", name="absent", kind="localqueues"))
    api_server.routes["GET", queues.format("v1beta2", "hidden")] = (
        403, status_body(403, "Forbidden", "cannot get localqueues"))
    api = kube(api_server)
    assert api.local_queue("ns", "q") is Found.YES  # v1beta2 not served, v1beta1 is
    assert api.local_queue("ns", "absent") is Found.NO
    assert api.local_queue("ns", "hidden") is Found.UNKNOWN
    assert api.local_queue("ns", "other") is Found.NO_API  # neither version served


def test_failed_creates_are_listed_once_per_namespace(api_server: FakeApiServer) -> None:
    events = "/api/v1/namespaces/ns/events?" + (
        "fieldSelector=involvedObject.kind%3DJob%2Creason%3DFailedCreate&limit=500")
    api_server.routes["GET", events] = (200, {"items": [
        {"involvedObject": {"uid": "j1"}, "message": "Error creating: quota exceeded",
         "firstTimestamp": "2026-11-29T12:00:00Z", "lastTimestamp": "2026-11-29T12:00:05Z"}]})
    found = kube(api_server).failed_creates("ns")
    assert found == {"j1": FailedCreate(
        "quota exceeded", datetime.datetime(2026, 11, 29, 12, tzinfo=datetime.UTC))}


def test_the_newest_failed_create_message_wins_since_the_earliest() -> None:
    found = failed_creates_of([
        {"involvedObject": {"uid": "j"}, "message": "Error creating: later",
         "eventTime": "2026-11-29T12:00:09.123456Z"},
        {"involvedObject": {"uid": "j"}, "message": "Error creating: first",
         "firstTimestamp": "2026-11-29T11:59:00Z", "lastTimestamp": "2026-11-29T12:00:01Z"},
        {"involvedObject": {"uid": "k"}, "message": "no times at all"},
    ])
    assert found["j"].message == "later"
    assert found["j"].since == datetime.datetime(2026, 11, 29, 11, 59, tzinfo=datetime.UTC)
    assert found["k"] == FailedCreate("no times at all",
                                      datetime.datetime.min.replace(tzinfo=datetime.UTC))


def test_a_401_logs_in_again_once_and_retries(api_server: FakeApiServer) -> None:
    """A projected ServiceAccount token is rotated by the kubelet: read it again."""
    tokens = iter(["new", "newer"])
    api_server.accepted_token = "new"
    api_server.routes["GET", f"{CONFIGMAPS}/a"] = (200, {"data": {"k": "v"}})
    api = kube(api_server)
    api.rest.credentials = lambda: credentials(api_server.port, next(tokens))
    api.rest.headers["Authorization"] = "Bearer old"
    assert api.configmap_keys("ns", "a") == frozenset({"k"})
    assert [s.headers["Authorization"] for s in api_server.seen] == ["Bearer old", "Bearer new"]
    api_server.accepted_token = "nobody's"
    with pytest.raises(ApiError) as refused:  # one new login, not a loop
        api.configmap_keys("ns", "a")
    assert refused.value.status == 401
    assert len(api_server.seen) == 4


# --- who the operator is ---------------------------------------------------------------------


def test_without_a_service_account_the_kubeconfig_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = {"current-context": "c",
              "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
              "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443",
                                                     "insecure-skip-tls-verify": True}}],
              "users": [{"name": "u", "user": {"token": "abc"}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    info = login()
    assert (info.server, info.token, info.insecure) == ("https://10.0.0.1:6443", "abc", True)
    rest = RestClient(login, timeout=1)
    assert rest.server == "https://10.0.0.1:6443"
    assert rest.headers["Authorization"] == "Bearer abc"


def test_in_a_pod_the_service_address_from_the_environment_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="sa",
                              default_namespace="eval-system")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: pod)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert login().server == "https://10.96.0.1:443"
    assert login().token == "sa"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert login().server == "https://[fd00::1]:443"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert login().server == "https://kubernetes.default.svc"


def test_no_credentials_at_all_is_a_login_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    monkeypatch.setattr(kopf, "login_with_kubeconfig", lambda **_: None)
    with pytest.raises(kopf.LoginError, match="kubeconfig"):
        apiclient.login()
