"""The demo source's clean photographs: shipped, loadable, split by photo."""

from __future__ import annotations

import numpy as np
import pytest

from cotir_pipeline import demo_photos


def test_every_demo_photo_ships_and_loads() -> None:
    for photo in demo_photos.DEMO_PHOTOS:
        image = demo_photos.load_photo(photo)
        assert image.dtype == np.uint8
        assert image.ndim == 3
        assert image.shape[2] == 3
        assert min(image.shape[:2]) >= 256, photo.photo_id


def test_train_and_bench_never_share_a_photograph() -> None:
    groups = {"train": set(), "bench": set()}
    for photo in demo_photos.DEMO_PHOTOS:
        groups[photo.split].add(photo.group)
    assert groups["train"]
    assert groups["bench"]
    assert groups["train"].isdisjoint(groups["bench"])
    # The stereo pair shows one scene: both halves are in one split.
    splits = {p.split for p in demo_photos.DEMO_PHOTOS if p.group == "motorcycle"}
    assert len(splits) == 1


def test_patches_cover_the_photo_and_skip_flat_areas() -> None:
    photo = next(p for p in demo_photos.DEMO_PHOTOS if p.photo_id == "retina")
    image = demo_photos.load_photo(photo)
    kept, skipped = demo_photos.cut_patches(photo, image, size=128, stride=128)
    per_side = image.shape[0] // 128
    assert len(kept) + len(skipped) == per_side * (image.shape[1] // 128)
    assert skipped, "the retina photo's black corners should be skipped"
    assert all("near-flat" in skip.reason for skip in skipped)
    patch = kept[0]
    assert demo_photos.crop(image, patch).shape == (128, 128, 3)
    assert patch.item_key.startswith("retina/x")


def test_bad_patch_geometry_is_rejected() -> None:
    photo = demo_photos.DEMO_PHOTOS[0]
    with pytest.raises(ValueError, match="patch size"):
        demo_photos.cut_patches(photo, demo_photos.load_photo(photo), size=8, stride=8)


def test_missing_package_names_it() -> None:
    photo = demo_photos.DemoPhoto("x", "no_such_package_here", "a.png", "x", "train", "none")
    with pytest.raises(demo_photos.DemoPhotoMissingError, match="no_such_package_here"):
        demo_photos.photo_path(photo)
