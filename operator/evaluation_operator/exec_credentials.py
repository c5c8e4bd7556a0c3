"""Exec credential plugins of a kubeconfig user, run as client-go runs them.

The kubeconfigs cloud CLIs write (`aws eks get-token`, `gke-gcloud-auth-plugin`, `kubelogin`)
name a command that prints an `ExecCredential` instead of holding a credential; Kopf's
kubeconfig login reads static credentials only. `with_exec_credentials` runs the current
user's command, never interactively, and puts the token or client certificate it prints into
the connection, with its expiry: Kopf logs in again when that passes, and the operator's own
client on a 401 (apiclient.py).
Protocol: https://kubernetes.io/docs/reference/access-authn-authz/authentication/#client-go-credential-plugins
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kopf
import yaml

EXEC_TIMEOUT_SECONDS = 60
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def kubeconfig_paths() -> list[str]:
    """`$KUBECONFIG` (a list), else `~/.kube/config`: kubectl's rule, and Kopf's."""
    listed = [path for path in os.environ.get("KUBECONFIG", "").split(os.pathsep) if path]
    return [os.path.expanduser(path) for path in listed or ["~/.kube/config"]]


def current_user(paths: Sequence[str]) -> dict[str, Any]:
    """The current context's user; the first file that sets a name wins, as in kubectl."""
    current: str | None = None
    contexts: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file) or {}
        current = current or config.get("current-context")
        for item in config.get("contexts") or []:
            contexts.setdefault(item["name"], item.get("context") or {})
        for item in config.get("users") or []:
            users.setdefault(item["name"], item.get("user") or {})
    context = contexts.get(current or "", {})
    user: dict[str, Any] = users.get(context.get("user", ""), {})
    return user


def _exec_info(api_version: str) -> str:
    return json.dumps({"apiVersion": api_version, "kind": "ExecCredential",
                       "spec": {"interactive": False}})


def run_plugin(plugin: Mapping[str, Any], runner: Runner = subprocess.run) -> dict[str, Any]:
    """The `status` of the ExecCredential the plugin prints; `kopf.LoginError` if it fails."""
    command = [str(plugin.get("command") or ""), *map(str, plugin.get("args") or [])]
    api_version = str(plugin.get("apiVersion") or "client.authentication.k8s.io/v1")
    env = {**os.environ, **{str(item["name"]): str(item["value"])
                            for item in plugin.get("env") or []},
           "KUBERNETES_EXEC_INFO": _exec_info(api_version)}
    try:
        done = runner(command, env=env, capture_output=True, text=True, check=False,
                      stdin=subprocess.DEVNULL, timeout=EXEC_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise kopf.LoginError(f"the kubeconfig's exec plugin {command[0]!r} did not run: "
                              f"{error}") from error
    if done.returncode != 0:
        raise kopf.LoginError(f"the kubeconfig's exec plugin {command[0]!r} failed "
                              f"(exit {done.returncode}): {done.stderr.strip()[-500:]}")
    try:
        status = json.loads(done.stdout).get("status") or {}
    except (ValueError, AttributeError) as error:
        raise kopf.LoginError(f"the kubeconfig's exec plugin {command[0]!r} printed no "
                              "ExecCredential JSON") from error
    if not status.get("token") and not status.get("clientCertificateData"):
        raise kopf.LoginError(f"the kubeconfig's exec plugin {command[0]!r} printed neither "
                              "a token nor a client certificate")
    return dict(status)


def _expiry(status: Mapping[str, Any]) -> datetime.datetime | None:
    stamp = status.get("expirationTimestamp")
    return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None


def with_exec_credentials(info: kopf.ConnectionInfo, paths: Sequence[str] | None = None,
                          runner: Runner = subprocess.run) -> kopf.ConnectionInfo:
    """`info` with the credential of the current user's exec plugin, if it has one and
    the kubeconfig gave no static credential."""
    if info.token or info.certificate_path or info.certificate_data or info.username:
        return info
    plugin = current_user(kubeconfig_paths() if paths is None else paths).get("exec")
    if not plugin:
        return info
    status = run_plugin(plugin, runner)
    return dataclasses.replace(
        info, token=status.get("token") or None,
        certificate_data=status.get("clientCertificateData") or None,
        private_key_data=status.get("clientKeyData") or None,
        expiration=_expiry(status))
