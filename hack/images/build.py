"""Builds the images into the cache (keyed by a hash of their inputs) and writes the
per-clone manifest `.images/images.json` (read by devcluster.images).

Cache layout: `<cache>/<name>-<hash12>.tar` (+ `.json`: ref, sha256, bytes) for images,
`<cache>/layers/deps-<hash>.tar` for the pip-installed dependency layers, reused when only
the sources changed. A build whose inputs are unchanged does nothing; what no build used for
three days is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from images.archive import Layer, atomic_output, layer, sha256_file, write_docker_archive
from images.plan import (
    PAUSE,
    PYTHON_IMAGES,
    REPO,
    SITE_PACKAGES,
    GoImage,
    Plan,
    go_image_config,
    plan,
)
from images.rootfs import PYTHON_VERSION, BaseTarball, base_tarball

REGISTRY = "evaluation.local"
# Bump to rebuild every dependency layer (they are keyed by requirements, not by this code).
DEPS_LAYER_VERSION = "1"
PRUNE_AFTER_DAYS = 3  # each source change makes ~1.3 GB of new tarballs
# Wheels for the image's Python: CPython 3.11, glibc 2.36 (bookworm) or older.
_GLIBC_MINOR = 36
PIP_TARGET_FLAGS = (
    "--only-binary=:all:", "--implementation", "cp",
    "--python-version", PYTHON_VERSION, "--abi", "cp" + PYTHON_VERSION.replace(".", ""),
    *(f for m in range(_GLIBC_MINOR, 4, -1) for f in ("--platform", f"manylinux_2_{m}_x86_64")),
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64",
    "--platform", "manylinux1_x86_64",
)


@dataclass(frozen=True)
class BuiltImage:
    name: str
    ref: str
    tarball: Path
    sha256: str
    bytes: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ref": self.ref, "tarball": str(self.tarball),
                "sha256": self.sha256, "bytes": self.bytes}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The modules that decide an image's bytes (the CLI and the smoke check do not).
_SHAPING_MODULES = ("archive.py", "build.py", "dockerfile.py", "plan.py", "rootfs.py")


def builder_digest() -> str:
    digest = hashlib.sha256()
    for path in (Path(__file__).parent / name for name in _SHAPING_MODULES):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _hash_source(digest: hashlib._Hash, source: Path | bytes) -> None:
    if isinstance(source, bytes):
        digest.update(source)
        return
    paths = [source] if source.is_file() else sorted(
        p for p in source.rglob("*") if p.is_file() and not _ignored(str(p)))
    for path in paths:
        digest.update(str(path.relative_to(source.parent)).encode() + b"\0")
        digest.update(path.read_bytes())


def _ignored(arcname: str) -> bool:
    return "__pycache__" in arcname.split("/") or arcname.endswith((".pyc", ".pyo"))


def content_hash(p: Plan, base: BaseTarball) -> str:
    digest = hashlib.sha256()
    for part in (builder_digest(), p.image.name, p.dockerfile_text, json.dumps(
            dict(p.image.build_args), sort_keys=True), base.id, *p.requirements):
        digest.update(part.encode() + b"\0")
    for path in sorted(p.files):
        digest.update(path.encode() + b"\0")
        _hash_source(digest, p.files[path])
    return digest.hexdigest()


def _deps_key(requirements: list[bytes]) -> str:
    # pip's version too: another pip may resolve the unpinned dependencies differently
    digest = hashlib.sha256(DEPS_LAYER_VERSION.encode() + b"\0" + " ".join(
        (*PIP_TARGET_FLAGS, "pip", importlib.metadata.version("pip"))).encode())
    for text in requirements:
        digest.update(b"\0" + text)
    return digest.hexdigest()


def _layer_of(path: Path, created_by: str) -> Layer:
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        return Layer(path, sidecar.read_text().strip(), created_by)
    digest = sha256_file(path)
    with atomic_output(sidecar) as tmp:
        tmp.write_text(digest + "\n")
    return Layer(path, digest, created_by)


def _shebang_for_image(arcname: str, data: bytes) -> bytes | None:
    """pip --target writes scripts for the host's interpreter; the image's is /usr/bin/python3."""
    first, newline, rest = data.partition(b"\n")
    if arcname.startswith("usr/local/bin/") and first.startswith(b"#!") and b"python" in first:
        return b"#!/usr/bin/python3" + newline + rest
    return None


def _pip(command: str, *args: str | Path) -> None:
    # --target: what the host environment has installed is irrelevant to the image
    quiet = ["--quiet", "--disable-pip-version-check"]
    if command == "install":
        quiet += ["--no-warn-conflicts", "--root-user-action=ignore"]
    subprocess.run([sys.executable, "-m", "pip", command, *quiet, *map(str, args)], check=True)


def deps_layer(requirements: list[bytes], cache: Path, work: Path) -> Layer:
    """The requirements installed as wheels for the image's Python into its site-packages:
    pip builds wheels for the few sdist-only packages (pure Python) with the host's CPython
    3.11, then installs for the image's tags only, so a wheel that would not fit fails."""
    out = cache / "layers" / f"deps-{_deps_key(requirements)}.tar"
    created_by = "pip install --no-compile -r requirements (as wheels)"
    if out.is_file():
        os.utime(out)  # in use: keeps it from pruning
        return _layer_of(out, created_by)
    files: list[str | Path] = []
    for i, text in enumerate(requirements):
        files += ["-r", work / f"requirements-{i}.txt"]
        (work / f"requirements-{i}.txt").write_bytes(text)
    wheels, target = work / "wheels", work / "site-packages"
    _pip("wheel", "--wheel-dir", wheels, *files)
    _pip("install", "--no-compile", "--no-index",
         "--find-links", wheels, "--target", target, *PIP_TARGET_FLAGS, *files)
    with layer(out) as writer:
        scripts = target / "bin"
        if scripts.is_dir():
            writer.add_tree(scripts, "usr/local/bin", rewrite=_shebang_for_image)
        writer.add_tree(target, SITE_PACKAGES,
                        exclude=lambda a: a == f"{SITE_PACKAGES}/bin" or _ignored(a))
    return _layer_of(out, created_by)


def app_layer(p: Plan, out: Path) -> Layer:
    with layer(out) as writer:
        for path in sorted(p.files):
            source = p.files[path]
            if isinstance(source, bytes):
                writer.add_bytes(path, source)
            else:
                writer.add_tree(source, path, exclude=_ignored)
    return Layer(out, sha256_file(out), f"COPY the sources of {p.image.dockerfile}")


def _finish(name: str, tag: str, tarball: Path) -> BuiltImage:
    image = BuiltImage(name, f"{REGISTRY}/{name}:{tag}", tarball, sha256_file(tarball),
                       tarball.stat().st_size)
    info = {"ref": image.ref, "sha256": image.sha256, "bytes": image.bytes}
    with atomic_output(tarball.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return image


def _cached_image(name: str, tarball: Path) -> BuiltImage | None:
    sidecar = tarball.with_suffix(".json")
    if not (tarball.is_file() and sidecar.is_file()):
        return None
    os.utime(tarball)  # in use: keeps it from pruning
    info = json.loads(sidecar.read_text())
    return BuiltImage(name, info["ref"], tarball, info["sha256"], info["bytes"])


def build_python_image(p: Plan, base: BaseTarball, cache: Path) -> BuiltImage:
    key = content_hash(p, base)
    tarball = cache / f"{p.image.name}-{key[:12]}.tar"
    if (done := _cached_image(p.image.name, tarball)) is not None:
        return done
    with tempfile.TemporaryDirectory(prefix=f".{p.image.name}-", dir=cache) as tmp:
        work = Path(tmp)
        layers = [
            Layer(base.path, base.sha256, f"debootstrap {base.path.name}"),
            deps_layer(p.requirement_bytes(), cache, work),
            app_layer(p, work / "app.tar"),
        ]
        write_docker_archive(tarball, f"{REGISTRY}/{p.image.name}:{key[:12]}", layers, p.config)
    return _finish(p.image.name, key[:12], tarball)


def _go_version() -> str:
    return subprocess.run(["go", "version"], check=True, capture_output=True,
                          text=True).stdout.strip()


def build_go_image(image: GoImage, cache: Path, repo: Path = REPO) -> BuiltImage:
    module = repo / image.module
    digest = hashlib.sha256()
    for part in (builder_digest(), image.name, _go_version()):
        digest.update(part.encode() + b"\0")
    _hash_source(digest, module)
    key = digest.hexdigest()
    tarball = cache / f"{image.name}-{key[:12]}.tar"
    if (done := _cached_image(image.name, tarball)) is not None:
        return done
    with tempfile.TemporaryDirectory(prefix=f".{image.name}-", dir=cache) as tmp:
        work = Path(tmp)
        binary = work / image.binary
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}
        subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."],
                       cwd=module, check=True, env=env)
        with layer(work / "layer.tar") as writer:
            writer.add_tree(binary, image.binary)
        layers = [_layer_of(work / "layer.tar", f"go build {image.module}")]
        write_docker_archive(tarball, f"{REGISTRY}/{image.name}:{key[:12]}", layers,
                             go_image_config(image))
    return _finish(image.name, key[:12], tarball)


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache (a second `make images` waits, then finds it done)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another image build using {cache}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prune(cache: Path, max_age_days: float = PRUNE_AFTER_DAYS) -> list[Path]:
    """Removes image tarballs and dependency layers no build used for `max_age_days` (the
    cache is shared by every clone; one a clone still lists is rebuilt by its next
    `make images`)."""
    cutoff = time.time() - max_age_days * 86400
    removed = []
    for path in [*cache.glob("*.tar"), *cache.glob("layers/*.tar")]:
        if path.stat().st_mtime < cutoff:
            for stale in (path, path.with_suffix(".json"), path.with_name(path.name + ".sha256")):
                stale.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_manifest(path: Path, built: list[BuiltImage]) -> None:
    """Writes the manifest, keeping entries of images not built this time whose tarball
    still exists."""
    entries: dict[str, dict[str, object]] = {}
    if path.is_file():
        for entry in json.loads(path.read_text()).get("images", []):
            if Path(entry["tarball"]).is_file():
                entries[entry["name"]] = entry
    for image in built:
        entries[image.name] = image.to_json()
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({"images": list(entries.values())}, indent=2) + "\n")


def build(names: list[str], cache: Path, rootfs_cache: Path, manifest: Path, *,
          refresh_base: bool = False) -> list[BuiltImage]:
    built: list[BuiltImage] = []
    with _locked(cache):
        base: BaseTarball | None = None
        for image in PYTHON_IMAGES:
            if image.name not in names:
                continue
            started = time.monotonic()
            p = plan(image)
            if base is None:
                base = base_tarball(rootfs_cache, refresh=refresh_base)
            result = build_python_image(p, base, cache)
            built.append(result)
            _report(result, time.monotonic() - started)
        if PAUSE.name in names:
            started = time.monotonic()
            result = build_go_image(PAUSE, cache)
            built.append(result)
            _report(result, time.monotonic() - started)
        for path in prune(cache):
            _log(f"removed {path} (unused for {PRUNE_AFTER_DAYS} days)")
    write_manifest(manifest, built)
    return built


def _report(image: BuiltImage, seconds: float) -> None:
    _log(f"{image.ref}  {image.bytes / 1e6:.1f} MB  {seconds:.1f} s  {image.tarball}")
