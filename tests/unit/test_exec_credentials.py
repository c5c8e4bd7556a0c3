"""Exec credential plugins (exec_credentials.py): real plugin processes, as kubectl runs them."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from evaluation_operator import apiclient
from evaluation_operator.exec_credentials import current_user, with_exec_credentials

# A plugin that answers with what it was given: its KUBERNETES_EXEC_INFO, its env and args.
PLUGIN = """
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
token = "|".join([info["apiVersion"], str(info["spec"]["interactive"]),
                  os.environ.get("CLUSTER_NAME", ""), *sys.argv[1:]])
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                  "status": {"token": token, "expirationTimestamp": "2030-01-02T03:04:05Z"}}))
"""


def kubeconfig(tmp_path: Path, user: dict[str, Any]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}]}))
    return path


def plugin(tmp_path: Path, source: str = PLUGIN, **extra: Any) -> dict[str, Any]:
    (tmp_path / "plugin.py").write_text(source)
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                     "command": sys.executable, "args": [str(tmp_path / "plugin.py"), "eu-1"],
                     "env": [{"name": "CLUSTER_NAME", "value": "prod"}], **extra}}


def test_the_plugin_token_and_its_expiry_are_used(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, plugin(tmp_path))))
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    info = apiclient.login()
    assert info.server == "https://10.0.0.1:6443"
    assert info.token == "client.authentication.k8s.io/v1beta1|False|prod|eu-1"
    assert info.expiration == datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    rest = apiclient.RestClient(apiclient.login, timeout=1)
    assert rest.headers["Authorization"] == f"Bearer {info.token}"


def test_a_client_certificate_from_the_plugin_is_used(tmp_path: Path) -> None:
    source = ('import json; print(json.dumps({"status": {"clientCertificateData": "CERT", '
              '"clientKeyData": "KEY"}}))')
    path = kubeconfig(tmp_path, plugin(tmp_path, source))
    info = with_exec_credentials(kopf.ConnectionInfo(server="https://x"), [str(path)])
    assert (info.token, info.certificate_data, info.private_key_data) == (None, "CERT", "KEY")


@pytest.mark.parametrize(("source", "error"), [
    ("import sys; sys.stderr.write('token expired, run aws sso login'); sys.exit(3)",
     "failed \\(exit 3\\): token expired, run aws sso login"),
    ("print('not json')", "printed no ExecCredential JSON"),
    ("print('{\"status\": {}}')", "neither a token nor a client certificate"),
])
def test_a_failing_plugin_is_a_login_error_that_says_why(tmp_path: Path, source: str,
                                                         error: str) -> None:
    path = kubeconfig(tmp_path, plugin(tmp_path, source))
    with pytest.raises(kopf.LoginError, match=error):
        with_exec_credentials(kopf.ConnectionInfo(server="https://x"), [str(path)])


def test_a_missing_plugin_command_is_a_login_error(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"exec": {"command": str(tmp_path / "no-such-cli")}})
    with pytest.raises(kopf.LoginError, match=r"no-such-cli.*did not run"):
        with_exec_credentials(kopf.ConnectionInfo(server="https://x"), [str(path)])


def test_static_credentials_win_and_the_plugin_is_not_run(tmp_path: Path) -> None:
    source = "import sys; sys.exit(1)"  # would fail the login if it ran
    path = kubeconfig(tmp_path, plugin(tmp_path, source))
    info = kopf.ConnectionInfo(server="https://x", token="static")
    assert with_exec_credentials(info, [str(path)]) is info
    assert with_exec_credentials(kopf.ConnectionInfo(server="https://x"),
                                 [str(kubeconfig(tmp_path, {"token": "t"}))]).token is None


def test_the_first_kubeconfig_file_that_names_a_user_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    kubeconfig(first, {"exec": {"command": "first"}})
    kubeconfig(second, {"exec": {"command": "second"}})
    assert json.dumps(current_user([str(first / "kubeconfig"), str(second / "kubeconfig")])) \
        == json.dumps({"exec": {"command": "first"}})
    assert current_user([str(tmp_path / "missing")]) == {}
