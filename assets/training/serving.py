"""``cotir_onnx_export``: the demo's main-row checkpoint exported to ONNX, for fast cold restores.

A cold ``cotir restore`` on the torch engine spends 6-9 s importing torch, diffusers,
peft and transformers before it restores anything; on the checkpoint's ONNX export it
takes about 1 s (docs/PERFORMANCE.md). ``cotir restore --checkpoint <folder>`` picks the
export by itself when the folder holds a current one (``--engine auto``), so this asset
writes it into the main-row run's final checkpoint folder: after ``make demo`` the
restore command it prints is fast without a further step.

The export is the torch engine's own modules traced by ``torch.onnx.export``
(:mod:`models.onnx_export`); its check restores one photo crop with both engines and
asks for the same image to within a level. An export that is current (its manifest
names the checkpoint's files' digest) is kept, so a re-run costs seconds.

The asset reads where the checkpoint lies from the latest materialization of
``cotir_checkpoint_lq_flow`` (its ``checkpoint`` path), so it runs on the machine that
trained: it takes the training asset's queue.
"""

import time
from pathlib import Path

import dagster as dg
from PIL import Image

from assets.training.resource import LQ_FLOW_ASSET
from cotir_pipeline import demo_photos
from cotir_pipeline.checkpoint_layout import META_FILE
from models.onnx_restore import (
    EXPORT_DIR,
    OnnxRestorer,
    has_current_export,
    levels_apart,
    read_manifest,
)

ONNX_EXPORT_ASSET = "cotir_onnx_export"
ONNX_EXPORT_JOB = "onnx_export"
ENGINES_AGREE_CHECK = "engines_agree"
#: The check's tolerance: the engines differ by float rounding only, so a pixel value may
#: land on the neighbouring level, rarely.
MAX_LEVELS_APART = 1
MAX_SHARE_APART = 0.01
#: The check's input: a crop of a demo photo, restored under a fixed instruction.
CHECK_CROP = 96
CHECK_PROMPT = "Remove the haze and brighten this photo."


def _checkpoint_folder(context: dg.AssetExecutionContext) -> tuple[Path, str]:
    """The main-row checkpoint's local ``model`` folder and its sha256, from the latest
    materialization of the training asset; a Failure that says what to do otherwise."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(LQ_FLOW_ASSET))
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        raise dg.Failure(
            description=f"{LQ_FLOW_ASSET} has not been materialized: train it first",
            allow_retries=False,
        )
    metadata = materialization.metadata
    entry = metadata.get("checkpoint")
    if entry is None:
        raise dg.Failure(
            description=f"the latest {LQ_FLOW_ASSET} materialization names no checkpoint",
            allow_retries=False,
        )
    folder = Path(str(entry.value))
    if not (folder / META_FILE).is_file():
        raise dg.Failure(
            description=(
                f"the checkpoint folder {folder} is not on this machine (or holds no "
                f"{META_FILE}): run {ONNX_EXPORT_ASSET} where {LQ_FLOW_ASSET} trained "
                "(the same Celery queue), or export it by hand with `cotir export-onnx`"
            ),
            allow_retries=False,
        )
    sha = metadata.get("checkpoint_sha256")
    return folder, str(sha.value) if sha is not None else ""


def _check_image() -> Image.Image:
    """A fixed photo crop for the engines' comparison."""
    photo = demo_photos.load_photo(demo_photos.DEMO_PHOTOS[0])
    return Image.fromarray(photo[:CHECK_CROP, :CHECK_CROP].copy())


def engines_apart(checkpoint: Path) -> tuple[int, float]:
    """Restore the check image with the torch engine and the export; (largest difference
    in levels, share of values that differ)."""
    from models.restore import CoTIRRestorer  # torch

    image = _check_image()
    with_torch = CoTIRRestorer.from_pretrained(checkpoint).restore(image, CHECK_PROMPT)
    with_onnx = OnnxRestorer.from_checkpoint(checkpoint).restore(image, CHECK_PROMPT)
    return levels_apart(with_torch, with_onnx)


def restore_command(checkpoint: Path) -> str:
    """The command that restores an image with the exported checkpoint (printed by make demo)."""
    return f"cotir restore LQ.png -p 'Remove the haze.' --checkpoint {checkpoint}"


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build_onnx_export_asset(op_tags: dict[str, str]) -> dg.AssetsDefinition:
    """The export asset of the demo's main row (``op_tags``: the training asset's queue)."""

    @dg.asset(
        name=ONNX_EXPORT_ASSET,
        group_name="training",
        kinds={"onnx"},
        deps=[dg.AssetKey(LQ_FLOW_ASSET)],
        op_tags=op_tags,
        description=(
            "The demo's main-row checkpoint exported to ONNX (transformer, text encoder, "
            "tokenizer) inside its folder, so `cotir restore --checkpoint <folder>` restores "
            "from a cold process in about a second, without importing torch. Kept while it "
            "matches the checkpoint's files."
        ),
        check_specs=[
            dg.AssetCheckSpec(
                ENGINES_AGREE_CHECK,
                asset=ONNX_EXPORT_ASSET,
                description=(
                    "A photo crop restored by the torch engine and by the export: at most "
                    f"{MAX_LEVELS_APART} level apart, on under {MAX_SHARE_APART:.0%} of values."
                ),
            )
        ],
    )
    def cotir_onnx_export(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Export the main-row checkpoint (or keep its current export) and compare engines."""
        checkpoint, checkpoint_sha = _checkpoint_folder(context)
        started = time.perf_counter()
        kept = has_current_export(checkpoint)
        if kept:
            context.log.info(f"{checkpoint / EXPORT_DIR} is current: kept")
        else:
            from models.onnx_export import ExportError, export_onnx  # torch

            context.log.info(f"exporting {checkpoint} to ONNX")
            try:
                export_onnx(checkpoint)
            except ExportError as error:
                raise dg.Failure(description=str(error), allow_retries=False) from None
        export_seconds = time.perf_counter() - started
        manifest = read_manifest(checkpoint)
        worst, share = engines_apart(checkpoint)
        folder = checkpoint / EXPORT_DIR
        return dg.MaterializeResult(
            metadata={
                "export": dg.MetadataValue.path(str(folder)),
                "checkpoint": dg.MetadataValue.path(str(checkpoint)),
                "checkpoint_sha256": checkpoint_sha,
                "export_checkpoint_digest": str(manifest.get("checkpoint_sha256", "")),
                "size_mb": round(_folder_bytes(folder) / 1e6, 1),
                "kept_current_export": kept,
                "export_seconds": round(export_seconds, 1),
                "restore_command": dg.MetadataValue.md(f"`{restore_command(checkpoint)}`"),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=ENGINES_AGREE_CHECK,
                    passed=worst <= MAX_LEVELS_APART and share < MAX_SHARE_APART,
                    metadata={"max_levels_apart": worst, "share_of_values_apart": share},
                )
            ],
        )

    return cotir_onnx_export
