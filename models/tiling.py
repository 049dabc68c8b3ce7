"""Tiled sampling of a token grid: overlapping windows whose velocities are blended.

An image too large for one transformer call (attention grows with the square of the
token count) is sampled window by window at every Euler step, and the windows'
velocities are averaged where they overlap with weights that fall linearly to the
window's inner edges (MultiDiffusion's scheme, Bar-Tal et al. 2023). Blending at every
step, not only the final pixels, keeps neighbouring windows on one trajectory, so no
seam forms where they meet. The weights are positive everywhere, so every token is
covered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Default overlap, in pixels, when a caller gives none (a quarter of a 128 px tile).
DEFAULT_TILE_OVERLAP = 32
#: Smallest weight a token gets at a window's inner edge (keeps every weight positive).
_EDGE_WEIGHT = 1e-3


@dataclass(frozen=True)
class Window:
    """One tile of a token grid: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int

    def crop(self, grid: torch.Tensor) -> torch.Tensor:
        """This window of a (B, C, H, W) grid."""
        return grid[:, :, self.top : self.top + self.height, self.left : self.left + self.width]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis: stride ``tile - overlap``, the last one flush with the end."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def plan_windows(grid_height: int, grid_width: int, tile: int, overlap: int) -> list[Window]:
    """Windows of at most ``tile`` x ``tile`` tokens that cover the grid, overlapping by at
    least ``overlap`` tokens (more where the last window is pulled back to the edge)."""
    if tile < 1:
        raise ValueError(f"tile must be at least one token, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    return [
        Window(top, left, min(tile, grid_height), min(tile, grid_width))
        for top in _starts(grid_height, tile, overlap)
        for left in _starts(grid_width, tile, overlap)
    ]


def _ramp(length: int, ramp: int, fall_start: bool, fall_end: bool) -> torch.Tensor:
    """1 inside; rising over ``ramp`` tokens from an inner start edge, falling to an inner end."""
    weights = torch.ones(length, dtype=torch.float32)
    if ramp <= 0:
        return weights
    position = torch.arange(length, dtype=torch.float32) + 0.5
    if fall_start:
        weights = torch.minimum(weights, position / ramp)
    if fall_end:
        weights = torch.minimum(weights, (length - position) / ramp)
    return weights.clamp(min=_EDGE_WEIGHT)


def window_weights(window: Window, grid_height: int, grid_width: int, overlap: int) -> torch.Tensor:
    """(1, 1, h, w) blending weights of one window: linear ramps over ``overlap`` tokens on
    the sides that border another window, flat on the sides at the image border."""
    rows = _ramp(
        window.height,
        overlap,
        fall_start=window.top > 0,
        fall_end=window.top + window.height < grid_height,
    )
    cols = _ramp(
        window.width,
        overlap,
        fall_start=window.left > 0,
        fall_end=window.left + window.width < grid_width,
    )
    return (rows[:, None] * cols[None, :])[None, None]


def default_overlap(tile_size: int | None) -> int:
    """A quarter of the tile: wide enough for the blend ramps to hide window borders."""
    return DEFAULT_TILE_OVERLAP if tile_size is None else tile_size // 4


GridVelocity = Callable[[Window, torch.Tensor, float], torch.Tensor]


def blended_velocity(
    velocity: GridVelocity,
    state: torch.Tensor,
    t: float,
    windows: list[Window],
    overlap: int,
) -> torch.Tensor:
    """The velocity of the whole (B, C, H, W) grid ``state``: each window's velocity
    (``velocity(window, window_state, t)``, same shape as its crop) blended by
    :func:`window_weights`."""
    _, _, grid_height, grid_width = state.shape
    total = torch.zeros_like(state, dtype=torch.float32)
    weight_sum = torch.zeros(
        (1, 1, grid_height, grid_width), dtype=torch.float32, device=state.device
    )
    for window in windows:
        weights = window_weights(window, grid_height, grid_width, overlap).to(state.device)
        part = velocity(window, window.crop(state), t).float()
        rows = slice(window.top, window.top + window.height)
        cols = slice(window.left, window.left + window.width)
        total[:, :, rows, cols] += part * weights
        weight_sum[:, :, rows, cols] += weights
    return total / weight_sum
