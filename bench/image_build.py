"""`make images` from nothing, then again with nothing changed: seconds per step and sizes.

Cold: every cache empty (a temporary IMAGES_CACHE, ROOTFS_CACHE and pip cache), so the
figure includes debootstrap's and pip's downloads (network-bound). Warm: the same build run
again, which must do nothing. Needs root (debootstrap).

    .venv/bin/python bench/image_build.py                  # cold and warm, all images
    .venv/bin/python bench/image_build.py --keep-pip-cache # pip downloads from ~/.cache/pip
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from images.build import build
from images.plan import ALL_NAMES
from images.rootfs import base_tarball


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-pip-cache", action="store_true",
                        help="use the user's pip cache instead of an empty one")
    parser.add_argument("--only", nargs="+", choices=ALL_NAMES, default=list(ALL_NAMES))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eval-image-bench-"))
    try:
        if not args.keep_pip_cache:
            os.environ["PIP_CACHE_DIR"] = str(work / "pip")
        cache, rootfs, manifest = work / "images", work / "rootfs", work / "images.json"
        started = time.monotonic()
        base = base_tarball(rootfs)
        print(f"cold  debootstrap base            {time.monotonic() - started:7.1f} s  "
              f"{base.path.stat().st_size / 1e6:7.1f} MB")
        for name in args.only:
            started = time.monotonic()
            [image] = build([name], cache, rootfs, manifest)
            print(f"cold  {name:<28}{time.monotonic() - started:7.1f} s  "
                  f"{image.bytes / 1e6:7.1f} MB")
        started = time.monotonic()
        build(list(args.only), cache, rootfs, manifest)
        print(f"warm  all (nothing to do)         {time.monotonic() - started:7.1f} s")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
