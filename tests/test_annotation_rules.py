"""Rule checks: each rule passes on a good answer and can fail on its own."""

from __future__ import annotations

from typing import Any

import pytest

from cotir_pipeline.annotation.rules import RULES, RuleConfig, check_answer
from cotir_pipeline.annotation.schema import CotAnswer

GOOD: dict[str, Any] = {
    "vague_question": "Make this clearer.",
    "precise_question": "Remove the haze and the rain streaks from this photo.",
    "scene": "A harbour with fishing boats and a lighthouse under an overcast sky.",
    "degradation": "A dense haze lowers contrast, and bright rain streaks cross the frame.",
    "plan": "First remove the rain streaks; then remove the haze, keeping colours natural.",
    "answer": "The restored image shows a clear harbour with crisp boats.",
}
LABEL = "haze+rain"


def _rules(answer: Any, label: str = LABEL, config: RuleConfig | None = None) -> list[str]:
    return [failure.rule for failure in check_answer(answer, label, config)]


def test_a_good_answer_passes_in_every_form() -> None:
    assert _rules(CotAnswer(**GOOD)) == []
    assert _rules(GOOD) == []
    assert _rules(CotAnswer(**GOOD).model_dump_json()) == []


@pytest.mark.parametrize(
    ("answer", "rule"),
    [
        (None, "schema"),
        ("{not json", "schema"),
        ("[1, 2]", "schema"),
        ({**GOOD, "extra": "field"}, "schema"),
        ({**GOOD, "scene": "boats. answer: boats"}, "schema"),
        ({k: v for k, v in GOOD.items() if k != "plan"}, "parts_present"),
        ({**GOOD, "answer": "   "}, "parts_present"),
        (
            {**GOOD, "degradation": "A dense haze lowers the contrast of the whole scene."},
            "labels_named",
        ),
        ({**GOOD, "precise_question": "Remove the rain streaks from this photo."}, "labels_named"),
        (
            {
                **GOOD,
                "degradation": GOOD["degradation"] + " Strong JPEG compression artifacts too.",
            },
            "unlabeled_named",
        ),
        ({**GOOD, "vague_question": "Ok"}, "length"),
        ({**GOOD, "scene": "A harbour. " * 90}, "length"),
        ({**GOOD, "answer": "I'm sorry, but I cannot help with restoring this image."}, "refusal"),
        ({**GOOD, "scene": "As an AI, I describe a harbour with boats in the fog."}, "refusal"),
    ],
)
def test_each_rule_can_fail(answer: Any, rule: str) -> None:
    assert rule in RULES
    assert rule in _rules(answer)


def test_negated_and_related_mentions_are_not_disagreements() -> None:
    negated = {**GOOD, "degradation": GOOD["degradation"] + " There is no noise or JPEG blocking."}
    assert _rules(negated) == []
    # Raindrops are related to rain; haze is related to snow's veil.
    related = {**GOOD, "degradation": GOOD["degradation"] + " A few raindrops dot the lens."}
    assert _rules(related) == []
    config = RuleConfig(check_unlabeled=False)
    unrelated = {**GOOD, "degradation": GOOD["degradation"] + " It is also very noisy."}
    assert _rules(unrelated) == ["unlabeled_named"]
    assert _rules(unrelated, config=config) == []


def test_failures_carry_details() -> None:
    failures = check_answer({**GOOD, "vague_question": "Ok"}, LABEL)
    assert [str(f) for f in failures] == ["length: vague_question has 2 characters, not 3..200"]


def test_unknown_label_is_a_pipeline_error() -> None:
    with pytest.raises(ValueError, match="unknown degradation"):
        check_answer(GOOD, "haze+gremlins")


def test_rule_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        RuleConfig(length_bounds={"title": (1, 2)})
    with pytest.raises(ValueError, match="bad length bounds"):
        RuleConfig(length_bounds={"scene": (10, 5)})
    custom = RuleConfig(length_bounds={"scene": (0, 30)})
    assert _rules(GOOD, config=custom) == ["length"]
