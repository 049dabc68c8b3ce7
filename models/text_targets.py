"""CoT targets: the annotation answer cut into its three parts and encoded per token.

The annotation answer is one string with the prefixes ``scene description:``,
``degradation description:``, ``enhancement plan:`` and ``answer:`` (the CoTIR paper
and its public release). The scene, degradation and plan parts are encoded by the
backbone's own text encoder, per token (never pooled), padded to 512 tokens (configurable), with the
attention mask: these are c_s, c_d, c_p, the regression targets of the adapter's
predictions.

Reconstruction (the release is silent): each part is encoded exactly as a prompt is
(for klein that includes the chat template), so targets live in the same feature
space as the model's text input; the prefix itself is not part of the encoded text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models.text_encoders import MAX_TEXT_TOKENS, TextEncoder, TextEncoding

SCENE_PREFIX = "scene description:"
DEGRADATION_PREFIX = "degradation description:"
PLAN_PREFIX = "enhancement plan:"
ANSWER_PREFIX = "answer:"
PREFIXES = (SCENE_PREFIX, DEGRADATION_PREFIX, PLAN_PREFIX, ANSWER_PREFIX)

# "answer:" must not match the tail of another word; the other prefixes are two words.
_PREFIX_PATTERN = re.compile(
    r"(?i)(scene description:|degradation description:|enhancement plan:|(?<![a-z])answer:)"
)


class CoTParseError(ValueError):
    """An annotation answer lacks one of the three CoT parts."""


@dataclass(frozen=True)
class CoTParts:
    """The answer's parts, stripped, without their prefixes."""

    scene: str
    degradation: str
    plan: str
    answer: str = ""


def split_cot_answer(text: str) -> CoTParts:
    """Cut an annotation answer at its prefixes (case-insensitive, any order).

    Raises :class:`CoTParseError` when the scene, degradation or plan prefix is missing,
    appears twice, or its part is empty (no letter or digit); ``answer:`` is optional.
    """
    if not isinstance(text, str):
        raise CoTParseError(f"expected a string answer, got {type(text).__name__}")
    matches = list(_PREFIX_PATTERN.finditer(text))
    parts: dict[str, str] = {}
    for index, match in enumerate(matches):
        prefix = match.group(1).lower()
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        if prefix in parts:
            raise CoTParseError(f"prefix {prefix!r} appears more than once")
        parts[prefix] = text[match.end() : end].strip()
    for prefix in (SCENE_PREFIX, DEGRADATION_PREFIX, PLAN_PREFIX):
        if not re.search(r"\w", parts.get(prefix, "")):
            raise CoTParseError(f"the answer has no (or an empty) {prefix!r} part")
    return CoTParts(
        scene=parts[SCENE_PREFIX],
        degradation=parts[DEGRADATION_PREFIX],
        plan=parts[PLAN_PREFIX],
        answer=parts.get(ANSWER_PREFIX, ""),
    )


@dataclass
class CoTTargets:
    """Per-token targets c_s, c_d, c_p: each embeds (B, L, D) with its mask (B, L)."""

    scene: TextEncoding
    degradation: TextEncoding
    plan: TextEncoding

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> CoTTargets:
        """Move all three encodings."""
        return CoTTargets(
            self.scene.to(device, dtype),
            self.degradation.to(device, dtype),
            self.plan.to(device, dtype),
        )


def encode_cot_targets(
    encoder: TextEncoder,
    answers: Sequence[str | CoTParts],
    max_length: int = MAX_TEXT_TOKENS,
) -> CoTTargets:
    """Encode each answer's three parts with ``encoder``, padded to ``max_length`` tokens."""
    if not answers:
        raise ValueError("no answers to encode")
    parts = [item if isinstance(item, CoTParts) else split_cot_answer(item) for item in answers]
    return CoTTargets(
        scene=encoder.encode([p.scene for p in parts], max_length),
        degradation=encoder.encode([p.degradation for p in parts], max_length),
        plan=encoder.encode([p.plan for p in parts], max_length),
    )
