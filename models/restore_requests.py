"""What both restore engines check and repeat, without torch: one request, and turns.

:class:`models.restore.CoTIRRestorer` (torch) and :class:`models.onnx_restore.OnnxRestorer`
(ONNX Runtime) accept the same requests: an instruction, a step count (None: the
model's own), and a list of instructions for multi-turn restoration, where each turn
restores the previous turn's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image

from models.sampling_math import round_size


def checked_steps(prompt: str, steps: int | None, default_steps: int) -> int:
    """The Euler steps to run for one request; an empty instruction or a step count
    below 1 is a ``ValueError``."""
    if not prompt or not prompt.strip():
        raise ValueError("the instruction is empty")
    steps = default_steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return steps


class ImageTooLargeError(ValueError):
    """An image above the untiled limit was given without a tile size."""


def working_image(
    image: Image.Image,
    stride: int,
    max_tokens: int | None,
    *,
    down: bool = False,
    tiles_hint: str = "tile_size, `--tile-size`",
) -> tuple[Image.Image, int, int]:
    """The RGB image resized to whole tokens (:func:`round_size`; ``down`` floors) and
    its token grid's height and width. With ``max_tokens``, a larger grid is an
    :class:`ImageTooLargeError` whose message points at ``tiles_hint``."""
    source = image.convert("RGB")
    width, height = source.size
    work_w, work_h = round_size(width, height, down=down)
    grid_h, grid_w = work_h // stride, work_w // stride
    n_tokens = grid_h * grid_w
    if max_tokens and n_tokens > max_tokens:
        raise ImageTooLargeError(
            f"{width}x{height} px is {n_tokens} tokens, more than the {max_tokens} this "
            f"model samples in one piece; restore it in tiles ({tiles_hint}) or make it "
            "smaller"
        )
    if (work_w, work_h) != (width, height):
        source = source.resize((work_w, work_h), Image.Resampling.BICUBIC)
    return source, grid_h, grid_w


def resized_back(result: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The restored image at the input's ``size`` (bicubic, when it was resized)."""
    if result.size != size:
        return result.resize(size, Image.Resampling.BICUBIC)
    return result


def restore_in_turns(
    restore_one: Callable[[Image.Image, str], Image.Image],
    image: Image.Image,
    prompts: Sequence[str],
) -> list[Image.Image]:
    """Turn k restores turn k-1's output with ``prompts[k]``; every turn's output."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("expected a non-empty list of instructions, one per turn")
    outputs: list[Image.Image] = []
    current = image
    for prompt in prompts:
        current = restore_one(current, prompt)
        outputs.append(current)
    return outputs
