"""Shared helpers of the degradation operators: input checks, seeded fields, filters.

Everything here is deterministic: random fields come from an explicit integer
seed through ``numpy.random.Generator(PCG64(seed))``; filters are direct sums of
shifted copies or SciPy's separable box/Gaussian filters (no FFT), computed in
float64; operators hand back float32.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

#: Field seeds are drawn below 2**53 so they stay exact in JSON readers that use doubles.
SEED_LIMIT = 2**53


def check_image(image: Any, *, name: str = "image") -> np.ndarray:
    """Validate the operator contract and return the image as float64 HxWx3.

    Raises TypeError for a non-array or a non-float dtype (a uint8 image is the
    usual mistake) and ValueError for a wrong shape, NaN/inf or values outside
    [0, 1].
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(
            f"{name} must be a float array in [0, 1] (float32), got dtype {image.dtype}; "
            "divide uint8 images by 255"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be HxWx3 (RGB), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"{name} values must lie in [0, 1], got [{low:.4g}, {high:.4g}]")
    return np.clip(image.astype(np.float64), 0.0, 1.0)


def finish(image: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and return a contiguous float32 array (the operator output contract)."""
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def quantize_8bit(image: np.ndarray) -> np.ndarray:
    """Round to the 256 levels of an 8-bit image, keeping float32 in [0, 1]."""
    return (np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def field_rng(seed: int) -> np.random.Generator:
    """The generator of one operator's random field (noise, streak seeds, drop layout)."""
    return np.random.Generator(np.random.PCG64(int(seed)))


def draw_seed(rng: np.random.Generator) -> int:
    """Draw a field seed (a plain int below 2**53, JSON-exact)."""
    return int(rng.integers(0, SEED_LIMIT))


def need_rng(rng: np.random.Generator | None, operator: str, missing: str) -> np.random.Generator:
    """Return ``rng``, or raise when a parameter must be drawn and no generator was given."""
    if rng is None:
        raise ValueError(
            f"{operator}: parameter {missing!r} was not given and no random generator was "
            "passed to draw it"
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{operator}: rng must be a numpy.random.Generator, got {type(rng)}")
    return rng


def check_range(operator: str, name: str, value: float, low: float, high: float) -> float:
    """Raise ValueError unless ``low <= value <= high``; return the value as float."""
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise TypeError(f"{operator}: {name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{operator}: {name}={value!r} outside [{low}, {high}]")
    return number


def check_int(operator: str, name: str, value: Any, low: int, high: int) -> int:
    """Raise TypeError unless ``value`` is an integer, ValueError unless low <= value <= high.

    Integral floats (3.0) are accepted, so JSON written by other tools replays.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{operator}: {name} must be an int, got {value!r}")
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        raise TypeError(f"{operator}: {name} must be an int, got {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{operator}: {name}={value!r} outside [{low}, {high}]")
    return number


def check_choice(operator: str, name: str, value: Any, options: tuple[Any, ...]) -> Any:
    """Raise ValueError unless ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{operator}: {name}={value!r} is not one of {options}")
    return value


def luminance(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB image (HxW)."""
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """Decode sRGB values in [0, 1] to linear light (IEC 61966-2-1 transfer curve)."""
    image = np.clip(image, 0.0, 1.0)
    return np.where(image <= 0.04045, image / 12.92, ((image + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    """Encode linear light in [0, 1] (clipped) to sRGB values."""
    image = np.clip(image, 0.0, 1.0)
    return np.where(image <= 0.0031308, image * 12.92, 1.055 * image ** (1.0 / 2.4) - 0.055)


def convolve(image: np.ndarray, kernel: np.ndarray, *, mode: str) -> np.ndarray:
    """Correlate every channel of ``image`` (HxW or HxWxC) with a 2-D ``kernel``.

    OpenCV's filter2D convention (correlation, anchor at the kernel centre).
    The image is padded with numpy pad ``mode`` ("edge" replicates the border,
    "reflect" mirrors without repeating it, like OpenCV's BORDER_REFLECT_101).
    Computed directly as a sum of shifted copies, grouped by equal tap weight,
    in a fixed order with separate multiplies and adds: unlike an FFT or a
    SIMD-dispatched filter, the result is bit-identical on every x86-64 CPU.
    """
    kh, kw = kernel.shape
    top, left = kh // 2, kw // 2
    pad = ((top, kh - 1 - top), (left, kw - 1 - left)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image.astype(np.float64), pad, mode=mode)  # type: ignore[call-overload]
    height, width = image.shape[:2]
    groups: dict[float, list[tuple[int, int]]] = {}
    for (ky, kx), weight in np.ndenumerate(kernel):
        if weight != 0.0:
            groups.setdefault(float(weight), []).append((ky, kx))
    out = np.zeros(image.shape, dtype=np.float64)
    partial = np.empty(image.shape, dtype=np.float64)
    for weight in sorted(groups):
        partial.fill(0.0)
        for ky, kx in groups[weight]:
            partial += padded[ky : ky + height, kx : kx + width]
        partial *= weight
        out += partial
    return out


def gaussian_kernel_1d(sigma: float, size: int | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian taps; ``size`` defaults to 2*ceil(3 sigma)+1."""
    if size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    half = (size - 1) / 2
    x = np.arange(size, dtype=np.float64) - half
    taps = np.exp(-(x**2) / (2 * sigma**2)) if sigma > 0 else (x == 0).astype(np.float64)
    return taps / taps.sum()


def opencv_gaussian_sigma(ksize: int) -> float:
    """The sigma OpenCV picks for a Gaussian of ``ksize`` taps when sigma is 0."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def gaussian_blur(image: np.ndarray, sigma: float, *, mode: str = "mirror") -> np.ndarray:
    """Separable Gaussian blur over the first two axes (scipy.ndimage, truncated at 4 sigma)."""
    if sigma <= 0:
        return image
    sigmas = (sigma, sigma) + (0.0,) * (image.ndim - 2)
    return ndimage.gaussian_filter(image, sigma=sigmas, mode=mode, truncate=4.0)


def box_blur(image: np.ndarray, size: int, *, mode: str = "mirror") -> np.ndarray:
    """Mean over a ``size`` x ``size`` window (each channel separately)."""
    if size <= 1:
        return image
    sizes = (size, size) + (1,) * (image.ndim - 2)
    return ndimage.uniform_filter(image, size=sizes, mode=mode)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of a grey ``source`` by a grey ``guide`` (box windows)."""
    size = 2 * radius + 1
    mean_i = box_blur(guide, size)
    mean_p = box_blur(source, size)
    var_i = box_blur(guide * guide, size) - mean_i * mean_i
    cov_ip = box_blur(guide * source, size) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_blur(a, size) * guide + box_blur(b, size)


def resize_plane(plane: np.ndarray, height: int, width: int, *, method: str) -> np.ndarray:
    """Resize one float plane with Pillow ("bicubic" or "bilinear"), keeping float precision."""

    resample = {
        "bicubic": Image.Resampling.BICUBIC,
        "bilinear": Image.Resampling.BILINEAR,
    }[method]
    if plane.shape == (height, width):
        return plane.astype(np.float64)
    source = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(source.resize((width, height), resample=resample), dtype=np.float64)


def resize_image(image: np.ndarray, height: int, width: int, *, method: str) -> np.ndarray:
    """Resize an HxWx3 float image channel by channel (see :func:`resize_plane`)."""
    return np.stack(
        [resize_plane(image[..., c], height, width, method=method) for c in range(3)], axis=-1
    )


def smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1]: uniform noise on a coarse grid, bicubic-upsampled."""
    rows = max(2, round(cells * height / max(height, width)))
    cols = max(2, round(cells * width / max(height, width)))
    coarse = rng.random((rows, cols))
    field = resize_plane(coarse, height, width, method="bicubic")
    low, high = float(field.min()), float(field.max())
    return (field - low) / (high - low) if high > low else np.full_like(field, 0.5)
