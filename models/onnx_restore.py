"""The ONNX engine: restore with a checkpoint's ONNX export, without importing torch.

:mod:`models.onnx_export` writes ``<checkpoint>/onnx/``; :class:`OnnxRestorer` runs it
with ONNX Runtime, numpy, Pillow and the ``tokenizers`` library. It follows
:meth:`models.restore.CoTIRRestorer.restore` step for step: the image resized to token
multiples, encoded; the instruction tokenized and encoded; the Euler sampler from the
LQ tokens or from seeded noise over the variant's shifted time grid; decoded, resized
back. Seeded noise is torch's (a CPU generator), so a checkpoint whose flow starts at
noise imports torch for that one draw; one whose flow starts at the LQ never does.

The export is used only while its manifest's digest matches the checkpoint's files:
:func:`load_export` raises :class:`StaleExportError` otherwise, and ``cotir restore``
falls back to the torch engine.

This module imports neither torch nor the model code at import time (and ``cotir
restore`` imports it only for the ONNX engine).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.restore_requests import (
    checked_steps,
    resized_back,
    restore_in_turns,
    working_image,
)
from models.sampling_math import schedule_mu, time_shift

EXPORT_DIR = "onnx"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "cotir-onnx"
MANIFEST_VERSION = 1
ENCODE_FILE = "encode.onnx"
DECODE_FILE = "decode.onnx"
TEXT_FILE = "text.onnx"
VELOCITY_FILE = "velocity.onnx"
TOKENIZER_FILE = "tokenizer.json"
GRAPH_FILES = (ENCODE_FILE, DECODE_FILE, TEXT_FILE, VELOCITY_FILE, TOKENIZER_FILE)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
VELOCITY_INPUTS = ("state", "reference", "text", "pooled", "time")
DEFAULT_SEED = 42
#: What the engine reads from a manifest.
MANIFEST_FIELDS = frozenset(
    {
        "variant",
        "checkpoint_sha256",
        "stride",
        "schedule",
        "base_shift",
        "max_shift",
        "steps",
        "flow_start",
    }
)

StepCallback = Callable[[int, int], None]


class ExportMissingError(FileNotFoundError):
    """The checkpoint has no ONNX export."""


class StaleExportError(ValueError):
    """The export was made from other checkpoint files (or by another format version)."""


def checkpoint_digest(checkpoint: Path) -> str:
    """sha256 over the checkpoint folder's files (relative names and bytes), the export
    folder excluded: what an export records and is checked against."""
    folder = Path(checkpoint)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or relative.parts[0] in (EXPORT_DIR, EXPORT_DIR + ".partial"):
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def read_manifest(checkpoint: Path) -> dict[str, Any]:
    """The export's manifest, checked against the checkpoint's files and this format."""
    folder = Path(checkpoint) / EXPORT_DIR
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ExportMissingError(
            f"{checkpoint} has no ONNX export; make one with `cotir export-onnx {checkpoint}`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StaleExportError(f"{path} cannot be read ({error}); export again") from None
    if not isinstance(manifest, dict) or (
        manifest.get("format"),
        manifest.get("version"),
    ) != (MANIFEST_FORMAT, MANIFEST_VERSION):
        raise StaleExportError(
            f"{path} is not a version-{MANIFEST_VERSION} {MANIFEST_FORMAT} manifest; export again"
        )
    missing = sorted(MANIFEST_FIELDS - manifest.keys())
    if missing:
        raise StaleExportError(f"{path} lacks {', '.join(missing)}; export again")
    if manifest.get("checkpoint_sha256") != checkpoint_digest(checkpoint):
        raise StaleExportError(
            f"the ONNX export in {folder} was made from other checkpoint files; export again "
            f"with `cotir export-onnx {checkpoint}`"
        )
    return manifest


def levels_apart(first: Image.Image, second: Image.Image) -> tuple[int, float]:
    """How far two 8-bit images of one size are apart: the largest difference of a value,
    in levels, and the share of values that differ (how the two engines are compared)."""
    a = np.asarray(first, dtype=np.int16)
    b = np.asarray(second, dtype=np.int16)
    if a.shape != b.shape:
        raise ValueError(f"images of different shapes: {a.shape} and {b.shape}")
    difference = np.abs(a - b)
    return int(difference.max()), float((difference > 0).mean())


def has_current_export(checkpoint: Path) -> bool:
    """Whether the checkpoint has an export :func:`read_manifest` accepts."""
    try:
        read_manifest(checkpoint)
    except (ExportMissingError, StaleExportError):
        return False
    return True


@dataclass(frozen=True)
class _Sessions:
    encode: Any
    decode: Any
    text: Any
    velocity: Any
    tokenizer: Any


def _open_sessions(folder: Path) -> _Sessions:
    import onnxruntime
    from tokenizers import Tokenizer

    missing = [name for name in GRAPH_FILES if not (folder / name).is_file()]
    if missing:
        raise StaleExportError(f"{folder} lacks {', '.join(missing)}; export again")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes about unused initialisers

    def session(name: str) -> Any:
        return onnxruntime.InferenceSession(
            str(folder / name), options, providers=["CPUExecutionProvider"]
        )

    return _Sessions(
        encode=session(ENCODE_FILE),
        decode=session(DECODE_FILE),
        text=session(TEXT_FILE),
        velocity=session(VELOCITY_FILE),
        tokenizer=Tokenizer.from_file(str(folder / TOKENIZER_FILE)),
    )


class OnnxRestorer:
    """A checkpoint's ONNX export, loaded: ``restore(image, prompt, steps, seed)``."""

    def __init__(self, manifest: dict[str, Any], sessions: _Sessions) -> None:
        self.manifest = manifest
        self._sessions = sessions
        self.stride = int(manifest["stride"])
        self.default_steps = int(manifest["steps"])
        self.flow_start = str(manifest["flow_start"])
        self._velocity_inputs = {node.name for node in sessions.velocity.get_inputs()}
        limit = manifest.get("max_untiled_tokens")
        self.max_untiled_tokens = None if limit is None else int(limit)

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> OnnxRestorer:
        """Load ``<checkpoint>/onnx`` after checking it (:func:`read_manifest`)."""
        manifest = read_manifest(checkpoint)
        return cls(manifest, _open_sessions(Path(checkpoint) / EXPORT_DIR))

    def _sigmas(self, n_tokens: int, steps: int) -> np.ndarray:
        """The variant's shifted Euler times (as :func:`models.sampler.schedule_for`)."""
        # The export records the variant's FLUX.1 shifts; the FLUX.2 schedule ignores them.
        shifts = {key: float(self.manifest[key]) for key in ("base_shift", "max_shift")}
        mu = schedule_mu(str(self.manifest["schedule"]), n_tokens, steps, **shifts)
        times = time_shift(mu, np.linspace(1.0, 1.0 / steps, steps, dtype=np.float64))
        return np.concatenate([times, np.zeros(1)])

    def _text(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        encoding = self._sessions.tokenizer.encode(prompt)
        rows = (encoding.ids, encoding.attention_mask, encoding.type_ids)
        feeds = {
            name: np.asarray([row], dtype=np.int64)
            for name, row in zip(TEXT_INPUTS, rows, strict=True)
        }
        features, pooled = self._sessions.text.run(None, feeds)
        return features, pooled

    def _noise(self, grid_shape: tuple[int, ...], seed: int) -> np.ndarray:
        """The torch engine's noise for this seed (CPU generator, float32), as a grid."""
        import torch

        _, channels, grid_h, grid_w = grid_shape
        generator = torch.Generator(device="cpu").manual_seed(seed)
        tokens = torch.randn((1, grid_h * grid_w, channels), generator=generator).numpy()
        return tokens.reshape(1, grid_h, grid_w, channels).transpose(0, 3, 1, 2)

    def restore(
        self,
        image: Image.Image,
        prompt: str,
        steps: int | None = None,
        seed: int = DEFAULT_SEED,
        *,
        on_step: StepCallback | None = None,
    ) -> Image.Image:
        """Restore ``image`` following ``prompt``; the output has the input's size."""
        steps = checked_steps(prompt, steps, self.default_steps)
        hint = "`--tile-size`, the torch engine"
        source, grid_h, grid_w = working_image(
            image, self.stride, self.max_untiled_tokens, tiles_hint=hint
        )
        n_tokens = grid_h * grid_w
        pixels = np.asarray(source, dtype=np.float32) / 127.5 - 1.0
        pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
        (reference,) = self._sessions.encode.run(None, {"pixels": pixels})
        text, pooled = self._text(prompt)
        state = reference if self.flow_start == "reference" else self._noise(reference.shape, seed)
        sigmas = self._sigmas(n_tokens, steps)
        for index in range(steps):
            t, t_next = float(sigmas[index]), float(sigmas[index + 1])
            feeds = {
                "state": state,
                "reference": reference,
                "text": text,
                "pooled": pooled,
                "time": np.full((1,), t, dtype=np.float32),
            }
            feeds = {name: value for name, value in feeds.items() if name in self._velocity_inputs}
            (velocity,) = self._sessions.velocity.run(None, feeds)
            state = state + (t_next - t) * velocity
            if on_step is not None:
                on_step(index + 1, steps)
        (decoded,) = self._sessions.decode.run(None, {"grid": state.astype(np.float32)})
        array = np.round((np.clip(decoded[0], -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        result = Image.fromarray(array.transpose(1, 2, 0))
        return resized_back(result, image.size)

    def restore_turns(
        self,
        image: Image.Image,
        prompts: Sequence[str],
        steps: int | None = None,
        seed: int = DEFAULT_SEED,
        *,
        on_step: StepCallback | None = None,
    ) -> list[Image.Image]:
        """Multi-turn restoration: turn k restores turn k-1's output with ``prompts[k]``."""

        def restore_one(current: Image.Image, prompt: str) -> Image.Image:
            return self.restore(current, prompt, steps, seed, on_step=on_step)

        return restore_in_turns(restore_one, image, prompts)
