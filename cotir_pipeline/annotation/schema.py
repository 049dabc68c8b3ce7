"""The annotation answer: one JSON schema, its pydantic model, and the release's formats.

The VLM returns a JSON object with six string fields (:data:`ANSWER_JSON_SCHEMA`,
used as-is for guided decoding). The public release stores the same content as a
meta record: ``cot.questions = [vague, precise]`` and ``cot.answers``, one string
with the prefixes ``scene description:``, ``degradation description:``,
``enhancement plan:`` and ``answer:`` (the CoTIR paper and its public release).
:class:`CotAnswer` converts between the three forms without loss.

Reconstruction: the paper's schema is not public; field names and wording are ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

#: Field names of the answer, in the order the VLM is asked to write them.
ANSWER_FIELDS = ("vague_question", "precise_question", "scene", "degradation", "plan", "answer")

#: The prefixes of the flat answer string, in order, and the field each one introduces.
FLAT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("scene description:", "scene"),
    ("degradation description:", "degradation"),
    ("enhancement plan:", "plan"),
    ("answer:", "answer"),
)

_DESCRIPTIONS = {
    "vague_question": "A short generic request that does not name the degradation.",
    "precise_question": "An imperative instruction naming every degradation to remove.",
    "scene": "The content of the scene as seen in the clean image.",
    "degradation": "Each degradation as it appears in the degraded image.",
    "plan": "The restoration steps in order.",
    "answer": "One sentence describing the restored image.",
}

#: The answer's JSON schema, written out by hand so that it (and therefore the template
#: version that hashes it) does not change with the pydantic version. Only keywords every
#: vLLM structured-output backend accepts are used; lengths are checked by the filter.
ANSWER_JSON_SCHEMA: dict[str, Any] = {
    "title": "CotAnswer",
    "type": "object",
    "properties": {
        name: {"type": "string", "description": _DESCRIPTIONS[name]} for name in ANSWER_FIELDS
    },
    "required": list(ANSWER_FIELDS),
    "additionalProperties": False,
}

_PREFIX_PATTERN = re.compile(
    "|".join(re.escape(prefix) for prefix, _ in FLAT_PREFIXES), re.IGNORECASE
)
_SPACES = re.compile(r"\s+")


class FlatAnswerError(ValueError):
    """A flat answer string or release meta record does not have the expected parts."""


class CotAnswer(BaseModel):
    """One annotation: the two questions and the CoT triple plus the final answer.

    Every field is a non-empty single-paragraph string (inner whitespace runs are
    collapsed to one space) that does not contain any of the flat-string prefixes,
    so that :meth:`to_flat` and :meth:`from_flat` are exact inverses.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    vague_question: str
    precise_question: str
    scene: str
    degradation: str
    plan: str
    answer: str

    @field_validator(*ANSWER_FIELDS, mode="after")
    @classmethod
    def _one_clean_paragraph(cls, value: str) -> str:
        value = _SPACES.sub(" ", value).strip()
        if not value:
            raise ValueError("must not be empty")
        found = _PREFIX_PATTERN.search(value)
        if found:
            raise ValueError(f"must not contain the flat-string prefix {found.group(0)!r}")
        return value

    def to_flat(self) -> str:
        """The release's ``cot.answers`` string (the four prefixed parts, one space apart)."""
        return " ".join(f"{prefix} {getattr(self, field)}" for prefix, field in FLAT_PREFIXES)

    @classmethod
    def from_flat(cls, flat: str, *, vague_question: str, precise_question: str) -> CotAnswer:
        """Inverse of :meth:`to_flat`; raises :class:`FlatAnswerError` on a malformed string."""
        parts = parse_flat_answer(flat)
        try:
            return cls(vague_question=vague_question, precise_question=precise_question, **parts)
        except ValidationError as error:
            raise FlatAnswerError(_first_error(error)) from None

    def to_release_meta(self) -> dict[str, Any]:
        """The ``cot`` entry of the release's ``<key>.meta.json``."""
        questions = [self.vague_question, self.precise_question]
        return {"questions": questions, "answers": self.to_flat()}

    @classmethod
    def from_release_meta(cls, meta: Mapping[str, Any]) -> CotAnswer:
        """Read a release meta record (the whole sample meta or just its ``cot`` entry)."""
        cot = meta.get("cot", meta)
        if not isinstance(cot, Mapping):
            raise FlatAnswerError("meta 'cot' is not an object")
        questions = cot.get("questions")
        if not isinstance(questions, list | tuple) or len(questions) != 2:
            raise FlatAnswerError("meta cot.questions must be a list [vague, precise]")
        answers = cot.get("answers")
        if isinstance(answers, list | tuple) and len(answers) == 1:
            answers = answers[0]
        if not isinstance(answers, str):
            raise FlatAnswerError("meta cot.answers must be the prefixed answer string")
        return cls.from_flat(
            answers, vague_question=str(questions[0]), precise_question=str(questions[1])
        )


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(part) for part in item.get("loc", ())) or "answer"
    return f"{where}: {item.get('msg', 'invalid')}".replace("Value error, ", "")


def parse_flat_answer(flat: str) -> dict[str, str]:
    """Cut a flat answer at its prefixes: ``{"scene", "degradation", "plan", "answer"}``.

    The prefixes are matched case-insensitively and must each appear exactly once, in
    order, with the string starting at the first one. Raises :class:`FlatAnswerError`.
    """
    if not isinstance(flat, str):
        raise FlatAnswerError(f"expected a string, got {type(flat).__name__}")
    found = list(_PREFIX_PATTERN.finditer(flat))
    expected = [prefix for prefix, _ in FLAT_PREFIXES]
    seen = [match.group(0).lower() for match in found]
    if seen != expected:
        raise FlatAnswerError(f"expected the prefixes {expected} once each in order, got {seen}")
    if flat[: found[0].start()].strip():
        raise FlatAnswerError("text before 'scene description:'")
    parts = {}
    for index, (match, (_, field)) in enumerate(zip(found, FLAT_PREFIXES, strict=True)):
        end = found[index + 1].start() if index + 1 < len(found) else len(flat)
        text = _SPACES.sub(" ", flat[match.end() : end]).strip()
        if not text:
            raise FlatAnswerError(f"the {match.group(0)!r} part is empty")
        parts[field] = text
    return parts


def answer_from_json(text: str | bytes | Mapping[str, Any]) -> CotAnswer:
    """Validate a model's JSON answer (text or parsed); raises ValueError with the reason."""
    if isinstance(text, Mapping):
        data: Any = text
    else:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"schema violation: expected an object, got {type(data).__name__}")
    try:
        return CotAnswer.model_validate(data)
    except ValidationError as error:
        raise ValueError(f"schema violation: {_first_error(error)}") from None
