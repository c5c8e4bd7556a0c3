"""Child names: deterministic, within Kubernetes' limits, distinct for distinct tasks."""

from __future__ import annotations

import re

import pytest
from evaluation_operator import naming

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@pytest.mark.parametrize("task", ["t", "llama3-8b-reasoning", "a" * 57, "a" * 58, "a" * 63,
                                  "x" * 253, "team.eval." + "y" * 200, "a-" * 60 + "b"])
def test_child_names_fit_and_are_valid(task: str) -> None:
    for name in (naming.job_name(task), naming.configmap_name(task)):
        assert len(name) <= naming.MAX_NAME
        assert DNS_LABEL.match(name), name
        assert "--" not in name[-15:] and "-." not in name
    label = naming.task_label_value(task)
    assert len(label) <= 63 and DNS_LABEL.match(label)


def test_short_names_are_readable() -> None:
    assert naming.job_name("llama3-8b-reasoning") == "llama3-8b-reasoning-eval"
    assert naming.configmap_name("llama3-8b-reasoning") == "llama3-8b-reasoning-config"
    assert naming.task_label_value("llama3-8b-reasoning") == "llama3-8b-reasoning"


def test_long_names_that_share_a_prefix_do_not_collide() -> None:
    a, b = "p" * 100 + "-one", "p" * 100 + "-two"
    assert naming.job_name(a) != naming.job_name(b)
    assert naming.task_label_value(a) != naming.task_label_value(b)
    assert naming.job_name(a) == naming.job_name(a)


def test_children_carry_the_full_name_and_the_uid() -> None:
    labels = naming.child_labels("x" * 100, "uid-1")
    assert labels[naming.LABEL_MANAGED_BY] == "evaluation-operator"
    assert labels[naming.LABEL_TASK_UID] == "uid-1"
    assert naming.child_annotations("x" * 100) == {"evaluation.dev/task-name": "x" * 100}
