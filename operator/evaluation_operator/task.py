"""The EvaluationTask as one typed value, parsed once at the edge (the Kopf handlers).

Nothing below the handlers reads the raw body again: the spec is a `TaskSpec` (or the error
that stopped it from being one), the status is kept as stored, with typed accessors for the
few fields the operator decides on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evaluation_operator import naming
from evaluation_operator.config import OperatorSettings
from evaluation_operator.s3 import ResultsLocation, results_location
from evaluation_operator.spec import SpecError, TaskSpec, parse_task_spec
from evaluation_operator.states import Phase, Reason, reason_of


@dataclass(frozen=True)
class Task:
    namespace: str
    name: str
    uid: str
    generation: int = 1
    created: str | None = None
    deleting: bool = False
    spec: TaskSpec | None = None
    # Why `spec` is None: the field and what is wrong with it.
    spec_error: str | None = None
    # spec.timeout as the user wrote it, for messages ("spec.timeout (2h)").
    timeout_text: str = "2h"
    location: ResultsLocation | None = None
    status: Mapping[str, Any] = field(default_factory=dict)
    # spec.cancel: read from the raw spec, so a cancel counts even when the rest of the
    # spec does not parse.
    cancel_requested: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any], settings: OperatorSettings) -> Task:
        meta = body.get("metadata") or {}
        raw_spec = body.get("spec") or {}
        namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        spec: TaskSpec | None = None
        error: str | None = None
        location: ResultsLocation | None = None
        try:
            spec = parse_task_spec(dict(raw_spec), settings)
            location = results_location(spec.output.bucket, spec.output.prefix, namespace,
                                        name, uid)
        except (SpecError, ValueError) as problem:
            spec, error = None, str(problem)
        status = body.get("status") or {}
        return cls(
            namespace=namespace, name=name, uid=uid,
            generation=int(meta.get("generation") or 1),
            created=meta.get("creationTimestamp"),
            deleting=bool(meta.get("deletionTimestamp")),
            spec=spec, spec_error=error,
            timeout_text=str(raw_spec.get("timeout", "2h")),
            location=location,
            status=dict(status),
            cancel_requested=raw_spec.get("cancel") is True,
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def phase(self) -> Phase | None:
        try:
            return Phase(str(self.status.get("phase")))
        except ValueError:
            return None

    @property
    def reason(self) -> Reason | None:
        return reason_of(self.status.get("reason"))

    @property
    def finished(self) -> bool:
        return self.phase is not None and self.phase.terminal

    @property
    def started(self) -> bool:
        """A runner was seen running (so a lost Job must not simply be created again)."""
        return bool(self.status.get("startTime"))

    @property
    def job_name(self) -> str:
        return naming.job_name(self.name)

    @property
    def merge_job_name(self) -> str:
        return naming.merge_job_name(self.name)

    @property
    def sharded(self) -> bool:
        return self.spec is not None and self.spec.parallelism > 1

    @property
    def configmap_name(self) -> str:
        return naming.configmap_name(self.name)

    @property
    def results_uri(self) -> str | None:
        """Where the results are, as recorded in status (else as the spec says)."""
        recorded = (self.status.get("results") or {}).get("uri")
        if recorded:
            return str(recorded)
        return self.location.uri if self.location else None

    def reference(self) -> dict[str, Any]:
        """What an Event needs to point at this task."""
        return {"apiVersion": f"{naming.GROUP}/{naming.VERSION}", "kind": naming.KIND,
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}}

    def with_status(self, status: Mapping[str, Any]) -> Task:
        return Task(**{**self.__dict__, "status": dict(status)})
