"""What the API server refuses at admission, as users would write it, and what it accepts.

Each rejected spec must come back with exactly one cause (no misleading second error for
the same mistake), naming the task's own field and saying what is wrong, and never a CEL
runtime error. Each accepted spec is also parsed by the operator, so the two agree.

Specs are YAML as a user writes them; `model` and `benchmarks` default to a small valid
pair when a case leaves them out (a case that needs one gone sets it to null).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from devcluster.cluster import Cluster
from evaluation_operator.config import OperatorSettings
from evaluation_operator.spec import parse_task_spec
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.conftest import task_manifest

pytestmark = pytest.mark.cluster

DEFAULTS = yaml.safe_load("""
model: {name: llama-3-8b, endpoint: {url: http://llama3.models.svc:8000/v1}}
benchmarks:
- {name: arc-easy, dataset: {uri: s3://datasets/arc-easy.jsonl}, task: multiple-choice,
   metrics: [accuracy]}
""")
NEVER_SHOWN = ("runtime error", "no such key", "compil", "cost", "Internal error",
               "no matching overload")


@dataclass(frozen=True)
class Rejected:
    id: str
    spec: str
    field: str
    message: str


def spec_of(text: str) -> dict[str, Any]:
    spec: dict[str, Any] = {**copy.deepcopy(DEFAULTS), **(yaml.safe_load(text) or {})}
    return {key: value for key, value in spec.items() if value is not None}


def _long(n: int) -> str:
    return "a" * n


REJECTED = [
    # --- model -----------------------------------------------------------------------------
    Rejected("model-without-name", "model: {endpoint: {url: 'http://llama3.models.svc:8000/v1'}}",
             "spec.model.name", "Required value"),
    Rejected("model-name-empty", "model: {name: '', endpoint: {url: 'http://m.svc:8000/v1'}}",
             "spec.model.name", "at least 1 chars long"),
    Rejected("model-neither-endpoint-nor-source", "model: {name: llama-3-8b}", "spec.model",
             "set exactly one of model.endpoint"),
    Rejected("model-endpoint-and-source", """
model:
  name: llama-3-8b
  endpoint: {url: 'http://llama3.models.svc:8000/v1'}
  source: {uri: 's3://models/llama3-8b/'}""", "spec.model", "set exactly one of model.endpoint"),
    Rejected("endpoint-ftp", "model: {name: m, endpoint: {url: 'ftp://models.internal/llama'}}",
             "spec.model.endpoint.url", "e.g. http://llama3.models.svc:8000/v1"),
    Rejected("endpoint-without-scheme",
             "model: {name: m, endpoint: {url: 'llama3.models.svc:8000/v1'}}",
             "spec.model.endpoint.url", "must be an http:// or https:// URL"),
    Rejected("endpoint-with-space",
             "model: {name: m, endpoint: {url: 'http://llama3 models.svc/v1'}}",
             "spec.model.endpoint.url", "must be an http:// or https:// URL"),
    Rejected("endpoint-with-credentials",
             "model: {name: m, endpoint: {url: 'https://me:sk-live-123@api.example.com/v1'}}",
             "spec.model.endpoint.url", "must not hold credentials"),
    Rejected("endpoint-with-chat-path", """
model: {name: m, endpoint: {url: 'http://llama3.models.svc:8000/v1/chat/completions'}}""",
             "spec.model.endpoint.url", "without /chat/completions or /completions"),
    Rejected("endpoint-with-completions-path", """
model: {name: m, endpoint: {url: 'http://qwen.models.svc/v1/completions', api: completions}}""",
             "spec.model.endpoint.url", "e.g. http://llama3.models.svc:8000/v1"),
    Rejected("endpoint-with-chat-path-and-slash", """
model: {name: m, endpoint: {url: 'https://api.example.com/v1/chat/completions/'}}""",
             "spec.model.endpoint.url", "without /chat/completions"),
    Rejected("endpoint-api-responses",
             "model: {name: m, endpoint: {url: 'http://m.svc/v1', api: responses}}",
             "spec.model.endpoint.api", 'Unsupported value: "responses"'),
    Rejected("endpoint-api-capitalised",
             "model: {name: m, endpoint: {url: 'http://m.svc/v1', api: Chat}}",
             "spec.model.endpoint.api", 'supported values: "chat", "completions"'),
    Rejected("endpoint-without-url", "model: {name: m, endpoint: {api: chat}}",
             "spec.model.endpoint.url", "Required value"),
    Rejected("api-key-ref-without-key", """
model: {name: m, endpoint: {url: 'http://m.svc/v1', apiKeySecretRef: {name: llama3-key}}}""",
             "spec.model.endpoint.apiKeySecretRef.key", "Required value"),
    Rejected("api-key-secret-name-uppercase", """
model: {name: m, endpoint: {url: 'http://m.svc/v1',
        apiKeySecretRef: {name: Llama3_Key, key: token}}}""",
             "spec.model.endpoint.apiKeySecretRef.name",
             "'Llama3_Key' is not a valid Secret name"),
    Rejected("api-key-secret-in-other-namespace", """
model: {name: m, endpoint: {url: 'http://m.svc/v1',
        apiKeySecretRef: {name: team-b/llama3-key, key: token}}}""",
             "spec.model.endpoint.apiKeySecretRef.name", "e.g. llama3-key"),
    Rejected("api-key-secret-key-with-slash", """
model: {name: m, endpoint: {url: 'http://m.svc/v1',
        apiKeySecretRef: {name: llama3-key, key: tokens/main}}}""",
             "spec.model.endpoint.apiKeySecretRef.key", "'tokens/main' is not a valid Secret key"),
    Rejected("api-key-secret-key-dotdot", """
model: {name: m, endpoint: {url: 'http://m.svc/v1',
        apiKeySecretRef: {name: llama3-key, key: '..'}}}""",
             "spec.model.endpoint.apiKeySecretRef.key", "e.g. token"),
    Rejected("api-key-in-spec", """
model: {name: m, endpoint: {url: 'http://m.svc/v1', apiKey: sk-live-123}}""",
             "spec.model.endpoint", 'unknown field "spec.model.endpoint.apiKey"'),
    Rejected("endpoint-timeout-zero",
             "model: {name: m, endpoint: {url: 'http://m.svc/v1', timeoutSeconds: 0}}",
             "spec.model.endpoint.timeoutSeconds", "greater than or equal to 1"),
    Rejected("endpoint-timeout-two-hours",
             "model: {name: m, endpoint: {url: 'http://m.svc/v1', timeoutSeconds: 7200}}",
             "spec.model.endpoint.timeoutSeconds", "less than or equal to 3600"),
    Rejected("endpoint-timeout-as-duration",
             "model: {name: m, endpoint: {url: 'http://m.svc/v1', timeoutSeconds: 60s}}",
             "spec.model.endpoint.timeoutSeconds", "must be of type integer"),
    Rejected("source-gcs", "model: {name: m, source: {uri: 'gs://models/llama3-8b/'}}",
             "spec.model.source.uri", "e.g. s3://models/llama3-8b/"),
    Rejected("source-relative-path", "model: {name: m, source: {uri: models/llama3-8b}}",
             "spec.model.source.uri", "must be s3://bucket/path or an absolute path"),
    Rejected("source-uri-and-pvc", """
model: {name: m, source: {uri: 's3://models/x/', pvc: {claimName: weights}}}""",
             "spec.model.source", "set exactly one of model.source.uri and model.source.pvc"),
    Rejected("source-empty", "model: {name: m, source: {}}", "spec.model.source",
             "set exactly one of model.source.uri and model.source.pvc"),
    Rejected("source-pvc-name-uppercase", "model: {name: m, source: {pvc: {claimName: Weights}}}",
             "spec.model.source.pvc.claimName",
             "'Weights' is not a valid PersistentVolumeClaim name"),
    Rejected("source-pvc-traversal",
             "model: {name: m, source: {pvc: {claimName: weights, path: ../team-b/llama}}}",
             "spec.model.source.pvc.path", "must not contain '..'"),
    Rejected("source-pvc-without-claim", "model: {name: m, source: {pvc: {path: llama}}}",
             "spec.model.source.pvc.claimName", "Required value"),
    # --- framework ---------------------------------------------------------------------------
    Rejected("lm-eval-with-local-weights", """
model: {name: mistral-7b, source: {uri: 's3://models/mistral-7b/'}}
framework: {name: lm-eval}""", "spec.framework.name",
             "framework lm-eval evaluates a served model only"),
    Rejected("lm-eval-multiple-choice-with-chat", """
model: {name: qwen, endpoint: {url: 'http://qwen.models.svc:8000/v1', api: chat}}
framework: {name: lm-eval}""", "spec.model.endpoint.api",
             "multiple-choice benchmarks by log-likelihood, which needs model.endpoint.api: "
             "completions"),
    Rejected("lm-eval-multiple-choice-default-api", """
model: {name: qwen, endpoint: {url: 'http://qwen.models.svc:8000/v1'}}
framework: {name: lm-eval}
benchmarks:
- {name: squad, dataset: {uri: 's3://datasets/squad.jsonl'}, task: generation, metrics: [f1]}
- {name: hellaswag, dataset: {uri: 's3://datasets/hs.jsonl'}, task: multiple-choice,
   metrics: [accuracy]}""", "spec.model.endpoint.api", "or use framework builtin"),
    Rejected("parallelism-zero", "parallelism: 0", "spec.parallelism",
             "should be greater than or equal to 1"),
    Rejected("parallelism-too-many", "parallelism: 65", "spec.parallelism",
             "should be less than or equal to 64"),
    Rejected("parallelism-with-lm-eval", """
model: {name: qwen, endpoint: {url: 'http://qwen.models.svc:8000/v1', api: completions}}
framework: {name: lm-eval}
parallelism: 4""", "spec.parallelism", "parallelism above 1 needs framework builtin"),
    Rejected("framework-unknown", "framework: {name: helm}", "spec.framework.name",
             'Unsupported value: "helm"'),
    Rejected("image-uppercase", "framework: {image: 'ghcr.io/Acme/Runner:1.0'}",
             "spec.framework.image", "e.g. ghcr.io/evaluation-operator/runner:0.1.0"),
    Rejected("image-with-space", "framework: {image: 'ghcr.io/acme/runner 1.0'}",
             "spec.framework.image", "is not an image reference"),
    Rejected("image-with-scheme", "framework: {image: 'https://ghcr.io/acme/runner:1.0'}",
             "spec.framework.image", "'https://ghcr.io/acme/runner:1.0' is not an image"),
    Rejected("image-bad-digest", "framework: {image: 'ghcr.io/acme/runner@sha256:abc'}",
             "spec.framework.image", "[@sha256:digest]"),
    Rejected("image-empty", "framework: {image: ''}", "spec.framework.image",
             "is not an image reference"),
    Rejected("image-tag-too-long", f"framework: {{image: 'ghcr.io/acme/runner:{_long(129)}'}}",
             "spec.framework.image", "is not an image reference"),
    # --- benchmarks ---------------------------------------------------------------------------
    Rejected("benchmarks-empty", "benchmarks: []", "spec.benchmarks", "at least 1 items"),
    Rejected("benchmarks-missing", "benchmarks: null", "spec.benchmarks", "Required value"),
    Rejected("benchmarks-33", "benchmarks: [" + ", ".join(
        f"{{name: b{i}, dataset: {{uri: 's3://datasets/b{i}.jsonl'}}, task: generation, "
        f"metrics: [bleu]}}" for i in range(33)) + "]", "spec.benchmarks", "at most 32 items"),
    Rejected("benchmark-name-repeats", """
benchmarks:
- {name: arc-easy, dataset: {uri: 's3://datasets/arc-easy.jsonl'}, task: multiple-choice,
   metrics: [accuracy]}
- {name: wmt, dataset: {uri: 's3://datasets/wmt.jsonl'}, task: generation, metrics: [bleu]}
- {name: arc-easy, dataset: {uri: 's3://datasets/arc-easy-2.jsonl'}, task: multiple-choice,
   metrics: [f1]}""", "spec.benchmarks[2]", 'Duplicate value: {"name":"arc-easy"}'),
    Rejected("benchmark-name-uppercase", """
benchmarks: [{name: ARC-Easy, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy]}]""", "spec.benchmarks[0].name",
             "'ARC-Easy' is not a valid benchmark name"),
    Rejected("benchmark-name-space", """
benchmarks: [{name: arc easy, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy]}]""", "spec.benchmarks[0].name", "e.g. arc-easy"),
    Rejected("benchmark-name-trailing-dash", """
benchmarks: [{name: arc-, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy]}]""", "spec.benchmarks[0].name", "starting and ending"),
    Rejected("benchmark-name-too-long", f"""
benchmarks: [{{name: {_long(64)}, dataset: {{uri: 's3://datasets/arc.jsonl'}}, task: generation,
              metrics: [bleu]}}]""", "spec.benchmarks[0].name", "may not be more than 63"),
    Rejected("benchmark-name-empty", """
benchmarks: [{name: '', dataset: {uri: 's3://datasets/arc.jsonl'}, task: generation,
              metrics: [bleu]}]""", "spec.benchmarks[0].name",
             "'' is not a valid benchmark name"),
    Rejected("benchmark-without-task", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, metrics: [accuracy]}]""",
             "spec.benchmarks[0].task", "Required value"),
    Rejected("benchmark-task-ranking", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: ranking,
              metrics: [accuracy]}]""", "spec.benchmarks[0].task", 'Unsupported value: "ranking"'),
    Rejected("benchmark-without-metrics", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice}]""",
             "spec.benchmarks[0].metrics", "Required value"),
    Rejected("benchmark-metrics-empty", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: []}]""", "spec.benchmarks[0].metrics", "at least 1 items"),
    Rejected("benchmark-metric-typo", """
benchmarks: [{name: wmt, dataset: {uri: 's3://datasets/wmt.jsonl'}, task: generation,
              metrics: [bleu, rouge]}]""", "spec.benchmarks[0].metrics[1]",
             'Unsupported value: "rouge"'),
    Rejected("benchmark-metric-twice", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy, accuracy]}]""", "spec.benchmarks[0].metrics[1]",
             "Duplicate value"),
    Rejected("bleu-on-multiple-choice", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy, bleu]}]""", "spec.benchmarks[0]",
             "multiple-choice benchmarks support the metrics accuracy, f1 and exact-match"),
    Rejected("rouge-on-multiple-choice", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [rouge-l]}]""", "spec.benchmarks[0]", "accuracy, f1 and exact-match"),
    Rejected("labels-on-generation", """
benchmarks: [{name: wmt, dataset: {uri: 's3://datasets/wmt.jsonl'}, task: generation,
              metrics: [bleu], labels: [positive, negative]}]""", "spec.benchmarks[0]",
             "labels apply to classification benchmarks only"),
    Rejected("labels-repeated", """
benchmarks: [{name: sst2, dataset: {uri: 's3://datasets/sst2.csv'}, task: classification,
              metrics: [accuracy], labels: [positive, negative, positive]}]""",
             "spec.benchmarks[0].labels[2]", "Duplicate value"),
    Rejected("limit-zero", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy], limit: 0}]""", "spec.benchmarks[0].limit",
             "greater than or equal to 1"),
    Rejected("limit-negative", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy], limit: -5}]""", "spec.benchmarks[0].limit",
             "greater than or equal to 1"),
    Rejected("few-shot-too-many", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy], fewShot: 50}]""", "spec.benchmarks[0].fewShot",
             "less than or equal to 32"),
    Rejected("few-shot-negative", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy], fewShot: -1}]""", "spec.benchmarks[0].fewShot",
             "greater than or equal to 0"),
    Rejected("weight-negative", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy], weight: -1}]""", "spec.benchmarks[0].weight",
             "greater than or equal to 0"),
    Rejected("weights-all-zero", """
benchmarks:
- {name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice, metrics: [accuracy],
   weight: 0}
- {name: wmt, dataset: {uri: 's3://datasets/wmt.jsonl'}, task: generation, metrics: [bleu],
   weight: 0}""", "spec.benchmarks", "at least one benchmark needs a weight above 0"),
    Rejected("weight-as-text", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy], weight: high}]""", "spec.benchmarks[0].weight",
             "must be of type number"),
    # --- datasets -----------------------------------------------------------------------------
    Rejected("dataset-missing", """
benchmarks: [{name: arc, task: multiple-choice, metrics: [accuracy]}]""",
             "spec.benchmarks[0].dataset", "Required value"),
    Rejected("dataset-empty", """
benchmarks: [{name: arc, dataset: {}, task: multiple-choice, metrics: [accuracy]}]""",
             "spec.benchmarks[0].dataset", "set exactly one of dataset.uri"),
    Rejected("dataset-uri-and-configmap", """
benchmarks: [{name: arc, task: multiple-choice, metrics: [accuracy],
              dataset: {uri: 's3://datasets/arc.jsonl',
                        configMap: {name: arc, key: arc.jsonl}}}]""",
             "spec.benchmarks[0].dataset", "set exactly one of dataset.uri"),
    Rejected("dataset-gcs", """
benchmarks: [{name: arc, dataset: {uri: 'gs://datasets/arc.jsonl'}, task: multiple-choice,
              metrics: [accuracy]}]""", "spec.benchmarks[0].dataset.uri",
             "must be s3://bucket/key or an http(s):// URL"),
    Rejected("dataset-bucket-without-key", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets'}, task: multiple-choice,
              metrics: [accuracy]}]""", "spec.benchmarks[0].dataset.uri",
             "must be s3://bucket/key"),
    Rejected("dataset-url-with-credentials", """
benchmarks: [{name: wmt, dataset: {uri: 'https://u:p@data.example.org/wmt.jsonl'},
              task: generation, metrics: [bleu]}]""", "spec.benchmarks[0].dataset.uri",
             "must not hold credentials"),
    Rejected("dataset-parquet", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.parquet'}, task: multiple-choice,
              metrics: [accuracy]}]""", "spec.benchmarks[0].dataset.format",
             "cannot tell the format of 's3://datasets/arc.parquet'"),
    Rejected("dataset-url-with-query", """
benchmarks: [{name: wmt, dataset: {uri: 'https://hf.co/d/wmt.csv?download=true'},
              task: generation, metrics: [bleu]}]""", "spec.benchmarks[0].dataset.format",
             "set dataset.format to jsonl or csv"),
    Rejected("dataset-json-array-file", """
benchmarks: [{name: wmt, dataset: {uri: 'https://data.example.org/wmt.json'},
              task: generation, metrics: [bleu]}]""", "spec.benchmarks[0].dataset.format",
             "(.jsonl, .ndjson or .csv)"),
    Rejected("dataset-configmap-txt", """
benchmarks: [{name: quiz, dataset: {configMap: {name: quiz, key: quiz.txt}},
              task: generation, metrics: [exact-match]}]""", "spec.benchmarks[0].dataset.format",
             "cannot tell the format of 'quiz.txt'"),
    Rejected("dataset-pvc-no-extension", """
benchmarks: [{name: quiz, dataset: {pvc: {claimName: datasets, path: quiz/test}},
              task: generation, metrics: [exact-match]}]""", "spec.benchmarks[0].dataset.format",
             "cannot tell the format of 'quiz/test'"),
    Rejected("dataset-format-json", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.json', format: json}, task: generation,
              metrics: [bleu]}]""", "spec.benchmarks[0].dataset.format",
             'Unsupported value: "json"'),
    Rejected("dataset-format-parquet", """
benchmarks: [{name: arc, dataset: {uri: 's3://datasets/arc.parquet', format: parquet},
              task: generation, metrics: [bleu]}]""", "spec.benchmarks[0].dataset.format",
             'supported values: "jsonl", "csv"'),
    Rejected("configmap-without-key", """
benchmarks: [{name: quiz, dataset: {configMap: {name: quiz}}, task: generation,
              metrics: [exact-match]}]""", "spec.benchmarks[0].dataset.configMap.key",
             "Required value"),
    Rejected("configmap-name-uppercase", """
benchmarks: [{name: quiz, dataset: {configMap: {name: Capitals_Quiz, key: quiz.jsonl}},
              task: generation, metrics: [exact-match]}]""",
             "spec.benchmarks[0].dataset.configMap.name",
             "'Capitals_Quiz' is not a valid ConfigMap name"),
    Rejected("configmap-key-with-slash", """
benchmarks: [{name: quiz, dataset: {configMap: {name: quiz, key: data/quiz.jsonl}},
              task: generation, metrics: [exact-match]}]""",
             "spec.benchmarks[0].dataset.configMap.key", "e.g. squad.jsonl"),
    Rejected("configmap-key-dotdot", """
benchmarks: [{name: quiz, dataset: {configMap: {name: quiz, key: ..quiz.jsonl}},
              task: generation, metrics: [exact-match]}]""",
             "spec.benchmarks[0].dataset.configMap.key", "not starting with '..'"),
    Rejected("pvc-dataset-without-path", """
benchmarks: [{name: quiz, dataset: {pvc: {claimName: datasets}}, task: generation,
              metrics: [exact-match]}]""", "spec.benchmarks[0].dataset.pvc.path",
             "Required value"),
    Rejected("pvc-dataset-traversal", """
benchmarks: [{name: quiz, dataset: {pvc: {claimName: datasets, path: ../../etc/passwd.csv}},
              task: generation, metrics: [exact-match]}]""",
             "spec.benchmarks[0].dataset.pvc.path", "must not contain '..'"),
    Rejected("pvc-dataset-claim-uppercase", """
benchmarks: [{name: quiz, dataset: {pvc: {claimName: Datasets_PVC, path: quiz.jsonl}},
              task: generation, metrics: [exact-match]}]""",
             "spec.benchmarks[0].dataset.pvc.claimName", "e.g. eval-datasets"),
    Rejected("fields-empty-column", """
benchmarks: [{name: sst2, dataset: {uri: 's3://datasets/sst2.csv', fields: {prompt: ''}},
              task: classification, metrics: [accuracy]}]""",
             "spec.benchmarks[0].dataset.fields.prompt", "at least 1 chars long"),
    Rejected("fields-unknown", """
benchmarks: [{name: sst2, dataset: {uri: 's3://datasets/sst2.csv', fields: {answer: label}},
              task: classification, metrics: [accuracy]}]""",
             "spec.benchmarks[0].dataset.fields",
             'unknown field "spec.benchmarks[0].dataset.fields.answer"'),
    # --- parameters ---------------------------------------------------------------------------
    Rejected("temperature-too-high", "parameters: {temperature: 3}", "spec.parameters.temperature",
             "less than or equal to 2"),
    Rejected("temperature-negative", "parameters: {temperature: -0.5}",
             "spec.parameters.temperature", "greater than or equal to 0"),
    Rejected("max-tokens-zero", "parameters: {maxTokens: 0}", "spec.parameters.maxTokens",
             "greater than or equal to 1"),
    Rejected("concurrency-zero", "parameters: {concurrency: 0}", "spec.parameters.concurrency",
             "greater than or equal to 1"),
    Rejected("concurrency-5000", "parameters: {concurrency: 5000}",
             "spec.parameters.concurrency", "less than or equal to 1024"),
    Rejected("seed-as-text", "parameters: {seed: lucky}", "spec.parameters.seed",
             "must be of type integer"),
    Rejected("parameter-unknown", "parameters: {topP: 0.9}", "spec.parameters",
             'unknown field "spec.parameters.topP"'),
    # --- resources ----------------------------------------------------------------------------
    Rejected("gpu-negative", "resources: {gpu: -1}", "spec.resources.gpu",
             "greater than or equal to 0"),
    Rejected("gpu-100", "resources: {gpu: 100}", "spec.resources.gpu", "less than or equal to 64"),
    Rejected("gpu-as-text", "resources: {gpu: '2'}", "spec.resources.gpu",
             "must be of type integer"),
    Rejected("gpu-resource-without-domain", "resources: {gpuResource: gpu}",
             "spec.resources.gpuResource", "'gpu' is not an extended resource name"),
    Rejected("gpu-resource-kubernetes-io", "resources: {gpuResource: kubernetes.io/gpu}",
             "spec.resources.gpuResource", "e.g. nvidia.com/gpu or amd.com/gpu"),
    Rejected("gpu-resource-cpu", "resources: {gpuResource: cpu}", "spec.resources.gpuResource",
             "'cpu' is not an extended resource name"),
    Rejected("gpu-resource-space", "resources: {gpuResource: nvidia.com/gpu a100}",
             "spec.resources.gpuResource", "is not an extended resource name"),
    Rejected("cpu-zero", "resources: {cpu: '0'}", "spec.resources.cpu",
             "'0' is not a CPU amount above 0"),
    Rejected("cpu-words", "resources: {cpu: four}", "spec.resources.cpu", "e.g. 4, 0.5 or 500m"),
    Rejected("cpu-negative", "resources: {cpu: '-2'}", "spec.resources.cpu",
             "is not a CPU amount above 0"),
    Rejected("cpu-zero-integer", "resources: {cpu: 0}", "spec.resources.cpu",
             "is not a CPU amount above 0"),
    Rejected("cpu-with-unit-cores", "resources: {cpu: 4cores}", "spec.resources.cpu",
             "'4cores' is not a CPU amount"),
    Rejected("memory-kilo-uppercase", "resources: {memory: 16K}", "spec.resources.memory",
             "'16K' is not a memory amount"),
    Rejected("memory-gb", "resources: {memory: 16GB}", "spec.resources.memory",
             "e.g. 16Gi or 512Mi"),
    Rejected("memory-bytes", "resources: {memory: '512'}", "spec.resources.memory",
             "at least 16Mi"),
    Rejected("memory-integer-bytes", "resources: {memory: 1024}", "spec.resources.memory",
             "'1024' is not a memory amount of at least 16Mi"),
    Rejected("memory-zero", "resources: {memory: '0'}", "spec.resources.memory",
             "at least 16Mi"),
    Rejected("memory-with-space", "resources: {memory: 1.5 Gi}", "spec.resources.memory",
             "is not a memory amount"),
    Rejected("memory-tiny", "resources: {memory: 8Mi}", "spec.resources.memory",
             "at least 16Mi"),
    Rejected("resources-unknown", "resources: {gpus: 2}", "spec.resources",
             'unknown field "spec.resources.gpus"'),
    # --- scheduling ---------------------------------------------------------------------------
    Rejected("node-selector-key-space", "scheduling: {nodeSelector: {gpu type: a100}}",
             "spec.scheduling.nodeSelector", "'gpu type' is not a valid node label key"),
    Rejected("node-selector-key-name-too-long",
             f"scheduling: {{nodeSelector: {{example.com/{_long(64)}: 'true'}}}}",
             "spec.scheduling.nodeSelector", "name at most 63"),
    Rejected("node-selector-key-empty-name", "scheduling: {nodeSelector: {nvidia.com/: 'true'}}",
             "spec.scheduling.nodeSelector", "e.g. nvidia.com/gpu.present"),
    Rejected("node-selector-key-prefix-uppercase",
             "scheduling: {nodeSelector: {NVIDIA.com/gpu.present: 'true'}}",
             "spec.scheduling.nodeSelector",
             "'NVIDIA.com/gpu.present' is not a valid node label key"),
    Rejected("node-selector-value-space",
             "scheduling: {nodeSelector: {nvidia.com/gpu.product: A100 80GB}}",
             "spec.scheduling.nodeSelector[nvidia.com/gpu.product]",
             "'A100 80GB' is not a valid node label value"),
    Rejected("node-selector-value-too-long",
             f"scheduling: {{nodeSelector: {{team: {_long(64)}}}}}",
             "spec.scheduling.nodeSelector.team", "may not be more than 63"),
    Rejected("node-selector-value-leading-dash",
             "scheduling: {nodeSelector: {nvidia.com/gpu.product: -a100}}",
             "spec.scheduling.nodeSelector[nvidia.com/gpu.product]", "e.g. true or a100"),
    Rejected("node-selector-value-boolean",
             "scheduling: {nodeSelector: {nvidia.com/gpu.present: true}}",
             "spec.scheduling.nodeSelector.nvidia.com/gpu.present", "must be of type string"),
    Rejected("toleration-key-space",
             "scheduling: {tolerations: [{key: gpu node, operator: Exists}]}",
             "spec.scheduling.tolerations[0].key", "'gpu node' is not a valid taint key"),
    Rejected("toleration-key-empty-name",
             "scheduling: {tolerations: [{key: nvidia.com/, operator: Exists}]}",
             "spec.scheduling.tolerations[0].key", "e.g. nvidia.com/gpu"),
    Rejected("toleration-without-key-equal",
             "scheduling: {tolerations: [{operator: Equal, value: 'true', effect: NoSchedule}]}",
             "spec.scheduling.tolerations[0].operator",
             "a toleration without a key must set operator Exists"),
    Rejected("toleration-empty", "scheduling: {tolerations: [{}]}",
             "spec.scheduling.tolerations[0].operator", "tolerates every taint"),
    Rejected("toleration-exists-with-value", """
scheduling: {tolerations: [{key: nvidia.com/gpu, operator: Exists, value: present}]}""",
             "spec.scheduling.tolerations[0]",
             "a toleration with operator Exists must not set a value"),
    Rejected("toleration-seconds-with-noschedule", """
scheduling:
  tolerations: [{key: gpu, operator: Exists, effect: NoSchedule, tolerationSeconds: 300}]""",
             "spec.scheduling.tolerations[0]",
             "tolerationSeconds applies to the NoExecute effect only"),
    Rejected("toleration-operator-in", "scheduling: {tolerations: [{key: gpu, operator: In}]}",
             "spec.scheduling.tolerations[0].operator", 'Unsupported value: "In"'),
    Rejected("toleration-effect-typo",
             "scheduling: {tolerations: [{key: gpu, operator: Exists, effect: NoRun}]}",
             "spec.scheduling.tolerations[0].effect", 'Unsupported value: "NoRun"'),
    Rejected("toleration-value-space",
             "scheduling: {tolerations: [{key: gpu, operator: Equal, value: a 100}]}",
             "spec.scheduling.tolerations[0].value", "'a 100' is not a valid taint value"),
    Rejected("priority-class-space", "scheduling: {priorityClassName: High Priority}",
             "spec.scheduling.priorityClassName", "'High Priority' is not a valid PriorityClass"),
    Rejected("priority-class-uppercase", "scheduling: {priorityClassName: GPU-Low}",
             "spec.scheduling.priorityClassName", "e.g. eval-low"),
    Rejected("queue-name-space", "scheduling: {queueName: team a}",
             "spec.scheduling.queueName", "'team a' is not a valid LocalQueue name"),
    Rejected("queue-name-uppercase", "scheduling: {queueName: Team-A}",
             "spec.scheduling.queueName", "e.g. team-a-gpus"),
    Rejected("queue-name-underscore", "scheduling: {queueName: team_a}",
             "spec.scheduling.queueName", "is not a valid LocalQueue name"),
    Rejected("queue-name-too-long", f"scheduling: {{queueName: {_long(64)}}}",
             "spec.scheduling.queueName", "may not be more than 63"),
    Rejected("scheduling-affinity", "scheduling: {affinity: {}}", "spec.scheduling",
             'unknown field "spec.scheduling.affinity"'),
    # --- timeout and retries ------------------------------------------------------------------
    Rejected("timeout-words", "timeout: two hours", "spec.timeout",
             "'two hours' is not a duration between 1m and 168h"),
    Rejected("timeout-30s", "timeout: 30s", "spec.timeout", "like 30m, 2h or 1h30m"),
    Rejected("timeout-200h", "timeout: 200h", "spec.timeout",
             "'200h' is not a duration between 1m and 168h"),
    Rejected("timeout-days", "timeout: 1d", "spec.timeout", "'1d' is not a duration"),
    Rejected("timeout-empty", "timeout: ''", "spec.timeout", "is not a duration"),
    Rejected("timeout-huge", "timeout: 99999999999h", "spec.timeout",
             "'99999999999h' is not a duration"),
    Rejected("timeout-without-unit", "timeout: '90'", "spec.timeout", "'90' is not a duration"),
    Rejected("timeout-fraction", "timeout: 1.5h", "spec.timeout", "'1.5h' is not a duration"),
    Rejected("timeout-seconds-number", "timeout: 7200", "spec.timeout", "must be of type string"),
    Rejected("retries-negative", "retries: -1", "spec.retries", "greater than or equal to 0"),
    Rejected("retries-eleven", "retries: 11", "spec.retries", "less than or equal to 10"),
    # --- output -------------------------------------------------------------------------------
    Rejected("bucket-uppercase", "output: {s3: {bucket: Eval_Results}}", "spec.output.s3.bucket",
             "'Eval_Results' is not a valid bucket name"),
    Rejected("bucket-too-short", "output: {s3: {bucket: ab}}", "spec.output.s3.bucket",
             "e.g. eval-results"),
    Rejected("bucket-double-dot", "output: {s3: {bucket: eval..results}}",
             "spec.output.s3.bucket", "no '..'"),
    Rejected("bucket-ip-address", "output: {s3: {bucket: 192.168.1.10}}",
             "spec.output.s3.bucket", "not an IP address"),
    Rejected("bucket-xn", "output: {s3: {bucket: xn--results}}", "spec.output.s3.bucket",
             "'xn--results' is not a valid bucket name"),
    Rejected("bucket-s3alias", "output: {s3: {bucket: team-a-s3alias}}",
             "spec.output.s3.bucket", "is not a valid bucket name"),
    Rejected("bucket-dot-dash", "output: {s3: {bucket: eval-.results}}",
             "spec.output.s3.bucket", "is not a valid bucket name"),
    Rejected("prefix-parent", "output: {s3: {prefix: ../team-b}}", "spec.output.s3.prefix",
             "'../team-b' is not a valid key prefix"),
    Rejected("prefix-absolute", "output: {s3: {prefix: /runs}}", "spec.output.s3.prefix",
             "e.g. runs or teams/nlp"),
    Rejected("prefix-empty-segment", "output: {s3: {prefix: runs//team-a}}",
             "spec.output.s3.prefix", "empty segments"),
    Rejected("prefix-parent-inside", "output: {s3: {prefix: runs/../team-b}}",
             "spec.output.s3.prefix", "no '..'"),
    Rejected("prefix-space", "output: {s3: {prefix: nightly runs}}", "spec.output.s3.prefix",
             "'nightly runs' is not a valid key prefix"),
    Rejected("credentials-secret-space", "output: {s3: {credentialsSecretRef: {name: S3 Creds}}}",
             "spec.output.s3.credentialsSecretRef.name", "'S3 Creds' is not a valid Secret name"),
    Rejected("credentials-secret-without-name", "output: {s3: {credentialsSecretRef: {}}}",
             "spec.output.s3.credentialsSecretRef.name", "Required value"),
    Rejected("s3-key-in-spec", "output: {s3: {secretAccessKey: wJalrXUtnFEMI}}", "spec.output.s3",
             'unknown field "spec.output.s3.secretAccessKey"'),
    Rejected("output-gcs", "output: {gcs: {bucket: results}}", "spec.output",
             'unknown field "spec.output.gcs"'),
    # --- the spec as a whole ------------------------------------------------------------------
    Rejected("spec-unknown-field", "gpus: 2", "spec", 'unknown field "spec.gpus"'),
]

ACCEPTED = {
    "minimal": "{}",
    "several-benchmarks": """
model:
  name: llama-3-8b
  endpoint: {url: 'http://llama3.models.svc:8000/v1', apiKeySecretRef: {name: llama3-key,
             key: token}}
benchmarks:
- {name: arc-easy, dataset: {uri: 's3://datasets/arc-easy.jsonl'}, task: multiple-choice,
   metrics: [accuracy], limit: 500}
- {name: wmt14_de-en, dataset: {uri: 'https://example.org/data/wmt14-de-en.jsonl'},
   task: generation, metrics: [bleu, rouge-l, exact-match], weight: 2}
- {name: sst2, dataset: {uri: 's3://datasets/sst2.csv', fields: {prompt: sentence,
   reference: label}}, task: classification, metrics: [accuracy, f1],
   labels: [positive, negative]}""",
    "local-weights-s3": "model: {name: mistral-7b, source: {uri: 's3://models/mistral-7b/'}}",
    "local-weights-path": "model: {name: tiny, source: {uri: /models/tiny}}",
    "local-weights-pvc": "model: {name: m, source: {pvc: {claimName: model-weights, path: llama}}}",
    "sharded": "parallelism: 8",
    "lm-eval-completions": """
model: {name: qwen, endpoint: {url: 'http://qwen.models.svc:8000/v1', api: completions}}
framework: {name: lm-eval}""",
    "lm-eval-generation-chat": """
model: {name: qwen, endpoint: {url: 'https://api.example.com/v1'}}
framework: {name: lm-eval}
benchmarks: [{name: squad, dataset: {uri: 's3://datasets/squad.jsonl'}, task: generation,
              metrics: [f1]}]""",
    "endpoint-without-v1": "model: {name: m, endpoint: {url: 'http://ollama.models.svc:11434'}}",
    "endpoint-completions-word-in-host": """
model: {name: m, endpoint: {url: 'http://completions.models.svc:8000/v1'}}""",
    "configmap-dataset": """
benchmarks: [{name: capitals, dataset: {configMap: {name: capitals-quiz, key: capitals.jsonl}},
              task: generation, metrics: [exact-match]}]""",
    "pvc-dataset-with-format": """
benchmarks: [{name: quiz, dataset: {pvc: {claimName: datasets, path: quiz/test}, format: jsonl},
              task: generation, metrics: [exact-match]}]""",
    "url-with-query-and-format": """
benchmarks: [{name: wmt, dataset: {uri: 'https://hf.co/d/wmt.csv?download=true', format: csv},
              task: generation, metrics: [chrf]}]""",
    "uppercase-csv-extension": """
benchmarks: [{name: sst2, dataset: {uri: 's3://datasets/SST2.CSV'}, task: classification,
              metrics: [accuracy]}]""",
    "ndjson": """
benchmarks: [{name: qa, dataset: {uri: 's3://datasets/qa.ndjson'}, task: generation,
              metrics: [rouge-1, rouge-2]}]""",
    "parameters": "parameters: {temperature: 0.7, maxTokens: 1024, concurrency: 64, seed: 7}",
    "no-gpu": "resources: {gpu: 0, cpu: 500m, memory: 2Gi}",
    "amd-gpus": "resources: {gpu: 8, gpuResource: amd.com/gpu, cpu: 32, memory: 256Gi}",
    "fractional-cpu-integer-memory": "resources: {cpu: '0.5', memory: 67108864}",
    "memory-small-enough-to-be-oom-killed": "resources: {gpu: 0, cpu: 500m, memory: 40Mi}",
    "memory-decimal": "resources: {memory: 512M}",
    "scheduling": """
scheduling:
  nodeSelector: {nvidia.com/gpu.present: 'true', nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3,
                 topology.kubernetes.io/zone: ''}
  tolerations:
  - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
  - {key: team, operator: Equal, value: nlp, effect: NoExecute, tolerationSeconds: 600}
  - {operator: Exists}
  priorityClassName: eval-low
  queueName: team-a-gpus""",
    "scheduling-empty-names": "scheduling: {priorityClassName: '', queueName: ''}",
    "timeout-90-minutes": "timeout: 1h30m",
    "timeout-one-week": "timeout: 168h",
    "timeout-one-minute": "timeout: 60s",
    "own-runner-image-digest": f"framework: {{image: 'ghcr.io/acme/runner@sha256:{'a' * 64}'}}",
    "own-runner-image-local-registry": "framework: {image: 'localhost:5000/eval/runner:dev'}",
    "output": """
output: {s3: {bucket: eval.results.team-a, prefix: teams/nlp/,
              credentialsSecretRef: {name: team-a-s3}}}""",
    "output-empty-prefix": "output: {s3: {prefix: ''}}",
    "retries-none": "retries: 0",
}


def _create(cluster: Cluster, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Dry-run create with strict field validation; the API's Status on refusal."""
    api = client.CustomObjectsApi(cluster.api_client())
    body = {"apiVersion": "evaluation.dev/v1alpha1", "kind": "EvaluationTask",
            "metadata": {"name": name}, "spec": spec}
    try:
        created: dict[str, Any] = api.create_namespaced_custom_object(
            "evaluation.dev", "v1alpha1", "default", "evaluationtasks", body, dry_run="All",
            field_validation="Strict")
        return {"created": created}
    except ApiException as error:
        status: dict[str, Any] = json.loads(error.body)
        return status


# The API server's note that it skipped CEL rules because the schema already failed: not an
# error about the spec, and it never names a field.
SKIPPED_RULES_NOTE = "some validation rules were not checked because the object was invalid"


def _causes(status: dict[str, Any]) -> list[dict[str, Any]]:
    causes: list[dict[str, Any]] = [
        cause for cause in (status.get("details") or {}).get("causes") or []
        if SKIPPED_RULES_NOTE not in cause.get("message", "")]
    return causes or [{"field": "", "message": status.get("message", "")}]


def test_suite_size() -> None:
    assert len(REJECTED) >= 120
    assert len(ACCEPTED) >= 25
    assert len({case.id for case in REJECTED}) == len(REJECTED)


@pytest.mark.parametrize("case", REJECTED, ids=[case.id for case in REJECTED])
def test_rejected_with_one_error_naming_the_field(cluster: Cluster, case: Rejected) -> None:
    status = _create(cluster, f"reject-{case.id}"[:63].rstrip("-"), spec_of(case.spec))
    assert "created" not in status, f"{case.id} was accepted"
    causes = _causes(status)
    text = json.dumps(causes)
    assert not any(word in status.get("message", "") for word in NEVER_SHOWN), status
    assert len(causes) == 1, f"expected one error, got: {text}"
    cause = causes[0]
    # Schema errors name the field in `field`; strict decoding puts the path in the message.
    where = cause.get("field") or ""
    assert where == case.field or (where == "" and case.field in cause["message"]), text
    assert case.message in cause["message"], text


@pytest.mark.parametrize("spec", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_and_parsed_by_the_operator(cluster: Cluster, spec: str) -> None:
    result = _create(cluster, "accepted", spec_of(spec))
    assert "created" in result, json.dumps(_causes(result))
    settings = OperatorSettings(s3_bucket="eval-results")
    parse_task_spec(result["created"]["spec"], settings)


def test_valid_spec_is_accepted_with_defaults(cluster: Cluster) -> None:
    result = cluster.kubectl("create", "--dry-run=server", "-n", "default", "-o", "json", "-f",
                             "-", input=json.dumps(task_manifest("defaults")))
    spec = json.loads(result.stdout)["spec"]
    assert spec["timeout"] == "2h"
    assert spec["retries"] == 2
    assert spec["framework"] == {"name": "builtin"}
    assert spec["model"]["endpoint"]["api"] == "chat"
    assert spec["parameters"] == {"temperature": 0, "maxTokens": 256, "concurrency": 16,
                                  "seed": 1234}


def test_kubectl_names_the_field_and_the_value(cluster: Cluster) -> None:
    """What a user sees on `kubectl apply`, end to end."""
    manifest = task_manifest("typo", timeout="2 hours")
    result = cluster.kubectl("apply", "--dry-run=server", "-n", "default", "-f", "-",
                             input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert "spec.timeout" in result.stderr
    assert "'2 hours' is not a duration between 1m and 168h" in result.stderr
    assert "like 30m, 2h or 1h30m" in result.stderr


def test_spec_cannot_be_edited_once_created(cluster: Cluster) -> None:
    name = "immutable"
    cluster.kubectl("create", "-n", "default", "-f", "-",
                    input=json.dumps(task_manifest(name)))
    try:
        edited = copy.deepcopy(task_manifest(name))
        edited["spec"]["benchmarks"][0]["limit"] = 10
        result = cluster.kubectl("apply", "-n", "default", "-f", "-",
                                 input=json.dumps(edited), check=False)
        assert result.returncode != 0
        assert "spec is immutable once the task is created" in result.stderr
        labels = cluster.kubectl("label", "evaluationtask", name, "-n", "default", "team=a",
                                 check=False)
        assert labels.returncode == 0, "metadata stays editable"
    finally:
        cluster.kubectl("delete", "evaluationtask", name, "-n", "default", "--wait=false",
                        check=False)


@pytest.mark.parametrize(("field", "text"), [
    ("evaluationtask.spec.model.endpoint.apiKeySecretRef", "Never put a key in the spec"),
    ("evt.spec.benchmarks.dataset.pvc.path", "Path of the file inside the volume"),
    ("evaluationtask.spec.timeout", "1h30m"),
    ("evaluationtask.status.conditions", "Ready, Reconciling, Stalled"),
    ("evaluationtask.spec.parallelism", "resources.gpu is per pod"),
    ("evaluationtask.status.shards.merge", "Pending, Running, Succeeded or Failed"),
])
def test_kubectl_explain_describes_fields(cluster: Cluster, field: str, text: str) -> None:
    # The CRD's OpenAPI reaches the published document a few seconds after installation.
    result = cluster.wait_until(f"kubectl explain {field}", lambda: (
        r := cluster.kubectl("explain", field, check=False)).returncode == 0 and r, timeout=30)
    assert text in " ".join(result.stdout.split()), result.stdout
