"""Image <-> token-grid codecs: the backbones' VAEs and the demo-only pixel codec.

Every codec maps RGB images in [-1, 1], (B, 3, H, W) with H and W multiples of 16, to
a grid (B, C, H/s, W/s) whose channel vector at each cell is one transformer token,
and back; s is the codec's ``stride`` (pixels per token side). For the FLUX VAEs that
is VAE encode (8x), normalisation and the 2x2 patch packing the diffusers pipelines
apply (s = 16); the demo variants use a plain ``pixel_unshuffle(s)``: lossless,
weightless, deterministic, and *demo-only* (it has none of a VAE's compression). The
``tiny`` test variants use s = 16 (C = 768 per token); the ``demo`` variant uses s = 8
(C = 192), so that its transformer's width (192) can represent every token exactly: a
codec whose tokens are wider than the model leaves the sampler's noise in the
directions the model cannot reach (docs/TRAINING.md, "The demo model").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from torch import nn

from models.backbones import patchify, unpatchify

#: Image sides are multiples of this for every codec (FLUX: 8x VAE, then 2x2 patches).
TOKEN_STRIDE = 16


def _check_pixels(pixels: torch.Tensor, stride: int = TOKEN_STRIDE) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(pixels.shape)}")
    if pixels.shape[2] % stride or pixels.shape[3] % stride:
        raise ValueError(
            f"image size {pixels.shape[2]}x{pixels.shape[3]} is not a multiple of {stride}"
        )


class LatentCodec(nn.Module):
    """Base class: ``encode`` images to token grids, ``decode`` grids to images."""

    #: Channels per token (the transformer's ``in_channels``).
    token_channels: int
    #: Pixels per token side.
    stride: int = TOKEN_STRIDE

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, token_channels, H/stride, W/stride)."""
        raise NotImplementedError

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, token_channels, h, w) -> (B, 3, stride*h, stride*w), roughly in [-1, 1]."""
        raise NotImplementedError

    @contextlib.contextmanager
    def tiling(self) -> Iterator[bool]:
        """Encode and decode in overlapping tiles meanwhile, where the autoencoder can;
        yields whether it does. A codec that maps each token to its own pixels (the
        demo's) is local already and needs no tiles."""
        vae = getattr(self, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            yield False
            return
        was_tiling = bool(getattr(vae, "use_tiling", False))
        vae.enable_tiling()
        try:
            yield True
        finally:
            if not was_tiling:
                vae.disable_tiling()


class PixelUnshuffleCodec(LatentCodec):
    """Demo-only codec: ``pixel_unshuffle`` by ``stride`` (3 * stride^2 channels), no weights."""

    def __init__(self, stride: int = TOKEN_STRIDE) -> None:
        super().__init__()
        if stride < 1 or TOKEN_STRIDE % stride:
            raise ValueError(f"pixel codec stride must divide {TOKEN_STRIDE}, got {stride}")
        self.stride = stride
        self.token_channels = 3 * stride * stride

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Rearrange each stride x stride pixel patch into one token."""
        _check_pixels(pixels, self.stride)
        return F.pixel_unshuffle(pixels, self.stride)

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """Inverse rearrangement."""
        return F.pixel_shuffle(grid, self.stride)


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
