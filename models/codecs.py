"""Image <-> token-grid codecs: the backbones' VAEs and the demo-only pixel codecs.

Every codec maps RGB images in [-1, 1], (B, 3, H, W) with H and W multiples of 16, to
a grid (B, C, H/s, W/s) whose channel vector at each cell is one transformer token,
and back; s is the codec's ``stride`` (pixels per token side). For the FLUX VAEs that
is VAE encode (8x), normalisation and the 2x2 patch packing the diffusers pipelines
apply (s = 16). The demo variants use weightless, deterministic, *demo-only* codecs with
none of a VAE's compression: the ``tiny`` test toys a plain ``pixel_unshuffle(16)``
(C = 768 per token), the ``demo`` variant :class:`LumaChromaCodec` at s = 8 (C = 96:
brightness at full resolution, colour at half), narrower than its 192-wide transformer.
A codec whose tokens are wider than the model leaves the sampler's noise in directions
the model cannot reach, and one exactly as wide copies less exactly (docs/TRAINING.md,
"The demo model").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from torch import nn

from models.backbones import patchify, unpatchify
from models.variants import CodecKind

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


#: An orthonormal opponent-colour basis: brightness, red-green, and yellow-blue rows.
_OPPONENT_BASIS = (
    (3**-0.5, 3**-0.5, 3**-0.5),
    (2**-0.5, -(2**-0.5), 0.0),
    (6**-0.5, 6**-0.5, -2 * 6**-0.5),
)


class LumaChromaCodec(LatentCodec):
    """Demo-only codec: brightness at full resolution, colour at half (as 4:2:0 JPEG does).

    Each pixel's RGB goes through an orthonormal opponent-colour basis; the brightness
    plane is cut into ``stride`` x ``stride`` patches, the two colour planes are summed over
    2x2 pixels (scaled by 1/2, which keeps the map orthonormal) and cut into ``stride/2``
    patches. A token therefore holds ``stride^2 + 2 (stride/2)^2`` numbers (96 at stride 8,
    half of ``pixel_unshuffle``'s 192), and ``decode`` is the exact transpose, i.e. the
    least-squares image for the token. Encoding then decoding loses only colour detail
    finer than 2x2 pixels (41.85 dB PSNR on the prior's held-out crops, docs/TRAINING.md).

    Why narrower tokens: the demo transformer is 192 wide, and its output passes a
    LayerNorm without affine weights before the projection to the token. A 192-wide
    token leaves no spare direction to carry its scale through that normalisation, and
    the prior trained on ``pixel_unshuffle(8)`` tokens never copied better than 27 dB
    however long it trained; with 96-wide tokens the same recipe copies better from its
    first thousands of steps (docs/TRAINING.md, "The codec").
    """

    def __init__(self, stride: int = 8) -> None:
        super().__init__()
        if stride < 2 or stride % 2 or TOKEN_STRIDE % stride:
            raise ValueError(f"luma/chroma codec stride must be even and divide {TOKEN_STRIDE}")
        self.stride = stride
        self.token_channels = stride * stride + 2 * (stride // 2) ** 2
        self.register_buffer("basis", torch.tensor(_OPPONENT_BASIS), persistent=False)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB -> opponent colours; brightness patches, then 2x2-summed colour patches."""
        _check_pixels(pixels, self.stride)
        opponent = torch.einsum("ij,bjhw->bihw", self.basis.to(pixels), pixels)
        luma = F.pixel_unshuffle(opponent[:, :1], self.stride)
        chroma = F.avg_pool2d(opponent[:, 1:], 2) * 2
        return torch.cat([luma, F.pixel_unshuffle(chroma, self.stride // 2)], dim=1)

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """The transpose of ``encode``: colour spread back over its 2x2 pixels."""
        luma_channels = self.stride * self.stride
        luma = F.pixel_shuffle(grid[:, :luma_channels], self.stride)
        chroma = F.pixel_shuffle(grid[:, luma_channels:], self.stride // 2) / 2
        chroma = F.interpolate(chroma, scale_factor=2, mode="nearest")
        opponent = torch.cat([luma, chroma], dim=1)
        return torch.einsum("ji,bjhw->bihw", self.basis.to(grid), opponent)


def weightless_codec(kind: CodecKind, stride: int) -> LatentCodec:
    """The demo-only codec of ``kind`` at ``stride`` (the VAE codecs need their weights)."""
    if kind is CodecKind.PIXEL:
        return PixelUnshuffleCodec(stride)
    if kind is CodecKind.LUMA_CHROMA:
        return LumaChromaCodec(stride)
    raise ValueError(f"the {kind.value} codec has weights; load it with models.restore")


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
