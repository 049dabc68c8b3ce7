"""What both restore engines check and repeat, without torch: one request, and turns.

:class:`models.restore.CoTIRRestorer` (torch) and :class:`models.onnx_restore.OnnxRestorer`
(ONNX Runtime) accept the same requests: an instruction, a step count (None: the
model's own), and a list of instructions for multi-turn restoration, where each turn
restores the previous turn's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image


def checked_steps(prompt: str, steps: int | None, default_steps: int) -> int:
    """The Euler steps to run for one request; an empty instruction or a step count
    below 1 is a ``ValueError``."""
    if not prompt or not prompt.strip():
        raise ValueError("the instruction is empty")
    steps = default_steps if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return steps


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
