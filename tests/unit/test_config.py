"""Operator configuration: environment variables and command-line flags."""

from __future__ import annotations

import pytest
from evaluation_operator.__main__ import build_argv
from evaluation_operator.config import FLAGS, OperatorSettings, SettingsError, apply_flags


def test_settings_from_env() -> None:
    settings = OperatorSettings.from_env({
        "EVAL_NAMESPACES": "team-a, team-b", "EVAL_S3_BUCKET": "b", "EVAL_S3_PREFIX": "/runs/",
        "EVAL_GPU_RESOURCE": "amd.com/gpu", "EVAL_PROGRESS_INTERVAL_SECONDS": "5"})
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.s3_prefix == "runs"
    assert settings.gpu_resource == "amd.com/gpu"
    assert settings.progress_interval_seconds == 5
    assert build_argv(settings, [])[-4:] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert "--all-namespaces" in build_argv(OperatorSettings(), [])


@pytest.mark.parametrize("env", [
    {"EVAL_PROGRESS_INTERVAL_SECONDS": "often"},
    {"EVAL_PROGRESS_INTERVAL_SECONDS": "0"},
    {"EVAL_RUNNER_IMAGE_PULL_POLICY": "Sometimes"},
])
def test_bad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(env))):
        OperatorSettings.from_env(env)


def test_flags_override_the_environment_and_the_rest_goes_to_kopf() -> None:
    env, rest = apply_flags(
        ["--runner-image", "r:2", "--s3-bucket=flagged", "-n", "a", "--namespace", "b",
         "--verbose", "--liveness=http://0.0.0.0:8080/healthz"],
        {"EVAL_S3_BUCKET": "from-env", "EVAL_S3_REGION": "eu-west-1"})
    settings = OperatorSettings.from_env(env)
    assert settings.runner_image == "r:2"
    assert settings.s3_bucket == "flagged"
    assert settings.s3_region == "eu-west-1"
    assert settings.namespaces == ("a", "b")
    assert rest == ["--verbose", "--liveness=http://0.0.0.0:8080/healthz"]


def test_all_namespaces_flag_clears_the_namespace_list() -> None:
    env, _ = apply_flags(["--all-namespaces"], {"EVAL_NAMESPACES": "a"})
    assert OperatorSettings.from_env(env).namespaces == ()


def test_every_flag_maps_to_a_setting() -> None:
    """A flag whose variable nothing reads would silently do nothing."""
    special = {"--runner-image-pull-policy": "Never", "--lease-duration": "30",
               "--lease-renew-deadline": "12", "--lease-retry-period": "3"}
    for flag, variable in FLAGS.items():
        value = special.get(flag, "7")
        env, _ = apply_flags([flag, value], {})
        assert OperatorSettings.from_env(env) != OperatorSettings.from_env({}), (flag, variable)


def test_progress_reads_have_a_budget_over_all_running_tasks() -> None:
    settings = OperatorSettings.from_env({"EVAL_PROGRESS_INTERVAL_SECONDS": "30",
                                          "EVAL_PROGRESS_READS_PER_SECOND": "5"})
    assert settings.progress_interval(10) == 30  # few tasks: the configured interval
    assert settings.progress_interval(150) == 30
    assert settings.progress_interval(1000) == 200  # 5 reads/s over 1,000 tasks
    with pytest.raises(SettingsError, match="EVAL_PROGRESS_READS_PER_SECOND"):
        OperatorSettings.from_env({"EVAL_PROGRESS_READS_PER_SECOND": "0"})
