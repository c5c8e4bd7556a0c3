"""Deterministic names and labels for everything the operator creates.

A restarted operator derives the same names and so finds what it made instead of making it
twice. Job names must fit the 63-character label limit (the Job controller copies the name
into the `job-name` pod label), so long task names are shortened with a hash suffix.
"""

from __future__ import annotations

import hashlib

GROUP = "evaluation.dev"
VERSION = "v1alpha1"
PLURAL = "evaluationtasks"
KIND = "EvaluationTask"
FINALIZER = "evaluation.dev/purge-results"
MANAGED_BY = "evaluation-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TASK = "evaluation.dev/task"
LABEL_TASK_UID = "evaluation.dev/task-uid"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# Only on a sharded run's merge Job and its pod: tells them from the evaluation's.
LABEL_ROLE = "evaluation.dev/role"
ROLE_MERGE = "merge"
# Set by the Job controller on an Indexed Job's pods.
LABEL_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# The task label holds a shortened name when the task's is too long for a label value;
# this annotation always holds the full name.
ANNOTATION_TASK_NAME = "evaluation.dev/task-name"
MAX_NAME = 63


def child_name(task_name: str, suffix: str) -> str:
    name = f"{task_name}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(task_name.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 2
    return f"{task_name[:keep].rstrip('-.')}-{digest}-{suffix}"


def job_name(task_name: str) -> str:
    return child_name(task_name, "eval")


def merge_job_name(task_name: str) -> str:
    """The Job that merges a sharded run's answers (spec.parallelism > 1)."""
    return child_name(task_name, "merge")


def configmap_name(task_name: str) -> str:
    return child_name(task_name, "config")


def task_label_value(task_name: str) -> str:
    """Label values are limited to 63 characters too."""
    if len(task_name) <= MAX_NAME:
        return task_name
    digest = hashlib.sha256(task_name.encode()).hexdigest()[:8]
    return f"{task_name[:MAX_NAME - 9].rstrip('-.')}-{digest}"


def child_annotations(task_name: str) -> dict[str, str]:
    return {ANNOTATION_TASK_NAME: task_name}


def child_labels(task_name: str, task_uid: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TASK: task_label_value(task_name),
        LABEL_TASK_UID: task_uid,
    }
