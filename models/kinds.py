"""Torch-free enumerations shared by the model modules (importable by the fast CLI)."""

from __future__ import annotations

from enum import StrEnum


class BackboneKind(StrEnum):
    """Which diffusers transformer class a variant uses."""

    FLUX1_KONTEXT = "flux1-kontext"
    FLUX2_KLEIN = "flux2-klein"
