"""`python -m images build [--only NAME ...]`: see images.build."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from images.build import build
from images.plan import ALL_NAMES, REPO, PlanError
from images.rootfs import RootfsError
from images.smoke import smoke

_CACHE = Path.home() / ".cache" / "evaluation-operator"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="build the image tarballs and write the manifest")
    cmd.add_argument("--only", nargs="+", choices=ALL_NAMES, default=list(ALL_NAMES),
                     metavar="NAME", help=f"some of: {', '.join(ALL_NAMES)}")
    cmd.add_argument("--cache", type=Path,
                     default=Path(os.environ.get("IMAGES_CACHE", _CACHE / "images")))
    cmd.add_argument("--rootfs-cache", type=Path,
                     default=Path(os.environ.get("ROOTFS_CACHE", _CACHE / "rootfs")))
    cmd.add_argument("--manifest", type=Path, default=REPO / ".images" / "images.json")
    cmd.add_argument("--refresh-base", action="store_true",
                     help="debootstrap a new base even if one is cached")
    check = sub.add_parser("smoke", help="import and run the built images in a throwaway "
                           "containerd (root)")
    check.add_argument("--only", nargs="+", choices=ALL_NAMES, default=None, metavar="NAME")
    check.add_argument("--manifest", type=Path, default=REPO / ".images" / "images.json")
    args = parser.parse_args(argv)
    if args.command == "smoke":
        return smoke(args.manifest, args.only)
    try:
        build(args.only, args.cache.resolve(), args.rootfs_cache.resolve(),
              args.manifest.resolve(), refresh_base=args.refresh_base)
    except (RootfsError, PlanError) as error:
        print(f"make images: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"make images: {shlex.join(map(str, error.cmd))} failed (exit "
              f"{error.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
