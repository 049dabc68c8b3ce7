"""Clean photographs that ship inside installed packages: the demo profile's ground truth.

The demo profile needs real photographs without any download. scikit-image's
wheel ships several colour photos and pyiqa's wheel installs five Kodak images
(in its ``ResultsCalibra/ref_dir`` folder). They are cut into square patches,
and each photo belongs to exactly one split, so train and bench never share a
source photograph (the stereo motorcycle pair counts as one photo).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

Split = Literal["train", "bench"]


class DemoPhotoMissingError(FileNotFoundError):
    """A package that ships a demo photo is not installed or lacks the file."""


@dataclass(frozen=True)
class DemoPhoto:
    """One shipped photograph and the split it belongs to."""

    photo_id: str
    package: str
    relative_path: str
    group: str
    split: Split
    credit: str


_SKIMAGE = "scikit-image sample data (public domain or CC0, see skimage/data/README.txt)"
_KODAK = "Kodak Lossless True Color Image Suite, as installed by pyiqa"
_KODAK_DIR = "../ResultsCalibra/ref_dir/"

#: The demo photo set. Bench photos: one Kodak image, coffee and chelsea (about a
#: fifth of the patches), chosen once and fixed so results stay comparable.
DEMO_PHOTOS: tuple[DemoPhoto, ...] = (
    DemoPhoto("astronaut", "skimage", "data/astronaut.png", "astronaut", "train", _SKIMAGE),
    DemoPhoto("rocket", "skimage", "data/rocket.jpg", "rocket", "train", _SKIMAGE),
    DemoPhoto("hubble", "skimage", "data/hubble_deep_field.jpg", "hubble", "train", _SKIMAGE),
    DemoPhoto("ihc", "skimage", "data/ihc.png", "ihc", "train", _SKIMAGE),
    DemoPhoto("retina", "skimage", "data/retina.jpg", "retina", "train", _SKIMAGE),
    DemoPhoto(
        "motorcycle_left", "skimage", "data/motorcycle_left.png", "motorcycle", "train", _SKIMAGE
    ),
    DemoPhoto(
        "motorcycle_right", "skimage", "data/motorcycle_right.png", "motorcycle", "train", _SKIMAGE
    ),
    DemoPhoto("kodak_i03", "pyiqa", _KODAK_DIR + "I03.bmp", "kodak_i03", "train", _KODAK),
    DemoPhoto("kodak_i04", "pyiqa", _KODAK_DIR + "I04.bmp", "kodak_i04", "train", _KODAK),
    DemoPhoto("kodak_i06", "pyiqa", _KODAK_DIR + "I06.bmp", "kodak_i06", "train", _KODAK),
    DemoPhoto("kodak_i08", "pyiqa", _KODAK_DIR + "I08.bmp", "kodak_i08", "train", _KODAK),
    DemoPhoto("kodak_i19", "pyiqa", _KODAK_DIR + "I19.bmp", "kodak_i19", "bench", _KODAK),
    DemoPhoto("coffee", "skimage", "data/coffee.png", "coffee", "bench", _SKIMAGE),
    DemoPhoto("chelsea", "skimage", "data/chelsea.png", "chelsea", "bench", _SKIMAGE),
)


@dataclass(frozen=True)
class Patch:
    """A square crop of a demo photo: the unit the demo source degrades."""

    photo_id: str
    group: str
    split: Split
    x: int
    y: int
    size: int

    @property
    def item_key(self) -> str:
        """Stable key of this patch inside the demo source."""
        return f"{self.photo_id}/x{self.x:04d}_y{self.y:04d}_s{self.size}"


@dataclass(frozen=True)
class SkippedPatch:
    """A patch left out, with the reason (recorded, never silently dropped)."""

    item_key: str
    reason: str


def photo_path(photo: DemoPhoto) -> Path:
    """Absolute path of a shipped photo; raises naming the package to install if missing."""
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.submodule_search_locations:
        raise DemoPhotoMissingError(
            f"demo photo {photo.photo_id!r} ships with the Python package {photo.package!r}, "
            "which is not installed (it is a dependency of cotir-pipeline: reinstall the project)"
        )
    path = (Path(next(iter(spec.submodule_search_locations))) / photo.relative_path).resolve()
    if not path.is_file():
        raise DemoPhotoMissingError(
            f"demo photo {photo.photo_id!r} not found at {path} (package {photo.package!r} "
            "is installed but lacks the file; a different version may have moved it)"
        )
    return path


def load_photo(photo: DemoPhoto) -> np.ndarray:
    """The photo as an RGB uint8 array (H, W, 3)."""
    with Image.open(photo_path(photo)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def photo_digest(photo: DemoPhoto) -> str:
    """sha256 of the photo file: part of every demo sample's content-hash id."""
    return hashlib.sha256(photo_path(photo).read_bytes()).hexdigest()


def cut_patches(
    photo: DemoPhoto, image: np.ndarray, size: int, stride: int, min_std: float = 6.0
) -> tuple[list[Patch], list[SkippedPatch]]:
    """Grid patches of ``size`` px every ``stride`` px; near-flat patches are skipped.

    Flat patches (e.g. the black border of the retina photo) teach nothing and make
    degradations invisible, so they are recorded as skipped with their contrast.
    """
    if size < 16 or stride < 1:
        raise ValueError(f"patch size must be >= 16 and stride >= 1, got {size}, {stride}")
    height, width = image.shape[:2]
    kept: list[Patch] = []
    skipped: list[SkippedPatch] = []
    for y in range(0, height - size + 1, stride):
        for x in range(0, width - size + 1, stride):
            patch = Patch(photo.photo_id, photo.group, photo.split, x, y, size)
            contrast = float(image[y : y + size, x : x + size].std())
            if contrast < min_std:
                reason = f"near-flat patch (std {contrast:.1f} < {min_std})"
                skipped.append(SkippedPatch(patch.item_key, reason))
            else:
                kept.append(patch)
    return kept, skipped


def crop(image: np.ndarray, patch: Patch) -> np.ndarray:
    """The pixels of ``patch`` from its photo's array."""
    return image[patch.y : patch.y + patch.size, patch.x : patch.x + patch.size].copy()
