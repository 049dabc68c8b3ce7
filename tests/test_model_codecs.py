"""The demo's weightless codecs: shapes, exactness where promised, and what is lost."""

from __future__ import annotations

import pytest
import torch

from models.codecs import LumaChromaCodec, PixelUnshuffleCodec, weightless_codec
from models.prior import PriorConfig, codec_for, load_prior_photos, psnr
from models.variants import CodecKind, get_variant


def _images(seed: int = 0, size: tuple[int, int] = (32, 48)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((2, 3, *size), generator=generator) * 2 - 1


def test_the_demo_variant_uses_96_wide_luma_chroma_tokens() -> None:
    variant = get_variant("demo")
    codec = codec_for("demo")
    assert isinstance(codec, LumaChromaCodec)
    assert variant.codec is CodecKind.LUMA_CHROMA
    assert variant.codec.weightless
    assert codec.token_channels == 96 == variant.transformer_config["in_channels"]
    # Narrower than the transformer, so the model has directions to spare (codecs docstring).
    heads, width = (
        variant.transformer_config[k] for k in ("num_attention_heads", "attention_head_dim")
    )
    assert codec.token_channels < heads * width
    assert codec.encode(_images()).shape == (2, 96, 4, 6)


def test_luma_chroma_tokens_round_trip_exactly_and_decode_is_the_transpose() -> None:
    codec = LumaChromaCodec(8)
    grid = torch.randn(3, 96, 2, 5, dtype=torch.float64)
    # Orthonormal rows: encode(decode(g)) == g, and <encode(x), g> == <x, decode(g)>.
    torch.testing.assert_close(codec.encode(codec.decode(grid)), grid)
    images = _images().double()[:, :, :16, :40]
    grid = grid[:2]
    lhs = (codec.encode(images) * grid).sum()
    rhs = (images * codec.decode(grid)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_luma_chroma_keeps_brightness_and_2x2_colour_exactly() -> None:
    codec = LumaChromaCodec(8)
    images = _images()
    # A grey image has no colour: it comes back exactly.
    grey = images[:, :1].expand(-1, 3, -1, -1)
    torch.testing.assert_close(codec.decode(codec.encode(grey)), grey, atol=1e-5, rtol=0)
    # Colour constant over each 2x2 block comes back exactly too.
    blocky = torch.nn.functional.interpolate(images[:, :, ::2, ::2], scale_factor=2)
    torch.testing.assert_close(codec.decode(codec.encode(blocky)), blocky, atol=1e-5, rtol=0)
    # Finer colour detail is what the codec drops: noise does not survive.
    assert float(psnr((codec.decode(codec.encode(images)) + 1) / 2, (images + 1) / 2).mean()) < 30


def test_luma_chroma_loses_little_on_photos() -> None:
    photos = load_prior_photos(PriorConfig()).evaluation[:, :, :64, :64]
    codec = LumaChromaCodec(8)
    restored = (codec.decode(codec.encode(photos * 2 - 1)) + 1) / 2
    assert float(psnr(restored, photos).mean()) > 35


def test_weightless_codec_picks_by_kind_and_refuses_the_vaes() -> None:
    assert isinstance(weightless_codec(CodecKind.PIXEL, 16), PixelUnshuffleCodec)
    assert weightless_codec(CodecKind.PIXEL, 16).token_channels == 768
    assert weightless_codec(CodecKind.LUMA_CHROMA, 16).token_channels == 256 + 2 * 64
    with pytest.raises(ValueError, match="has weights"):
        weightless_codec(CodecKind.FLUX2_VAE, 16)
    # CodecKind.weightless and weightless_codec name the same kinds (kept in step here).
    for kind in CodecKind:
        if kind.weightless:
            assert weightless_codec(kind, 8).token_channels > 0
        else:
            with pytest.raises(ValueError, match="has weights"):
                weightless_codec(kind, 8)
    with pytest.raises(ValueError, match="even"):
        LumaChromaCodec(3)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        LumaChromaCodec(8).encode(torch.zeros(1, 3, 12, 16))
