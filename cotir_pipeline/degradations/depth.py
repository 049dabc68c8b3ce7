"""Depth maps for haze-like operators: normalising real maps and a documented proxy.

Haze, non-homogeneous haze and underwater all need a scene distance per pixel.
Benchmarks that ship depth (the AgenticIR set uses one per MiO100 image) pass it
in; everything else uses :func:`depth_proxy`, which is a heuristic, not a depth
estimate: far = higher in the frame and brighter in the dark channel (hazy,
sky-like regions), smoothed so it carries no texture.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cotir_pipeline.degradations._core import gaussian_blur, resize_plane

#: Weights of the proxy's two cues (image row, dark channel), and its nearest value.
PROXY_ROW_WEIGHT = 0.6
PROXY_DARK_WEIGHT = 0.4
PROXY_NEAR = 0.2
#: Dark-channel window (pixels) of He et al.'s prior.
DARK_CHANNEL_PATCH = 15


def dark_channel(image: np.ndarray, patch: int = DARK_CHANNEL_PATCH) -> np.ndarray:
    """Per-pixel minimum over RGB and a ``patch`` x ``patch`` window (He et al., CVPR 2009)."""
    if patch < 1:
        raise ValueError(f"dark channel patch must be >= 1, got {patch}")
    return ndimage.minimum_filter(image.min(axis=2), size=patch, mode="nearest")


def normalize_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """A distance map scaled to max 1 (AgenticIR's ``d / d.max()``), resized to HxW.

    ``depth`` is distance-like (larger = farther), HxW or HxWx1, non-negative.
    It is resized bilinearly when its size differs (e.g. after a low-resolution step).
    Raises ValueError for a wrong shape, NaN or negative values, or an all-zero map.
    """
    if not isinstance(depth, np.ndarray):
        raise TypeError(f"depth must be a numpy array, got {type(depth).__name__}")
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f"depth must be an HxW array, got shape {depth.shape}")
    depth = depth.astype(np.float64)
    if not np.isfinite(depth).all() or float(depth.min()) < 0:
        raise ValueError("depth must be finite and non-negative")
    peak = float(depth.max())
    if peak <= 0:
        raise ValueError("depth map is all zero")
    resized = resize_plane(depth / peak, height, width, method="bilinear")
    return np.clip(resized, 0.0, 1.0)


def depth_proxy(image: np.ndarray) -> np.ndarray:
    """A smooth distance proxy in [PROXY_NEAR, 1] for an RGB image in [0, 1] (HxW).

    d = PROXY_NEAR + (1 - PROXY_NEAR) * minmax(0.6 * (1 - row / (H - 1)) + 0.4 * smooth(dark
    channel)): the top of the frame and bright-dark-channel regions count as far.
    It is a reconstruction for images without a depth map, not a depth estimate.
    """
    height, width = image.shape[:2]
    rows = np.linspace(1.0, 0.0, height) if height > 1 else np.ones(1)
    row_term = np.broadcast_to(rows[:, None], (height, width))
    patch = max(1, min(DARK_CHANNEL_PATCH, height, width))
    dark = dark_channel(image, patch)
    dark = gaussian_blur(dark, max(height, width) / 40.0, mode="nearest")
    combined = PROXY_ROW_WEIGHT * row_term + PROXY_DARK_WEIGHT * dark
    low, high = float(combined.min()), float(combined.max())
    scaled = (combined - low) / (high - low) if high > low else np.ones_like(combined)
    return PROXY_NEAR + (1.0 - PROXY_NEAR) * scaled
