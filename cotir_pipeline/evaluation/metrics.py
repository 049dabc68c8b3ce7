"""The paper's image-quality metrics: one declarative table, offline availability, scoring.

:data:`METRICS` holds one :class:`MetricSpec` row per metric (pyiqa name, full- or
no-reference, direction, pyiqa settings, minimum input size, CUDA need, the
weight files pyiqa loads and where it looks for them, printed decimals). Every
decision below is driven by that table, not by per-metric branches.

:func:`metric_availability` says whether a metric can run here without any
download: it inspects the expected files (and the device) and never creates the
model. :func:`load_metric` creates a pyiqa model only after that check passed,
with the Hugging Face hub forced offline. :func:`score_pairs` scores images read
as RGB in [0, 1] at full resolution, matched by file name. A metric that cannot
run is reported as n/a with its reason; no number is ever made up.

Weight folders (pyiqa 0.1.16): pyiqa's own files in ``$TORCH_HOME/hub/pyiqa/``,
torchvision backbones in ``$TORCH_HOME/hub/checkpoints/``, OpenAI CLIP in
``$TORCH_HOME/hub/clip/`` (SHA-256 checked by pyiqa), timm and VLM weights in the
Hugging Face cache. See docs/EVALUATION.md for placing them offline.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from PIL import Image

from cotir_pipeline.digests import cached_file_sha256
from cotir_pipeline.evaluation._io import read_rgb

ReferenceKind = Literal["full", "no"]
#: Where pyiqa (or a library it calls) looks for a file; see :meth:`WeightLocations.folder`.
WeightStore = Literal["pyiqa", "torch_checkpoints", "clip", "hf"]

#: The pyiqa release the weight names and settings below were read from.
PYIQA_VERSION_CHECKED = "0.1.16"


class MetricUnavailableError(RuntimeError):
    """A metric was asked to run although its weights, packages or device are missing."""


class InputTooSmallError(ValueError):
    """An image is smaller than a metric's minimum input size."""


@dataclass(frozen=True)
class WeightFile:
    """One file a metric loads: its store, its name, and what it is for.

    ``sha256`` is set where the loader verifies the file (pyiqa re-downloads an
    OpenAI CLIP file whose hash differs). For ``store == "hf"``, ``repo_id`` names
    the Hugging Face repository and ``filename`` one file of it; the special name
    :data:`HF_WEIGHTS` means "the weight files listed by the repository's index".
    """

    store: WeightStore
    filename: str
    purpose: str
    sha256: str | None = None
    repo_id: str | None = None

    def __post_init__(self) -> None:
        if (self.store == "hf") != (self.repo_id is not None):
            raise ValueError(f"{self.filename}: repo_id is required for, and only for, hf files")


#: Placeholder file name of an hf weight entry: all shards the repository's index lists.
HF_WEIGHTS = "<weights>"


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the paper's tables and everything needed to run or skip it."""

    name: str
    pyiqa_name: str
    label: str
    reference: ReferenceKind
    lower_is_better: bool
    options: tuple[tuple[str, Any], ...]
    settings: str
    score_range: str
    min_size: int
    needs_cuda: bool
    weights: tuple[WeightFile, ...]
    packages: tuple[str, ...]
    decimals: int
    notes: str = ""

    @property
    def full_reference(self) -> bool:
        """Whether the metric compares against a ground-truth image."""
        return self.reference == "full"

    def pyiqa_options(self) -> dict[str, Any]:
        """Keyword options passed to ``pyiqa.create_metric`` (explicit even where default)."""
        return dict(self.options)

    def settings_record(self) -> dict[str, Any]:
        """JSON-ready settings of this metric, recorded with every score."""
        return {
            "pyiqa_name": self.pyiqa_name,
            "reference": self.reference,
            "lower_is_better": self.lower_is_better,
            "options": self.pyiqa_options(),
            "settings": self.settings,
            "decimals": self.decimals,
        }

    def format(self, value: float | None) -> str:
        """The value printed with this metric's decimals ("n/a" for None)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return f"{value:.{self.decimals}f}"


_CLIP_RN50 = WeightFile(
    "clip",
    "RN50.pt",
    "OpenAI CLIP ResNet-50",
    sha256="afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
)
_CLIP_VIT_B32 = WeightFile(
    "clip",
    "ViT-B-32.pt",
    "OpenAI CLIP ViT-B/32",
    sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
)
_CLIP_PACKAGES = ("clip", "pkg_resources")

#: The metric table, in the column order of the paper's Table II, then the AgenticIR extras.
METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            MetricSpec(
                name="clipiqa+",
                pyiqa_name="clipiqa+",
                label="CLIP-IQA+",
                reference="no",
                lower_is_better=False,
                options=(),
                settings="CLIP RN50 with learned prompts (pyiqa default)",
                score_range="0, 1",
                min_size=32,
                needs_cuda=False,
                weights=(
                    _CLIP_RN50,
                    # pyiqa keeps the URL's percent-encoding in the cached file name.
                    WeightFile(
                        "pyiqa",
                        "CLIP-IQA%2B_learned_prompts-603f3273.pth",
                        "CLIP-IQA+ learned prompt vectors",
                    ),
                ),
                packages=_CLIP_PACKAGES,
                decimals=4,
            ),
            MetricSpec(
                name="qalign",
                pyiqa_name="qalign",
                label="Q-Align",
                reference="no",
                lower_is_better=False,
                options=(),
                settings="q-future/one-align, quality task, fp16 (pyiqa default)",
                score_range="1, 5",
                min_size=1,
                needs_cuda=False,
                weights=(
                    WeightFile(
                        "hf", "config.json", "mPLUG-Owl2 config", repo_id="q-future/one-align"
                    ),
                    WeightFile(
                        "hf",
                        "preprocessor_config.json",
                        "CLIP image processor",
                        repo_id="q-future/one-align",
                    ),
                    WeightFile(
                        "hf", "tokenizer.model", "LLaMA tokenizer", repo_id="q-future/one-align"
                    ),
                    WeightFile(
                        "hf", HF_WEIGHTS, "mPLUG-Owl2 7B weights", repo_id="q-future/one-align"
                    ),
                ),
                packages=("icecream", "transformers"),
                decimals=4,
                notes="a 7B vision-language model: about 16 GB in fp16; practical on a GPU only",
            ),
            MetricSpec(
                name="liqe",
                pyiqa_name="liqe",
                label="LIQE",
                reference="no",
                lower_is_better=False,
                options=(),
                settings="CLIP ViT-B/32 fine-tuned on KonIQ (pyiqa default 'koniq')",
                score_range="1, 5",
                min_size=224,
                needs_cuda=False,
                weights=(
                    _CLIP_VIT_B32,
                    WeightFile("pyiqa", "liqe_koniq.pt", "LIQE KonIQ checkpoint"),
                ),
                packages=_CLIP_PACKAGES,
                decimals=4,
                notes="caches its text features as liqe_text_feat.pt in the pyiqa folder",
            ),
            MetricSpec(
                name="maclip",
                pyiqa_name="maclip",
                label="MACLIP",
                reference="no",
                lower_is_better=False,
                options=(),
                settings="magnitude-aware CLIP RN50, 224 px patches (pyiqa default)",
                score_range="0, 1",
                min_size=224,
                needs_cuda=True,
                weights=(_CLIP_RN50,),
                packages=_CLIP_PACKAGES,
                decimals=4,
                notes="pyiqa moves the model and the patches to 'cuda' whatever device is asked",
            ),
            MetricSpec(
                name="clipiqa",
                pyiqa_name="clipiqa",
                label="CLIP-IQA",
                reference="no",
                lower_is_better=False,
                options=(),
                settings="CLIP RN50 with fixed antonym prompts (pyiqa default)",
                score_range="0, 1",
                min_size=32,
                needs_cuda=False,
                weights=(_CLIP_RN50,),
                packages=_CLIP_PACKAGES,
                decimals=4,
            ),
            MetricSpec(
                name="psnr",
                pyiqa_name="psnr",
                label="PSNR",
                reference="full",
                lower_is_better=False,
                options=(("test_y_channel", False),),
                settings="RGB, data range 1 (test_y_channel=False)",
                score_range="~0, ~40 dB",
                min_size=1,
                needs_cuda=False,
                weights=(),
                packages=(),
                decimals=2,
            ),
            MetricSpec(
                name="ssim",
                pyiqa_name="ssim",
                label="SSIM",
                reference="full",
                lower_is_better=False,
                options=(("test_y_channel", True), ("downsample", False)),
                settings=(
                    "Y channel of YIQ (BT.601 luma) on the 0-255 scale, rounded; 11x11 Gaussian "
                    "window sigma 1.5, valid region, no downsampling (pyiqa default)"
                ),
                score_range="0, 1",
                min_size=11,
                needs_cuda=False,
                weights=(),
                packages=(),
                decimals=4,
            ),
            MetricSpec(
                name="lpips",
                pyiqa_name="lpips",
                label="LPIPS",
                reference="full",
                lower_is_better=True,
                options=(("net", "alex"), ("version", "0.1")),
                settings="AlexNet, version 0.1 (pyiqa default)",
                score_range="0, 1",
                min_size=32,
                needs_cuda=False,
                weights=(
                    WeightFile("pyiqa", "LPIPS_v0.1_alex-df73285e.pth", "LPIPS linear layers"),
                    WeightFile(
                        "torch_checkpoints", "alexnet-owt-7be5be79.pth", "torchvision AlexNet"
                    ),
                ),
                packages=(),
                decimals=4,
            ),
            MetricSpec(
                name="maniqa",
                pyiqa_name="maniqa",
                label="MANIQA",
                reference="no",
                lower_is_better=False,
                options=(),
                settings="KonIQ checkpoint, 224 px crops (pyiqa default)",
                score_range="~0, ~1",
                min_size=8,
                needs_cuda=False,
                weights=(
                    WeightFile("pyiqa", "ckpt_koniq10k.pt", "MANIQA KonIQ checkpoint"),
                    WeightFile(
                        "hf",
                        HF_WEIGHTS,
                        "timm ViT-B/8 backbone",
                        repo_id="timm/vit_base_patch8_224.augreg2_in21k_ft_in1k",
                    ),
                ),
                packages=("timm",),
                decimals=4,
            ),
            MetricSpec(
                name="musiq",
                pyiqa_name="musiq",
                label="MUSIQ",
                reference="no",
                lower_is_better=False,
                options=(),
                settings="KonIQ checkpoint (pyiqa default 'koniq10k')",
                score_range="~0, ~100",
                min_size=32,
                needs_cuda=False,
                weights=(
                    WeightFile("pyiqa", "musiq_koniq_ckpt-e95806b9.pth", "MUSIQ KonIQ checkpoint"),
                ),
                packages=(),
                decimals=4,
            ),
        )
    }
)

#: Which metrics each of the paper's tables reports.
METRIC_SETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "cotir_bench": ("clipiqa+", "qalign", "liqe", "maclip", "clipiqa", "psnr", "ssim", "lpips"),
        "seven_d": ("psnr", "lpips"),
        "agenticir": ("maniqa", "clipiqa", "musiq", "psnr", "ssim", "lpips"),
        "real_world": ("clipiqa+", "qalign", "liqe", "maclip", "clipiqa"),
    }
)


def get_metric(name: str) -> MetricSpec:
    """The table row of ``name``; KeyError lists the known metrics."""
    try:
        return METRICS[name]
    except KeyError:
        known = ", ".join(METRICS)
        raise KeyError(f"unknown metric {name!r} (known: {known})") from None


# --------------------------------------------------------------------------------------------
# Where the files are expected


def _torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch when it is not loaded yet (same rule)."""
    torch_module = sys.modules.get("torch")
    if torch_module is not None:
        return Path(torch_module.hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub"


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache huggingface_hub uses (its constant, fixed at its import)."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        return Path(constants.HF_HUB_CACHE)
    cache = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    hf_home = os.path.expanduser(os.getenv("HF_HOME", os.path.join(cache, "huggingface")))
    legacy = os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home, "hub"))
    return Path(os.path.expandvars(os.path.expanduser(os.getenv("HF_HUB_CACHE", legacy))))


@dataclass(frozen=True)
class WeightLocations:
    """The two roots every weight path derives from: torch hub folder and HF hub cache."""

    torch_hub: Path
    hf_cache: Path

    @classmethod
    def current(cls) -> WeightLocations:
        """The folders this process would use now (``$TORCH_HOME/hub``, the HF hub cache)."""
        return cls(torch_hub=_torch_hub_dir(), hf_cache=_hf_cache_dir())

    def folder(self, store: WeightStore) -> Path:
        """The folder of a store (for "hf": the cache root)."""
        folders = {
            "pyiqa": self.torch_hub / "pyiqa",
            "torch_checkpoints": self.torch_hub / "checkpoints",
            "clip": self.torch_hub / "clip",
            "hf": self.hf_cache,
        }
        return folders[store]


def _hf_repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _hf_snapshot(cache: Path, repo_id: str) -> Path | None:
    """The snapshot folder the cache's ``refs/main`` points at, or None."""
    repo = _hf_repo_folder(cache, repo_id)
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text(encoding="utf-8").strip()
        return snapshot if snapshot.is_dir() else None
    snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return snapshots[0] if len(snapshots) == 1 else None


def _hf_weight_names(snapshot: Path) -> list[str] | None:
    """Weight files a transformers/timm loader reads from a snapshot, or None if unknown."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (snapshot / index).is_file():
            weight_map = json.loads((snapshot / index).read_text(encoding="utf-8"))["weight_map"]
            return sorted(set(weight_map.values()))
    for single in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if (snapshot / single).is_file():
            return [single]
    return None


def _missing_files(weight: WeightFile, locations: WeightLocations) -> list[str]:
    """Human-readable problems with one weight entry (empty when it is usable)."""
    if weight.store != "hf":
        folder = locations.folder(weight.store)
        path = folder / weight.filename
        if not path.is_file() or path.stat().st_size == 0:
            return [f"{weight.filename} ({weight.purpose}) not found in {folder}/"]
        if weight.sha256 is not None and cached_file_sha256(path) != weight.sha256:
            return [
                f"{path} ({weight.purpose}) has the wrong SHA-256 (expected {weight.sha256}); "
                "pyiqa would try to download it again"
            ]
        return []
    assert weight.repo_id is not None
    repo_folder = _hf_repo_folder(locations.hf_cache, weight.repo_id)
    snapshot = _hf_snapshot(locations.hf_cache, weight.repo_id)
    if snapshot is None:
        return [
            f"Hugging Face repository {weight.repo_id} ({weight.purpose}) not in the hub cache: "
            f"no snapshot (refs/main) under {repo_folder}/"
        ]
    names = [weight.filename] if weight.filename != HF_WEIGHTS else _hf_weight_names(snapshot)
    if names is None:
        return [f"no weight file (model.safetensors, pytorch_model.bin or an index) in {snapshot}/"]
    return [
        f"{name} ({weight.purpose}, {weight.repo_id}) not found in {snapshot}/"
        for name in names
        if not (snapshot / name).is_file()
    ]


# --------------------------------------------------------------------------------------------
# Availability


@dataclass(frozen=True)
class Available:
    """The metric can run on ``device``: every file it loads is present."""

    metric: str
    device: str
    files: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        """True: the metric runs."""
        return True


@dataclass(frozen=True)
class Unavailable:
    """The metric cannot run here; ``reason`` is what the tables print as the n/a footnote."""

    metric: str
    device: str
    reason: str
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """False: the metric is reported as n/a."""
        return False


Availability = Available | Unavailable


def _device_problem(spec: MetricSpec, device: str) -> str | None:
    kind = device.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if spec.needs_cuda and kind != "cuda":
        return f"CUDA required ({spec.notes or 'pyiqa runs this metric on CUDA only'})"
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return f"CUDA device {device!r} requested but torch.cuda.is_available() is False"
    return None


def metric_availability(
    name: str, device: str = "cpu", *, locations: WeightLocations | None = None
) -> Availability:
    """Whether metric ``name`` can run on ``device`` here, without downloading anything.

    Checks the device (CUDA-only metrics), the Python packages the pyiqa model
    imports, and every weight file at the exact path pyiqa (or CLIP, torchvision,
    timm, transformers) reads it from under ``locations`` (default: this
    process's ``$TORCH_HOME/hub`` and Hugging Face cache); CLIP files are also
    hash-checked, as pyiqa does. Every problem found is listed in the reason, so
    one read tells everything to fix. Nothing is created or downloaded.
    """
    spec = get_metric(name)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    problems: list[str] = []
    device_problem = _device_problem(spec, device)
    if device_problem is not None:
        problems.append(device_problem)
    missing_packages = [
        package for package in spec.packages if importlib.util.find_spec(package) is None
    ]
    if missing_packages:
        listed = ", ".join(missing_packages)
        message = f"needs the Python package(s) {listed}, not installed"
        if "pkg_resources" in missing_packages:
            message += " (CLIP-based pyiqa metrics need setuptools<81 for pkg_resources)"
        problems.append(message)
    places = locations or WeightLocations.current()
    missing = [problem for weight in spec.weights for problem in _missing_files(weight, places)]
    if missing:
        problems.append("weights missing: " + "; ".join(missing))
    if problems:
        return Unavailable(name, device, "; ".join(problems), tuple(problems))
    files = tuple(
        places.folder(weight.store) / weight.filename
        for weight in spec.weights
        if weight.store != "hf"
    )
    return Available(name, device, files)


# --------------------------------------------------------------------------------------------
# Loading and scoring


@contextmanager
def _offline_pyiqa(torch_hub: Path) -> Iterator[None]:
    """Force the HF hub offline and point pyiqa's cache folder at ``torch_hub/pyiqa``.

    huggingface_hub reads HF_HUB_OFFLINE once at import and pyiqa fixes its cache
    folder once at import; both are set for the duration of model creation (and
    restored after), so the folder checked by :func:`metric_availability` is the
    folder read, and nothing is fetched. Not thread-safe: create models from one
    thread.
    """
    import huggingface_hub.constants as hf_constants
    import pyiqa.utils.download_util as download_util

    saved_env = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_flag = hf_constants.HF_HUB_OFFLINE
    old_folder = download_util.DEFAULT_CACHE_DIR
    new_folder = str(torch_hub / "pyiqa")
    patched = [
        module
        for module_name, module in list(sys.modules.items())
        if module_name.startswith("pyiqa")
        and getattr(module, "DEFAULT_CACHE_DIR", None) == old_folder
    ]
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    for module in patched:
        module.DEFAULT_CACHE_DIR = new_folder  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in patched:
            module.DEFAULT_CACHE_DIR = old_folder  # type: ignore[attr-defined]
        hf_constants.HF_HUB_OFFLINE = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class LoadedMetric:
    """A created pyiqa model with its table row (create it with :func:`load_metric`)."""

    spec: MetricSpec
    device: str
    model: Any
    pyiqa_version: str

    def score_arrays(self, restored: np.ndarray, reference: np.ndarray | None = None) -> float:
        """Score one RGB uint8 image (and its reference for full-reference metrics)."""
        import torch

        spec = self.spec
        _check_size(spec, restored, "restored image")
        if spec.full_reference:
            if reference is None:
                raise ValueError(f"{spec.name} is full-reference: a reference image is required")
            _check_size(spec, reference, "reference image")
            restored = match_reference_size(restored, reference.shape[:2])
        elif reference is not None:
            raise ValueError(f"{spec.name} is no-reference: pass no reference image")
        with torch.no_grad():
            inputs = [_to_tensor(restored, self.device)]
            if reference is not None:
                inputs.append(_to_tensor(reference, self.device))
            value = float(self.model(*inputs).float().mean().item())
        if not math.isfinite(value):
            raise FloatingPointError(f"{spec.name} returned {value}")
        return value


def _to_tensor(image: np.ndarray, device: str) -> Any:
    import torch

    array = np.ascontiguousarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)


def _check_size(spec: MetricSpec, image: np.ndarray, what: str) -> None:
    height, width = image.shape[:2]
    if min(height, width) < spec.min_size:
        raise InputTooSmallError(
            f"{spec.name} needs inputs of at least {spec.min_size} px per side; "
            f"the {what} is {width}x{height}"
        )


def match_reference_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic-resize ``image`` to ``size`` (H, W) when it differs; same size passes through.

    This is how a small output (the AgenticIR low-resolution LQ kept x0.25, or a
    restorer that leaves it small) is compared with its reference: upsampled
    bicubic first. Both axes must scale by about the same factor (within 10 %),
    otherwise the pair is not the same picture and ValueError is raised.
    """
    height, width = image.shape[:2]
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return image
    scale_h, scale_w = target_h / height, target_w / width
    if abs(scale_h - scale_w) > 0.1 * max(scale_h, scale_w):
        raise ValueError(
            f"image is {width}x{height} but its reference is {target_w}x{target_h}: "
            "the aspect ratios differ, so they cannot be compared"
        )
    resized = Image.fromarray(image).resize((target_w, target_h), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def load_metric(
    name: str, device: str = "cpu", *, locations: WeightLocations | None = None
) -> LoadedMetric:
    """Create the pyiqa model of ``name``; MetricUnavailableError (with the reason) if it can't run.

    Availability is checked first, so pyiqa is only asked for models whose files
    are all present; creation runs with the HF hub forced offline. Models are
    loaded from this process's folders (``$TORCH_HOME/hub``, the HF cache):
    other ``locations`` can be checked but not loaded from.
    """
    current = WeightLocations.current()
    places = locations or current
    availability = metric_availability(name, device, locations=places)
    if isinstance(availability, Unavailable):
        raise MetricUnavailableError(f"{name}: {availability.reason}")
    spec = get_metric(name)
    if places != current and spec.weights:
        raise MetricUnavailableError(
            f"{name}: weights are loaded from {current.torch_hub} and {current.hf_cache} "
            "(this process's TORCH_HOME and HF cache), not from the locations given"
        )
    import pyiqa

    with _offline_pyiqa(current.torch_hub):
        model = pyiqa.create_metric(
            spec.pyiqa_name, as_loss=False, device=device, **spec.pyiqa_options()
        )
    model.eval()
    return LoadedMetric(spec, device, model, str(getattr(pyiqa, "__version__", "unknown")))


def score_pairs(
    metric: str | LoadedMetric,
    restored_paths: Sequence[Path],
    reference_paths: Sequence[Path] | None = None,
    *,
    device: str = "cpu",
    match_names: bool = True,
) -> list[float]:
    """Score each restored image (against its reference for full-reference metrics).

    Images are read as RGB and scaled to [0, 1] at full resolution; a restored
    image smaller than its reference is upsampled bicubic first
    (:func:`match_reference_size`). Pairs are matched by file name: with
    ``match_names`` each restored file must have its reference's stem. Returns
    one float per image in input order (average them per set with
    :func:`mean_score`). Raises MetricUnavailableError for a metric that cannot
    run, InputTooSmallError for an image below the metric's minimum size.
    """
    loaded = metric if isinstance(metric, LoadedMetric) else load_metric(metric, device)
    restored = [Path(path) for path in restored_paths]
    if loaded.spec.full_reference:
        if reference_paths is None:
            raise ValueError(f"{loaded.spec.name} is full-reference: reference_paths is required")
        references: list[Path | None] = [Path(path) for path in reference_paths]
        if len(references) != len(restored):
            raise ValueError(
                f"{len(restored)} restored images but {len(references)} references were given"
            )
        if match_names:
            wrong = [
                (out.name, ref.name)
                for out, ref in zip(restored, references, strict=True)
                if ref is not None and out.stem != ref.stem
            ]
            if wrong:
                raise ValueError(f"restored and reference file names differ: {wrong[:5]}")
    else:
        if reference_paths is not None:
            raise ValueError(f"{loaded.spec.name} is no-reference: pass no reference_paths")
        references = [None] * len(restored)
    scores = []
    for out, ref in zip(restored, references, strict=True):
        reference = read_rgb(ref) if ref is not None else None
        scores.append(loaded.score_arrays(read_rgb(out), reference))
    return scores


def mean_score(values: Sequence[float]) -> float:
    """Mean of a set's per-image scores (the paper averages per set); ValueError when empty."""
    if not values:
        raise ValueError("cannot average an empty set of scores")
    return float(np.mean(np.asarray(values, dtype=np.float64)))


__all__ = [
    "HF_WEIGHTS",
    "METRICS",
    "METRIC_SETS",
    "PYIQA_VERSION_CHECKED",
    "Availability",
    "Available",
    "InputTooSmallError",
    "LoadedMetric",
    "MetricSpec",
    "MetricUnavailableError",
    "Unavailable",
    "WeightFile",
    "WeightLocations",
    "get_metric",
    "load_metric",
    "match_reference_size",
    "mean_score",
    "metric_availability",
    "score_pairs",
]
