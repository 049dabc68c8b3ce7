"""What every annotation backend takes and returns, and the rows the stage stores.

A backend turns a batch of :class:`AnnotationRequest` (one LQ/HQ pair of a pair
shard with its degradation label and recipe) into one :class:`AnnotationResult`
per request, in the same order. A bad answer is a result with status ``failed``
and its reason, never an exception: only configuration errors (a wrong model
name, a refused API key) raise.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import pyarrow as pa

from cotir_pipeline.annotation.schema import CotAnswer
from cotir_pipeline.shards import STATUS_FAILED, STATUS_OK
from cotir_pipeline.tasks import parse_degradation_label

AnnotationStatus = Literal["ok", "failed"]


@dataclass(frozen=True)
class AnnotationRequest:
    """One pair to annotate: PNG bytes of both images, the label and the applied recipe."""

    sample_id: str
    lq_png: bytes = field(repr=False)
    hq_png: bytes = field(repr=False)
    degradation_label: str
    recipe: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.sample_id or not isinstance(self.sample_id, str):
            raise ValueError("sample_id must be a non-empty string")
        if not isinstance(self.lq_png, bytes | bytearray) or not self.lq_png:
            raise ValueError(f"{self.sample_id}: lq_png must be non-empty bytes")
        if not isinstance(self.hq_png, bytes | bytearray) or not self.hq_png:
            raise ValueError(f"{self.sample_id}: hq_png must be non-empty bytes")
        parse_degradation_label(self.degradation_label)  # ValueError names the bad part
        if isinstance(self.recipe, str | bytes) or not isinstance(self.recipe, Sequence):
            raise TypeError(f"{self.sample_id}: recipe must be a sequence of applied steps")
        object.__setattr__(self, "recipe", tuple(self.recipe))

    @classmethod
    def from_shard_sample(
        cls, key: str, hq_png: bytes, lq_png: bytes, meta: Mapping[str, Any]
    ) -> AnnotationRequest:
        """Build from a pair-shard sample (``<key>.hq.png``, ``.lq.png``, ``.meta.json``).

        Uses ``meta["sample_id"]`` (falls back to the key), ``meta["deg"]`` and
        ``meta["recipe"]`` (the applied steps; empty or missing for fetched pairs).
        """
        label = meta.get("deg")
        if not isinstance(label, str):
            raise ValueError(f"sample {key!r}: meta has no 'deg' label")
        recipe = meta.get("recipe") or ()
        return cls(
            sample_id=str(meta.get("sample_id") or key),
            lq_png=lq_png,
            hq_png=hq_png,
            degradation_label=label,
            recipe=tuple(recipe),
        )


@dataclass(frozen=True)
class AnnotationResult:
    """The outcome for one request; ``answer`` is set exactly when ``status == "ok"``."""

    sample_id: str
    status: AnnotationStatus
    answer: CotAnswer | None
    reason: str | None
    model: str
    template_version: str
    raw_response: str | None = None
    response_sha256: str | None = None
    attempts: int = 0
    latency_s: float = 0.0
    cached: bool = False

    def __post_init__(self) -> None:
        if self.status not in (STATUS_OK, STATUS_FAILED):
            raise ValueError(f"status must be 'ok' or 'failed', got {self.status!r}")
        if (self.status == STATUS_OK) != (self.answer is not None):
            raise ValueError("an ok result needs an answer and a failed one must not have one")
        if self.status == STATUS_FAILED and not self.reason:
            raise ValueError("a failed result needs a reason")

    def to_row(self) -> dict[str, Any]:
        """One row of :data:`ANNOTATION_SCHEMA` (answer as JSON and as the release's string)."""
        answer = self.answer
        return {
            "sample_id": self.sample_id,
            "status": self.status,
            "reason": self.reason,
            "model": self.model,
            "template_version": self.template_version,
            "vague_question": answer.vague_question if answer else None,
            "precise_question": answer.precise_question if answer else None,
            "answer_json": answer.model_dump_json() if answer else None,
            "cot_answers": answer.to_flat() if answer else None,
            "raw_response": self.raw_response,
            "response_sha256": self.response_sha256,
            "attempts": self.attempts,
            "latency_s": self.latency_s,
            "cached": self.cached,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AnnotationResult:
        """Inverse of :meth:`to_row`."""
        answer_json = row.get("answer_json")
        answer = CotAnswer.model_validate_json(answer_json) if answer_json else None
        return cls(
            sample_id=row["sample_id"],
            status=row["status"],
            answer=answer,
            reason=row.get("reason"),
            model=row["model"],
            template_version=row["template_version"],
            raw_response=row.get("raw_response"),
            response_sha256=row.get("response_sha256"),
            attempts=int(row.get("attempts") or 0),
            latency_s=float(row.get("latency_s") or 0.0),
            cached=bool(row.get("cached")),
        )


#: One row per annotated sample (the ``cot_annotations`` stage's per-sample status).
ANNOTATION_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("template_version", pa.string(), nullable=False),
        pa.field("vague_question", pa.string()),
        pa.field("precise_question", pa.string()),
        pa.field("answer_json", pa.string()),
        # The release's cot.answers string ("scene description: ... answer: ...").
        pa.field("cot_answers", pa.string()),
        pa.field("raw_response", pa.string()),
        pa.field("response_sha256", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("latency_s", pa.float64()),
        pa.field("cached", pa.bool_()),
    ]
)


def annotation_table(results: Sequence[AnnotationResult]) -> pa.Table:
    """Results as a typed Arrow table of :data:`ANNOTATION_SCHEMA`."""
    rows = [result.to_row() for result in results]
    columns = {name: [row[name] for row in rows] for name in ANNOTATION_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=ANNOTATION_SCHEMA)


def sha256_text(text: str) -> str:
    """Hex SHA-256 of UTF-8 text (the ``response_sha256`` of a raw response)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_recipe(recipe: Sequence[Mapping[str, Any]]) -> str:
    """Stable JSON of a recipe (sorted keys), for hashing and seeding."""
    return json.dumps(list(recipe), sort_keys=True, separators=(",", ":"), default=str)


@runtime_checkable
class AnnotationBackend(Protocol):
    """Turns a batch of requests into results (same order, one each); see module docs."""

    @property
    def model(self) -> str:
        """Name recorded as the annotating model (e.g. the vLLM served model name)."""
        ...

    @property
    def template_version(self) -> str:
        """Version of the instruction (or phrase set) the answers were made with."""
        ...

    def annotate(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationResult]:
        """Annotate a batch; failures are results with a reason, not exceptions."""
        ...


def check_unique_ids(requests: Sequence[AnnotationRequest]) -> None:
    """Raise ValueError if two requests of a batch share a sample id."""
    seen: set[str] = set()
    for request in requests:
        if request.sample_id in seen:
            raise ValueError(f"sample id {request.sample_id!r} appears twice in the batch")
        seen.add(request.sample_id)
