"""Torch-free enumerations shared by the model modules (importable by the fast CLI)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

#: Which Linears carry LoRA (``models.lora.lora_targets``): the paper's, or also the text path.
LoraScope = Literal["paper", "text_path"]
LORA_SCOPES: tuple[LoraScope, ...] = get_args(LoraScope)


class BackboneKind(StrEnum):
    """Which diffusers transformer class a variant uses."""

    FLUX1_KONTEXT = "flux1-kontext"
    FLUX2_KLEIN = "flux2-klein"
