"""Property tests of the degradation operators on real photographs (scikit-image's data).

Contract (dtype, range, shape, no NaN), determinism per seed, replay from the
recorded parameters, that every operator measurably degrades, and the effect
each one is meant to have (blur removes high frequencies, haze lifts the dark
channel, JPEG leaves 8x8 blocks, ...).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from cotir_pipeline.degradations import (
    OPERATORS,
    dark_channel,
    depth_proxy,
    get_operator,
    haze,
    jpeg,
    low_light,
    low_resolution,
    motion_blur,
    noise,
    rain,
    underwater,
    watermark,
)
from cotir_pipeline.degradations._core import SEED_LIMIT, luminance, resize_image
from cotir_pipeline.degradations.parameters import Bernoulli, Each, Either, Ratio, SeedDraw
from cotir_pipeline.degradations.samplers import Choice, Fixed, IntRange, Uniform
from cotir_pipeline.degradations.weather import UNDERWATER_BY_WATER, rain_layer
from cotir_test_support import REPO_ROOT

PHOTOS = ("astronaut", "chelsea", "coffee")
#: (height, width): odd and small sizes on purpose.
SIZES = ((37, 53), (64, 96), (120, 160))
OPERATOR_NAMES = tuple(OPERATORS)


@functools.cache
def photo(name: str, height: int, width: int) -> np.ndarray:
    """A real photograph from scikit-image, centre-cropped to the aspect and resized."""
    pixels = getattr(data, name)()
    src_h, src_w = pixels.shape[:2]
    scale = min(src_h / height, src_w / width)
    crop_h, crop_w = round(height * scale), round(width * scale)
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    crop = Image.fromarray(pixels[top : top + crop_h, left : left + crop_w])
    resized = crop.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float32) / 255.0


def rng_for(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


def laplacian_variance(image: np.ndarray) -> float:
    return float(ndimage.laplace(luminance(image.astype(np.float64))).var())


def run(name: str, image: np.ndarray, seed: int, **params: object) -> tuple[np.ndarray, dict]:
    return get_operator(name)(image, rng_for(seed), **params)


# ------------------------------------------------------------------ contract


def _could_draw(default: object, value: object) -> bool:
    """Whether ``value`` (as the operator records it) can come from the declared draw."""
    if isinstance(default, Uniform):
        return default.low <= float(value) < default.high  # type: ignore[arg-type]
    if isinstance(default, IntRange):
        number = float(value)  # type: ignore[arg-type]
        return number.is_integer() and default.low <= number <= default.high
    if isinstance(default, Ratio):
        return _could_draw(default.numerator, round(float(value) * default.divisor))  # type: ignore[arg-type]
    if isinstance(default, Choice):
        return value in default.options
    if isinstance(default, Fixed):
        return value == default.value
    if isinstance(default, Bernoulli):
        return isinstance(value, bool)
    if isinstance(default, SeedDraw):
        return isinstance(value, int) and 0 <= value < SEED_LIMIT
    if isinstance(default, Each):
        parts = list(value)  # type: ignore[call-overload]
        return len(parts) == len(default.parts) and all(
            _could_draw(part, item) for part, item in zip(default.parts, parts, strict=True)
        )
    if isinstance(default, Either):
        return _could_draw(default.first, value) or _could_draw(default.second, value)
    raise AssertionError(f"no support check for {default!r}")


@pytest.mark.parametrize("name", [n for n in OPERATOR_NAMES if OPERATORS[n].params is not None])
def test_defaults_are_drawn_from_the_operators_declaration(name: str) -> None:
    """Each operator's table (OPERATORS[name].params) is where its default ranges live:
    every declared parameter is a keyword of the operator, and over many seeds each one is
    drawn, always from its declared default."""
    spec = OPERATORS[name]
    table = spec.params
    assert table is not None
    assert table.operator == name
    keywords = set(inspect.signature(spec.func).parameters)
    assert set(table.params) <= keywords
    image = photo("coffee", 37, 53)
    seen: set[str] = set()
    for seed in range(48):
        _, params = run(name, image, seed)
        declared = dict(table.params)
        if name == "underwater":  # attenuation and backscatter: per water type
            declared |= dict(UNDERWATER_BY_WATER[params["water"]].params)
        for key, value in params.items():
            if key in declared:
                seen.add(key)
                assert _could_draw(declared[key].default, value), (name, key, value)
    assert set(table.params) <= seen, f"{name}: never drawn: {set(table.params) - seen}"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_output_contract_and_replay(name: str, size: tuple[int, int]) -> None:
    for index, photo_name in enumerate(PHOTOS):
        image = photo(photo_name, *size)
        out, params = run(name, image, seed=11 + index)
        assert out.dtype == np.float32
        assert np.isfinite(out).all()
        assert out.min() >= 0.0
        assert out.max() <= 1.0
        if name == "low_resolution":
            factor = params["factor"]
            assert out.shape == (math.ceil(size[0] * factor), math.ceil(size[1] * factor), 3)
        else:
            assert out.shape == image.shape
        # params are JSON data, and they alone reproduce the output (no generator needed)
        restored = json.loads(json.dumps(params))
        again, again_params = get_operator(name)(image, None, **restored)
        assert again.tobytes() == out.tobytes()
        assert again_params == restored


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_same_seed_same_bytes_other_seed_other_output(name: str) -> None:
    image = photo("coffee", 64, 96)
    first, params = run(name, image, seed=5)
    second, params_again = run(name, image, seed=5)
    assert first.tobytes() == second.tobytes()
    assert params == params_again
    if OPERATORS[name].random:
        others = [run(name, image, seed=seed)[0] for seed in (6, 7)]
        assert any(other.tobytes() != first.tobytes() for other in others)


def test_operator_does_not_touch_global_random_state() -> None:
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    for name in OPERATOR_NAMES:
        run(name, photo("chelsea", 37, 53), seed=1)
    assert np.random.random() == expected


def test_input_is_not_modified() -> None:
    image = photo("astronaut", 64, 96).copy()
    before = image.tobytes()
    for name in OPERATOR_NAMES:
        run(name, image, seed=2)
    assert image.tobytes() == before


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_bad_images_raise(name: str) -> None:
    spec = get_operator(name)
    good = photo("coffee", 37, 53)
    with pytest.raises(TypeError, match="float"):
        spec((good * 255).astype(np.uint8), rng_for(0))
    with pytest.raises(ValueError, match="HxWx3"):
        spec(good[..., 0], rng_for(0))
    with pytest.raises(ValueError, match="HxWx3"):
        spec(np.concatenate([good, good[..., :1]], axis=2), rng_for(0))
    broken = good.copy()
    broken[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        spec(broken, rng_for(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        spec(good * 2.0, rng_for(0))
    with pytest.raises(TypeError, match="numpy array"):
        spec(good.tolist(), rng_for(0))


@pytest.mark.parametrize(
    ("name", "params", "error"),
    [
        ("jpeg", {"quality": 0}, ValueError),
        ("jpeg", {"quality": 12.5}, TypeError),
        ("noise", {"kind": "salt"}, ValueError),
        ("noise", {"kind": "gaussian", "scale": 2.0}, ValueError),
        ("noise", {"kind": "gaussian", "sigma": -1.0}, ValueError),
        ("motion_blur", {"radius": 0}, ValueError),
        ("low_resolution", {"factor": 1.5}, ValueError),
        ("low_light", {"mode": "gamma", "shift": 30}, ValueError),
        ("low_light", {"mode": "dusk"}, ValueError),
        ("haze", {"beta": float("nan")}, ValueError),
        ("haze", {"depth_source": "given"}, ValueError),
        ("rain", {"width": 4}, ValueError),
        ("watermark", {"text": " "}, ValueError),
        ("underwater", {"attenuation": [0.1, 0.2]}, ValueError),
        ("flare", {"tint": [1.0, 0.5]}, ValueError),
        ("flare", {"streaks": 4.5}, TypeError),
        ("raindrop", {"count": 2.5}, TypeError),
        ("noise", {"kind": "gaussian", "color": "yes"}, TypeError),
    ],
)
def test_bad_parameters_raise(name: str, params: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        get_operator(name)(photo("coffee", 37, 53), rng_for(0), **params)


def test_missing_generator_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no random generator"):
        noise(photo("coffee", 37, 53), None, kind="gaussian")
    with pytest.raises(TypeError, match="Generator"):
        noise(photo("coffee", 37, 53), 42)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="known"):
        get_operator("smudge")
    with pytest.raises(ValueError, match="no depth"):
        get_operator("noise")(photo("coffee", 37, 53), rng_for(0), depth=np.ones((37, 53)))


# ------------------------------------------------------------------ it degrades

#: PSNR ceilings (dB) against the clean image; local overlays get a looser one and a
#: separate check that they change a visible part of the image.
PSNR_CEILING = {name: 35.0 for name in OPERATOR_NAMES} | {"raindrop": 45.0, "watermark": 45.0}


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_every_operator_measurably_degrades(name: str) -> None:
    for index, photo_name in enumerate(PHOTOS):
        clean = photo(photo_name, 120, 160)
        for seed in (index, 10 + index):
            out, _ = run(name, clean, seed)
            if out.shape != clean.shape:  # low resolution: compare after bicubic upscaling
                out = np.clip(resize_image(out, 120, 160, method="bicubic"), 0, 1)
            assert psnr(out, clean) < PSNR_CEILING[name], (photo_name, seed)
            changed = np.abs(out - clean).max(axis=2) > 4 / 255
            assert changed.mean() > 0.005, (photo_name, seed)


@pytest.mark.parametrize("name", ["motion_blur", "defocus_blur"])
def test_blur_lowers_high_frequency_energy(name: str) -> None:
    for photo_name in PHOTOS:
        clean = photo(photo_name, 120, 160)
        for seed in range(3):
            out, _ = run(name, clean, seed)
            assert laplacian_variance(out) < 0.5 * laplacian_variance(clean)


def test_motion_blur_smears_along_its_angle() -> None:
    # a single bright dot becomes a line: horizontal for angle 0, vertical for 90
    dot = np.zeros((41, 41, 3), dtype=np.float32)
    dot[20, 20] = 1.0
    horizontal, _ = motion_blur(dot, radius=10, sigma=8.0, angle=0.0)
    vertical, _ = motion_blur(dot, radius=10, sigma=8.0, angle=90.0)
    assert np.count_nonzero(horizontal[20, :, 0]) == 21
    assert np.count_nonzero(horizontal[:, 20, 0]) == 1
    assert np.count_nonzero(vertical[:, 20, 0]) == 21
    assert math.isclose(float(horizontal[..., 0].sum()), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("mode", ["shift", "gamma", "linear", "retinex"])
def test_low_light_darkens(mode: str) -> None:
    for photo_name in PHOTOS:
        clean = photo(photo_name, 120, 160)
        out, params = low_light(clean, rng_for(3), mode=mode)
        assert params["mode"] == mode
        assert luminance(out).mean() < 0.8 * luminance(clean).mean()


def test_hsv_low_light_keeps_hue_and_saturation() -> None:
    clean = photo("coffee", 64, 96)
    out, _ = low_light(clean, gamma=0.6, mode="gamma")
    lit = clean.max(axis=2) > 0.2
    ratio_clean = clean[lit] / clean.max(axis=2)[lit][:, None]
    ratio_out = out[lit] / np.maximum(out.max(axis=2)[lit][:, None], 1e-6)
    assert np.abs(ratio_clean - ratio_out).max() < 0.03  # only quantisation-free float error


def test_over_exposure_brightens_and_clips() -> None:
    for photo_name in PHOTOS:
        clean = photo(photo_name, 120, 160)
        out, _ = run("over_exposure", clean, 4)
        assert luminance(out).mean() > luminance(clean).mean() + 0.05
        assert (out >= 1.0).mean() > (clean >= 1.0).mean()


def test_lost_color_makes_channels_equal() -> None:
    out, params = run("lost_color", photo("coffee", 64, 96), 0)
    assert params == {"luma": "bt601"}
    assert np.array_equal(out[..., 0], out[..., 1])
    assert np.array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_low_resolution_sizes(size: tuple[int, int]) -> None:
    clean = photo("astronaut", *size)
    small, _ = low_resolution(clean, factor=0.25)
    assert small.shape == (math.ceil(size[0] / 4), math.ceil(size[1] / 4), 3)
    half, _ = low_resolution(clean, factor=0.5)
    assert half.shape == (math.ceil(size[0] / 2), math.ceil(size[1] / 2), 3)
    restored, params = low_resolution(clean, factor=0.25, restore_size=True)
    assert restored.shape == clean.shape
    assert params == {"factor": 0.25, "restore_size": True}
    assert laplacian_variance(restored) < laplacian_variance(clean)


def blockiness(image: np.ndarray) -> float:
    """Mean luma step across 8-pixel block boundaries over the mean step inside blocks."""
    grey = luminance(image.astype(np.float64))
    steps = np.abs(np.diff(grey, axis=1))  # step between column x and x+1
    boundary = (np.arange(steps.shape[1]) % 8) == 7
    return float(steps[:, boundary].mean() / steps[:, ~boundary].mean())


def test_jpeg_q10_shows_8x8_blocks() -> None:
    for photo_name in PHOTOS:
        clean = photo(photo_name, 120, 160)
        out, params = jpeg(clean, quality=10)
        assert params == {"quality": 10}
        assert blockiness(out) > 1.25 * blockiness(clean)
        assert blockiness(out) > 1.3
        assert np.array_equal(np.round(out * 255), out * 255)  # 8-bit decode


def test_haze_raises_dark_channel_and_grows_with_distance() -> None:
    for photo_name in PHOTOS:
        clean = photo(photo_name, 120, 160)
        out, params = haze(clean, rng_for(1))
        assert params["depth_source"] == "proxy"
        assert dark_channel(out).mean() > dark_channel(clean).mean() + 0.1
    # with a given depth map (left near, right far) the far side is hazier
    clean = photo("coffee", 64, 96)
    depth = np.tile(np.linspace(0.1, 10.0, 96), (64, 1))
    out, params = haze(clean, beta=1.5, airlight=0.9, depth=depth)
    assert params["depth_source"] == "given"
    left, right = np.abs(out - clean)[:, :16].mean(), np.abs(out - clean)[:, -16:].mean()
    assert right > 2 * left


def test_haze_depth_cap_and_blur_follow_cdd11() -> None:
    clean = np.full((32, 32, 3), 0.2, dtype=np.float32)
    depth = np.ones((32, 32))
    out, _ = haze(clean, beta=1.0, airlight=0.8, depth=depth, depth_cap=0.7, depth_blur=22)
    t = math.exp(-0.7)
    assert np.allclose(out, 0.2 * t + 0.8 * (1 - t), atol=1e-6)


def test_nonhomogeneous_haze_is_patchy() -> None:
    clean = np.full((96, 96, 3), 0.1, dtype=np.float32)
    flat = np.ones((96, 96))
    uniform, _ = haze(clean, beta=1.5, airlight=0.9, depth=flat)
    patchy, _ = get_operator("nonhomogeneous_haze")(
        clean, rng_for(3), beta=1.5, airlight=0.9, patchiness=0.8, depth=flat
    )
    assert float(uniform.std()) < 1e-6
    assert float(patchy.std()) > 0.03
    assert dark_channel(patchy).mean() > 0.2


def test_gaussian_noise_variance_matches_sigma() -> None:
    clean = 0.25 + 0.5 * photo("astronaut", 120, 160)  # away from the clipping ends
    for sigma in (10.0, 25.0, 40.0):
        out, _ = noise(clean, rng_for(2), kind="gaussian", sigma=sigma, color=True)
        variance = float((out.astype(np.float64) - clean).var())
        assert 0.9 < variance / (sigma / 255) ** 2 < 1.1
    grey_out, _ = noise(clean, rng_for(2), kind="gaussian", sigma=20.0, color=False)
    residual = grey_out.astype(np.float64) - clean
    unclipped = ((grey_out > 0) & (grey_out < 1)).all(axis=2)
    assert unclipped.mean() > 0.99
    assert np.allclose(residual[..., 0][unclipped], residual[..., 2][unclipped], atol=1e-6)


def test_poisson_noise_grows_with_scale_and_brightness() -> None:
    clean = 0.1 + 0.8 * photo("chelsea", 120, 160)
    weak, _ = noise(clean, rng_for(1), kind="poisson", scale=1.0, color=True)
    strong, _ = noise(clean, rng_for(1), kind="poisson", scale=3.0, color=True)
    assert (strong - clean).var() > 5 * (weak - clean).var()
    bright = np.full((64, 64, 3), 0.8, dtype=np.float32)
    dark = np.full((64, 64, 3), 0.1, dtype=np.float32)
    bright_var = (noise(bright, rng_for(1), kind="poisson", scale=1.0, color=True)[0] - 0.8).var()
    dark_var = (noise(dark, rng_for(1), kind="poisson", scale=1.0, color=True)[0] - 0.1).var()
    assert bright_var > 3 * dark_var


def test_rain_adds_grey_streaks_along_the_angle() -> None:
    clean = photo("coffee", 120, 160) * 0.5
    out, params = rain(clean, rng_for(0), intensity=0.5)
    residual = out.astype(np.float64) - clean
    assert residual.min() >= -1e-6  # additive
    assert np.allclose(residual[..., 0], residual[..., 1], atol=1e-6)  # grey streaks
    assert params["width"] == 3
    vertical = rain_layer(128, 128, threshold=0.9, length=30, angle=0, streak_width=3, seed=4)
    tilted = rain_layer(128, 128, threshold=0.9, length=30, angle=30, streak_width=3, seed=4)
    # vertical streaks vary across columns far more than along them
    dx, dy = np.abs(np.diff(vertical, axis=1)).mean(), np.abs(np.diff(vertical, axis=0)).mean()
    assert dx > 3 * dy
    tdx, tdy = np.abs(np.diff(tilted, axis=1)).mean(), np.abs(np.diff(tilted, axis=0)).mean()
    assert tdx / tdy < dx / dy
    assert vertical.min() == 0.0
    assert vertical.max() == 1.0


def test_snow_brightens_with_flakes() -> None:
    for photo_name in PHOTOS:
        clean = photo(photo_name, 120, 160) * 0.6  # flakes show best on a dim scene
        out, params = run("snow", clean, 3, veil=0.0)
        delta = out.astype(np.float64) - clean
        assert delta.min() > -0.16  # only the blend towards the flake brightness
        assert (delta.max(axis=2) > 0.2).mean() > 0.004
        assert params["veil"] == 0.0


def test_raindrops_are_local() -> None:
    for photo_name in PHOTOS:
        clean = photo(photo_name, 120, 160)
        out, params = run("raindrop", clean, 6, count=12)
        changed = (np.abs(out - clean).max(axis=2) > 4 / 255).mean()
        assert 0.01 < changed < 0.7
        assert params["count"] == 12


def test_underwater_absorbs_red_first() -> None:
    for photo_name in PHOTOS:
        clean = photo(photo_name, 120, 160)
        out, params = underwater(clean, rng_for(2))
        red_loss = clean[..., 0].mean() - out[..., 0].mean()
        assert red_loss > 0.05
        assert out[..., 0].mean() / max(out[..., 1:].mean(), 1e-6) < (
            clean[..., 0].mean() / clean[..., 1:].mean()
        )
        assert params["attenuation"][0] > max(params["attenuation"][1:])


def test_watermark_blends_towards_its_grey_level() -> None:
    clean = np.full((96, 128, 3), 0.5, dtype=np.float32)
    out, params = watermark(clean, rng_for(0), gray=1.0, opacity=0.5, tiled=False, text="SAMPLE")
    assert params["text"] == "SAMPLE"
    assert out.min() >= 0.5 - 1e-6
    assert math.isclose(float(out.max()), 0.75, abs_tol=0.01)  # full coverage at 50 % opacity
    assert 0.002 < (out[..., 0] > 0.51).mean() < 0.3
    tiled, _ = watermark(clean, rng_for(0), gray=1.0, opacity=0.5, tiled=True, text="SAMPLE")
    assert (tiled[..., 0] > 0.51).mean() > 1.5 * (out[..., 0] > 0.51).mean()


def test_flare_brightens_around_its_source() -> None:
    clean = photo("astronaut", 120, 160) * 0.3  # dim, so no highlight clips the glow
    out, params = run("flare", clean, 3, x=0.25, y=0.25, ghosts=0, streaks=0)
    gain = luminance(out) - luminance(clean)
    peak_y, peak_x = np.unravel_index(np.argmax(gain), gain.shape)
    assert abs(peak_y - 0.25 * 119) <= 3
    assert abs(peak_x - 0.25 * 159) <= 3
    assert gain.min() > -1e-5  # light is only added
    assert params["streaks"] == 0


def test_depth_proxy_is_smooth_far_at_the_top() -> None:
    for photo_name in PHOTOS:
        proxy = depth_proxy(photo(photo_name, 120, 160).astype(np.float64))
        assert proxy.shape == (120, 160)
        assert proxy.min() >= 0.2 - 1e-9
        assert proxy.max() <= 1.0 + 1e-9
        assert proxy[:20].mean() > proxy[-20:].mean()
        assert laplacian_variance(np.repeat(proxy[..., None], 3, 2)) < 1e-4


# ------------------------------------------------------------------ speed and portability


def test_each_operator_is_fast_at_512() -> None:
    image = photo("astronaut", 512, 512)
    slow = {}
    for name in OPERATOR_NAMES:
        best = math.inf
        for seed in range(2):
            started = time.perf_counter()
            run(name, image, seed)
            best = min(best, time.perf_counter() - started)
        if best > 1.0:
            slow[name] = round(best, 3)
    assert slow == {}


_HASH_SCRIPT = """
import hashlib, json, numpy as np
from PIL import Image
from skimage import data
from cotir_pipeline.degradations import OPERATORS
pixels = np.asarray(Image.fromarray(data.coffee()).resize((96, 64)), dtype=np.float32) / 255
out = {}
for name, spec in OPERATORS.items():
    result, _ = spec(pixels, np.random.Generator(np.random.PCG64(9)))
    out[name] = hashlib.sha256(result.tobytes()).hexdigest()
print(json.dumps(out))
"""


def test_bytes_do_not_depend_on_cpu_simd_features() -> None:
    """Same bytes with numpy's runtime SIMD dispatch (AVX2/AVX-512 paths) switched off."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    extra = [feature for feature in __cpu_dispatch__ if __cpu_features__.get(feature)]
    if not extra:
        pytest.skip("this CPU has no SIMD features beyond numpy's baseline to switch off")
    hashes = []
    for disabled in ("", " ".join(extra)):
        env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=disabled)
        result = subprocess.run(
            [sys.executable, "-c", _HASH_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            check=True,
            timeout=120,
        )
        hashes.append(json.loads(result.stdout))
    assert hashes[0] == hashes[1]
