{{/* Chart name, truncated to the 63-character label limit. */}}
{{- define "evaluation-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless it contains it. */}}
{{- define "evaluation-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "evaluation-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "evaluation-operator.labels" -}}
{{ include "evaluation-operator.commonLabels" . }}
{{ include "evaluation-operator.selectorLabels" . }}
{{- end }}

{{- define "evaluation-operator.commonLabels" -}}
helm.sh/chart: {{ include "evaluation-operator.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: evaluation-operator
{{- end }}

{{/* Labels that select the operator's pod (stable across upgrades). */}}
{{- define "evaluation-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evaluation-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "evaluation-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "evaluation-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "evaluation-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* MinIO (dev only). */}}
{{- define "evaluation-operator.minio.fullname" -}}
{{- printf "%s-minio" (include "evaluation-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "evaluation-operator.minio.selectorLabels" -}}
app.kubernetes.io/name: minio
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: object-store
{{- end }}

{{- define "evaluation-operator.minio.endpoint" -}}
{{- printf "http://%s.%s.svc:9000" (include "evaluation-operator.minio.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The S3 endpoint the operator uses: the value, or the in-chart MinIO. */}}
{{- define "evaluation-operator.s3Endpoint" -}}
{{- if .Values.s3.endpoint }}
{{- .Values.s3.endpoint }}
{{- else if .Values.minio.enabled }}
{{- include "evaluation-operator.minio.endpoint" . }}
{{- end }}
{{- end }}

{{/* Password of the in-chart MinIO: the value, the one already in the cluster, or new. */}}
{{- define "evaluation-operator.minio.rootPassword" -}}
{{- if .Values.minio.rootPassword }}
{{- .Values.minio.rootPassword }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace .Values.s3.credentialsSecret }}
{{- if and $existing $existing.data (hasKey $existing.data "AWS_SECRET_ACCESS_KEY") }}
{{- index $existing.data "AWS_SECRET_ACCESS_KEY" | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Reject combinations the schema cannot express. */}}
{{- define "evaluation-operator.validate" -}}
{{- if and .Values.minio.enabled (not .Values.s3.credentialsSecret) }}
{{- fail "minio.enabled needs s3.credentialsSecret: the chart stores MinIO's credentials in that Secret" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in each namespace it watches, and nothing more. It never reads
Secrets: runner pods get theirs through secretKeyRef, and the operator's own S3 credentials
reach it as environment variables from a Secret the kubelet resolves. tests/chart/ runs a whole
task lifecycle under this identity, so a missing rule fails a test.
*/}}
{{- define "evaluation-operator.namespacedRules" -}}
# Watch tasks; Kopf patches them for its finalizer and bookkeeping annotations.
- apiGroups: [evaluation.dev]
  resources: [evaluationtasks]
  verbs: [get, list, watch, patch]
# Phase, conditions and scores.
- apiGroups: [evaluation.dev]
  resources: [evaluationtasks/status]
  verbs: [get, patch]
# The runner Job: created once, watched, deleted early when its pod can never start or the
# task is cancelled (spec.cancel).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, delete]
# Runner pods: read only, to mirror scheduling, exit codes and termination messages.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# The runner's configuration (it holds no secrets). Created once; on 409 the operator reads
# the existing one to check it is this task's and not a deleted namesake's.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get]
# Events on tasks (JobCreated, Unschedulable, Succeeded, PurgeFailed...); `list` reads the
# Job controller's FailedCreate events on a runner Job that has no pod (a missing
# PriorityClass: docs/operator.md, Missing references).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# Whether the LocalQueue named in spec.scheduling.queueName exists (Kueue; read only).
- apiGroups: [kueue.x-k8s.io]
  resources: [localqueues]
  verbs: [get]
{{- end }}

{{/* The Lease the replicas elect their leader on. */}}
{{- define "evaluation-operator.leaseName" -}}
{{- default (include "evaluation-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}
