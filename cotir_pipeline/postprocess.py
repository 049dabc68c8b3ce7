"""Optional post-processing of a restored image, as the public release's app offers it.

Two global corrections a user can switch on after restoration:

- :func:`retinex_gamma`: single-scale Retinex with a gamma on the illumination. The
  illumination is the image blurred by a wide Gaussian; it is raised to ``1 / gamma``
  and the image is scaled by the ratio, which brightens dark regions more than bright
  ones and keeps local contrast.
- :func:`gray_world_white_balance`: scales each channel so that the three channel
  means become their average (the gray-world assumption).

The release applies them in that order (:func:`postprocess`). Both take and return RGB
uint8 arrays; results are rounded to the nearest level (the release truncates, which
can lower a level by one).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

#: The release's defaults: gamma 1.5, a Gaussian of sigma 100 px for the illumination.
DEFAULT_GAMMA = 1.5
DEFAULT_SIGMA = 100.0
_EPS = 1e-6


def _check_rgb8(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {array.shape} {array.dtype}")
    return array


def _to_rgb8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def retinex_gamma(
    image: np.ndarray, sigma: float = DEFAULT_SIGMA, gamma: float = DEFAULT_GAMMA
) -> np.ndarray:
    """Brighten through the illumination: ``image * (L / 255) ** (1 / gamma) * 255 / L``,
    with ``L`` the image blurred by a Gaussian of ``sigma`` px per channel (edges
    mirrored, as OpenCV's default border). ``gamma`` > 1 brightens, < 1 darkens."""
    pixels = _check_rgb8(image).astype(np.float64)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    illumination = gaussian_filter(pixels, sigma=(sigma, sigma, 0), mode="mirror", truncate=4.0)
    corrected = np.power(illumination / 255.0, 1.0 / gamma) * 255.0
    return _to_rgb8(pixels * corrected / (illumination + _EPS))


def gray_world_white_balance(image: np.ndarray) -> np.ndarray:
    """Scale each channel by ``mean(all channels) / mean(channel)`` (gray-world)."""
    pixels = _check_rgb8(image).astype(np.float64)
    channel_means = pixels.mean(axis=(0, 1))
    gains = channel_means.mean() / (channel_means + _EPS)
    return _to_rgb8(pixels * gains)


def postprocess(
    image: np.ndarray,
    *,
    enhance: bool = False,
    white_balance: bool = False,
    gamma: float = DEFAULT_GAMMA,
    sigma: float = DEFAULT_SIGMA,
) -> np.ndarray:
    """The release's order: the Retinex gamma first (if ``enhance``), then white balance."""
    result = _check_rgb8(image)
    if enhance:
        result = retinex_gamma(result, sigma=sigma, gamma=gamma)
    if white_balance:
        result = gray_world_white_balance(result)
    return result
