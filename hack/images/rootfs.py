"""The Debian base every Python image starts from: a debootstrap `minbase` rootfs packed as
a layer tar, cached outside the clone as `<suite>-<packages hash>-<YYYYMMDD>.tar`.

Debian bookworm's python3 is 3.11, the Python of the Dockerfiles' `python:3.11-slim`, so
CPython 3.11 wheels fit it. The newest cached tarball is reused unless a refresh is asked.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from images.archive import atomic_output, layer, sha256_file

SUITE = "bookworm"
# python-is-python3: the Dockerfiles' ENTRYPOINT runs `python`, as python:3.11-slim has it.
PACKAGES = ("python3", "python-is-python3", "ca-certificates")
PYTHON_VERSION = "3.11"  # what Debian bookworm ships; checked against the Dockerfiles' FROM

# What a runtime image does not need (the runtime provides /dev, /proc, /sys, /etc/resolv.conf,
# /etc/hostname); copyright files are kept.
_EXCLUDED = (
    re.compile(r"(dev|proc|sys|run|tmp|var/tmp)/.+"),
    re.compile(r"etc/(hostname|resolv\.conf)"),
    re.compile(r"var/cache/apt/.+\.(deb|bin)"),
    re.compile(r"var/lib/apt/lists/.+"),
    re.compile(r"var/log/.+"),
    re.compile(r"usr/share/(man|info|locale)/.+"),
    re.compile(r"usr/share/doc/[^/]+/(?!copyright$).+"),
)


class RootfsError(RuntimeError):
    pass


@dataclass(frozen=True)
class BaseTarball:
    path: Path
    sha256: str

    @property
    def id(self) -> str:
        return f"{self.path.name}@sha256:{self.sha256}"


def excluded(arcname: str) -> bool:
    return any(pattern.fullmatch(arcname) for pattern in _EXCLUDED)


def _key() -> str:
    return hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:8]


def _cached(cache: Path) -> list[Path]:
    pattern = re.compile(rf"{SUITE}-{_key()}-\d{{8}}\.tar")
    return sorted(p for p in cache.glob("*.tar") if pattern.fullmatch(p.name))


def _with_digest(path: Path) -> BaseTarball:
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        return BaseTarball(path, sidecar.read_text().strip())
    digest = sha256_file(path)
    with atomic_output(sidecar) as tmp:
        tmp.write_text(digest + "\n")
    return BaseTarball(path, digest)


def debian_mirror(environ: Mapping[str, str] = os.environ, apt: Path = Path("/etc/apt")) -> str:
    """$DEBIAN_MIRROR, else the first non-security Debian mirror in the apt configuration."""
    if environ.get("DEBIAN_MIRROR"):
        return environ["DEBIAN_MIRROR"]
    for sources in sorted((apt / "sources.list.d").glob("*.sources")):
        for line in sources.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "URIs" and "debian" in value and "security" not in value:
                return value.split()[0]
    sources_list = apt / "sources.list"
    if sources_list.is_file():
        for line in sources_list.read_text().splitlines():
            words = line.split()
            if words[:1] == ["deb"]:
                for word in words[1:]:
                    if "://" in word and "debian" in word and "security" not in word:
                        return word
    raise RootfsError("no Debian mirror in the apt configuration: set DEBIAN_MIRROR")


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p.startswith(prefix)]


def _remove(directory: Path) -> None:
    """Removes a debootstrap target, unmounting first what a failed run left mounted in it
    (/proc, /sys), so the removal can never reach the host's."""
    for point in sorted(mounts_under(directory), key=len, reverse=True):
        subprocess.run(["umount", point], check=False)
    if left := mounts_under(directory):
        raise RootfsError(f"still mounted, not removing {directory}: {left}")
    shutil.rmtree(directory, ignore_errors=True)


def _debootstrap(target: Path, mirror: str) -> None:
    if os.geteuid() != 0:
        raise RootfsError("debootstrap needs root (or a cached base tarball)")
    if shutil.which("debootstrap") is None:
        raise RootfsError("debootstrap is not installed: run `make image-deps`")
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
         SUITE, str(target), mirror],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def check_python(base: Path, version: str) -> None:
    with tarfile.open(base) as tar:
        names = set(tar.getnames())
    if f"usr/bin/python{version}" not in names:
        raise RootfsError(f"{base.name} has no usr/bin/python{version}; the Dockerfiles ask "
                          f"for python:{version} (Debian {SUITE} ships {PYTHON_VERSION})")


def base_tarball(cache: Path, *, refresh: bool = False) -> BaseTarball:
    """The newest cached base tarball, or a fresh one from debootstrap."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _cached(cache)
    if found and not refresh:
        return _with_digest(found[-1])
    today = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    out = cache / f"{SUITE}-{_key()}-{today}.tar"
    out.with_name(out.name + ".sha256").unlink(missing_ok=True)  # a refresh the same day
    target = Path(tempfile.mkdtemp(prefix=f".{SUITE}-rootfs-", dir=cache))
    try:
        _debootstrap(target, debian_mirror())
        with layer(out) as writer:
            writer.add_tree(target, "", keep_owners=True, exclude=excluded)
    finally:
        _remove(target)
    check_python(out, PYTHON_VERSION)
    return _with_digest(out)
