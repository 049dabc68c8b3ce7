"""Restorers evaluated on the bench sets, and the resumable runner that writes their outputs.

A :class:`Restorer` maps an LQ image (RGB uint8), an instruction and the
sample's degradation label to a restored RGB uint8 image. The evaluation code
never imports models: a CoTIR checkpoint is wrapped as a Restorer by the caller
(the Dagster asset) and handed in.

Built in here:
- :class:`IdentityRestorer`: the LQ itself (the "input" row of a table).
- Classical tools per degradation (:data:`CLASSICAL_TOOLS`): non-local means
  denoising, dark-channel-prior dehazing with guided-filter refinement, gamma +
  CLAHE low-light enhancement, JPEG deblocking in 8x8 boundary zones, bicubic
  upsampling, unsharp masking (motion blur), Wiener deconvolution (defocus),
  median-based rain-streak removal; lost colour has none (identity).
- :class:`ToolRestorer`: one tool whatever the label (a per-degradation baseline).
- :class:`SequentialToolChain`: the multi-round paradigm the paper compares
  against: one tool per labelled degradation, run in turn, timed per step.
- :class:`FolderRestorer`: another method's precomputed outputs, matched by file name.
:func:`run_restorer` writes ``<out>/<vague|precise>/<file name>``, skips outputs
that exist (resumable), and logs the runtime of every image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image
from scipy import ndimage

from cotir_pipeline.evaluation._io import (
    IMAGE_SUFFIXES,
    append_jsonl,
    check_rgb8,
    find_image,
    float_to_rgb8,
    read_jsonl,
    read_rgb,
    write_png,
)
from cotir_pipeline.evaluation.bench_sets import (
    PROMPT_KINDS,
    BenchRecord,
    BenchSet,
    PromptKind,
    read_bench_set,
)
from cotir_pipeline.tasks import Degradation, split_degradation_label

#: Bump when a classical tool's method or parameters change (recorded with every output).
CLASSICAL_VERSION = "1"


class MissingOutputError(FileNotFoundError):
    """A folder of precomputed outputs has no file for a sample."""


class RestorerOutputError(TypeError):
    """A restorer returned something other than an RGB uint8 image."""


@runtime_checkable
class Restorer(Protocol):
    """Anything that restores an LQ image given an instruction and its degradation label."""

    name: str
    version: str

    def restore(self, lq: np.ndarray, prompt: str, degradation: str) -> np.ndarray:
        """Return the restored RGB uint8 image (any size; scoring matches it to the HQ)."""
        ...


@dataclass(frozen=True)
class StepRecord:
    """One step of a restoration: which tool ran for which degradation, and how long."""

    degradation: str
    tool: str
    seconds: float
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    note: str = ""


# --------------------------------------------------------------------------------------------
# Classical tools (RGB uint8 in, RGB uint8 out)


def _to_float(image: np.ndarray) -> np.ndarray:
    return check_rgb8(image, what="tool input").astype(np.float64) / 255.0


def _luma(image: np.ndarray) -> np.ndarray:
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation of a float RGB image in [0, 1] (Immerkær's fast estimate).

    The image is correlated with the 3x3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]], which
    cancels smooth structure; sigma = sqrt(pi/2) * mean|response| / 6, per channel,
    averaged. (scikit-image's wavelet estimator needs PyWavelets, not installed.)
    """
    kernel = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    sigmas = []
    for channel in range(image.shape[2]):
        response = ndimage.correlate(image[..., channel], kernel, mode="reflect")
        inner = response[1:-1, 1:-1] if min(response.shape) > 2 else response
        sigmas.append(math.sqrt(math.pi / 2.0) * float(np.abs(inner).mean()) / 6.0)
    return float(np.mean(sigmas))


def denoise_nlm(image: np.ndarray, strength: float = 0.8) -> np.ndarray:
    """Non-local means (scikit-image, fast mode, 5x5 patches, 13x13 search) at h = 0.8 sigma."""
    from skimage.restoration import denoise_nl_means

    pixels = _to_float(image)
    sigma = estimate_noise_sigma(pixels)
    if sigma < 1e-3:
        return image.copy()
    out = denoise_nl_means(
        pixels,
        h=strength * sigma,
        sigma=sigma,
        fast_mode=True,
        patch_size=5,
        patch_distance=6,
        channel_axis=-1,
    )
    return float_to_rgb8(out)


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    return ndimage.uniform_filter(image, size=2 * radius + 1, mode="reflect")


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of grey ``source`` by grey ``guide`` (box windows)."""
    mean_guide, mean_source = _box(guide, radius), _box(source, radius)
    variance = _box(guide * guide, radius) - mean_guide * mean_guide
    covariance = _box(guide * source, radius) - mean_guide * mean_source
    slope = covariance / (variance + eps)
    offset = mean_source - slope * mean_guide
    return _box(slope, radius) * guide + _box(offset, radius)


def dehaze_dark_channel(
    image: np.ndarray, omega: float = 0.85, patch: int = 15, t_min: float = 0.1
) -> np.ndarray:
    """Dark-channel-prior dehazing (He et al.) with guided-filter refinement of t.

    Airlight A: the brightest pixel among the 0.1 % with the highest dark
    channel; t = 1 - omega * dark(I / A) over ``patch`` px windows, refined by a
    guided filter on the grey image (radius min side / 12, eps 1e-3), floored at
    ``t_min``; J = (I - A) / t + A. omega 0.85 (not 0.95) keeps some haze: it
    lost less on bright scenes in this project's tuning on the demo photos.
    """
    pixels = _to_float(image)
    height, width = pixels.shape[:2]
    size = max(1, min(patch, height, width))
    dark = ndimage.minimum_filter(pixels.min(axis=2), size=size, mode="nearest")
    count = max(1, int(dark.size * 0.001))
    brightest = np.argsort(dark.ravel())[-count:]
    candidates = pixels.reshape(-1, 3)[brightest]
    airlight = np.maximum(candidates[np.argmax(candidates.sum(axis=1))], 1e-3)
    normalised = ndimage.minimum_filter((pixels / airlight).min(axis=2), size=size, mode="nearest")
    transmission = 1.0 - omega * normalised
    radius = max(2, min(height, width) // 12)
    transmission = guided_filter(_luma(pixels), transmission, radius, 1e-3)
    transmission = np.clip(transmission, t_min, 1.0)[..., None]
    return float_to_rgb8((pixels - airlight) / transmission + airlight)


def enhance_low_light(image: np.ndarray, target: float = 0.5, clahe: float = 0.3) -> np.ndarray:
    """Gamma on HSV's V towards mean ``target``, then a ``clahe`` blend of CLAHE; hue kept.

    gamma = log(target) / log(mean V) (never above 1, so bright images are left
    alone); RGB is scaled by V'/V. CLAHE (scikit-image, clip limit 0.01) is
    blended in at 30 % for local contrast, skipped below 16 px.
    """
    from skimage.exposure import equalize_adapthist

    pixels = _to_float(image)
    value = pixels.max(axis=2)
    mean = float(np.clip(value.mean(), 1e-3, 0.99))
    gamma = min(math.log(target) / math.log(mean), 1.0)
    new_value = np.power(value, gamma)
    if clahe > 0 and min(value.shape) >= 16:
        equalised = equalize_adapthist(np.clip(new_value, 0, 1), clip_limit=0.01)
        new_value = (1.0 - clahe) * new_value + clahe * equalised
    ratio = np.divide(new_value, value, out=np.ones_like(value), where=value > 1e-6)
    return float_to_rgb8(pixels * ratio[..., None])


def deblock_jpeg(
    image: np.ndarray, luma_sigma: float = 1.0, chroma_sigma: float = 2.0, activity: float = 12.0
) -> np.ndarray:
    """Deblocking: smooth luma in the 8x8 block-boundary zones and smooth chroma everywhere.

    In YCbCr (0-255 scale), luma pixels within 2 px of a block boundary are
    replaced by a Gaussian blur (``luma_sigma``) where the local activity (max of
    |Laplacian| over 3x3) is below ``activity``, so real edges stay; chroma,
    which JPEG stores at half resolution, is blurred with ``chroma_sigma``.
    """
    from skimage.color import rgb2ycbcr, ycbcr2rgb

    ycc = rgb2ycbcr(check_rgb8(image, what="tool input"))
    luma = ycc[..., 0]
    height, width = luma.shape
    rows = np.zeros(height, dtype=bool)
    cols = np.zeros(width, dtype=bool)
    for edge in range(8, height, 8):
        rows[max(0, edge - 2) : edge + 2] = True
    for edge in range(8, width, 8):
        cols[max(0, edge - 2) : edge + 2] = True
    zone = rows[:, None] | cols[None, :]
    busy = ndimage.maximum_filter(
        np.abs(ndimage.laplace(ndimage.gaussian_filter(luma, 0.7))), size=3
    )
    ycc[..., 0] = np.where(
        zone & (busy < activity), ndimage.gaussian_filter(luma, luma_sigma), luma
    )
    for channel in (1, 2):
        ycc[..., channel] = ndimage.gaussian_filter(ycc[..., channel], chroma_sigma)
    return float_to_rgb8(np.clip(ycbcr2rgb(ycc), 0.0, 1.0))


def upsample_bicubic(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """Bicubic upsampling by an integer ``factor`` (Pillow); factor 1 returns a copy."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    pixels = check_rgb8(image, what="tool input")
    if factor == 1:
        return pixels.copy()
    height, width = pixels.shape[:2]
    resized = Image.fromarray(pixels).resize(
        (width * factor, height * factor), Image.Resampling.BICUBIC
    )
    return np.asarray(resized, dtype=np.uint8)


def sharpen_unsharp(image: np.ndarray, sigma: float = 1.0, amount: float = 0.5) -> np.ndarray:
    """Unsharp masking: x + amount * (x - Gaussian(x, sigma)), per channel."""
    pixels = _to_float(image)
    blurred = ndimage.gaussian_filter(pixels, sigma=(sigma, sigma, 0), mode="reflect")
    return float_to_rgb8(pixels + amount * (pixels - blurred))


def deblur_wiener(image: np.ndarray, sigma: float = 2.0, balance: float = 0.1) -> np.ndarray:
    """Wiener deconvolution (scikit-image) with a Gaussian PSF of ``sigma``, reflect-padded."""
    from skimage.restoration import wiener

    pixels = _to_float(image)
    size = 2 * math.ceil(3 * sigma) + 1
    taps = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    psf = np.outer(taps, taps)
    psf /= psf.sum()
    pad = size
    channels = []
    for channel in range(3):
        padded = np.pad(pixels[..., channel], pad, mode="reflect")
        restored = wiener(padded, psf, balance, clip=False)
        channels.append(restored[pad:-pad, pad:-pad])
    return float_to_rgb8(np.stack(channels, axis=-1))


def derain_median(image: np.ndarray, size: int = 11, threshold: float = 0.03) -> np.ndarray:
    """Rain-streak removal: pixels brighter than their ``size`` px median are replaced by it.

    Rain adds bright thin streaks; where the luma exceeds the luma of the
    per-channel median by ``threshold`` the median value is used, elsewhere the
    input is kept (a streak mask plus median inpainting).
    """
    pixels = _to_float(image)
    median = ndimage.median_filter(pixels, size=(size, size, 1), mode="reflect")
    streaks = (_luma(pixels) - _luma(median)) > threshold
    return float_to_rgb8(np.where(streaks[..., None], median, pixels))


def identity_tool(image: np.ndarray) -> np.ndarray:
    """No change (the classical answer to lost colour: colourisation needs a learned prior)."""
    return check_rgb8(image, what="tool input").copy()


@dataclass(frozen=True)
class Tool:
    """A classical restoration tool: RGB uint8 in, RGB uint8 out."""

    name: str
    func: Callable[[np.ndarray], np.ndarray]
    description: str

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Run the tool and check that it returned an RGB uint8 image."""
        return check_rgb8(self.func(image), what=f"output of tool {self.name!r}")


_DEHAZE = Tool("dark_channel_prior", dehaze_dark_channel, "dark channel prior + guided filter")

#: The built-in tool of each degradation that has one (others pass through unchanged).
CLASSICAL_TOOLS: Mapping[str, Tool] = MappingProxyType(
    {
        Degradation.NOISE.value: Tool("nl_means", denoise_nlm, "non-local means, h = 0.8 sigma"),
        Degradation.HAZE.value: _DEHAZE,
        Degradation.NONHOMOGENEOUS_HAZE.value: _DEHAZE,
        Degradation.LOW_LIGHT.value: Tool(
            "gamma_clahe", enhance_low_light, "gamma to mean V 0.5 + 30 % CLAHE"
        ),
        Degradation.JPEG.value: Tool("deblock", deblock_jpeg, "8x8 boundary-zone smoothing"),
        Degradation.LOW_RESOLUTION.value: Tool(
            "bicubic_x4", upsample_bicubic, "bicubic upsampling x4"
        ),
        Degradation.MOTION_BLUR.value: Tool(
            "unsharp", sharpen_unsharp, "unsharp mask sigma 1, amount 0.5"
        ),
        Degradation.DEFOCUS_BLUR.value: Tool(
            "wiener", deblur_wiener, "Wiener, Gaussian PSF sigma 2, balance 0.1"
        ),
        Degradation.RAIN.value: Tool("median_derain", derain_median, "streak mask + 11 px median"),
        Degradation.LOST_COLOR.value: Tool("none", identity_tool, "identity: no classical tool"),
    }
)


def _size(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[0]), int(image.shape[1])


def _warm_up_tools(tools: Sequence[Tool]) -> None:
    """Run each tool once on a small image, so lazy imports are not timed as the first image."""
    ramp = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
    for tool in tools:
        tool(ramp)


# --------------------------------------------------------------------------------------------
# Restorers


@dataclass
class IdentityRestorer:
    """Returns the LQ unchanged: the "input" row of every table."""

    name: str = "identity"
    version: str = "1"

    def restore(self, lq: np.ndarray, prompt: str, degradation: str) -> np.ndarray:
        """The LQ image itself (a copy)."""
        return check_rgb8(lq, what="LQ").copy()


@dataclass
class ToolRestorer:
    """One classical tool applied whatever the label: a per-degradation baseline."""

    tool: Tool
    name: str = ""
    version: str = CLASSICAL_VERSION
    last_trace: list[StepRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"classical-{self.tool.name}"

    def warm_up(self) -> None:
        """Run the tool once on a small image (first-call costs are not per-image runtime)."""
        _warm_up_tools([self.tool])

    def restore_with_trace(
        self, lq: np.ndarray, prompt: str, degradation: str
    ) -> tuple[np.ndarray, list[StepRecord]]:
        """The restored image and its single timed step."""
        started = time.perf_counter()
        out = self.tool(check_rgb8(lq, what="LQ"))
        step = StepRecord(
            degradation, self.tool.name, time.perf_counter() - started, _size(lq), _size(out)
        )
        return out, [step]

    def restore(self, lq: np.ndarray, prompt: str, degradation: str) -> np.ndarray:
        """Apply the tool (the prompt is not read: classical tools take no instructions)."""
        out, self.last_trace = self.restore_with_trace(lq, prompt, degradation)
        return out


ChainOrder = Literal["label", "reverse"]


@dataclass
class SequentialToolChain:
    """Multi-round restoration: the tool of each labelled degradation, one after another.

    ``order="label"`` runs the tools in the label's order (the order the
    degradations were applied); ``"reverse"`` undoes the last degradation first.
    Degradations without a tool, and labels that are not this project's
    degradation names, are passed through and noted in the trace. The
    instruction is not read. ``sr_factor`` sets the low-resolution tool's
    upsampling (4 for the AgenticIR set, whose LQ stays x0.25; 1 for sets whose
    LQ was upsampled back). Each step is timed (``last_trace``).
    """

    tools: Mapping[str, Tool] = field(default_factory=lambda: CLASSICAL_TOOLS)
    order: ChainOrder = "label"
    sr_factor: int = 4
    name: str = "sequential-classical"
    version: str = ""
    last_trace: list[StepRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.order not in ("label", "reverse"):
            raise ValueError(f"order must be 'label' or 'reverse', got {self.order!r}")
        if isinstance(self.sr_factor, bool) or not isinstance(self.sr_factor, int):
            raise ValueError(f"sr_factor must be a positive int, got {self.sr_factor!r}")
        if self.sr_factor < 1:
            raise ValueError(f"sr_factor must be a positive int, got {self.sr_factor!r}")
        if not self.version:
            self.version = f"{CLASSICAL_VERSION}-{self.order}-x{self.sr_factor}"

    def warm_up(self) -> None:
        """Run every tool once on a small image (first-call costs are not per-image runtime)."""
        _warm_up_tools(list({id(tool): tool for tool in self.tools.values()}.values()))

    def plan(self, degradation: str) -> list[tuple[str, Tool | None]]:
        """(degradation, tool or None) in the order they will run. Labels in other sets'
        spellings are read through :func:`~cotir_pipeline.tasks.split_degradation_label`;
        an unknown part is passed through alone, the known parts still get their tools."""
        parts = [
            known.value if known is not None else piece
            for piece, known in split_degradation_label(degradation)
        ] or [degradation]
        if self.order == "reverse":
            parts.reverse()
        return [(part, self.tools.get(part)) for part in parts]

    def _run(self, part: str, tool: Tool, image: np.ndarray) -> np.ndarray:
        if part == Degradation.LOW_RESOLUTION.value and tool.func is upsample_bicubic:
            return check_rgb8(upsample_bicubic(image, self.sr_factor), what="bicubic output")
        return tool(image)

    def restore_with_trace(
        self, lq: np.ndarray, prompt: str, degradation: str
    ) -> tuple[np.ndarray, list[StepRecord]]:
        """The restored image and one timed record per planned step."""
        current = check_rgb8(lq, what="LQ")
        trace: list[StepRecord] = []
        for part, tool in self.plan(degradation):
            size = _size(current)
            if tool is None:
                note = (
                    "no classical tool for this degradation: passed through"
                    if part in {item.value for item in Degradation}
                    else "not a known degradation label: passed through"
                )
                trace.append(StepRecord(part, "none", 0.0, size, size, note))
                continue
            started = time.perf_counter()
            current = self._run(part, tool, current)
            trace.append(
                StepRecord(part, tool.name, time.perf_counter() - started, size, _size(current))
            )
        if current is lq:
            current = lq.copy()
        return current, trace

    def restore(self, lq: np.ndarray, prompt: str, degradation: str) -> np.ndarray:
        """Run the chain; the per-step records are kept in ``last_trace``."""
        out, self.last_trace = self.restore_with_trace(lq, prompt, degradation)
        return out


@dataclass
class FolderRestorer:
    """Another method's precomputed outputs, one folder per prompt kind, matched by file name.

    A sample's output is ``folder/<file name>``, or a file with the same stem and
    another image suffix (a method may have saved JPEGs). A missing file raises
    :class:`MissingOutputError` naming the file and the folder.
    """

    folder: Path
    name: str
    version: str = "precomputed"

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.name}: output folder not found: {self.folder}")

    @classmethod
    def for_release(cls, root: Path, prompt_kind: PromptKind, name: str) -> FolderRestorer:
        """The ``<root>/vague`` or ``<root>/precise`` folder of a release-style output tree."""
        if prompt_kind not in PROMPT_KINDS:
            raise ValueError(f"prompt kind must be 'vague' or 'precise', got {prompt_kind!r}")
        return cls(Path(root) / prompt_kind, name)

    def output_path(self, file_name: str) -> Path:
        """The precomputed output for ``file_name``; MissingOutputError if there is none."""
        found = find_image(self.folder, file_name)
        if found is not None:
            return found
        stem = Path(file_name).stem
        raise MissingOutputError(
            f"{self.name}: no output for {file_name} in {self.folder} (looked for {stem}.* "
            f"with suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
        )

    def restore_named(
        self, file_name: str, lq: np.ndarray, prompt: str, degradation: str
    ) -> np.ndarray:
        """The stored output for ``file_name`` as RGB uint8."""
        return read_rgb(self.output_path(file_name))

    def restore(self, lq: np.ndarray, prompt: str, degradation: str) -> np.ndarray:
        """Not usable without a file name: outputs are matched by name (use run_restorer)."""
        raise TypeError(
            f"{self.name}: FolderRestorer matches outputs by file name; call "
            "restore_named(file_name, ...) or run it through run_restorer"
        )


# --------------------------------------------------------------------------------------------
# Running a restorer over a bench set


@dataclass(frozen=True)
class RunSummary:
    """What one :func:`run_restorer` call did."""

    restorer: str
    version: str
    prompt_kind: str
    output_dir: Path
    runtime_log: Path
    written: int
    skipped: int
    failed: tuple[tuple[str, str], ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when no sample failed."""
        return not self.failed


def runtime_log_path(out_dir: Path, prompt_kind: PromptKind) -> Path:
    """Where :func:`run_restorer` logs per-image runtimes: ``<out>/runtime-<kind>.jsonl``."""
    return Path(out_dir) / f"runtime-{prompt_kind}.jsonl"


def read_runtime_log(path: Path) -> list[dict[str, Any]]:
    """The runtime log's entries, the last one per sample id (resumed runs append)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in read_jsonl(path, allow_torn_tail=True):
        latest[str(row.get("id"))] = row
    return list(latest.values())


def _restore(restorer: Restorer, file_name: str, lq: np.ndarray, prompt: str, label: str) -> Any:
    named = getattr(restorer, "restore_named", None)
    if callable(named):
        return named(file_name, lq, prompt, label), []
    traced = getattr(restorer, "restore_with_trace", None)
    if callable(traced):
        return traced(lq, prompt, label)
    return restorer.restore(lq, prompt, label), []


def _restore_and_log(
    restorer: Restorer,
    bench_set: BenchSet,
    record: BenchRecord,
    target: Path,
    prompt_kind: PromptKind,
    log: Path,
    strict: bool,
) -> str | None:
    """Restore one record and append its runtime line; the failure reason, or ``None``
    when the output was written (``strict`` raises the failure instead)."""
    entry: dict[str, Any] = {
        "id": record.id,
        "file": record.output_name,
        "restorer": restorer.name,
        "version": restorer.version,
        "prompt_kind": prompt_kind,
        "deg_type": record.deg_type,
    }
    try:
        result, steps, seconds = _restore_record(
            restorer, bench_set, record, target / record.output_name, prompt_kind
        )
    except Exception as error:
        if strict:
            raise
        reason = f"{type(error).__name__}: {error}"
        append_jsonl(log, {**entry, "status": "failed", "reason": reason})
        return reason
    append_jsonl(
        log,
        {
            **entry,
            "status": "ok",
            "seconds": seconds,
            "output_size": [int(result.shape[0]), int(result.shape[1])],
            "steps": [asdict(step) for step in steps],
        },
    )
    return None


def run_restorer(
    restorer: Restorer,
    bench: BenchSet | Path,
    out_dir: Path,
    prompt_kind: PromptKind = "vague",
    *,
    overwrite: bool = False,
    strict: bool = False,
    ids: Sequence[str] | None = None,
) -> RunSummary:
    """Restore every sample of ``bench`` into ``<out_dir>/<prompt_kind>/<file name>``.

    The instruction is the record's vague (``gen_prompt``) or precise
    (``spe_prompt``) prompt. Existing outputs are skipped unless ``overwrite``,
    so an interrupted run resumes; outputs are written atomically. Every image's
    runtime (the restore call only, not I/O) and step trace go to
    :func:`runtime_log_path`; a restorer's optional ``warm_up()`` is called first
    so one-off costs (lazy imports, model loading) are not counted as an image's.
    A sample that fails (unreadable LQ, restorer error, missing precomputed
    output, wrong output type) is logged with its reason and skipped; with
    ``strict`` the first failure is raised instead.
    """
    if prompt_kind not in PROMPT_KINDS:
        raise ValueError(f"prompt_kind must be 'vague' or 'precise', got {prompt_kind!r}")
    if not isinstance(restorer, Restorer):
        raise TypeError(f"restorer must have name, version and restore(), got {restorer!r}")
    bench_set = bench if isinstance(bench, BenchSet) else read_bench_set(Path(bench))
    target = Path(out_dir) / prompt_kind
    target.mkdir(parents=True, exist_ok=True)
    log = runtime_log_path(Path(out_dir), prompt_kind)
    selected = _selected_records(bench_set, ids)
    pending = [r for r in selected if overwrite or not (target / r.output_name).exists()]
    skipped = len(selected) - len(pending)
    warm_up = getattr(restorer, "warm_up", None)
    if pending and callable(warm_up):
        warm_up()
    written = 0
    failed: list[tuple[str, str]] = []
    started_run = time.perf_counter()
    for record in pending:
        reason = _restore_and_log(restorer, bench_set, record, target, prompt_kind, log, strict)
        if reason is None:
            written += 1
        else:
            failed.append((record.id, reason))
    return RunSummary(
        restorer=restorer.name,
        version=restorer.version,
        prompt_kind=prompt_kind,
        output_dir=target,
        runtime_log=log,
        written=written,
        skipped=skipped,
        failed=tuple(failed),
        seconds=time.perf_counter() - started_run,
    )


def _selected_records(bench_set: BenchSet, ids: Sequence[str] | None) -> list[BenchRecord]:
    """The bench's records, or those of ``ids`` (all must exist), in bench order."""
    if ids is None:
        return list(bench_set.records)
    wanted = set(ids)
    unknown = sorted(wanted - {record.id for record in bench_set.records})
    if unknown:
        raise KeyError(f"bench {bench_set.name!r} has no samples {unknown[:5]}")
    return [record for record in bench_set.records if record.id in wanted]


def _restore_record(
    restorer: Restorer,
    bench_set: BenchSet,
    record: BenchRecord,
    output: Path,
    prompt_kind: PromptKind,
) -> tuple[np.ndarray, list[StepRecord], float]:
    """Restore one record and write its PNG: (output, step trace, seconds in restore)."""
    lq = read_rgb(bench_set.lq_file(record))
    started = time.perf_counter()
    result, steps = _restore(
        restorer, record.output_name, lq, record.prompt(prompt_kind), record.deg_type
    )
    seconds = time.perf_counter() - started
    if not isinstance(result, np.ndarray) or result.dtype != np.uint8:
        raise RestorerOutputError(
            f"{restorer.name} returned {type(result).__name__}"
            f"{'' if not isinstance(result, np.ndarray) else ' of ' + str(result.dtype)}; "
            "an RGB uint8 array is required"
        )
    write_png(output, check_rgb8(result, what=f"output of {restorer.name}"))
    return result, steps, seconds


__all__ = [
    "CLASSICAL_TOOLS",
    "CLASSICAL_VERSION",
    "FolderRestorer",
    "IdentityRestorer",
    "MissingOutputError",
    "Restorer",
    "RestorerOutputError",
    "RunSummary",
    "SequentialToolChain",
    "StepRecord",
    "Tool",
    "ToolRestorer",
    "deblock_jpeg",
    "deblur_wiener",
    "dehaze_dark_channel",
    "denoise_nlm",
    "derain_median",
    "enhance_low_light",
    "estimate_noise_sigma",
    "guided_filter",
    "identity_tool",
    "read_runtime_log",
    "run_restorer",
    "runtime_log_path",
    "sharpen_unsharp",
    "upsample_bicubic",
]
