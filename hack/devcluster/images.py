"""The image manifest `make images` writes (`.images/images.json`, one per clone): which image
tarballs exist, and the reference each registers when imported into containerd."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from devcluster.tools import REPO_ROOT

MANIFEST = REPO_ROOT / ".images" / "images.json"


class ImageName(StrEnum):
    RUNNER = "evaluation-runner"
    RUNNER_LM_EVAL = "evaluation-runner-lm-eval"
    OPERATOR = "evaluation-operator"
    PAUSE = "pause"


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Image:
    name: str
    ref: str
    tarball: Path
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ImageManifest:
    images: dict[str, Image]

    def get(self, name: ImageName) -> Image:
        try:
            return self.images[name.value]
        except KeyError:
            raise ManifestError(
                f"image {name.value!r} is not in the manifest (run `make images`)") from None

    def ref(self, name: ImageName) -> str:
        return self.get(name).ref


def manifest_path() -> Path:
    """EVAL_IMAGES_MANIFEST overrides the clone's manifest (images built elsewhere)."""
    return Path(os.environ.get("EVAL_IMAGES_MANIFEST", MANIFEST))


def parse_manifest(text: str, where: str = "images.json") -> ImageManifest:
    try:
        data = json.loads(text)
        entries = data["images"]
    except (ValueError, KeyError, TypeError) as error:
        raise ManifestError(f"{where}: not an image manifest ({error})") from None
    if not isinstance(entries, list):
        raise ManifestError(f"{where}: images: expected a list")
    images: dict[str, Image] = {}
    for i, entry in enumerate(entries):
        try:
            image = Image(name=str(entry["name"]), ref=str(entry["ref"]),
                          tarball=Path(entry["tarball"]), sha256=str(entry["sha256"]),
                          bytes=int(entry["bytes"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"{where}: images[{i}]: missing or bad field {error}") from None
        images[image.name] = image
    return ImageManifest(images)


def load_manifest(path: Path | None = None) -> ImageManifest:
    path = path or manifest_path()
    try:
        text = path.read_text()
    except OSError as error:
        raise ManifestError(f"no image manifest at {path} (run `make images`): {error}") from None
    return parse_manifest(text, str(path))
