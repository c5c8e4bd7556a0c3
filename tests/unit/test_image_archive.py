"""The image tarballs `make images` writes: the docker-archive layout `ctr images import`
and `skopeo copy docker-archive:` read, built reproducibly, cached by their inputs. Checked on
tiny images packed from temporary directories by the same code (no network, no containerd)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from images import build
from images.archive import ImageConfig, Layer, layer, sha256_file, write_docker_archive
from images.plan import OPERATOR, PAUSE, REPO, plan
from images.rootfs import BaseTarball, RootfsError, check_python, debian_mirror, excluded

CONFIG = ImageConfig(env=("PATH=/usr/bin", "HOME=/tmp"), entrypoint=("python", "-m", "app"),
                     cmd=("--flag",), user="65532:65532", workdir="/tmp", exposed=("8080",))


def _tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "pkg" / "tool").write_text("#!/bin/sh\n")
    (root / "pkg" / "tool").chmod(0o700)
    (root / "pkg" / "link").symlink_to("__init__.py")
    return root


def _image(tmp_path: Path, source: Path, name: str = "image.tar") -> Path:
    with layer(tmp_path / f"{name}.layer") as writer:
        writer.add_tree(source, "opt/app")
    layers = [Layer(tmp_path / f"{name}.layer", sha256_file(tmp_path / f"{name}.layer"), "test")]
    write_docker_archive(tmp_path / name, "evaluation.local/tiny:0123456789ab", layers, CONFIG)
    return tmp_path / name


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    file = tar.extractfile(member)
    assert file is not None, f"{member.name} is not a regular file"
    return file.read()


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: _read(tar, m) for m in tar.getmembers() if m.isfile()}


def test_docker_archive_layout_is_what_ctr_and_skopeo_read(tmp_path: Path) -> None:
    members = _members(_image(tmp_path, _tree(tmp_path / "src")))
    [entry] = json.loads(members["manifest.json"])
    assert entry["RepoTags"] == ["evaluation.local/tiny:0123456789ab"]
    config_bytes = members[entry["Config"]]
    assert entry["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    config = json.loads(config_bytes)
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"]["type"] == "layers"
    # each diff_id is the digest of the uncompressed layer the manifest lists, in order
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(members[name]).hexdigest() for name in entry["Layers"]]
    assert len(config["history"]) == len(entry["Layers"])
    assert config["config"] == {
        "Env": ["PATH=/usr/bin", "HOME=/tmp"], "Entrypoint": ["python", "-m", "app"],
        "Cmd": ["--flag"], "User": "65532:65532", "WorkingDir": "/tmp", "Labels": {},
        "ExposedPorts": {"8080/tcp": {}},
    }


def test_layer_entries_are_root_owned_with_fixed_mtime_and_normal_modes(tmp_path: Path) -> None:
    members = _members(_image(tmp_path, _tree(tmp_path / "src")))
    [entry] = json.loads(members["manifest.json"])
    (tmp_path / "layer.tar").write_bytes(members[entry["Layers"][0]])
    with tarfile.open(tmp_path / "layer.tar") as tar:
        infos = {m.name: m for m in tar.getmembers()}
    assert list(infos) == ["opt", "opt/app", "opt/app/pkg", "opt/app/pkg/__init__.py",
                           "opt/app/pkg/link", "opt/app/pkg/tool"]
    assert {(m.uid, m.gid, m.mtime, m.uname) for m in infos.values()} == {(0, 0, 0, "")}
    assert infos["opt/app/pkg/tool"].mode == 0o755
    assert infos["opt/app/pkg/__init__.py"].mode == 0o644
    assert infos["opt/app/pkg/link"].issym()
    assert infos["opt/app/pkg/link"].linkname == "__init__.py"


def test_same_inputs_give_the_same_bytes_whatever_the_mtimes(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    first = sha256_file(_image(tmp_path, source, "one.tar"))
    for path in source.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000), follow_symlinks=False)
    assert sha256_file(_image(tmp_path, source, "two.tar")) == first
    (source / "pkg" / "__init__.py").write_text("VALUE = 2\n")
    assert sha256_file(_image(tmp_path, source, "three.tar")) != first


def test_base_layer_keeps_owners_and_modes_and_drops_device_nodes(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "su").write_text("x")
    (root / "usr" / "bin" / "su").chmod(0o4755)
    (root / "var" / "mail").mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(root / "var" / "mail", 0, 8)
    (root / "dev").mkdir()
    os.mkfifo(root / "dev" / "fifo")
    with layer(tmp_path / "base.tar") as writer:
        writer.add_tree(root, "", keep_owners=True)
    with tarfile.open(tmp_path / "base.tar") as tar:
        infos = {m.name: m for m in tar.getmembers()}
    assert "dev/fifo" not in infos and infos["dev"].isdir()
    assert stat.S_IMODE(infos["usr/bin/su"].mode) == 0o4755
    assert infos["var/mail"].gid == (8 if os.geteuid() == 0 else os.getgid())


@pytest.mark.parametrize(
    ("path", "dropped"),
    [
        ("dev/null", True), ("dev", False), ("proc/1", True), ("etc/resolv.conf", True),
        ("etc/hostname", True), ("var/lib/apt/lists/x_Packages", True),
        ("usr/share/doc/libc6/copyright", False), ("usr/share/doc/libc6/changelog.gz", True),
        ("usr/share/man/man1", True), ("usr/bin/python3.11", False), ("tmp", False),
    ],
)
def test_rootfs_trims_what_a_runtime_image_does_not_need(path: str, dropped: bool) -> None:
    assert excluded(path) is dropped


def test_scripts_get_the_image_interpreter() -> None:
    script = b"#!/root/.pyenv/versions/3.11.7/bin/python3.11\nimport sys\n"
    assert build._shebang_for_image("usr/local/bin/tool", script) == (
        b"#!/usr/bin/python3\nimport sys\n")
    assert build._shebang_for_image("usr/local/bin/tool", b"#!/bin/sh\n") is None


def test_content_hash_follows_the_sources_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "operator", repo / "operator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", repo / "pyproject.toml")
    base = BaseTarball(tmp_path / "base.tar", "0" * 64)
    first = build.content_hash(plan(OPERATOR, repo), base)
    cache_dir = repo / "operator" / "evaluation_operator" / "__pycache__"
    cache_dir.mkdir()
    (cache_dir / "x.cpython-311.pyc").write_bytes(b"junk")
    assert build.content_hash(plan(OPERATOR, repo), base) == first
    with (repo / "operator" / "evaluation_operator" / "spec.py").open("a") as f:
        f.write("# changed\n")
    assert build.content_hash(plan(OPERATOR, repo), base) != first
    other_base = BaseTarball(tmp_path / "base.tar", "1" * 64)
    assert build.content_hash(plan(OPERATOR, repo), other_base) != first


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (the Makefile's toolchain)")
def test_pause_image_is_a_static_binary_built_once(tmp_path: Path) -> None:
    image = build.build_go_image(PAUSE, tmp_path)
    assert image.ref == f"evaluation.local/pause:{image.tarball.stem.split('-')[-1]}"
    assert (image.sha256, image.bytes) == (sha256_file(image.tarball),
                                           image.tarball.stat().st_size)
    members = _members(image.tarball)
    [entry] = json.loads(members["manifest.json"])
    config = json.loads(members[entry["Config"]])["config"]
    assert (config["Entrypoint"], config["User"]) == (["/pause"], "65535:65535")
    (tmp_path / "layer.tar").write_bytes(members[entry["Layers"][0]])
    with tarfile.open(tmp_path / "layer.tar") as tar:
        pause = tar.getmember("pause")
        binary = _read(tar, pause)
    assert pause.mode == 0o755
    assert binary[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in binary  # static: CGO_ENABLED=0, no interpreter
    before = image.tarball.stat().st_ino
    assert build.build_go_image(PAUSE, tmp_path) == image  # cached: nothing rebuilt
    assert image.tarball.stat().st_ino == before  # (a rebuild renames a new file onto it)


def test_manifest_keeps_other_images_whose_tarball_exists(tmp_path: Path) -> None:
    kept, gone = tmp_path / "kept.tar", tmp_path / "gone.tar"
    kept.write_bytes(b"x")
    manifest = tmp_path / ".images" / "images.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"images": [
        {"name": "pause", "ref": "r", "tarball": str(kept), "sha256": "s", "bytes": 1},
        {"name": "evaluation-operator", "ref": "r", "tarball": str(gone), "sha256": "s",
         "bytes": 1},
    ]}))
    fresh = build.BuiltImage("evaluation-runner", "evaluation.local/evaluation-runner:abc",
                             tmp_path / "runner.tar", "f" * 64, 42)
    build.write_manifest(manifest, [fresh])
    images = json.loads(manifest.read_text())["images"]
    assert [i["name"] for i in images] == ["pause", "evaluation-runner"]
    assert images[1] == {"name": "evaluation-runner", "ref": fresh.ref,
                         "tarball": str(fresh.tarball), "sha256": "f" * 64, "bytes": 42}


def test_prune_removes_only_what_no_build_used_lately(tmp_path: Path) -> None:
    (tmp_path / "layers").mkdir()
    old, fresh, old_layer = (tmp_path / "runner-aaa.tar", tmp_path / "runner-bbb.tar",
                             tmp_path / "layers" / "deps-ccc.tar")
    for path in (old, fresh, old_layer):
        path.write_bytes(b"x")
        path.with_suffix(".json").write_text("{}")
    month_ago = os.stat(fresh).st_mtime - 30 * 86400
    os.utime(old, (month_ago, month_ago))
    os.utime(old_layer, (month_ago, month_ago))
    assert sorted(build.prune(tmp_path)) == sorted([old, old_layer])
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "runner-bbb.json", "runner-bbb.tar"]


def test_a_script_without_newline_keeps_its_body() -> None:
    assert build._shebang_for_image("usr/local/bin/x", b"#!/opt/python") == b"#!/usr/bin/python3"


def test_debian_mirror_comes_from_the_apt_configuration(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
    with pytest.raises(RootfsError, match="set DEBIAN_MIRROR"):
        debian_mirror({}, tmp_path)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert debian_mirror({}, tmp_path) == "http://mirror.example/debian"
    assert debian_mirror({"DEBIAN_MIRROR": "http://other/debian"}, tmp_path) == (
        "http://other/debian")


def test_a_base_without_the_dockerfiles_python_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3.12").write_text("")
    with layer(tmp_path / "base.tar") as writer:
        writer.add_tree(root, "", keep_owners=True)
    with pytest.raises(RootfsError, match=r"no usr/bin/python3\.11"):
        check_python(tmp_path / "base.tar", "3.11")
