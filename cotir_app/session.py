"""The restoration app's logic without its UI: methods, prompts, turns and their errors.

Everything the web page does goes through these functions, so it is tested without a
browser and the page stays a thin layer (:mod:`cotir_app.ui`). Images are RGB uint8
arrays throughout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from cotir_pipeline.annotation.prompts import spe_prompts
from cotir_pipeline.checkpoint_layout import (
    CHECKPOINT_MARKER,
    CHECKPOINTS_DIR,
    MODEL_DIR,
    MODEL_HASH_FIELD,
)
from cotir_pipeline.evaluation.method_names import checkpoint_method
from cotir_pipeline.evaluation.metrics import load_metric
from cotir_pipeline.images import BadImageError, load_rgb8
from cotir_pipeline.postprocess import DEFAULT_GAMMA, DEFAULT_SIGMA, postprocess
from cotir_pipeline.settings import SettingsError, load_settings
from cotir_pipeline.tasks import Degradation, split_degradation_label
from cotir_pipeline.weights import MissingWeightsError
from models.optional_imports import without_unused_imports
from models.restore_requests import ImageTooLargeError

if TYPE_CHECKING:
    from models.restore import CoTIRRestorer

MethodKind = Literal["identity", "classical", "cotir"]
PromptKind = Literal["precise", "vague"]

IDENTITY_LABEL = "identity (the input unchanged)"
CLASSICAL_LABEL = "classical chain (a classical tool per named degradation)"
DEGRADATIONS: tuple[str, ...] = tuple(item.value for item in Degradation)
#: The release app's default long-edge limit; larger inputs are scaled down first.
DEFAULT_MAX_LONG_EDGE = 2560


class AppError(Exception):
    """A problem the user can fix; the message is shown in the page as it is."""


@dataclass(frozen=True)
class MethodOption:
    """One entry of the method menu: identity, the classical chain or a CoTIR checkpoint."""

    label: str
    kind: MethodKind
    checkpoint: Path | None = None
    variant: str | None = None


def _checkpoint_option(step_folder: Path) -> MethodOption | None:
    """A finished training checkpoint as a menu entry (named as in the tables), or None."""
    try:
        marker = json.loads((step_folder / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = step_folder / MODEL_DIR
    digest = marker.get(MODEL_HASH_FIELD)
    if not model.is_dir() or not isinstance(digest, str):
        return None
    try:
        label = checkpoint_method(marker, digest)
    except ValueError:
        return None
    return MethodOption(label, "cotir", model)


def discover_checkpoints(training_root: Path) -> list[MethodOption]:
    """The newest finished checkpoint of every training run under ``training_root``
    (``<variant>/<run>/checkpoints/step-N``), most recently trained first."""
    from models.run_checkpoints import latest_checkpoint

    found: list[tuple[float, MethodOption]] = []
    for checkpoints in training_root.glob(f"*/*/{CHECKPOINTS_DIR}"):
        latest = latest_checkpoint(checkpoints)
        option = None if latest is None else _checkpoint_option(latest)
        if option is not None and latest is not None:
            found.append(((latest / CHECKPOINT_MARKER).stat().st_mtime, option))
    return [option for _, option in sorted(found, key=lambda item: -item[0])]


def method_options(training_root: Path) -> list[MethodOption]:
    """The method menu: identity, the classical chain, then the trained checkpoints."""
    return [
        MethodOption(IDENTITY_LABEL, "identity"),
        MethodOption(CLASSICAL_LABEL, "classical"),
        *discover_checkpoints(training_root),
    ]


def custom_checkpoint(path_text: str, variant: str | None) -> MethodOption:
    """A checkpoint folder typed by the user: ours (``cotir.json``) or the release's
    (``cot_adapter.pt`` + ``lora.pt``, which needs ``variant`` and the base model under
    ``COTIR_WEIGHTS_DIR``). A relative path is resolved as ``cotir restore`` does."""
    text = path_text.strip()
    if not text:
        raise AppError("Type the checkpoint folder, or pick a method from the list.")
    folder = Path(text).expanduser()
    if (folder / MODEL_DIR).is_dir() and (folder / CHECKPOINT_MARKER).is_file():
        folder = folder / MODEL_DIR  # a training checkpoint: its inference part
    return MethodOption(f"checkpoint {text}", "cotir", folder, variant or None)


# -- loading models once ----------------------------------------------------------------


@dataclass
class RestorerPool:
    """CoTIR models loaded once and kept, keyed by checkpoint, variant and device."""

    loaded: dict[tuple[str, str | None, str], CoTIRRestorer] = field(default_factory=dict)

    def get(self, option: MethodOption, device: str) -> CoTIRRestorer:
        """The loaded model of ``option`` on ``device``; loads it the first time."""
        if option.kind != "cotir" or option.checkpoint is None:
            raise ValueError(f"{option.label} is not a CoTIR checkpoint")
        key = (str(option.checkpoint), option.variant, device)
        if key not in self.loaded:
            self.loaded[key] = _load_restorer(option, device)
        return self.loaded[key]

    def unload(self) -> None:
        """Forget every loaded model (the release's "reload")."""
        self.loaded.clear()


def _load_restorer(option: MethodOption, device: str) -> CoTIRRestorer:

    try:
        settings = load_settings()
        with without_unused_imports():  # as `cotir restore`: skip unused libraries
            from models.restore import CoTIRRestorer

            return CoTIRRestorer.from_pretrained(
                option.checkpoint or Path(),
                variant=option.variant,
                settings=settings,
                device=device,
            )
    except (MissingWeightsError, SettingsError) as error:
        raise AppError(f"Cannot load {option.label}: {error}") from None
    except (ValueError, RuntimeError, OSError) as error:
        raise AppError(f"Cannot load {option.label}: {error}") from None


def devices() -> list[str]:
    """``cpu`` and every visible CUDA device (the release's GPU choice)."""
    import torch

    return ["cpu", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]


# -- images and prompts -----------------------------------------------------------------


def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """RGB uint8 pixels of an image file, or :class:`AppError` saying why not."""
    location = Path(str(path)).expanduser()
    if not location.is_file():
        raise AppError(f"The {what} {location} does not exist.")
    try:
        return load_rgb8(location).pixels
    except BadImageError as error:
        raise AppError(f"The {what} cannot be read: {error}") from None


def fit_long_edge(image: np.ndarray, max_edge: int | None) -> np.ndarray:
    """Scale ``image`` down (Lanczos) so its long edge is at most ``max_edge``; 0 or None
    leaves it as it is."""
    height, width = image.shape[:2]
    if not max_edge or max(height, width) <= max_edge:
        return image
    scale = max_edge / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


@dataclass(frozen=True)
class MatchedPrompt:
    """Instructions found for an image file, and its degradation where recorded."""

    precise: str | None
    vague: str | None
    degradation: str | None
    source: Path

    def pick(self, kind: PromptKind) -> str | None:
        """The instruction of ``kind``, or the other one when only that exists."""
        first, second = (
            (self.precise, self.vague) if kind == "precise" else (self.vague, self.precise)
        )
        return first or second


def matched_prompt(image_path: str | Path) -> MatchedPrompt | None:
    """The prompt recorded for an image file, as the release's app looks it up
    (``<folder>/../prompts/<stem>.txt``), or from a bench set's ``test.jsonl`` when the
    image is one of its ``lq/`` files (both instructions and the degradation)."""
    path = Path(str(image_path)).expanduser()
    prompt_file = path.parent.parent / "prompts" / f"{path.stem}.txt"
    if prompt_file.is_file():
        text = prompt_file.read_text(encoding="utf-8").strip()
        if text:
            return MatchedPrompt(text, None, None, prompt_file)
    listing = path.parent.parent / "test.jsonl"
    if path.parent.name == "lq" and listing.is_file():
        wanted = f"lq/{path.name}"
        with listing.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("lq_path") == wanted:
                    return MatchedPrompt(
                        record.get("spe_prompt") or None,
                        record.get("gen_prompt") or None,
                        record.get("deg_type") or None,
                        listing,
                    )
    return None


def suggest_prompt(degradation: str) -> str:
    """A precise instruction for a named degradation (the first of its template list)."""

    parts = [known for _, known in split_degradation_label(degradation) if known is not None]
    if not parts:
        raise AppError(f"{degradation!r} is not a degradation this project knows.")
    return " ".join(spe_prompts(part)[0] for part in parts)


# -- restoring, turn by turn ------------------------------------------------------------


@dataclass(frozen=True)
class RestoreSettings:
    """The controls of one restoration."""

    method: MethodOption
    prompt: str
    degradation: str | None = None
    steps: int | None = None
    seed: int = 42
    device: str = "cpu"
    tile_size: int | None = None
    tile_overlap: int | None = None
    enhance: bool = False
    white_balance: bool = False
    gamma: float = DEFAULT_GAMMA
    sigma: float = DEFAULT_SIGMA


@dataclass(frozen=True)
class Turn:
    """One restoration in the history: its input, output, settings, time and scores."""

    number: int
    settings: RestoreSettings
    input: np.ndarray
    output: np.ndarray
    seconds: float
    metrics: dict[str, float]
    path: Path

    def caption(self) -> str:
        """A line for the history: turn, method, instruction and PSNR if scored."""
        score = f", PSNR {self.metrics['psnr']:.2f} dB" if "psnr" in self.metrics else ""
        return f"turn {self.number}: {self.settings.method.label}: {self.settings.prompt}{score}"


@dataclass
class Session:
    """One user's page: the source image, its optional reference and the turns so far."""

    source: np.ndarray | None = None
    source_name: str = "image"
    reference: np.ndarray | None = None
    turns: list[Turn] = field(default_factory=list)

    def go_back(self, number: int) -> Turn:
        """Make turn ``number`` the last one again (later turns are dropped)."""
        if not 1 <= number <= len(self.turns):
            raise AppError(f"There is no turn {number}; the history has {len(self.turns)}.")
        del self.turns[number:]
        return self.turns[-1]


MetricFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class MetricPool:
    """PSNR and SSIM as the project's tables compute them, loaded on first use."""

    names: tuple[str, ...] = ("psnr", "ssim")
    loaded: dict[str, Any] = field(default_factory=dict)

    def score(self, output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        """Each metric of ``output`` against ``reference`` (resized to it if needed)."""

        scores = {}
        for name in self.names:
            if name not in self.loaded:
                self.loaded[name] = load_metric(name)
            scores[name] = self.loaded[name].score_arrays(output, reference)
        return scores


def _run_method(settings: RestoreSettings, image: np.ndarray, pool: RestorerPool) -> np.ndarray:
    method = settings.method
    if method.kind == "identity":
        return image.copy()
    if method.kind == "classical":
        from cotir_pipeline.evaluation.restorers import SequentialToolChain

        if not settings.degradation:
            raise AppError("The classical chain needs the degradation: pick it in Degradation.")
        # LQ images here are at their HQ's size, so low resolution is sharpened, not enlarged.
        chain = SequentialToolChain(sr_factor=1)
        return chain.restore(image, settings.prompt, settings.degradation)
    from models.tiling import default_overlap

    restorer = pool.get(method, settings.device)
    overlap = settings.tile_overlap
    if overlap is None:
        overlap = default_overlap(settings.tile_size)
    try:
        result = restorer.restore(
            Image.fromarray(image),
            settings.prompt,
            settings.steps,
            settings.seed,
            tile_size=settings.tile_size,
            tile_overlap=overlap,
        )
    except ImageTooLargeError as error:
        raise AppError(f"Image too large: {error}.") from None
    except ValueError as error:
        raise AppError(str(error)) from None
    return np.asarray(result, dtype=np.uint8)


def restore_turn(
    session: Session,
    settings: RestoreSettings,
    *,
    refine: bool,
    pool: RestorerPool,
    metrics: MetricPool,
    output_dir: Path,
) -> Turn:
    """Restore the source (a new history) or, with ``refine``, the last turn's output (a
    further turn), apply the chosen post-processing, score against the reference if
    there is one, write the PNG under ``output_dir`` and add the turn to the session."""
    if not settings.prompt.strip():
        raise AppError("The instruction is empty: type one, or pick a degradation and Suggest.")
    if refine:
        if not session.turns:
            raise AppError("Nothing to refine yet: restore the image first.")
        image = session.turns[-1].output
    else:
        if session.source is None:
            raise AppError("Give an input image first (upload it or type its path).")
        image = session.source
    started = time.perf_counter()
    output = _run_method(settings, image, pool)
    output = postprocess(
        output,
        enhance=settings.enhance,
        white_balance=settings.white_balance,
        gamma=settings.gamma,
        sigma=settings.sigma,
    )
    seconds = time.perf_counter() - started
    scores: dict[str, float] = {}
    if session.reference is not None:
        reference = session.reference
        if reference.shape[:2] != output.shape[:2]:
            size = (output.shape[1], output.shape[0])
            resized = Image.fromarray(reference).resize(size, Image.Resampling.LANCZOS)
            reference = np.asarray(resized, dtype=np.uint8)
        scores = metrics.score(output, reference)
    number = len(session.turns) + 1 if refine else 1
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{session.source_name}-{int(time.time() * 1000)}-turn{number}.png"
    Image.fromarray(output).save(path, format="PNG")
    turn = Turn(number, settings, image, output, seconds, scores, path)
    if not refine:
        session.turns.clear()
    session.turns.append(turn)
    return turn


def describe(turn: Turn) -> str:
    """The info line under the result: runtime, scores and where the PNG is."""
    parts = [f"turn {turn.number}", f"{turn.settings.method.label}", f"{turn.seconds:.2f} s"]
    if turn.metrics:
        parts.append(
            ", ".join(f"{name.upper()} {value:.4g}" for name, value in turn.metrics.items())
        )
    else:
        parts.append("no HQ reference: no PSNR/SSIM")
    height, width = turn.output.shape[:2]
    parts.append(f"{width}x{height} px")
    return " | ".join(parts) + f"\nsaved: {turn.path}"
