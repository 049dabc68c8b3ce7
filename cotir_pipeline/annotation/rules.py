"""Rule checks on an annotation that need no model.

Each rule has a name and, when it fails, a one-line detail:

- ``schema``: the answer is a JSON object that :class:`CotAnswer` accepts;
- ``parts_present``: all six fields are there and not blank;
- ``labels_named``: the degradation description names every labelled degradation
  (keyword table in :mod:`cotir_pipeline.annotation.vocabulary`), and so does the
  precise question;
- ``unlabeled_named``: the degradation description does not name (with a strict,
  unambiguous keyword, outside a negated clause) a degradation that is neither
  labelled nor related to a label;
- ``length``: each field's length lies within bounds;
- ``refusal``: no refusal or assistant boilerplate ("I'm sorry", "as an AI", ...).

Reconstruction: the paper's filter rules are not public; these are ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cotir_pipeline.annotation.schema import ANSWER_FIELDS, CotAnswer
from cotir_pipeline.annotation.vocabulary import names, related
from cotir_pipeline.tasks import Degradation, parse_degradation_label

RULES = ("schema", "parts_present", "labels_named", "unlabeled_named", "length", "refusal")

#: Inclusive character bounds per field (after whitespace is collapsed).
DEFAULT_LENGTH_BOUNDS: dict[str, tuple[int, int]] = {
    "vague_question": (3, 200),
    "precise_question": (10, 300),
    "scene": (20, 800),
    "degradation": (15, 800),
    "plan": (15, 800),
    "answer": (10, 400),
}

#: Refusal and assistant boilerplate, matched case-insensitively anywhere in any field.
DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bI(?:'| a)m sorry\b",
    r"\bI apologi[sz]e\b",
    r"\bas an AI\b",
    r"\b(?:AI|large) language model\b",
    r"\bI (?:cannot|can't|can not|am unable to|am not able to) "
    r"(?:help|assist|see|view|process|provide|comply|do that)",
    r"\bunable to (?:view|see|process|access) (?:the |this )?images?\b",
    r"\bI'm not able to\b",
    r"\bno images? (?:was|were) (?:provided|attached)\b",
)

_NEGATION = re.compile(r"\b(?:no|not|without|free of|absent|lacks any|none)\b", re.IGNORECASE)
_CLAUSE = re.compile(r"[.;!?]|,\s+(?:but|while|whereas)\b")


@dataclass(frozen=True)
class RuleConfig:
    """Bounds and patterns of the rule checks."""

    length_bounds: Mapping[str, tuple[int, int]] = field(
        default_factory=lambda: dict(DEFAULT_LENGTH_BOUNDS)
    )
    refusal_patterns: tuple[str, ...] = DEFAULT_REFUSAL_PATTERNS
    check_unlabeled: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.length_bounds) - set(ANSWER_FIELDS)
        if unknown:
            raise ValueError(f"length bounds for unknown fields {sorted(unknown)}")
        for name, (low, high) in self.length_bounds.items():
            if low < 0 or high < low:
                raise ValueError(f"bad length bounds for {name}: ({low}, {high})")
        for pattern in self.refusal_patterns:
            re.compile(pattern)


@dataclass(frozen=True)
class RuleFailure:
    """One failed rule and why."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def _as_answer(answer: CotAnswer | Mapping[str, Any] | str | None) -> tuple[Any, list[RuleFailure]]:
    """The validated answer, or None with the schema/parts failures."""
    if isinstance(answer, CotAnswer):
        return answer, []
    if answer is None:
        return None, [RuleFailure("schema", "no answer")]
    data: Any = answer
    if isinstance(answer, str | bytes):
        try:
            data = json.loads(answer)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return None, [RuleFailure("schema", f"invalid JSON: {error}")]
    if not isinstance(data, Mapping):
        return None, [RuleFailure("schema", f"expected an object, got {type(data).__name__}")]
    failures = []
    missing = [name for name in ANSWER_FIELDS if name not in data]
    blank = [
        name
        for name in ANSWER_FIELDS
        if name in data and isinstance(data[name], str) and not data[name].strip()
    ]
    if missing:
        failures.append(RuleFailure("parts_present", f"missing {', '.join(missing)}"))
    if blank:
        failures.append(RuleFailure("parts_present", f"empty {', '.join(blank)}"))
    if failures:
        return None, failures
    try:
        return CotAnswer.model_validate(dict(data)), []
    except ValidationError as error:
        item = error.errors()[0]
        where = ".".join(str(part) for part in item.get("loc", ())) or "answer"
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        return None, [RuleFailure("schema", f"{where}: {message}")]


def _affirmed_clauses(text: str) -> list[str]:
    """Clauses of ``text`` that are not negated ("no rain is visible" is left out)."""
    return [part for part in _CLAUSE.split(text) if part.strip() and not _NEGATION.search(part)]


def check_answer(
    answer: CotAnswer | Mapping[str, Any] | str | None,
    degradation_label: str,
    config: RuleConfig | None = None,
) -> list[RuleFailure]:
    """All failed rules for one answer (empty list: every rule passed).

    ``answer`` may be a validated :class:`CotAnswer`, a parsed JSON object or the
    raw JSON text. ``degradation_label`` is the sample's label (``"haze+rain"``);
    an unknown label raises ValueError, as it is a pipeline bug, not a bad answer.
    """
    config = config or RuleConfig()
    parts = parse_degradation_label(degradation_label)
    parsed, failures = _as_answer(answer)
    if parsed is None:
        return failures
    for part in parts:
        if not names(part, parsed.degradation):
            failures.append(
                RuleFailure("labels_named", f"degradation description does not name {part.value}")
            )
        if not names(part, parsed.precise_question):
            failures.append(
                RuleFailure("labels_named", f"precise question does not name {part.value}")
            )
    if config.check_unlabeled:
        allowed = related(parts)
        clauses = _affirmed_clauses(parsed.degradation)
        for other in Degradation:
            if other in allowed:
                continue
            if any(names(other, clause, strict=True) for clause in clauses):
                failures.append(
                    RuleFailure(
                        "unlabeled_named",
                        f"degradation description names {other.value}, "
                        f"not in label {degradation_label}",
                    )
                )
    for name, (low, high) in config.length_bounds.items():
        length = len(getattr(parsed, name))
        if not low <= length <= high:
            failures.append(
                RuleFailure("length", f"{name} has {length} characters, not {low}..{high}")
            )
    text = " ".join(getattr(parsed, name) for name in ANSWER_FIELDS)
    for pattern in config.refusal_patterns:
        found = re.search(pattern, text, re.IGNORECASE)
        if found:
            failures.append(RuleFailure("refusal", f"contains {found.group(0)!r}"))
            break
    return failures
