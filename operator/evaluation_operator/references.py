"""The objects a task names but does not own (Secrets, ConfigMaps, PVCs, a PriorityClass, a
Kueue LocalQueue), and what to tell the user when one of them is missing.

Pure functions. `references` lists every reference of a spec with the task's own field path;
the `from_*` functions read what Kubernetes reports about the task's Job and pod (the
kubelet's CreateContainerConfigError message, the scheduler's message, the Job controller's
FailedCreate event) and map it back to the task's field, so users see
`spec.model.endpoint.apiKeySecretRef.name`, never the Job's env or volume.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from evaluation_operator.spec import TaskSpec

# The keys the operator reads from the S3 credentials Secret (manifests.py builds the env
# from these; AWS_SESSION_TOKEN is optional there, so a missing one is never an error).
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class Kind(enum.StrEnum):
    SECRET = "Secret"
    CONFIG_MAP = "ConfigMap"
    PVC = "PersistentVolumeClaim"
    PRIORITY_CLASS = "PriorityClass"
    LOCAL_QUEUE = "LocalQueue"

    @property
    def namespaced(self) -> bool:
        return self is not Kind.PRIORITY_CLASS


class Policy(enum.Enum):
    """What the task does while a referenced object is missing (docs/operator.md)."""

    # Wait `start_failure_grace_seconds`, then fail (and delete the Job): a Secret or
    # ConfigMap the user forgot, or a PriorityClass name that is most likely a typo.
    GRACE_THEN_FAIL = "grace"
    # Wait until it exists (the run then proceeds), bounded by spec.timeout where the Job's
    # deadline runs: nothing is held meanwhile (an unscheduled pod, a suspended Job).
    WAIT = "wait"


POLICY = {
    Kind.SECRET: Policy.GRACE_THEN_FAIL,
    Kind.CONFIG_MAP: Policy.GRACE_THEN_FAIL,
    Kind.PRIORITY_CLASS: Policy.GRACE_THEN_FAIL,
    Kind.PVC: Policy.WAIT,
    Kind.LOCAL_QUEUE: Policy.WAIT,
}


@dataclass(frozen=True)
class Reference:
    kind: Kind
    name: str
    field: str  # the task's field naming the object, e.g. spec.scheduling.priorityClassName
    key: str | None = None  # the key read from a Secret or ConfigMap
    key_field: str | None = None  # the task's field naming the key; None: fixed by the operator
    note: str = ""  # e.g. "not set: the operator's default"


@dataclass(frozen=True)
class Missing:
    """A referenced object (or a key in it) that does not exist."""

    reference: Reference
    namespace: str
    key_missing: bool = False  # the object exists, the key does not
    no_api: bool = False  # the cluster does not serve this kind at all (Kueue not installed)

    @property
    def policy(self) -> Policy:
        return POLICY[self.reference.kind]

    @property
    def field(self) -> str:
        ref = self.reference
        if self.key_missing and ref.key_field:
            return ref.key_field
        return ref.field

    def what(self) -> str:
        """`spec.x.name: Secret "k" not found in namespace "ns"`."""
        ref = self.reference
        where = f' in namespace "{self.namespace}"' if ref.kind.namespaced else ""
        note = f" ({ref.note})" if ref.note else ""
        if self.no_api:
            return (f"{self.field}{note}: {ref.kind.value} \"{ref.name}\" cannot be looked up: "
                    "this cluster does not serve Kueue's LocalQueue API (is Kueue installed?)")
        if self.key_missing:
            return (f"{self.field}{note}: {ref.kind.value} \"{ref.name}\"{where} has no key "
                    f"\"{ref.key}\"")
        return f"{self.field}{note}: {ref.kind.value} \"{ref.name}\" not found{where}"

    def fix(self) -> str:
        ref = self.reference
        if self.no_api:
            return (f"Install Kueue and create LocalQueue \"{ref.name}\" in this namespace, "
                    f"or remove {ref.field} and create a new task")
        if self.key_missing:
            return (f"Add key \"{ref.key}\" to {ref.kind.value} \"{ref.name}\", or fix "
                    f"{self.field}")
        creator = "ask a cluster admin to create" if not ref.kind.namespaced else "create"
        return f"{creator.capitalize()} {ref.kind.value} \"{ref.name}\", or fix {ref.field}"


def references(spec: TaskSpec) -> tuple[Reference, ...]:
    """Every object the spec names, with the task's field that names it."""
    refs: list[Reference] = []
    endpoint = spec.model.endpoint
    if endpoint and endpoint.api_key:
        base = "spec.model.endpoint.apiKeySecretRef"
        refs.append(Reference(Kind.SECRET, endpoint.api_key.name, f"{base}.name",
                              key=endpoint.api_key.key, key_field=f"{base}.key"))
    output = spec.output
    note = "" if output.credentials_secret_given else "not set: the operator's default Secret"
    for key in S3_CREDENTIAL_KEYS:
        refs.append(Reference(Kind.SECRET, output.credentials_secret,
                              "spec.output.s3.credentialsSecretRef.name", key=key, note=note))
    if spec.model.source_pvc_claim:
        refs.append(Reference(Kind.PVC, spec.model.source_pvc_claim,
                              "spec.model.source.pvc.claimName"))
    for index, benchmark in enumerate(spec.benchmarks):
        dataset, base = benchmark.dataset, f"spec.benchmarks[{index}].dataset"
        if dataset.configmap:
            refs.append(Reference(Kind.CONFIG_MAP, dataset.configmap.name,
                                  f"{base}.configMap.name", key=dataset.configmap.key,
                                  key_field=f"{base}.configMap.key"))
        if dataset.pvc_claim:
            refs.append(Reference(Kind.PVC, dataset.pvc_claim, f"{base}.pvc.claimName"))
    if spec.scheduling.priority_class_name:
        refs.append(Reference(Kind.PRIORITY_CLASS, spec.scheduling.priority_class_name,
                              "spec.scheduling.priorityClassName"))
    if spec.scheduling.queue_name:
        refs.append(Reference(Kind.LOCAL_QUEUE, spec.scheduling.queue_name,
                              "spec.scheduling.queueName"))
    return tuple(refs)


def _first(refs: tuple[Reference, ...], kind: Kind, name: str,
           key: str | None = None) -> Reference | None:
    """The first reference of this kind and name (and key, when one is given): several
    fields may name one object (two benchmarks on one PVC): the first is reported."""
    for ref in refs:
        if ref.kind is kind and ref.name == name and (key is None or ref.key == key):
            return ref
    return None


# The kubelet's messages (pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables).
_OBJECT_NOT_FOUND = re.compile(r'\b(secret|configmap) "([^"]+)" not found')
_KEY_NOT_FOUND = re.compile(r"couldn't find key (\S+) in (Secret|ConfigMap) ([^/\s]+)/(\S+)")
# The scheduler's (VolumeBinding plugin) and the Priority admission plugin's.
_PVC_NOT_FOUND = re.compile(r'persistentvolumeclaim "([^"]+)" not found')
_NO_PRIORITY_CLASS = re.compile(r"no PriorityClass with name (\S+) was found")
_KINDS = {"secret": Kind.SECRET, "configmap": Kind.CONFIG_MAP}


def from_container_config_error(message: str, refs: tuple[Reference, ...],
                                namespace: str) -> Missing | None:
    """The runner container waits with CreateContainerConfigError: which field is at fault."""
    if match := _KEY_NOT_FOUND.search(message):
        key, kind, _, name = match.groups()
        ref = _first(refs, _KINDS[kind.lower()], name, key)
        return Missing(ref, namespace, key_missing=True) if ref else None
    if match := _OBJECT_NOT_FOUND.search(message):
        ref = _first(refs, _KINDS[match.group(1)], match.group(2))
        return Missing(ref, namespace) if ref else None
    return None


def from_scheduler_message(message: str, refs: tuple[Reference, ...],
                           namespace: str) -> Missing | None:
    """The runner pod is unschedulable because a claim it mounts does not exist."""
    if match := _PVC_NOT_FOUND.search(message):
        ref = _first(refs, Kind.PVC, match.group(1))
        return Missing(ref, namespace) if ref else None
    return None


# The volume binding plugin's words (k8s pkg/scheduler/framework/plugins/volumebinding).
_UNBOUND_CLAIM = re.compile(r"unbound immediate PersistentVolumeClaims|didn't find available "
                            r"persistent volumes to bind|node\(s\) had volume node affinity "
                            r"conflict")


def unbound_claims(message: str, refs: tuple[Reference, ...]) -> tuple[Reference, ...]:
    """The claims the task mounts, when the scheduler waits on a claim's volume (the claim
    exists but is not bound, or its volume cannot reach any node)."""
    if not _UNBOUND_CLAIM.search(message):
        return ()
    return tuple(r for r in refs if r.kind is Kind.PVC)


def from_failed_create(message: str, refs: tuple[Reference, ...],
                       namespace: str) -> Missing | None:
    """The Job controller cannot create the runner pod (its FailedCreate event)."""
    if match := _NO_PRIORITY_CLASS.search(message):
        ref = _first(refs, Kind.PRIORITY_CLASS, match.group(1))
        return Missing(ref, namespace) if ref else None
    return None


def from_configmap(ref: Reference, data_keys: frozenset[str] | None,
                   namespace: str) -> Missing | None:
    """A ConfigMap as read (None: not found): is the referenced key there?"""
    if data_keys is None:
        return Missing(ref, namespace)
    if ref.key is not None and ref.key not in data_keys:
        return Missing(ref, namespace, key_missing=True)
    return None
