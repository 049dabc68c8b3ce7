"""Export a demo checkpoint to ONNX, for restores that never import torch (`cotir export-onnx`).

A cold ``cotir restore`` on the torch engine spends most of its time importing torch,
diffusers, peft and transformers (docs/PERFORMANCE.md), not restoring. The export
writes what a restore computes as four ONNX graphs, run by ONNX Runtime in
:mod:`models.onnx_restore`:

- ``encode.onnx``: pixels (1, 3, H, W) in [-1, 1] -> token grid (1, C, H/s, W/s);
- ``text.onnx``: token ids, attention mask and token types (1, L) -> the text encoder's
  per-token features and their masked mean;
- ``velocity.onnx``: state grid, reference grid, text features, time -> velocity grid:
  the CoTIR transformer with its adapter and LoRA (merged into the weights, or kept
  beside them when the checkpoint's velocity is its change to the base), the position
  ids built inside from the grid's size;
- ``decode.onnx``: token grid -> pixels.

The grids' height and width are dynamic, so one export serves any image size. The
tokenizer is saved beside them (``tokenizer.json``, padded and truncated to the
variant's L), read by the ``tokenizers`` library alone. ``manifest.json`` records what
the runtime needs (stride, channels, schedule, flow start, steps) and a digest of the
checkpoint's files, so an export left behind by a changed checkpoint is never used.

The graphs come from ``torch.onnx.export`` (torch.export, then onnxscript's
translation); they are the torch engine's own modules, so the two engines agree to
float rounding (``tests/test_onnx_restore.py`` checks the PNGs to one level).
Only the demo variants export: the pixel codec and the MiniLM text encoder, on the CPU
in float32; the FLUX VAEs and text encoders are for GPUs.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.backbones import (
    BackboneKind,
    CoTIRTransformer,
    grid_to_tokens,
    noisy_and_reference_ids,
    text_ids,
    tokens_to_grid,
)
from models.codecs import LatentCodec
from models.onnx_restore import (
    DECODE_FILE,
    ENCODE_FILE,
    EXPORT_DIR,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    TEXT_FILE,
    TEXT_INPUTS,
    TOKENIZER_FILE,
    VELOCITY_FILE,
    VELOCITY_INPUTS,
    checkpoint_digest,
)
from models.restore import CoTIRRestorer
from models.text_encoders import MiniLMTextEncoder

#: Prompts the exported tokenizer must split exactly as the torch engine's does.
_TOKENIZER_CHECKS = (
    "Please remove the haze.",
    "Remove the rain streaks, then brighten this under-exposed photo!",
    "Entferne den Dunst und schärfe das Bild; 2x zoom, JPEG q=10.",
    " ".join(["denoise"] * 200),
)


class ExportError(ValueError):
    """The checkpoint cannot be exported (a variant or setting the export does not cover)."""


class _CodecSide(nn.Module):
    """One side of the codec as a module: ``encode`` (pixels -> grid) or ``decode``."""

    def __init__(self, codec: LatentCodec, side: str) -> None:
        super().__init__()
        self.codec = codec
        self.side = side

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(tensor) if self.side == "encode" else self.codec.decode(tensor)


class _Text(nn.Module):
    """MiniLM features and their mean over the real tokens (:meth:`MiniLMTextEncoder.encode`)."""

    def __init__(self, encoder: MiniLMTextEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return hidden, self.encoder.pool(hidden, attention_mask)


class _GridVelocity(nn.Module):
    """One Euler step's velocity on token grids: the restorer's transformer call
    (:meth:`CoTIRRestorer._velocity_fn`) with the ids built from the grid's size."""

    def __init__(self, restorer: CoTIRRestorer, text_length: int) -> None:
        super().__init__()
        self.model: CoTIRTransformer = restorer.model
        self.kind: BackboneKind = restorer.variant.backbone
        self.guidance = restorer.guidance()
        self.register_buffer("txt_ids", text_ids(self.kind, text_length), persistent=False)

    def forward(
        self,
        state: torch.Tensor,
        reference: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor,
        time: torch.Tensor,
    ) -> torch.Tensor:
        _, _, grid_h, grid_w = state.shape
        ids = noisy_and_reference_ids(self.kind, grid_h, grid_w)
        hidden = torch.cat([grid_to_tokens(state), grid_to_tokens(reference)], dim=1)
        output = self.model(
            hidden,
            text,
            time,
            ids,
            self.txt_ids,
            pooled_projections=pooled if self.kind is BackboneKind.FLUX1_KONTEXT else None,
            guidance=self.guidance,
        )
        return tokens_to_grid(output.sample[:, : grid_h * grid_w], grid_h, grid_w)


def _check_exportable(restorer: CoTIRRestorer) -> MiniLMTextEncoder:
    variant = restorer.variant
    if not variant.exports_to_onnx:
        raise ExportError(
            f"only the CPU demo variants export to ONNX; {variant.name} runs on the torch "
            "engine (its VAE and text encoder are for GPUs)"
        )
    if not isinstance(restorer.text_encoder, MiniLMTextEncoder):
        raise ExportError(f"{variant.name}'s text encoder does not export")
    if restorer.dtype != torch.float32:
        raise ExportError(f"the export runs in float32, the model is {restorer.dtype}")
    return restorer.text_encoder


def _save_graph(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names: tuple[str, ...],
    dynamic: tuple[dict[int, Any] | None, ...] | None,
    path: Path,
) -> None:
    """``module`` traced on ``inputs`` and written as ONNX; ``dynamic`` gives each input's
    dynamic axes (None: every shape as traced)."""
    with torch.no_grad(), warnings.catch_warnings():
        # The adapter's forward hooks keep the timestep vector on the wrapper between
        # two hooks of one call; torch.export notes the assignment, which is expected.
        warnings.filterwarnings("ignore", message="The tensor attribute .* was assigned")
        # onnxscript notes that the state and reference grids share one size; they do.
        warnings.filterwarnings("ignore", message="# The axis name: .* will not be used")
        program = torch.onnx.export(
            module.eval(),
            inputs,
            input_names=list(names),
            dynamic_shapes=dynamic,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))


def _save_tokenizer(encoder: MiniLMTextEncoder, length: int, path: Path) -> None:
    """The fast tokenizer, padded and truncated to ``length``, checked against the
    torch engine's tokenizer call on :data:`_TOKENIZER_CHECKS`."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(encoder.tokenizer.backend_tokenizer.to_str())
    padding = backend.padding or {}
    backend.enable_truncation(max_length=length)
    backend.enable_padding(
        length=length,
        pad_id=int(padding.get("pad_id", encoder.tokenizer.pad_token_id or 0)),
        pad_type_id=int(padding.get("pad_type_id", 0)),
        pad_token=str(padding.get("pad_token", encoder.tokenizer.pad_token)),
    )
    for prompt in _TOKENIZER_CHECKS:
        ours = backend.encode(prompt)
        theirs = encoder.batch([prompt], length)
        rows = (ours.ids, ours.attention_mask, ours.type_ids)
        for name, values in zip(TEXT_INPUTS, rows, strict=True):
            if values != theirs[name][0].tolist():
                raise ExportError(f"the exported tokenizer's {name} differ for {prompt!r}")
    backend.save(str(path))


def export_onnx(checkpoint: Path, *, out: Path | None = None) -> Path:
    """Export the checkpoint folder (its ``model/`` part, ``cotir.json`` inside) to ONNX.

    Writes into ``out`` (default ``<checkpoint>/onnx``) through a temporary folder, so
    an interrupted export leaves no half folder; returns the folder.
    """
    checkpoint = Path(checkpoint)
    restorer = CoTIRRestorer.from_pretrained(checkpoint, device="cpu", dtype=torch.float32)
    encoder = _check_exportable(restorer)
    variant = restorer.variant
    target = Path(out) if out is not None else checkpoint / EXPORT_DIR
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    stride, channels = restorer.codec.stride, restorer.codec.token_channels
    length = variant.max_text_tokens
    grid_h, grid_w = torch.export.Dim("grid_h", min=1, max=4096), torch.export.Dim("grid_w")
    pixel_dims = {2: stride * grid_h, 3: stride * grid_w}
    grid_dims = {2: grid_h, 3: grid_w}
    grid = torch.zeros(1, channels, 2, 3)
    _save_graph(
        _CodecSide(restorer.codec, "encode"),
        (torch.zeros(1, 3, 2 * stride, 3 * stride),),
        ("pixels",),
        (pixel_dims,),
        staging / ENCODE_FILE,
    )
    _save_graph(
        _CodecSide(restorer.codec, "decode"),
        (grid,),
        ("grid",),
        (grid_dims,),
        staging / DECODE_FILE,
    )
    batch = encoder.batch(["Please remove the haze."], length)
    text_inputs = tuple(batch[name] for name in TEXT_INPUTS)
    _save_graph(_Text(encoder), text_inputs, TEXT_INPUTS, None, staging / TEXT_FILE)
    with torch.no_grad():
        features, pooled = _Text(encoder)(*text_inputs)
    velocity_inputs = (grid, torch.randn(1, channels, 2, 3), features, pooled, torch.ones(1))
    _save_graph(
        _GridVelocity(restorer, length),
        velocity_inputs,
        VELOCITY_INPUTS,
        (grid_dims, grid_dims, None, None, None),
        staging / VELOCITY_FILE,
    )
    _save_tokenizer(encoder, length, staging / TOKENIZER_FILE)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "variant": variant.name,
        "checkpoint_sha256": checkpoint_digest(checkpoint),
        "stride": stride,
        "token_channels": channels,
        "max_text_tokens": length,
        "schedule": variant.schedule,
        "base_shift": variant.base_shift,
        "max_shift": variant.max_shift,
        "steps": restorer.default_steps,
        "flow_start": restorer.flow_start,
        "max_untiled_tokens": restorer.max_untiled_tokens,
        "exported_with": {"torch": torch.__version__},
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
