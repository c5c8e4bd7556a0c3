"""Drive pods on KWOK nodes the way a kubelet would report them (see hack/kwok/stages.yaml).

Pods on the fake nodes go Pending -> Running right after scheduling and stay Running until a
test finishes them here. Images under `unpullable.invalid/` wait with ErrImagePull instead.
"""

from __future__ import annotations

from typing import Any

EXIT_CODE = "kwok.evaluation.dev/exit-code"
REASON = "kwok.evaluation.dev/reason"
MESSAGE = "kwok.evaluation.dev/message"
COMPLETE_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
UNPULLABLE_REGISTRY = "unpullable.invalid"


def finish_pod(
    core_v1: Any,
    namespace: str,
    pod_name: str,
    exit_code: int,
    message: str = "",
    reason: str | None = None,
) -> None:
    """Terminate the pod's running container with this exit code, termination message and
    reason (default Completed for 0, Error otherwise; e.g. "OOMKilled" with 137)."""
    annotations = {EXIT_CODE: str(exit_code), MESSAGE: message}
    if reason:
        annotations[REASON] = reason
    core_v1.patch_namespaced_pod(pod_name, namespace, {"metadata": {"annotations": annotations}})


def unpullable_image(name: str = "runner") -> str:
    """An image reference that the fake kubelet reports as ErrImagePull."""
    return f"{UNPULLABLE_REGISTRY}/{name}:v0"
