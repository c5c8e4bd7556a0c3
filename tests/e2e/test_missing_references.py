"""A missing Secret or key as the real kubelet reports it (CreateContainerConfigError), mapped
back to the task's own field (issue 10). The KWOK tests play the kubelet's words; here the
kubelet itself says them."""

from __future__ import annotations

from typing import Any

import pytest
from devcluster.cluster import Cluster

from tests.e2e.support import Timings, create_task

pytestmark = pytest.mark.e2e


def test_a_missing_secret_or_key_as_the_kubelet_reports_it(
        cluster: Cluster, e2e_namespace: str, spec_for: Any, model: Any,
        timings: Timings) -> None:
    cluster.kubectl("create", "secret", "generic", "llm-key-wrong", "-n", e2e_namespace,
                    "--from-literal=other=x")
    runs = {}
    for name, secret in (("no-secret", "llm-key"), ("no-key", "llm-key-wrong")):
        spec = spec_for()
        spec["model"]["endpoint"]["apiKeySecretRef"] = {"name": secret, "key": "token"}
        runs[name] = create_task(cluster, e2e_namespace, name, spec)
    expected = {
        "no-secret": ('spec.model.endpoint.apiKeySecretRef.name: Secret "llm-key" not found '
                      f'in namespace "{e2e_namespace}"'),
        "no-key": ('spec.model.endpoint.apiKeySecretRef.key: Secret "llm-key-wrong" in '
                   f'namespace "{e2e_namespace}" has no key "token"'),
    }
    for name, text in expected.items():
        status = runs[name].finish(timings, f"missing reference ({name})")
        assert (status["phase"], status["reason"]) == ("Failed", "ReferenceNotFound"), status
        assert status["message"].startswith(text), status
        waiting = runs[name].pods() or []
        for pod in waiting:  # the kubelet's own words, when the pod is still there
            state = pod["status"]["containerStatuses"][0]["state"]
            assert state.get("waiting", {}).get("reason") == "CreateContainerConfigError"
