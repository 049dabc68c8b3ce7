"""Annotation: prompt material, the answer schema, VLM backends and the consistency filter.

Light modules only are imported here (pydantic, no network client, no torch):
``vllm_backend`` (HTTP client) and ``clip_filter`` (torch, open_clip) are imported
by whoever uses them.
"""

from cotir_pipeline.annotation.base import (
    AnnotationBackend,
    AnnotationRequest,
    AnnotationResult,
)
from cotir_pipeline.annotation.schema import ANSWER_JSON_SCHEMA, CotAnswer

__all__ = [
    "ANSWER_JSON_SCHEMA",
    "AnnotationBackend",
    "AnnotationRequest",
    "AnnotationResult",
    "CotAnswer",
]
