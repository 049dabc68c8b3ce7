"""``cotir restore``: restore one image from the command line.

Registered under the ``cotir.commands`` entry-point group, so the core ``cotir`` CLI
offers it without importing this layer. torch and the model code are imported only
inside the command, so ``cotir --help`` and ``cotir restore --help`` stay fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cotir_pipeline.checkpoint_layout import META_FILE
from cotir_pipeline.settings import CotirSettings, SettingsError, load_settings
from cotir_pipeline.weights import MissingWeightsError, require_weights
from models.onnx_restore import (
    ExportMissingError,
    OnnxRestorer,
    StaleExportError,
    has_current_export,
)
from models.optional_imports import without_unused_imports
from models.variants import VARIANTS, get_variant

if TYPE_CHECKING:
    from models.restore import CoTIRRestorer, EvaluationRestorer

EXIT_BAD_SETTING = 2
DTYPES = ("float32", "bfloat16", "float16")
#: ``--engine``: the checkpoint's ONNX export when it has a current one (auto), always
#: the torch model code, or always the export.
ENGINES = ("auto", "torch", "onnx")


def checkpoint_restorer(checkpoint: str) -> EvaluationRestorer:
    """``cotir bench --method cotir:DIR``: a restorer for a saved checkpoint folder.

    Registered under the ``cotir.restorers`` entry point, so the core command line
    reaches the model without importing torch; loads like ``cotir restore``, with the
    optional packages the model never uses hidden.
    """
    with without_unused_imports():
        from models.restore import restorer_from_checkpoint

        return restorer_from_checkpoint(checkpoint)


def _turn_path(output: Path, turn: int, turns: int) -> Path:
    """Final turn -> ``output``; earlier turns -> ``<stem>.turn<k><suffix>`` beside it."""
    if turn == turns:
        return output
    return output.with_name(f"{output.stem}.turn{turn}{output.suffix}")


@click.command("restore")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-p",
    "--prompt",
    "prompts",
    multiple=True,
    required=True,
    help="Restoration instruction. Repeat for multi-turn restoration: each turn restores "
    "the previous turn's output.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output image (PNG). Earlier turns are written as <stem>.turn<k>.png beside it.",
)
@click.option(
    "--variant",
    type=click.Choice(sorted(VARIANTS)),
    default=None,
    help="Model variant. Default: the checkpoint's own variant, or 'demo' (the CPU demo's "
    "shipped editing prior, no downloads) without --checkpoint. Required for release "
    "checkpoints.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Trained checkpoint folder (ours, or the release's cot_adapter.pt + lora.pt). "
    "A relative path that does not exist is looked up under COTIR_WEIGHTS_DIR.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Euler steps (default: the variant's, 20 for cotir-12b, 5 for cotir-4b/9b).",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Noise seed.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=None,
    help="Weights dtype (default: float32 on CPU, bfloat16 elsewhere).",
)
@click.option(
    "--release-compat/--no-release-compat",
    default=None,
    help="Sample as the public release's inference does (bf16 position ids, noise drawn on "
    "the device in the latents' dtype, latents kept in that dtype, sizes floored to "
    "multiples of 16). Default: on for the release's checkpoint files, off otherwise.",
)
@click.option(
    "--tile-size",
    type=click.IntRange(min=16),
    default=None,
    help="Restore in overlapping tiles of this many pixels a side, blended at every step: "
    "bounded memory for any image size. Needed above the untiled limit (512x512 px for the "
    "demo model, which is sharpest with 128, its training size).",
)
@click.option(
    "--tile-overlap",
    type=click.IntRange(min=0),
    default=None,
    help="Pixels neighbouring tiles share (default: a quarter of --tile-size).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="auto",
    show_default=True,
    help="What runs the model. 'onnx': the checkpoint's ONNX export (`cotir export-onnx`), "
    "without importing torch: a cold start several times faster, the same image to one "
    "level; CPU, float32, untiled. 'torch': the model code. 'auto': the export when the "
    "checkpoint has a current one and the options allow it, else torch.",
)
def restore(
    image: Path,
    prompts: tuple[str, ...],
    output: Path,
    variant: str | None,
    checkpoint: Path | None,
    steps: int | None,
    seed: int,
    device: str,
    dtype: str | None,
    release_compat: bool | None,
    tile_size: int | None,
    tile_overlap: int | None,
    engine: str,
) -> None:
    """Restore IMAGE following an instruction and write the result as PNG.

    \b
    Example (CPU demo, two turns):
      cotir restore lq.png -p "Remove the rain." -p "Make it brighter." -o out.png
    Example (CoTIR-4B release weights under COTIR_WEIGHTS_DIR):
      cotir restore lq.png -p "Please dehaze this photo." -o out.png \\
          --variant cotir-4b --checkpoint CoTIR/cotir-4b --device cuda
    """
    settings = _settings_or_exit()
    source = _read_image(image)
    if any(not prompt.strip() for prompt in prompts):
        raise click.BadParameter("instructions must not be empty", param_hint="--prompt")
    blockers = _onnx_blockers(checkpoint, device, dtype, release_compat, tile_size)
    exported = _exported_restorer(settings, engine, checkpoint, variant, blockers)
    output.parent.mkdir(parents=True, exist_ok=True)
    if exported is not None:
        n_steps = steps or exported.default_steps
        with _progress(n_steps * len(prompts)) as bar:
            try:
                results = exported.restore_turns(
                    source, list(prompts), n_steps, seed, on_step=lambda _i, _n: bar.update(1)
                )
            except ValueError as error:  # too large without tiles
                raise click.ClickException(str(error)) from None
    else:
        restorer = _load_restorer(settings, variant, checkpoint, device, dtype, release_compat)

        from models.tiling import default_overlap

        n_steps = steps or restorer.default_steps
        overlap = default_overlap(tile_size) if tile_overlap is None else tile_overlap
        with _progress(n_steps * len(prompts)) as bar:
            try:
                results = restorer.restore_turns(
                    source,
                    list(prompts),
                    n_steps,
                    seed,
                    on_step=lambda _i, _n: bar.update(1),
                    tile_size=tile_size,
                    tile_overlap=overlap,
                )
            except ValueError as error:  # too large without tiles, a bad tile size
                raise click.ClickException(str(error)) from None
    for turn, result in enumerate(results, start=1):
        path = _turn_path(output, turn, len(results))
        result.save(path, format="PNG")
        click.echo(str(path))


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    """The Euler steps' progress bar, on stderr."""

    with tqdm(total=total, desc="restoring", unit="step", file=sys.stderr) as bar:
        yield bar


def _onnx_blockers(
    checkpoint: Path | None,
    device: str,
    dtype: str | None,
    release_compat: bool | None,
    tile_size: int | None,
) -> list[str]:
    """The options the ONNX engine cannot honour (none: it may run)."""
    blockers = []
    if checkpoint is None:
        blockers.append("no --checkpoint (an export belongs to a checkpoint)")
    if device != "cpu":
        blockers.append(f"--device {device}")
    if dtype not in (None, "float32"):
        blockers.append(f"--dtype {dtype}")
    if release_compat:
        blockers.append("--release-compat")
    if tile_size is not None:
        blockers.append("--tile-size")
    return blockers


def _exported_restorer(
    settings: CotirSettings,
    engine: str,
    checkpoint: Path | None,
    variant: str | None,
    blockers: list[str],
) -> OnnxRestorer | None:
    """The checkpoint's ONNX export, loaded, when ``engine`` and the options call for it.

    ``auto`` falls back to the torch engine (None) when the options need it or the
    checkpoint has no export, and says so when the export is stale; ``onnx`` makes each
    of those an error.
    """
    if engine == "torch":
        return None
    if blockers:
        if engine == "onnx":
            raise click.UsageError(f"the ONNX engine cannot run with {'; '.join(blockers)}")
        return None
    assert checkpoint is not None  # a blocker otherwise
    folder = checkpoint
    try:
        if not folder.exists() and not folder.is_absolute():
            folder = require_weights(settings, str(folder), what="CoTIR checkpoint")
        exported = OnnxRestorer.from_checkpoint(folder)
    except MissingWeightsError as error:
        if engine == "onnx":
            raise click.ClickException(str(error)) from None
        return None  # the torch engine reports a missing checkpoint its own way
    except ExportMissingError as error:
        if engine == "onnx":
            raise click.ClickException(str(error)) from None
        if _exportable(folder):
            click.echo(
                f"cotir: tip: `cotir export-onnx {folder}` once makes cold restores of this "
                "checkpoint several times faster (see --engine)",
                err=True,
            )
        return None
    except StaleExportError as error:
        if engine == "onnx":
            raise click.ClickException(str(error)) from None
        click.echo(f"cotir: {error}; restoring with the torch engine", err=True)
        return None
    if variant is not None and variant != exported.manifest["variant"]:
        if engine == "onnx":
            raise click.UsageError(
                f"--variant {variant}: the export is of {exported.manifest['variant']}"
            )
        return None  # the torch engine decides what --variant means for this folder
    return exported


def _exportable(checkpoint: Path) -> bool:
    """Whether the folder is one of our checkpoints of a variant the ONNX export covers."""
    try:
        meta = json.loads((checkpoint / META_FILE).read_text())
        variant = get_variant(str(meta["variant"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return variant.exports_to_onnx


@click.command("export-onnx")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Export again even when the export is current.")
def export_onnx(checkpoint: Path, force: bool) -> None:
    """Export a demo CHECKPOINT folder to ONNX, for torch-free cold restores.

    Writes CHECKPOINT/onnx (about 110 MB: the transformer, the text encoder and the
    tokenizer; about 40 s on 2 cores). `cotir restore --checkpoint CHECKPOINT` then uses
    it while it matches the checkpoint's files. An export that is current is kept
    unless --force.

    \b
    Example:
      cotir export-onnx .cotir/training/demo/<run>/checkpoints/step-0000600/model
    """

    if not force and has_current_export(checkpoint):
        click.echo(f"{checkpoint / 'onnx'} (current, kept)")
        return
    _settings_or_exit()
    with without_unused_imports():
        from models.onnx_export import ExportError
        from models.onnx_export import export_onnx as export

        try:
            folder = export(checkpoint)
        except (ExportError, MissingWeightsError, ValueError) as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:  # a read-only checkpoint folder, a full disk
            raise click.ClickException(f"cannot write the export: {error}") from None
    click.echo(str(folder))


def _settings_or_exit() -> CotirSettings:
    """The settings; a bad one exits with its code and a one-line message."""

    try:
        return load_settings()
    except SettingsError as error:
        click.echo(f"cotir: bad setting: {error}", err=True)
        sys.exit(EXIT_BAD_SETTING)


def _read_image(image: Path) -> Image.Image:
    """The input as an RGB PIL image; a usage error when it cannot be read."""

    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise click.BadParameter(f"cannot read {image}: {error}", param_hint="IMAGE") from None


def _load_restorer(
    settings: CotirSettings,
    variant: str | None,
    checkpoint: Path | None,
    device: str,
    dtype: str | None,
    release_compat: bool | None,
) -> CoTIRRestorer:
    """The restorer the options name (a variant, or a checkpoint folder), loaded with the
    libraries it never uses hidden; missing weights or a bad checkpoint are a one-line
    error."""
    import torch

    torch_dtype = None if dtype is None else getattr(torch, dtype)
    try:
        with without_unused_imports():
            from models.restore import CoTIRRestorer

            if checkpoint is None:
                restorer = CoTIRRestorer.from_variant(
                    variant or "demo", settings=settings, device=device, dtype=torch_dtype
                )
                restorer.release_compat = bool(release_compat)
                return restorer
            return CoTIRRestorer.from_pretrained(
                checkpoint,
                variant=variant,
                settings=settings,
                device=device,
                dtype=torch_dtype,
                release_compat=release_compat,
            )
    except (MissingWeightsError, ValueError) as error:
        raise click.ClickException(str(error)) from None
