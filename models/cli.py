"""``cotir restore``: restore one image from the command line.

Registered under the ``cotir.commands`` entry-point group, so the core ``cotir`` CLI
offers it without importing this layer. torch and the model code are imported only
inside the command, so ``cotir --help`` and ``cotir restore --help`` stay fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from models.variants import VARIANTS

if TYPE_CHECKING:
    from PIL.Image import Image

    from cotir_pipeline.settings import CotirSettings
    from models.restore import CoTIRRestorer

EXIT_BAD_SETTING = 2
DTYPES = ("float32", "bfloat16", "float16")
#: Installed packages the restore path never uses but that its libraries import whenever
#: they find them, about two seconds of every cold ``cotir restore`` on 2 cores: peft
#: imports bitsandbytes (a dependency of pyiqa) for 4/8-bit layers, which pulls in
#: torch's inductor; diffusers imports scipy.stats for optional scheduler sigmas (the
#: restore path samples with its own Euler loop). Hidden only while the model loads.
UNUSED_OPTIONAL_IMPORTS = ("bitsandbytes", "scipy")
#: The libraries that probe for those packages: once one is imported it may already have
#: decided they are there (and will import them), so nothing is hidden any more.
PROBING_LIBRARIES = ("diffusers", "peft", "transformers")


def modules_to_hide() -> tuple[str, ...]:
    """:data:`UNUSED_OPTIONAL_IMPORTS` in a fresh process; nothing once a prober is loaded."""
    if any(name in sys.modules for name in PROBING_LIBRARIES):
        return ()
    return UNUSED_OPTIONAL_IMPORTS


@contextlib.contextmanager
def hidden_modules(names: tuple[str, ...] = UNUSED_OPTIONAL_IMPORTS) -> Iterator[None]:
    """Make ``names`` look uninstalled while the model code loads, then importable again.

    A ``None`` entry in ``sys.modules`` makes ``importlib.util.find_spec`` report the
    package missing, so libraries that probe for it skip it. Names already imported are
    left alone; the entries are removed on exit, so later imports in the process work.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


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
) -> None:
    """Restore IMAGE following an instruction and write the result as PNG.

    \b
    Example (CPU demo, two turns):
      cotir restore lq.png -p "Remove the rain." -p "Make it brighter." -o out.png
    Example (CoTIR-4B release weights under COTIR_WEIGHTS_DIR):
      cotir restore lq.png -p "Please dehaze this photo." -o out.png \\
          --variant cotir-4b --checkpoint CoTIR/cotir-4b --device cuda
    """
    from tqdm import tqdm

    settings = _settings_or_exit()
    source = _read_image(image)
    if any(not prompt.strip() for prompt in prompts):
        raise click.BadParameter("instructions must not be empty", param_hint="--prompt")
    restorer = _load_restorer(settings, variant, checkpoint, device, dtype, release_compat)

    from models.tiling import default_overlap

    n_steps = steps or restorer.default_steps
    output.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=n_steps * len(prompts), desc="restoring", unit="step", file=sys.stderr) as bar:
        try:
            results = restorer.restore_turns(
                source,
                list(prompts),
                n_steps,
                seed,
                on_step=lambda _i, _n: bar.update(1),
                tile_size=tile_size,
                tile_overlap=default_overlap(tile_size) if tile_overlap is None else tile_overlap,
            )
        except ValueError as error:  # too large without tiles, a bad tile size
            raise click.ClickException(str(error)) from None
    for turn, result in enumerate(results, start=1):
        path = _turn_path(output, turn, len(results))
        result.save(path, format="PNG")
        click.echo(str(path))


def _settings_or_exit() -> CotirSettings:
    """The settings; a bad one exits with its code and a one-line message."""
    from cotir_pipeline.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as error:
        click.echo(f"cotir: bad setting: {error}", err=True)
        sys.exit(EXIT_BAD_SETTING)


def _read_image(image: Path) -> Image:
    """The input as an RGB PIL image; a usage error when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

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

    from cotir_pipeline.weights import MissingWeightsError

    torch_dtype = None if dtype is None else getattr(torch, dtype)
    try:
        with hidden_modules(modules_to_hide()):
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
