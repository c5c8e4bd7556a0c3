"""The Dockerfiles and the Docker-free build (hack/images) describe the same images: same
requirement files, user, entrypoint, cmd, workdir, environment and copied sources, and the
builder refuses a Dockerfile step it cannot reproduce instead of silently dropping it."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from images import dockerfile
from images.plan import (
    BASE_ENV,
    OPERATOR,
    PYTHON_IMAGES,
    REPO,
    RUNNER,
    RUNNER_LM_EVAL,
    DockerfileImage,
    PlanError,
    plan,
)
from images.rootfs import PYTHON_VERSION


def _docker_build_context(image: DockerfileImage) -> str:
    """The context the Dockerfile's own `docker build ... CONTEXT` comment names."""
    text = (REPO / image.dockerfile).read_text()
    match = re.search(r"^#\s+docker build .*?(\S+)\s*$", text, re.MULTILINE)
    assert match, f"{image.dockerfile} has no `docker build` comment"
    return match.group(1)


@pytest.mark.parametrize("image", PYTHON_IMAGES, ids=lambda i: i.name)
def test_the_builder_reproduces_every_dockerfile_step(image: DockerfileImage) -> None:
    plan(image)  # raises PlanError naming any instruction or RUN it cannot reproduce


@pytest.mark.parametrize("image", PYTHON_IMAGES, ids=lambda i: i.name)
def test_same_build_context_as_the_dockerfile(image: DockerfileImage) -> None:
    assert Path(_docker_build_context(image)) == Path(image.context)


@pytest.mark.parametrize("image", PYTHON_IMAGES, ids=lambda i: i.name)
def test_same_config_as_the_dockerfile(image: DockerfileImage) -> None:
    facts = dockerfile.read(REPO / image.dockerfile, dict(image.build_args))
    config = plan(image).config.to_json([], [])["config"]
    assert isinstance(config, dict)
    assert config["User"] == facts.user != ""
    assert config["Entrypoint"] == facts.entrypoint
    assert config["Cmd"] == facts.cmd
    assert config["WorkingDir"] == facts.workdir
    assert sorted(config.get("ExposedPorts", {})) == sorted(f"{p}/tcp" for p in facts.exposed)
    env = dict(entry.split("=", 1) for entry in config["Env"])
    assert env == {**BASE_ENV, **facts.env}


@pytest.mark.parametrize("image", PYTHON_IMAGES, ids=lambda i: i.name)
def test_every_copied_file_is_in_the_image(image: DockerfileImage) -> None:
    facts = dockerfile.read(REPO / image.dockerfile, dict(image.build_args))
    files = plan(image).files
    for copy in facts.copies:
        for source in copy.sources:
            destination = copy.destination.strip("/")
            if copy.destination.endswith("/"):
                destination = f"{destination}/{Path(source).name}"
            assert files[destination] == REPO / image.context / source


def test_runner_images_install_the_runner_requirement_files() -> None:
    runner_dir = REPO / "runner-image"
    assert plan(RUNNER).requirement_bytes() == [(runner_dir / "requirements.txt").read_bytes()]
    assert plan(RUNNER_LM_EVAL).requirement_bytes() == [
        (runner_dir / "requirements.txt").read_bytes(),
        (runner_dir / "requirements-lm-eval.txt").read_bytes(),
    ]


@pytest.mark.parametrize("image", PYTHON_IMAGES, ids=lambda i: i.name)
def test_same_requirement_files_as_the_dockerfile_pip_installs(image: DockerfileImage) -> None:
    facts = dockerfile.read(REPO / image.dockerfile, dict(image.build_args))
    assert list(plan(image).requirements) == [
        f.strip("/") for f in facts.pip_requirement_files()]


def test_operator_image_installs_the_pyproject_dependencies() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [requirements] = plan(OPERATOR).requirement_bytes()
    assert requirements.decode().splitlines() == deps


def test_dockerfiles_ask_for_the_python_of_the_debian_base() -> None:
    for image in PYTHON_IMAGES:
        facts = dockerfile.read(REPO / image.dockerfile)
        assert facts.base.startswith(f"python:{PYTHON_VERSION}"), image.dockerfile


def _runner_copy(tmp_path: Path, edit: str, replace: str = "") -> DockerfileImage:
    shutil.copytree(REPO / "runner-image", tmp_path / "runner-image",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "runner-image" / "Dockerfile"
    text = path.read_text()
    path.write_text(text.replace(replace, edit) if replace else text + edit)
    return RUNNER


@pytest.mark.parametrize(
    ("edit", "replace", "named"),
    [
        ("RUN apt-get update && apt-get install -y git\n", "", "apt-get update"),
        ("HEALTHCHECK CMD true\n", "", "HEALTHCHECK"),
        ("RUN pip install --no-compile --pre -r /opt/runner/requirements.txt\n", "", "--pre"),
        ("FROM python:3.12-slim", "FROM python:3.11-slim", "python:3.12-slim"),
        ("COPY missing.txt /opt/runner/\n", "", "missing.txt"),
    ],
)
def test_a_dockerfile_step_the_builder_cannot_reproduce_fails_by_name(
    tmp_path: Path, edit: str, replace: str, named: str
) -> None:
    image = _runner_copy(tmp_path, edit, replace)
    with pytest.raises(PlanError, match=re.escape(named)):
        plan(image, repo=tmp_path)


def test_a_new_requirement_file_in_the_dockerfile_reaches_the_build(tmp_path: Path) -> None:
    image = _runner_copy(tmp_path, "COPY extra.txt /opt/runner/\n"
                         "RUN pip install --no-compile -r /opt/runner/extra.txt\n")
    (tmp_path / "runner-image" / "extra.txt").write_text("tqdm==4.70.1\n")
    assert plan(image, repo=tmp_path).requirement_bytes()[-1] == b"tqdm==4.70.1\n"


def test_a_changed_user_reaches_the_image_config(tmp_path: Path) -> None:
    image = _runner_copy(tmp_path, "USER 1000:1000", "USER 65532:65532")
    config = plan(image, repo=tmp_path).config.to_json([], [])
    assert json.loads(json.dumps(config))["config"]["User"] == "1000:1000"


def test_parser_joins_continuations_applies_build_args_and_conditions() -> None:
    facts = dockerfile.parse(
        "FROM python:3.11-slim\n"
        "# a comment\n"
        "ENV A=1 \\\n"
        "    B=\"two words\"\n"
        "ARG FLAG=false\n"
        "RUN if [ \"$FLAG\" = \"true\" ]; then \\\n"
        "        pip install -r /x.txt; \\\n"
        "    fi\n"
        "ENV C=${A}\n"
        "USER 1:2\n"
        "ENTRYPOINT [\"python\", \"-m\", \"x\"]\n",
        {"FLAG": "true"},
    )
    assert facts.env == {"A": "1", "B": "two words", "C": "1"}
    assert facts.runs == ["pip install -r /x.txt"]
    assert facts.pip_requirement_files() == ["/x.txt"]
    assert (facts.user, facts.entrypoint, facts.cmd) == ("1:2", ["python", "-m", "x"], None)
    unset = "ARG FLAG=false\nRUN if [ \"$FLAG\" = \"true\" ]; then x; fi\n"
    assert dockerfile.parse(unset).runs == []


def test_shell_form_entrypoint_is_refused() -> None:
    with pytest.raises(ValueError, match="ENTRYPOINT must be in JSON"):
        dockerfile.parse("ENTRYPOINT python -m x\n")
