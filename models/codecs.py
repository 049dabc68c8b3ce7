"""Image <-> token-grid codecs: the backbones' VAEs and the demo-only pixel codec.

Every codec maps RGB images in [-1, 1], (B, 3, H, W) with H and W multiples of 16, to
a grid (B, C, H/16, W/16) whose channel vector at each cell is one transformer token,
and back. For the FLUX VAEs that is VAE encode (8x), normalisation and the 2x2 patch
packing the diffusers pipelines apply; for the ``tiny`` variant it is a plain
``pixel_unshuffle(16)`` (C = 3 * 16 * 16 = 768): lossless, weightless, deterministic,
and *demo-only* (it has none of a VAE's compression, so it only exists to run the whole
pipeline on a CPU without downloaded weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from torch import nn

from models.backbones import patchify, unpatchify

#: Pixels per token side for every codec (8x VAE, then 2x2 patches).
TOKEN_STRIDE = 16


def _check_pixels(pixels: torch.Tensor) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(pixels.shape)}")
    if pixels.shape[2] % TOKEN_STRIDE or pixels.shape[3] % TOKEN_STRIDE:
        raise ValueError(
            f"image size {pixels.shape[2]}x{pixels.shape[3]} is not a multiple of {TOKEN_STRIDE}"
        )


class LatentCodec(nn.Module):
    """Base class: ``encode`` images to token grids, ``decode`` grids to images."""

    #: Channels per token (the transformer's ``in_channels``).
    token_channels: int

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, token_channels, H/16, W/16)."""
        raise NotImplementedError

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, token_channels, h, w) -> (B, 3, 16h, 16w), roughly in [-1, 1]."""
        raise NotImplementedError


class PixelUnshuffleCodec(LatentCodec):
    """Demo-only codec: ``pixel_unshuffle`` by 16 (768 channels per token), no weights."""

    def __init__(self) -> None:
        super().__init__()
        self.token_channels = 3 * TOKEN_STRIDE * TOKEN_STRIDE

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Rearrange each 16x16 pixel patch into one token."""
        _check_pixels(pixels)
        return F.pixel_unshuffle(pixels, TOKEN_STRIDE)

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """Inverse rearrangement."""
        return F.pixel_shuffle(grid, TOKEN_STRIDE)


class FluxVAECodec(LatentCodec):
    """FLUX.1 ``AutoencoderKL`` (16 channels): shift/scale, then 2x2 packing (64 per token)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.token_channels = 4 * int(vae.config.latent_channels)
        self._shift = float(vae.config.shift_factor or 0.0)
        self._scale = float(vae.config.scaling_factor)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mode of the posterior (as the Kontext pipeline encodes its reference image)."""
        _check_pixels(pixels)
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        return patchify((latents - self._shift) * self._scale)

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """Unpack, undo shift/scale, VAE-decode."""
        latents = unpatchify(grid) / self._scale + self._shift
        return self.vae.decode(latents.to(self.vae.dtype)).sample


class Flux2VAECodec(LatentCodec):
    """FLUX.2 ``AutoencoderKLFlux2`` (32 channels): 2x2 patches, then its BatchNorm statistics."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.token_channels = 4 * int(vae.config.latent_channels)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(self.vae.bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps)
        return mean, std.to(like.device, like.dtype)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mode of the posterior, patchified and normalised as the klein pipeline does."""
        _check_pixels(pixels)
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        grid = patchify(latents)
        mean, std = self._stats(grid)
        return (grid - mean) / std

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation, unpatchify, VAE-decode."""
        mean, std = self._stats(grid)
        latents = unpatchify(grid * std + mean)
        return self.vae.decode(latents.to(self.vae.dtype)).sample
