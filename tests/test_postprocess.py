"""The app's optional post-processing: Retinex gamma and gray-world white balance."""

from __future__ import annotations

import numpy as np
import pytest

from cotir_pipeline.postprocess import gray_world_white_balance, postprocess, retinex_gamma
from cotir_test_support import demo_photo_pixels


def _photo() -> np.ndarray:
    return demo_photo_pixels("coffee")[:160, :200]


def test_retinex_gamma_on_a_flat_image_is_the_gamma_curve() -> None:
    """A flat image is its own illumination, so each level v becomes 255 (v / 255)^(1/g)."""
    for level in (16, 64, 200):
        flat = np.full((24, 32, 3), level, np.uint8)
        expected = round(255 * (level / 255) ** (1 / 2.0))
        result = retinex_gamma(flat, sigma=5, gamma=2.0)
        assert result.dtype == np.uint8
        assert np.all(result == expected), (level, np.unique(result), expected)


def test_retinex_gamma_of_one_changes_nothing_and_above_one_brightens_dark_regions_most() -> None:
    photo = _photo()
    assert np.array_equal(retinex_gamma(photo, sigma=20, gamma=1.0), photo)
    halves = np.full((40, 80, 3), 200, np.uint8)
    halves[:, :40] = 40
    gain = retinex_gamma(halves, sigma=3, gamma=1.5).astype(float) - halves
    dark_gain, bright_gain = gain[:, :20].mean(), gain[:, 60:].mean()
    assert dark_gain > 1.5 * bright_gain > 0, (dark_gain, bright_gain)


def test_retinex_gamma_matches_the_release_formula_with_opencv() -> None:
    """The release blurs with OpenCV (sigma, kernel 0x0) and truncates; ours is within
    one level of it everywhere."""
    cv2 = pytest.importorskip(
        "cv2", reason="OpenCV is the release's blur; compared only if installed"
    )
    photo = _photo()
    pixels = photo.astype(np.float64)
    illumination = cv2.GaussianBlur(pixels, (0, 0), 30)
    corrected = np.power(illumination / 255.0, 1 / 1.5) * 255.0
    release = np.clip(pixels * corrected / (illumination + 1e-6), 0, 255).astype(np.uint8)
    ours = retinex_gamma(photo, sigma=30, gamma=1.5)
    assert np.abs(ours.astype(int) - release.astype(int)).max() <= 1


def test_gray_world_equalises_the_channel_means() -> None:
    tinted = np.zeros((20, 30, 3), np.uint8)
    tinted[..., 0], tinted[..., 1], tinted[..., 2] = 100, 50, 150
    assert np.all(gray_world_white_balance(tinted) == 100)
    photo = _photo() // 2  # darker, so no channel clips once scaled
    tinted = (photo * np.array([1.0, 0.8, 0.6])).astype(np.uint8)
    before = tinted.astype(float).mean(axis=(0, 1))
    assert before.max() - before.min() > 10
    after = gray_world_white_balance(tinted).astype(float).mean(axis=(0, 1))
    assert after.max() - after.min() < 1.0, after


def test_postprocess_applies_the_release_order_and_checks_its_input() -> None:
    photo = _photo()
    assert postprocess(photo) is photo or np.array_equal(postprocess(photo), photo)
    both = postprocess(photo, enhance=True, white_balance=True, gamma=1.5, sigma=30)
    expected = gray_world_white_balance(retinex_gamma(photo, sigma=30, gamma=1.5))
    assert np.array_equal(both, expected)
    with pytest.raises(ValueError, match="uint8"):
        postprocess(photo.astype(np.float32), enhance=True)
    with pytest.raises(ValueError, match="gamma"):
        retinex_gamma(photo, gamma=0)
