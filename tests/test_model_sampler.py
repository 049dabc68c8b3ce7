"""Euler sampler, shifted schedules and the restore API on the tiny variants."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from cotir_pipeline.settings import CotirSettings
from cotir_pipeline.weights import MissingWeightsError
from cotir_test_support import noise_image
from models.checkpoint_io import save_checkpoint
from models.lora import apply_lora
from models.restore import CoTIRRestorer
from models.sampler import euler_sample, flux1_mu, flux2_mu, round_size, shifted_sigmas
from models.testing import randomize_gates


@pytest.mark.parametrize(
    ("size", "expected"),
    [((70, 50), (64, 48)), ((64, 64), (64, 64)), ((8, 5), (16, 16)), ((513, 520), (512, 528))],
)
def test_sizes_round_to_the_nearest_multiple_of_16(size, expected) -> None:
    assert round_size(*size) == expected


def test_round_size_rejects_empty_images() -> None:
    with pytest.raises(ValueError, match="positive"):
        round_size(0, 10)


def test_flux1_shift_is_linear_from_half_at_256_to_1_15_at_4096_tokens() -> None:
    assert flux1_mu(256) == pytest.approx(0.5)
    assert flux1_mu(4096) == pytest.approx(1.15)
    assert flux1_mu(1024) == pytest.approx(0.5 + 0.65 * (1024 - 256) / 3840)


def test_the_shift_formulas_are_diffusers_own_bit_for_bit() -> None:
    """The sampler's torch-free mu (models.sampling_math) against the pipelines' functions."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    for seq_len in (1, 16, 64, 255, 256, 1024, 4096, 4300, 4301, 9000):
        assert flux1_mu(seq_len) == calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
        shifted = flux1_mu(seq_len, base_shift=0.3, max_shift=1.2)
        assert shifted == calculate_shift(seq_len, 256, 4096, 0.3, 1.2)
        for steps in (1, 2, 4, 5, 20, 50):
            assert flux2_mu(seq_len, steps) == compute_empirical_mu(seq_len, steps)


@pytest.mark.parametrize(
    ("kind", "seq_len", "steps"), [("flux1", 1024, 20), ("flux2", 1024, 5), ("flux2", 5000, 4)]
)
def test_sigmas_match_the_diffusers_scheduler(kind: str, seq_len: int, steps: int) -> None:
    mu = flux1_mu(seq_len) if kind == "flux1" else flux2_mu(seq_len, steps)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, time_shift_type="exponential"
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist(), mu=mu)
    ours = shifted_sigmas(steps, mu)
    assert ours[0] == pytest.approx(1.0)
    assert ours[-1] == 0
    assert torch.all(ours[1:] < ours[:-1])
    torch.testing.assert_close(ours.float(), scheduler.sigmas.float(), rtol=1e-5, atol=1e-6)


def test_euler_integrates_a_constant_velocity_exactly_with_one_call_per_step() -> None:
    calls = []

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        calls.append(t)
        return torch.full_like(x, 2.0)

    noise = torch.zeros(1, 3, 4)
    out = euler_sample(velocity, noise, shifted_sigmas(5, 0.7))
    torch.testing.assert_close(out, torch.full_like(noise, -2.0))
    assert len(calls) == 5
    assert calls[0] == 1.0
    assert not math.isclose(calls[1], 0.8)  # the grid is shifted, not linear


# -- restore --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> CoTIRRestorer:
    return CoTIRRestorer.from_variant("tiny")


def _encoded_shapes(restorer: CoTIRRestorer, monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the shape of every image the restorer's codec encodes."""
    seen: list = []
    original = restorer.codec.encode
    monkeypatch.setattr(restorer.codec, "encode", lambda x: seen.append(x.shape) or original(x))
    return seen


def test_restore_works_at_a_multiple_of_16_and_maps_back_to_the_input_size(
    tiny: CoTIRRestorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _encoded_shapes(tiny, monkeypatch)
    out = tiny.restore(noise_image(70, 50), "Please remove the noise.", steps=2)
    assert out.size == (70, 50)
    assert out.mode == "RGB"
    assert seen == [torch.Size([1, 3, 48, 64])]


def test_same_seed_same_output_and_another_seed_another(tiny: CoTIRRestorer) -> None:
    photo = noise_image(70, 50)
    a = np.asarray(tiny.restore(photo, "Remove the rain.", steps=2, seed=42))
    b = np.asarray(tiny.restore(photo, "Remove the rain.", steps=2, seed=42))
    c = np.asarray(tiny.restore(photo, "Remove the rain.", steps=2, seed=7))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_multi_turn_conditions_each_turn_on_the_previous_output(
    tiny: CoTIRRestorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = []
    original = tiny.restore

    def spy(image, prompt, *args, **kwargs):
        inputs.append((np.asarray(image).copy(), prompt))
        return original(image, prompt, *args, **kwargs)

    monkeypatch.setattr(tiny, "restore", spy)
    photo = noise_image(70, 50)
    outputs = tiny.restore_turns(photo, ["Remove the rain.", "Now brighten it."], steps=2)
    assert len(outputs) == 2
    assert [p for _, p in inputs] == ["Remove the rain.", "Now brighten it."]
    assert np.array_equal(inputs[0][0], np.asarray(photo))
    assert np.array_equal(inputs[1][0], np.asarray(outputs[0]))
    with pytest.raises(ValueError, match="non-empty list"):
        tiny.restore_turns(photo, "just a string")


def test_restore_rejects_bad_input(tiny: CoTIRRestorer) -> None:
    with pytest.raises(ValueError, match="empty"):
        tiny.restore(noise_image(70, 50), "   ")
    with pytest.raises(TypeError, match="PIL"):
        tiny.restore(np.zeros((16, 16, 3)), "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        tiny.restore(noise_image(70, 50), "x", steps=0)


def test_kontext_architecture_restores_too() -> None:
    restorer = CoTIRRestorer.from_variant("tiny-kontext")
    out = restorer.restore(noise_image(40, 40), "Remove the haze.", steps=2)
    assert out.size == (40, 40)


def test_from_pretrained_reloads_a_saved_checkpoint(tiny: CoTIRRestorer, tmp_path: Path) -> None:
    trained = CoTIRRestorer.from_variant("tiny", seed=3)
    torch.manual_seed(0)
    apply_lora(trained.model, 4, init_b="random")
    randomize_gates(trained.model, 0.2)
    save_checkpoint(trained.model, tmp_path / "ckpt", variant="tiny", include_base=True)
    loaded = CoTIRRestorer.from_pretrained(tmp_path / "ckpt")
    photo = noise_image(70, 50)
    a = np.asarray(trained.restore(photo, "Remove the rain.", steps=2))
    b = np.asarray(loaded.restore(photo, "Remove the rain.", steps=2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(tiny.restore(photo, "Remove the rain.", steps=2)))


def test_from_pretrained_reads_release_files(tmp_path: Path) -> None:
    restorer = CoTIRRestorer.from_variant("tiny")
    adapter = {
        f"module.cot_adapter.{k}": v + 0.01
        for k, v in restorer.model.cot_adapter.state_dict().items()
    }
    torch.save(adapter, tmp_path / "cot_adapter.pt")
    loaded = CoTIRRestorer.from_pretrained(tmp_path, variant="tiny")
    torch.testing.assert_close(
        loaded.model.cot_adapter.scale_planning, restorer.model.cot_adapter.scale_planning + 0.01
    )
    with pytest.raises(ValueError, match="pass variant"):
        CoTIRRestorer.from_pretrained(tmp_path)


def test_full_variants_need_local_weights(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="COTIR_WEIGHTS_DIR: not set"):
        CoTIRRestorer.from_variant("cotir-4b", settings=CotirSettings(weights_dir=None))
    settings = CotirSettings(weights_dir=tmp_path)
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "FLUX.2-klein-4B")):
        CoTIRRestorer.from_variant("cotir-4b", settings=settings)
    (tmp_path / "FLUX.1-Kontext-dev" / "transformer").mkdir(parents=True)
    with pytest.raises(MissingWeightsError, match=r"FLUX\.1-Kontext-dev/vae"):
        CoTIRRestorer.from_variant("cotir-12b", settings=settings)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        CoTIRRestorer.from_pretrained(tmp_path / "nowhere", variant="tiny")


def test_evaluation_adapter_takes_and_returns_uint8_arrays(tiny: CoTIRRestorer) -> None:
    restorer = tiny.for_evaluation(version="test", steps=1)
    assert (restorer.name, restorer.version) == ("tiny", "test")
    lq = np.asarray(noise_image(40, 24))
    out = restorer.restore(lq, "Remove the noise.", "noise")
    assert out.shape == (24, 40, 3)
    assert out.dtype == np.uint8
    with pytest.raises(ValueError, match="uint8"):
        restorer.restore(lq.astype(np.float32), "x", "noise")


# -- the release's sampling (release compatibility mode) ----------------------------------------


def test_sizes_round_down_in_release_compatibility_mode() -> None:
    assert round_size(120, 40, down=True) == (112, 32)
    assert round_size(120, 40) == (128, 48)
    assert round_size(8, 5, down=True) == (16, 16)


def test_release_rope_is_computed_from_bf16_ids_in_diffusers_form() -> None:
    """Positions, frequencies and angles in bf16 as the release; otherwise diffusers' RoPE."""
    from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed

    from models.backbones import text_ids
    from models.kinds import BackboneKind
    from models.restore import ReleaseRotaryEmbedding

    ids = text_ids(BackboneKind.FLUX2_KLEIN, 512).float()
    cos, sin = ReleaseRotaryEmbedding(2000, (32, 32, 32, 32))(ids)
    exact_cos, exact_sin = Flux2PosEmbed(theta=2000, axes_dim=[32, 32, 32, 32])(ids)
    assert cos.shape == exact_cos.shape == (512, 128)
    assert cos.dtype == torch.float32
    # 512 text positions collapse to 385 distinct ones (bf16 keeps 8 significant bits).
    assert len(torch.unique(cos[:, 96:], dim=0)) == 385
    assert torch.equal(cos[257], cos[256])  # 257 is not a bf16 number
    # Small positions: only the bf16 rounding of angles (relative 2^-8) and of the values.
    torch.testing.assert_close(cos[:8], exact_cos[:8], atol=0.05, rtol=0)
    torch.testing.assert_close(sin[:8], exact_sin[:8], atol=0.05, rtol=0)
    assert (cos - exact_cos).abs().max() > 0.5  # the large positions move a lot


def test_release_compat_swaps_the_rope_only_while_it_samples(
    tiny: CoTIRRestorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.restore import ReleaseRotaryEmbedding

    calls = []
    original_forward = ReleaseRotaryEmbedding.forward
    monkeypatch.setattr(
        ReleaseRotaryEmbedding,
        "forward",
        lambda self, ids: calls.append(ids.shape) or original_forward(self, ids),
    )
    before = tiny.model.transformer.pos_embed
    tiny.restore(noise_image(32, 32), "Remove the rain.", steps=1)
    assert calls == []
    monkeypatch.setattr(tiny, "release_compat", True)
    tiny.restore(noise_image(32, 32), "Remove the rain.", steps=1)
    assert calls  # the release's RoPE ran
    assert tiny.model.transformer.pos_embed is before


def test_release_compat_works_at_the_floored_size_and_keeps_the_input_size(
    tiny: CoTIRRestorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _encoded_shapes(tiny, monkeypatch)
    monkeypatch.setattr(tiny, "release_compat", True)
    out = tiny.restore(noise_image(70, 50), "Please remove the noise.", steps=2)
    assert out.size == (70, 50)
    assert seen == [torch.Size([1, 3, 48, 64])]  # 70 x 50 -> 64 x 48 (floor)
    tiny.restore(noise_image(120, 40), "Please remove the noise.", steps=2)
    assert seen[-1] == torch.Size([1, 3, 32, 112])  # nearest would be 48 x 128


def test_release_compat_draws_the_noise_on_the_device_in_the_latent_dtype(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bf16 latents: the release draws bf16 noise from a generator on the device."""
    import models.restore as restore_module

    restorer = CoTIRRestorer.from_variant("tiny", dtype=torch.bfloat16)
    drawn: list[tuple[torch.device, torch.dtype]] = []
    original = restore_module.initial_noise

    def spy(shape, seed, *, device, dtype):  # type: ignore[no-untyped-def]
        drawn.append((torch.device(device), dtype))
        return original(shape, seed, device=device, dtype=dtype)

    monkeypatch.setattr(restore_module, "initial_noise", spy)
    restorer.restore(noise_image(32, 32), "Remove the rain.", steps=1)
    restorer.release_compat = True
    restorer.restore(noise_image(32, 32), "Remove the rain.", steps=1)
    assert drawn == [(torch.device("cpu"), torch.float32), (torch.device("cpu"), torch.bfloat16)]
    expected = torch.randn(
        (1, 4, 768), generator=torch.Generator().manual_seed(42), dtype=torch.bfloat16
    )
    assert torch.equal(
        original((1, 4, 768), 42, device=torch.device("cpu"), dtype=torch.bfloat16), expected
    )


def test_release_files_switch_release_compat_on_by_default(tmp_path: Path) -> None:
    restorer = CoTIRRestorer.from_variant("tiny")
    adapter = {
        f"module.cot_adapter.{k}": v for k, v in restorer.model.cot_adapter.state_dict().items()
    }
    torch.save(adapter, tmp_path / "cot_adapter.pt")
    assert CoTIRRestorer.from_pretrained(tmp_path, variant="tiny").release_compat is True
    off = CoTIRRestorer.from_pretrained(tmp_path, variant="tiny", release_compat=False)
    assert off.release_compat is False
    save_checkpoint(restorer.model, tmp_path / "ours", variant="tiny", include_base=True)
    assert CoTIRRestorer.from_pretrained(tmp_path / "ours").release_compat is False
