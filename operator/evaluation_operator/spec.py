"""The EvaluationTask spec as typed values, with the defaults of the CRD and the operator.

The CRD's schema and CEL rules reject most bad input at admission; `parse_task_spec` checks
again (a cluster may run an older CRD) and reports problems as `SpecError`s naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from evaluation_operator.config import OperatorSettings

TASK_TYPES = ("multiple-choice", "generation", "classification")
# The runner's metric registry (evaluation_runner.metrics.REGISTRY) is the source; a test
# checks this copy, the CRD's enum and the docs against it.
METRICS = ("accuracy", "acc-norm", "exact-match", "f1", "bleu", "chrf", "rouge-1", "rouge-2",
           "rouge-l", "rouge-lsum")
# The CRD's spec.parallelism maximum (and the runner's, evaluation_runner.config.MAX_SHARDS).
MAX_PARALLELISM = 64
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_S3_URI = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)$")
_URL_WITH_CREDENTIALS = re.compile(r"^https?://[^/?#]*@")


class SpecError(ValueError):
    """A problem with the spec; `field` is the path users see (e.g. spec.timeout)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class Endpoint:
    url: str
    api: str = "chat"
    api_key: SecretKeyRef | None = None
    timeout_seconds: int = 120


@dataclass(frozen=True)
class Model:
    name: str
    endpoint: Endpoint | None = None
    source_uri: str | None = None
    source_pvc_claim: str | None = None
    source_pvc_path: str = ""  # relative to the volume's root


@dataclass(frozen=True)
class Dataset:
    uri: str | None = None
    configmap: SecretKeyRef | None = None  # name + key
    pvc_claim: str | None = None
    pvc_path: str | None = None
    format: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    name: str
    dataset: Dataset
    task: str
    metrics: tuple[str, ...]
    limit: int | None = None
    few_shot: int = 0
    labels: tuple[str, ...] | None = None
    weight: float = 1.0
    language: str | None = None
    # Passed to the runner as given (the CRD's schema checks it; the runner parses it).
    metric_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resources:
    gpu: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "2"
    memory: str = "8Gi"


@dataclass(frozen=True)
class Scheduling:
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    priority_class_name: str = ""
    queue_name: str = ""


@dataclass(frozen=True)
class Output:
    bucket: str
    prefix: str
    credentials_secret: str
    credentials_secret_given: bool = False  # False: the operator's default Secret


# What a benchmark that cannot be scored does to the run: FailFast fails it, Continue scores
# the others and ends PartiallyFailed. The CRD's enum and the runner's list are the same
# (tests/contract/test_shared_lists.py).
FAILURE_POLICIES = ("FailFast", "Continue")
FAIL_FAST, CONTINUE = FAILURE_POLICIES


@dataclass(frozen=True)
class Gate:
    """A threshold the run must meet to pass: on one benchmark's metric (`benchmark` and
    `metric`), or on the overall score (`benchmark` None). `min`: higher is better; `max`:
    lower is better; both: a band. Values on the metric's own scale (BLEU and chrF 0-100)."""

    benchmark: str | None
    metric: str | None
    min: float | None = None
    max: float | None = None

    @property
    def target(self) -> str:
        """What the gate reads, as users name it: `arc-easy/accuracy` or `overall`."""
        return f"{self.benchmark}/{self.metric}" if self.benchmark else "overall"

    @property
    def bounds(self) -> str:
        """`>= 0.7`, `<= 0.2`, `in [0.2, 0.8]`."""
        if self.min is not None and self.max is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"


@dataclass(frozen=True)
class TaskSpec:
    model: Model
    framework: str
    image: str | None
    benchmarks: tuple[Benchmark, ...]
    parameters: dict[str, Any]
    resources: Resources
    scheduling: Scheduling
    timeout_seconds: int
    retries: int
    output: Output
    gates: tuple[Gate, ...] = ()
    failure_policy: str = "Continue"  # one of FAILURE_POLICIES
    # Pods sharing the samples (an Indexed Job and a merge when above 1; sharding.py).
    parallelism: int = 1


# Bucket and prefix rules, mirrored one for one by the CRD's CEL rules on spec.output.s3
# (tests/integration/test_admission_s3_rules.py runs both on one table of values).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_BAD_DOTS = re.compile(r"[.][.]|[.]-|-[.]")
_BUCKET_IP = re.compile(r"^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$")
_PREFIX_DOTDOT = re.compile(r"(^|/)[.][.](/|$)")
_PREFIX_EMPTY_SEGMENT = re.compile(r"//+[^/]")
_PREFIX_CHARS = re.compile(r"^[A-Za-z0-9!_.*'()/-]*$")


def bucket_problem(bucket: str) -> str | None:
    """Why `bucket` is not a usable S3 bucket name, or None."""
    if (not _BUCKET.search(bucket) or _BUCKET_BAD_DOTS.search(bucket)
            or _BUCKET_IP.search(bucket) or bucket.startswith("xn--")
            or bucket.endswith("-s3alias")):
        return (f"{bucket!r} is not a valid bucket name: 3-63 lowercase letters, digits, '.' "
                "and '-', starting and ending with a letter or digit, no '..', not an IP address")
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` is not a usable key prefix, or None."""
    if (prefix.startswith("/") or _PREFIX_DOTDOT.search(prefix)
            or _PREFIX_EMPTY_SEGMENT.search(prefix) or not _PREFIX_CHARS.search(prefix)):
        return (f"{prefix!r} is not a valid key prefix: relative, no '..' or empty segments, "
                "letters, digits and ! - _ . * ' ( ) /")
    return None


def parse_duration(value: str, field_path: str = "spec.timeout") -> int:
    match = _DURATION.match(value or "")
    if not value or not match or not any(match.groups()):
        raise SpecError(field_path, f"{value!r} is not a duration like 30m, 2h or 1h30m")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def split_s3_uri(uri: str) -> tuple[str, str]:
    match = _S3_URI.match(uri)
    if not match:
        raise ValueError(f"{uri!r} is not s3://bucket/key")
    return match.group(1), match.group(2)


def _secret_ref(raw: Any, field_path: str) -> SecretKeyRef | None:
    if not raw:
        return None
    if not raw.get("name") or not raw.get("key"):
        raise SpecError(field_path, "needs both name and key")
    return SecretKeyRef(name=str(raw["name"]), key=str(raw["key"]))


def _parse_model(raw: Any) -> Model:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise SpecError("spec.model.name", "is required")
    endpoint_raw, source_raw = raw.get("endpoint"), raw.get("source")
    if bool(endpoint_raw) == bool(source_raw):
        raise SpecError("spec.model", "set exactly one of model.endpoint or model.source")
    endpoint = None
    if endpoint_raw:
        url = str(endpoint_raw.get("url", ""))
        if not re.match(r"^https?://[^\s/?#]+", url):
            raise SpecError("spec.model.endpoint.url", f"{url!r} is not an http(s) URL")
        if _URL_WITH_CREDENTIALS.match(url):
            # Not quoted: the URL holds a secret that must not reach status or events.
            raise SpecError("spec.model.endpoint.url", "must not hold credentials; use "
                                                       "apiKeySecretRef")
        api = str(endpoint_raw.get("api", "chat"))
        if api not in ("chat", "completions"):
            raise SpecError("spec.model.endpoint.api", f"{api!r}: use chat or completions")
        endpoint = Endpoint(
            url=url, api=api,
            api_key=_secret_ref(endpoint_raw.get("apiKeySecretRef"),
                                "spec.model.endpoint.apiKeySecretRef"),
            timeout_seconds=int(endpoint_raw.get("timeoutSeconds", 120)),
        )
    if not source_raw:
        return Model(name=str(raw["name"]), endpoint=endpoint)
    if bool(source_raw.get("uri")) == bool(source_raw.get("pvc")):
        raise SpecError("spec.model.source", "set exactly one of source.uri and source.pvc")
    if source_raw.get("uri"):
        uri = str(source_raw["uri"])
        if not (uri.startswith("/") or re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", uri)):
            raise SpecError("spec.model.source.uri", f"{uri!r} is not s3://bucket/path or an "
                                                     "absolute path")
        return Model(name=str(raw["name"]), source_uri=uri)
    pvc = source_raw["pvc"]
    path = str(pvc.get("path") or "").strip("/")
    if not pvc.get("claimName") or ".." in path.split("/"):
        raise SpecError("spec.model.source.pvc", "needs claimName and a path without '..'")
    return Model(name=str(raw["name"]), source_pvc_claim=str(pvc["claimName"]),
                 source_pvc_path=path)


def _parse_dataset(raw: Any, field_path: str) -> Dataset:
    raw = raw or {}
    sources = [k for k in ("uri", "configMap", "pvc") if raw.get(k)]
    if len(sources) != 1:
        raise SpecError(field_path, "set exactly one of uri, configMap, pvc")
    fields = {k: str(v) for k, v in (raw.get("fields") or {}).items()}
    fmt = raw.get("format")
    if raw.get("uri"):
        uri = str(raw["uri"])
        if _URL_WITH_CREDENTIALS.match(uri):
            raise SpecError(f"{field_path}.uri", "must not hold credentials (user:password@)")
        if not (_S3_URI.match(uri) or re.match(r"^https?://[^\s/?#]+/", uri)):
            raise SpecError(f"{field_path}.uri",
                            f"{uri!r} is not s3://bucket/key or an http(s) URL")
        return Dataset(uri=uri, format=fmt, fields=fields)
    if raw.get("configMap"):
        ref = _secret_ref(raw["configMap"], f"{field_path}.configMap")
        return Dataset(configmap=ref, format=fmt, fields=fields)
    pvc = raw["pvc"]
    path = str(pvc.get("path", ""))
    if not pvc.get("claimName") or not path or ".." in path.split("/"):
        raise SpecError(f"{field_path}.pvc", "needs claimName and a path without '..'")
    return Dataset(pvc_claim=str(pvc["claimName"]), pvc_path=path.lstrip("/"), format=fmt,
                   fields=fields)


def _parse_benchmarks(raw: Any) -> tuple[Benchmark, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecError("spec.benchmarks", "at least one benchmark is required")
    seen: set[str] = set()
    benchmarks = []
    for index, item in enumerate(raw):
        path = f"spec.benchmarks[{index}]"
        name = str(item.get("name", ""))
        if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?", name) or len(name) > 63:
            raise SpecError(f"{path}.name", f"{name!r}: lowercase letters, digits, '-', '.', '_'")
        if name in seen:
            raise SpecError(f"{path}.name", f"duplicate benchmark name {name!r}")
        seen.add(name)
        task = str(item.get("task", ""))
        if task not in TASK_TYPES:
            raise SpecError(f"{path}.task", f"{task!r}: use one of {', '.join(TASK_TYPES)}")
        metrics = tuple(str(m) for m in item.get("metrics") or ())
        if not metrics:
            raise SpecError(f"{path}.metrics", "at least one metric is required")
        for metric in metrics:
            if metric not in METRICS:
                raise SpecError(f"{path}.metrics", f"unknown metric {metric!r}")
        labels = item.get("labels")
        benchmarks.append(Benchmark(
            name=name, dataset=_parse_dataset(item.get("dataset"), f"{path}.dataset"), task=task,
            metrics=metrics, limit=item.get("limit"), few_shot=int(item.get("fewShot", 0)),
            labels=tuple(str(x) for x in labels) if labels else None,
            weight=float(item.get("weight", 1)),
            language=str(item["language"]) if item.get("language") else None,
            metric_options=dict(item.get("metricOptions") or {}),
        ))
    return tuple(benchmarks)


def _bound(raw: Any, field_path: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise SpecError(field_path, f"{raw!r} is not a number")
    return float(raw)


def _parse_gates(raw: Any, benchmarks: tuple[Benchmark, ...]) -> tuple[Gate, ...]:
    """The same rules as the CRD's CEL on spec.gates (a cluster may run an older CRD)."""
    if not raw:
        return ()
    if not isinstance(raw, list):
        raise SpecError("spec.gates", "must be a list")
    metrics_of = {b.name: b.metrics for b in benchmarks}
    gates = []
    for index, item in enumerate(raw):
        path = f"spec.gates[{index}]"
        if not isinstance(item, dict):
            raise SpecError(path, "must be an object")
        benchmark, overall = item.get("benchmark"), item.get("overall") is True
        if bool(benchmark) == overall:
            raise SpecError(path, "set exactly one of benchmark (with metric) or overall: true")
        metric = item.get("metric")
        if benchmark:
            if str(benchmark) not in metrics_of:
                raise SpecError(f"{path}.benchmark", f"{benchmark!r} is not in spec.benchmarks")
            if not metric:
                raise SpecError(f"{path}.metric", "a benchmark gate needs a metric")
            if str(metric) not in metrics_of[str(benchmark)]:
                raise SpecError(f"{path}.metric", f"{metric!r} is not one of the metrics of "
                                                  f"benchmark {benchmark!r}")
        elif metric:
            raise SpecError(f"{path}.metric", "an overall gate takes no metric")
        low, high = _bound(item.get("min"), f"{path}.min"), _bound(item.get("max"), f"{path}.max")
        if low is None and high is None:
            raise SpecError(path, "set min (higher is better), max (lower is better) or both")
        if low is not None and high is not None and low > high:
            raise SpecError(path, f"min {low:g} is above max {high:g}")
        gates.append(Gate(benchmark=str(benchmark) if benchmark else None,
                          metric=str(metric) if metric else None, min=low, max=high))
    return tuple(gates)


def parse_task_spec(spec: dict[str, Any], settings: OperatorSettings) -> TaskSpec:
    framework = spec.get("framework") or {}
    resources = spec.get("resources") or {}
    scheduling = spec.get("scheduling") or {}
    s3 = (spec.get("output") or {}).get("s3") or {}
    bucket = s3.get("bucket") or settings.s3_bucket
    if not bucket:
        raise SpecError("spec.output.s3.bucket",
                        "no bucket given and the operator has no default (EVAL_S3_BUCKET)")
    if s3.get("bucket") and (problem := bucket_problem(str(bucket))):
        raise SpecError("spec.output.s3.bucket", problem)
    prefix = str(s3.get("prefix") if s3.get("prefix") is not None else settings.s3_prefix)
    if problem := prefix_problem(prefix):
        raise SpecError("spec.output.s3.prefix", problem)
    gpu = int(resources.get("gpu", 1))
    if gpu < 0:
        raise SpecError("spec.resources.gpu", "must be >= 0")
    retries = int(spec.get("retries", 2))
    if retries < 0:
        raise SpecError("spec.retries", "must be >= 0")
    failure_policy = str(spec.get("failurePolicy", CONTINUE))
    if failure_policy not in FAILURE_POLICIES:
        raise SpecError("spec.failurePolicy",
                        f"{failure_policy!r}: use {' or '.join(FAILURE_POLICIES)}")
    parallelism = spec.get("parallelism", 1)
    if not isinstance(parallelism, int) or isinstance(parallelism, bool) or not (
            1 <= parallelism <= MAX_PARALLELISM):
        raise SpecError("spec.parallelism", f"{parallelism!r}: an integer from 1 to "
                                            f"{MAX_PARALLELISM}")
    if parallelism > 1 and str(framework.get("name", "builtin")) != "builtin":
        raise SpecError("spec.parallelism", "above 1 needs framework builtin (lm-eval runs "
                                            "each benchmark whole in one process)")
    parameters = {"temperature": 0.0, "maxTokens": 256, "concurrency": 16, "seed": 1234}
    parameters.update(spec.get("parameters") or {})
    benchmarks = _parse_benchmarks(spec.get("benchmarks"))
    return TaskSpec(
        model=_parse_model(spec.get("model")),
        framework=str(framework.get("name", "builtin")),
        image=framework.get("image") or None,
        benchmarks=benchmarks,
        gates=_parse_gates(spec.get("gates"), benchmarks),
        parameters=parameters,
        resources=Resources(
            gpu=gpu,
            gpu_resource=str(resources.get("gpuResource") or settings.gpu_resource),
            cpu=str(resources.get("cpu", "2")),
            memory=str(resources.get("memory", "8Gi")),
        ),
        scheduling=Scheduling(
            node_selector={k: str(v) for k, v in (scheduling.get("nodeSelector") or {}).items()},
            tolerations=tuple(scheduling.get("tolerations") or ()),
            priority_class_name=str(scheduling.get("priorityClassName") or ""),
            queue_name=str(scheduling.get("queueName") or ""),
        ),
        timeout_seconds=parse_duration(str(spec.get("timeout", "2h"))),
        retries=retries,
        parallelism=parallelism,
        output=Output(
            bucket=str(bucket), prefix=prefix.strip("/"),
            credentials_secret=str((s3.get("credentialsSecretRef") or {}).get("name")
                                   or settings.s3_credentials_secret),
            credentials_secret_given=bool((s3.get("credentialsSecretRef") or {}).get("name")),
        ),
        failure_policy=failure_policy,
    )
