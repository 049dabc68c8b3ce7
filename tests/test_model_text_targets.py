"""CoT targets: answer splitting, per-token encoding, and each backbone's text-encoder path."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, FluxKontextPipeline
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    T5Config,
    T5EncoderModel,
)

from models.testing import word_level_tokenizer
from models.text_encoders import MiniLMTextEncoder, Qwen3TextEncoder, T5ClipTextEncoder
from models.text_targets import CoTParseError, CoTParts, encode_cot_targets, split_cot_answer

ANSWER = (
    "Scene description: a rainy street at dusk with parked cars. "
    "Degradation description: dense rain streaks and low light. "
    "Enhancement plan: remove the rain, then brighten the shadows. "
    "Answer: Please remove the rain and brighten the image."
)


def test_answer_is_cut_at_the_four_prefixes() -> None:
    parts = split_cot_answer(ANSWER)
    assert parts == CoTParts(
        scene="a rainy street at dusk with parked cars.",
        degradation="dense rain streaks and low light.",
        plan="remove the rain, then brighten the shadows.",
        answer="Please remove the rain and brighten the image.",
    )


def test_answer_part_is_optional_and_order_free() -> None:
    parts = split_cot_answer(
        "enhancement plan: denoise\ndegradation description: noise\nscene description: a cat"
    )
    assert (parts.scene, parts.degradation, parts.plan, parts.answer) == (
        "a cat",
        "noise",
        "denoise",
        "",
    )


@pytest.mark.parametrize(
    "text",
    [
        "scene description: a cat. degradation description: noise.",
        "scene description: . degradation description: noise. enhancement plan: denoise",
        "scene description: a. scene description: b. degradation description: c. "
        "enhancement plan: d",
    ],
)
def test_incomplete_answers_are_refused(text: str) -> None:
    with pytest.raises(CoTParseError):
        split_cot_answer(text)


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return MiniLMTextEncoder.from_folder()


def test_targets_are_per_token_padded_to_512_with_a_mask(minilm: MiniLMTextEncoder) -> None:
    targets = encode_cot_targets(minilm, [ANSWER, split_cot_answer(ANSWER)])
    for encoding in (targets.scene, targets.degradation, targets.plan):
        assert encoding.embeds.shape == (2, 512, 384)
        assert encoding.mask.shape == (2, 512)
        assert 0 < int(encoding.mask[0].sum()) < 40
        assert encoding.mask[0, -1] == 0
    assert not torch.allclose(targets.scene.embeds, targets.plan.embeds)
    assert torch.equal(targets.scene.embeds[0], targets.scene.embeds[1])
    short = encode_cot_targets(minilm, [ANSWER], max_length=32)
    assert short.plan.embeds.shape == (1, 32, 384)
    torch.testing.assert_close(short.plan.embeds[0, :8], targets.plan.embeds[0, :8])
    with pytest.raises(ValueError, match="limit"):
        minilm.encode(["x"], 1024)


# -- the full-size encoders' code paths, on tiny models built in code -------------------------

WORDS = [
    "<pad>",
    "<unk>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "user",
    "assistant",
    "\n",
    "remove",
    "the",
    "rain",
    "please",
    "brighten",
    "image",
    "<think>",
    "</think>",
]


def _tokenizer(max_length: int, chat: bool = False) -> PreTrainedTokenizerFast:
    return word_level_tokenizer(WORDS, max_length, chat=chat)


def test_qwen3_encoder_matches_the_klein_pipeline() -> None:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
    )
    model = Qwen3ForCausalLM(config).eval()
    tokenizer = _tokenizer(64, chat=True)
    ours = Qwen3TextEncoder(model, tokenizer, layers=(1, 2, 3)).encode(
        ["please remove the rain", "brighten the image"], max_length=24
    )
    expected = Flux2KleinPipeline._get_qwen3_prompt_embeds(
        model,
        tokenizer,
        ["please remove the rain", "brighten the image"],
        max_sequence_length=24,
        hidden_states_layers=(1, 2, 3),
    )
    assert ours.embeds.shape == (2, 24, 3 * 16)
    torch.testing.assert_close(ours.embeds, expected)
    assert ours.mask.sum(dim=1).tolist()[0] > ours.mask.sum(dim=1).tolist()[1] > 0


def test_t5_clip_encoder_matches_the_kontext_pipeline() -> None:
    torch.manual_seed(0)
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
    ).eval()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(WORDS),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            eos_token_id=2,
        )
    ).eval()
    t5_tok, clip_tok = _tokenizer(512), _tokenizer(77)
    ours = T5ClipTextEncoder(t5, t5_tok, clip, clip_tok).encode(["please remove the rain"], 32)
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=None,
    )
    embeds, pooled, _ = pipe.encode_prompt(
        "please remove the rain", prompt_2=None, device="cpu", max_sequence_length=32
    )
    torch.testing.assert_close(ours.embeds, embeds)
    torch.testing.assert_close(ours.pooled, pooled)
    assert ours.mask[0].tolist()[:4] == [1, 1, 1, 1]
    assert ours.mask[0, 4:].sum() == 0
