"""Reproducible layer tarballs and docker-archive image tarballs.

A layer is an uncompressed tar with numeric owners, a fixed mtime and a sorted walk, so the
same inputs give the same bytes (and the same diff_id). An image archive is the
`docker save` layout: `manifest.json`, the config JSON named by its digest, and one
`<digest>/layer.tar` per layer; `ctr images import`, `skopeo copy docker-archive:` and
`docker load` accept it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

EPOCH = "1970-01-01T00:00:00Z"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _normalized_mode(mode: int, is_dir: bool) -> int:
    if is_dir or mode & 0o111:
        return 0o755
    return 0o644


class LayerWriter:
    """Writes one layer tar. Entries get mtime 0 and, unless told to keep the source's
    owners and modes (the debootstrap rootfs), root ownership and 0644/0755 modes."""

    def __init__(self, out: tarfile.TarFile) -> None:
        self._tar = out
        self._names: set[str] = set()

    def _add(self, info: tarfile.TarInfo, data: IO[bytes] | None = None) -> None:
        info.mtime = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, data)
        self._names.add(info.name)

    def __contains__(self, arcname: str) -> bool:
        return arcname in self._names

    def ensure_parents(self, arcname: str) -> None:
        parents = list(PurePosixPath(arcname).parents)[:-1]  # without "."
        for parent in reversed(parents):
            name = str(parent)
            if name not in self._names:
                self.add_directory(name)

    def add_directory(self, arcname: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(arcname)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self._add(info)

    def add_file(self, arcname: str, source: Path) -> None:
        """A regular file streamed from `source`, root-owned, mode 0644."""
        self.ensure_parents(arcname)
        info = tarfile.TarInfo(arcname)
        info.size = source.stat().st_size
        info.mode = 0o644
        with source.open("rb") as data:
            self._add(info, data)

    def add_bytes(self, arcname: str, data: bytes, mode: int = 0o644) -> None:
        self.ensure_parents(arcname)
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        info.mode = mode
        self._add(info, io.BytesIO(data))

    def add_tree(
        self,
        source: Path,
        arcroot: str,
        *,
        keep_owners: bool = False,
        exclude: Callable[[str], bool] = lambda _: False,
        rewrite: Callable[[str, bytes], bytes | None] = lambda _name, _data: None,
    ) -> None:
        """Adds `source` (a directory, or a single file) as `arcroot`, walking in sorted
        order. `exclude(arcname)` drops an entry (and a directory's contents);
        `rewrite(arcname, data)` may return replacement bytes for a regular file."""
        arcroot = arcroot.strip("/")
        if arcroot:
            self.ensure_parents(arcroot)
        for path, arcname in _walk(source, arcroot, exclude):
            info = self._tar.gettarinfo(str(path), arcname)
            if info is None or info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
                continue  # device nodes, pipes, sockets: the container runtime makes its own
            if not keep_owners:
                info.uid = info.gid = 0
                info.mode = _normalized_mode(info.mode, info.isdir())
            if info.isreg():
                data = path.read_bytes()
                replaced = rewrite(arcname, data)
                if replaced is not None:
                    data = replaced
                info.size = len(data)
                self._add(info, io.BytesIO(data))
            else:
                self._add(info)


def _walk(
    source: Path, arcroot: str, exclude: Callable[[str], bool]
) -> Iterator[tuple[Path, str]]:
    if not source.is_dir() or source.is_symlink():
        yield source, arcroot
        return
    if arcroot:
        yield source, arcroot
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        arcname = f"{arcroot}/{entry.name}" if arcroot else entry.name
        if exclude(arcname):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path, arcname, exclude)
        else:
            yield path, arcname


@contextmanager
def layer(path: Path) -> Iterator[LayerWriter]:
    """A layer tar written atomically to `path`."""
    with atomic_output(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        yield LayerWriter(out)


@dataclass(frozen=True)
class ImageConfig:
    env: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    user: str
    workdir: str
    exposed: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self, diff_ids: Iterable[str], created_by: Iterable[str]) -> dict[str, object]:
        config: dict[str, object] = {
            "Env": list(self.env),
            "Entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "Cmd": list(self.cmd) if self.cmd is not None else None,
            "User": self.user,
            "WorkingDir": self.workdir,
            "Labels": dict(sorted(self.labels.items())),
        }
        if self.exposed:
            config["ExposedPorts"] = {
                (p if "/" in p else f"{p}/tcp"): {} for p in self.exposed
            }
        return {
            "architecture": "amd64",
            "os": "linux",
            "created": EPOCH,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
            "history": [{"created": EPOCH, "created_by": step} for step in created_by],
        }


@dataclass(frozen=True)
class Layer:
    path: Path
    sha256: str  # of the uncompressed tar: the diff_id without its "sha256:" prefix
    created_by: str


def write_docker_archive(out: Path, ref: str, layers: list[Layer], config: ImageConfig) -> None:
    config_bytes = json.dumps(
        config.to_json([f"sha256:{la.sha256}" for la in layers], [la.created_by for la in layers]),
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = [f"{la.sha256}/layer.tar" for la in layers]
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [ref], "Layers": layer_names}],
        separators=(",", ":"),
    ).encode()
    with atomic_output(out) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        writer = LayerWriter(tar)
        for la, name in zip(layers, layer_names, strict=True):
            if name not in writer:  # the same layer twice is stored once
                writer.add_file(name, la.path)
        writer.add_bytes(config_name, config_bytes)
        writer.add_bytes("manifest.json", manifest)
