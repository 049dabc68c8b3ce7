"""Both FLUX backbones with the adapter: base equality, shapes, loading, gradients, token layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    Flux2KleinPipeline,
    FluxKontextPipeline,
)

from models.backbones import (
    CoTIRTransformer,
    build_transformer,
    grid_to_tokens,
    image_ids,
    patchify,
    text_ids,
    tokens_to_grid,
    unpatchify,
)
from models.codecs import Flux2VAECodec, FluxVAECodec
from models.cot_adapter import CoTAdapter, CoTAdapterConfig
from models.kinds import BackboneKind
from models.lora import apply_lora, freeze, trainable_report
from models.testing import TINY_CONFIGS, TINY_TEXT_DIM, randomize_gates, tiny_inputs, tiny_model
from models.text_encoders import MiniLMTextEncoder
from models.text_targets import encode_cot_targets

KINDS = list(BackboneKind)


def _base_output(kind: BackboneKind, seed: int = 0) -> tuple[torch.Tensor, CoTIRTransformer]:
    model = tiny_model(kind, seed=seed)
    inputs = tiny_inputs(model)
    model.remove_hooks()
    with torch.no_grad():
        base = model.transformer(**inputs.base_kwargs())[0]
    return base, tiny_model(kind, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_gates_give_exactly_the_base_model_output(kind: BackboneKind) -> None:
    base, model = _base_output(kind)
    inputs = tiny_inputs(model)
    with torch.no_grad():
        wrapped = model(**inputs.kwargs).sample
    assert torch.equal(wrapped, base)


@pytest.mark.parametrize("kind", KINDS)
def test_open_gates_change_the_output(kind: BackboneKind) -> None:
    base, model = _base_output(kind)
    randomize_gates(model)
    with torch.no_grad():
        wrapped = model(**tiny_inputs(model).kwargs).sample
    assert not torch.allclose(wrapped, base, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_what_the_single_stream_blocks_receive(kind: BackboneKind) -> None:
    model = tiny_model(kind)
    randomize_gates(model)
    inputs = tiny_inputs(model, batch=2, n_text=5, grid=(2, 3))
    seen: dict[str, torch.Tensor | None] = {}

    def after_adapter(_module, _args, output):  # registered after the wrapper's hook
        seen["text"], seen["image"] = output

    def first_single(_module, args, kwargs):
        seen["single_hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        seen["single_text"] = kwargs.get("encoder_hidden_states")

    model.transformer.transformer_blocks[-1].register_forward_hook(after_adapter)
    model.transformer.single_transformer_blocks[0].register_forward_pre_hook(
        first_single, with_kwargs=True
    )
    with torch.no_grad():
        out = model(**inputs.kwargs)
    h = model.cot_adapter.config.hidden_size
    assert out.sample.shape == (2, 12, TINY_CONFIGS[kind]["in_channels"])
    for prediction in (out.scene, out.degradation, out.plan):
        assert prediction.shape == (2, 5, TINY_TEXT_DIM)
    if kind is BackboneKind.FLUX2_KLEIN:
        # FLUX.2 joins [text ; image] after the double blocks: the adapted text comes first.
        assert seen["single_text"] is None
        assert seen["single_hidden"].shape == (2, 5 + 12, h)
        assert torch.equal(seen["single_hidden"][:, :5], seen["text"])
        assert torch.equal(seen["single_hidden"][:, 5:], seen["image"])
    else:
        assert torch.equal(seen["single_text"], seen["text"])
        assert torch.equal(seen["single_hidden"], seen["image"])


@pytest.mark.parametrize("kind", KINDS)
def test_the_adapter_changes_text_but_never_image_tokens(kind: BackboneKind) -> None:
    model = tiny_model(kind)
    randomize_gates(model)
    inputs = tiny_inputs(model)
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    model.transformer.transformer_blocks[-1].register_forward_hook(
        lambda _m, _a, output: captured.append(output)
    )
    with torch.no_grad():
        model(**inputs.kwargs)
        model.remove_hooks()
        model.transformer(**inputs.base_kwargs())
    (adapted_text, adapted_image), (base_text, base_image) = captured
    assert torch.equal(adapted_image, base_image)
    assert not torch.allclose(adapted_text, base_text)


@pytest.mark.parametrize("kind", KINDS)
def test_from_pretrained_base_initialises_the_adapter(kind: BackboneKind, tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = build_transformer(kind, TINY_CONFIGS[kind])
    base.save_pretrained(tmp_path / "pipeline" / "transformer")
    model = CoTIRTransformer.from_pretrained_base(
        kind, tmp_path / "pipeline", text_dim=TINY_TEXT_DIM, adapter_depth=2
    )
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    assert on_meta == []
    assert all(torch.isfinite(p).all() for p in model.cot_adapter.parameters())
    assert model.cot_adapter.decoder[0].linear1.weight.abs().sum() > 0
    for name, tensor in base.state_dict().items():
        assert torch.equal(model.transformer.state_dict()[name], tensor), name
    with torch.no_grad():
        out = model(**tiny_inputs(model).kwargs)
    assert torch.isfinite(out.sample).all()


def test_wrapper_rejects_an_adapter_of_another_width() -> None:
    transformer = build_transformer(
        BackboneKind.FLUX2_KLEIN, TINY_CONFIGS[BackboneKind.FLUX2_KLEIN]
    )
    adapter = CoTAdapter(CoTAdapterConfig(hidden_size=64, num_heads=2, text_dim=8, depth=1))
    with pytest.raises(ValueError, match="does not match"):
        CoTIRTransformer(transformer, adapter)


# -- training-style step: only adapter and LoRA receive gradients -------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder.from_folder()


def _tiny_vae(kind: BackboneKind) -> torch.nn.Module:
    torch.manual_seed(0)
    common = {
        "block_out_channels": (8, 8, 8, 8),
        "norm_num_groups": 4,
        "layers_per_block": 1,
        "latent_channels": 4,
    }
    if kind is BackboneKind.FLUX1_KONTEXT:
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            **common,
        )
    return AutoencoderKLFlux2(**common)


def _text_model(kind: BackboneKind, text_dim: int) -> CoTIRTransformer:
    config = dict(TINY_CONFIGS[kind])
    config["joint_attention_dim"] = text_dim
    config["in_channels"] = 16  # 4 latent channels x 2x2 patches
    if kind is BackboneKind.FLUX1_KONTEXT:
        config["pooled_projection_dim"] = text_dim
    torch.manual_seed(0)
    return CoTIRTransformer.from_config(kind, config, text_dim=text_dim, adapter_depth=1)


def _training_loss(kind, model, codec, encoder) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    hq = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    reference = grid_to_tokens(codec.encode(lq))
    clean = grid_to_tokens(codec.encode(hq))
    noise = torch.randn(clean.shape, generator=g)
    t = torch.tensor([0.4])
    noisy = (1 - t) * clean + t * noise
    prompt = encoder.encode(["Please remove the haze."], 16)
    targets = encode_cot_targets(
        encoder,
        [
            "scene description: a street. degradation description: haze. "
            "enhancement plan: dehaze. answer: done"
        ],
        16,
    )
    ids = torch.cat([image_ids(kind, 2, 3, reference=False), image_ids(kind, 2, 3, reference=True)])
    out = model(
        torch.cat([noisy, reference], dim=1),
        prompt.embeds,
        t,
        ids,
        text_ids(kind, 16),
        pooled_projections=prompt.pooled if kind is BackboneKind.FLUX1_KONTEXT else None,
        guidance=torch.tensor([2.5]) if kind is BackboneKind.FLUX1_KONTEXT else None,
    )
    loss = F.mse_loss(out.sample[:, : clean.shape[1]], noise - clean)
    for prediction, target in (
        (out.scene, targets.scene.embeds),
        (out.degradation, targets.degradation.embeds),
        (out.plan, targets.plan.embeds),
    ):
        loss = loss + F.mse_loss(F.normalize(prediction, dim=-1), F.normalize(target, dim=-1))
    return loss


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_only_the_adapter_and_lora(
    kind: BackboneKind, minilm: MiniLMTextEncoder
) -> None:
    model = _text_model(kind, minilm.dim)
    apply_lora(model, 4, init_b="random")
    randomize_gates(model, 0.1)
    vae = _tiny_vae(kind)
    codec = FluxVAECodec(vae) if kind is BackboneKind.FLUX1_KONTEXT else Flux2VAECodec(vae)
    freeze(vae, minilm)
    model.train()
    _training_loss(kind, model, codec, minilm).backward()

    report = trainable_report(model, vae=vae, text_encoder=minilm)
    assert set(report.counts) == {"adapter", "lora"}
    for name, parameter in model.named_parameters():
        if name.startswith("cot_adapter.") or "lora_" in name:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    adapter_grads = [p.grad.abs().sum() for p in model.cot_adapter.parameters()]
    assert all(g > 0 for g in adapter_grads)
    assert all(p.grad is None for p in model.transformer.transformer_blocks.parameters())
    assert all(p.grad is None and not p.requires_grad for p in vae.parameters())
    assert all(p.grad is None and not p.requires_grad for p in minilm.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_gives_the_same_gradients(kind: BackboneKind) -> None:
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(kind)
        torch.manual_seed(1)  # same random LoRA B in both runs
        apply_lora(model, 4, init_b="random")
        randomize_gates(model, 0.2)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        out = model(**tiny_inputs(model).kwargs)
        (out.sample.square().mean() + out.plan.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_delta_velocity_is_the_fine_tunes_change_to_the_base(kind: BackboneKind) -> None:
    model = tiny_model(kind)
    apply_lora(model, 4)  # B = 0: the fine-tune has not changed the base yet
    model.velocity_delta = True
    inputs = tiny_inputs(model)
    with torch.no_grad():
        untrained = model(**inputs.kwargs)
    assert torch.count_nonzero(untrained.sample) == 0  # the LQ-start flow's identity map
    base, _ = _base_output(kind)
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    randomize_gates(model, 0.2)
    with torch.no_grad():
        delta = model(**inputs.kwargs)
        model.velocity_delta = False
        full = model(**inputs.kwargs)
    torch.testing.assert_close(delta.sample, full.sample - base, rtol=1e-5, atol=1e-6)
    # The CoT predictions come from the fine-tuned pass, not the base one.
    torch.testing.assert_close(delta.plan, full.plan)
    # Gradients reach the fine-tune through the change; the base pass holds none.
    model.velocity_delta = True
    model.train()
    model(**inputs.kwargs).sample.square().mean().backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.named_parameters()
        if "lora_" in n
    )


def test_delta_velocity_refuses_a_merged_lora() -> None:
    model = tiny_model(BackboneKind.FLUX2_KLEIN)
    model.velocity_delta = True  # no peft layers: nothing to switch off for the base pass
    with pytest.raises(RuntimeError, match="without merging"):
        model(**tiny_inputs(model).kwargs)


# -- token layout matches the diffusers pipelines ---------------------------------------------


def test_kontext_ids_and_packing_match_the_pipeline() -> None:
    kind = BackboneKind.FLUX1_KONTEXT
    expected = FluxKontextPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32)
    assert torch.equal(image_ids(kind, 3, 4, reference=False), expected)
    reference = expected.clone()
    reference[:, 0] = 1
    assert torch.equal(image_ids(kind, 3, 4, reference=True), reference)
    assert torch.equal(text_ids(kind, 7), torch.zeros(7, 3))
    latents = torch.randn(2, 16, 6, 8)
    packed = FluxKontextPipeline._pack_latents(latents, 2, 16, 6, 8)
    assert torch.equal(grid_to_tokens(patchify(latents)), packed)
    assert torch.equal(unpatchify(tokens_to_grid(packed, 3, 4)), latents)


def test_flux2_ids_and_packing_match_the_pipeline() -> None:
    kind = BackboneKind.FLUX2_KLEIN
    latents = torch.randn(1, 128, 3, 4)
    assert torch.equal(
        image_ids(kind, 3, 4, reference=False), Flux2KleinPipeline._prepare_latent_ids(latents)[0]
    )
    assert torch.equal(
        image_ids(kind, 3, 4, reference=True), Flux2KleinPipeline._prepare_image_ids([latents])[0]
    )
    assert torch.equal(
        text_ids(kind, 5), Flux2KleinPipeline._prepare_text_ids(torch.zeros(1, 5, 8))[0]
    )
    raw = torch.randn(1, 32, 6, 8)
    assert torch.equal(patchify(raw), Flux2KleinPipeline._patchify_latents(raw))
    assert torch.equal(unpatchify(patchify(raw)), raw)
