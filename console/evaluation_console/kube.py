"""Kubernetes access with the user's own kubeconfig and RBAC (never the operator's).

Every API refusal becomes a `ConsoleError` that says who was refused what, so a user without
permission reads "you may not ..." instead of a stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from evaluation_console.errors import ConsoleError, NotFoundError

GROUP, VERSION, PLURAL = "evaluation.dev", "v1alpha1", "evaluationtasks"
TASK_LABEL = "evaluation.dev/task"


@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    impersonate_user: str | None = None
    impersonate_group: str | None = None


class Kube:
    """The few API calls the console makes, as the user."""

    def __init__(self, options: KubeOptions) -> None:
        from kubernetes import client, config

        self.options = options
        try:
            api_client = config.new_client_from_config(
                config_file=options.kubeconfig, context=options.context)
            _, active = config.list_kube_config_contexts(config_file=options.kubeconfig)
        except config.ConfigException as error:
            problem = str(error).rstrip(".")
            raise ConsoleError(f"cannot load your kubeconfig: {problem}. Set KUBECONFIG or "
                               "--kubeconfig.") from error
        if options.context:
            contexts, _ = config.list_kube_config_contexts(config_file=options.kubeconfig)
            active = next((c for c in contexts if c["name"] == options.context), active)
        self.default_namespace = (
            options.namespace or (active or {}).get("context", {}).get("namespace")
            or "default")
        if options.impersonate_user:
            api_client.set_default_header("Impersonate-User", options.impersonate_user)
            if options.impersonate_group:
                api_client.set_default_header("Impersonate-Group", options.impersonate_group)
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.user = options.impersonate_user or "you"

    # --- errors -------------------------------------------------------------------------
    def _refusal(self, error: Any, verb: str, what: str, namespace: str | None) -> ConsoleError:
        where = f"in namespace {namespace!r}" if namespace else "in all namespaces"
        status = getattr(error, "status", None)
        reason = _api_message(error)
        if status == 403:
            return ConsoleError(
                f"refused: {self.user} may not {verb} {what} {where} (Kubernetes RBAC). "
                f"Ask a cluster admin for a Role that allows it. API server said: {reason}")
        if status == 401:
            return ConsoleError(f"refused: the API server did not accept your credentials "
                                f"({reason}); log in again or check your kubeconfig.")
        if status == 404:
            return NotFoundError(f"{what} not found {where}")
        return ConsoleError(f"cannot {verb} {what} {where}: {reason or error}")

    # --- tasks --------------------------------------------------------------------------
    def list_tasks(self, namespace: str | None) -> list[dict[str, Any]]:
        from kubernetes.client import ApiException

        try:
            if namespace is None:
                result = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            else:
                result = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                   PLURAL)
        except ApiException as error:
            raise self._refusal(error, "list", "evaluationtasks", namespace) from error
        return list(result.get("items") or [])

    def watch_tasks(self, namespace: str | None, timeout_seconds: int
                    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch
        from kubernetes.client import ApiException

        watcher = watch.Watch()
        try:
            if namespace is None:
                stream = watcher.stream(self.custom.list_cluster_custom_object, GROUP, VERSION,
                                        PLURAL, timeout_seconds=timeout_seconds)
            else:
                stream = watcher.stream(self.custom.list_namespaced_custom_object, GROUP,
                                        VERSION, namespace, PLURAL,
                                        timeout_seconds=timeout_seconds)
            for event in stream:
                yield str(event["type"]), dict(event["object"])
        except ApiException as error:
            raise self._refusal(error, "watch", "evaluationtasks", namespace) from error
        finally:
            watcher.stop()

    def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        from kubernetes.client import ApiException

        try:
            task: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            raise self._refusal(error, "get", f"evaluationtask {name!r}", namespace) from error
        return task

    def delete_task(self, namespace: str, name: str) -> None:
        from kubernetes.client import ApiException

        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            raise self._refusal(error, "delete", f"evaluationtask {name!r}",
                                namespace) from error

    # --- what the runner was given ------------------------------------------------------
    def runner_config(self, namespace: str, configmap: str) -> dict[str, Any] | None:
        """The runner's config.json (for the S3 endpoint and region), None when unreadable."""
        from kubernetes.client import ApiException

        try:
            cm = self.core.read_namespaced_config_map(configmap, namespace)
        except ApiException:
            return None
        try:
            value = json.loads((cm.data or {}).get("config.json") or "null")
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def job_secret_name(self, namespace: str, job: str) -> str | None:
        """The Secret the runner's AWS_ACCESS_KEY_ID came from, when the Job still exists."""
        from kubernetes.client import ApiException

        try:
            spec = self.batch.read_namespaced_job(job, namespace).spec
        except ApiException:
            return None
        for container in spec.template.spec.containers or []:
            for env in container.env or []:
                ref = env.value_from.secret_key_ref if env.value_from else None
                if env.name == "AWS_ACCESS_KEY_ID" and ref is not None:
                    return str(ref.name)
        return None

    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        import base64

        from kubernetes.client import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            raise self._refusal(error, "read", f"secret {name!r}", namespace) from error
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def pod_log(self, namespace: str, task: str) -> str:
        """The newest runner pod's log, while the pod exists."""
        from kubernetes.client import ApiException

        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=f"{TASK_LABEL}={task}")
        except ApiException as error:
            raise self._refusal(error, "list", "pods", namespace) from error
        if not pods.items:
            raise NotFoundError(f"no pod of task {task!r} exists any more in {namespace!r}")
        newest = max(pods.items, key=lambda p: p.metadata.creation_timestamp)
        try:
            return str(self.core.read_namespaced_pod_log(newest.metadata.name, namespace))
        except ApiException as error:
            raise self._refusal(error, "read the log of", f"pod {newest.metadata.name!r}",
                                namespace) from error


def _api_message(error: Any) -> str:
    body = getattr(error, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body)
        except (ValueError, AttributeError):
            return str(body)
    return str(getattr(error, "reason", "") or "")
