"""The answer schema, its pydantic model and the release's flat string and meta record."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cotir_pipeline.annotation.base import (
    ANNOTATION_SCHEMA,
    AnnotationRequest,
    AnnotationResult,
    annotation_table,
)
from cotir_pipeline.annotation.schema import (
    ANSWER_FIELDS,
    ANSWER_JSON_SCHEMA,
    CotAnswer,
    FlatAnswerError,
    answer_from_json,
    parse_flat_answer,
)
from cotir_pipeline.shards import ShardSample, encode_png, read_shard, write_shard

ANSWER = CotAnswer(
    vague_question="Make this clearer.",
    precise_question="Remove the haze and the rain streaks from this photo.",
    scene="A harbour with fishing boats and a lighthouse under an overcast sky.",
    degradation="A dense haze lowers contrast, and bright rain streaks cross the frame.",
    plan="First remove the rain streaks; then remove the haze, keeping the colours natural.",
    answer="The restored image shows a clear harbour with crisp boats.",
)


def test_json_schema_matches_the_model() -> None:
    assert tuple(ANSWER_JSON_SCHEMA["properties"]) == ANSWER_FIELDS
    assert tuple(CotAnswer.model_fields) == ANSWER_FIELDS
    assert ANSWER_JSON_SCHEMA["required"] == list(ANSWER_FIELDS)
    assert ANSWER_JSON_SCHEMA["additionalProperties"] is False
    json.dumps(ANSWER_JSON_SCHEMA)  # plain JSON data


def test_flat_string_round_trip() -> None:
    flat = ANSWER.to_flat()
    assert flat.startswith("scene description: A harbour")
    assert " degradation description: A dense haze" in flat
    assert " enhancement plan: First remove" in flat
    assert flat.endswith("answer: The restored image shows a clear harbour with crisp boats.")
    again = CotAnswer.from_flat(
        flat, vague_question=ANSWER.vague_question, precise_question=ANSWER.precise_question
    )
    assert again == ANSWER


def test_release_meta_round_trip() -> None:
    meta = {"deg": "haze+rain", "cot": ANSWER.to_release_meta()}
    assert meta["cot"]["questions"] == [ANSWER.vague_question, ANSWER.precise_question]
    assert isinstance(meta["cot"]["answers"], str)
    assert CotAnswer.from_release_meta(json.loads(json.dumps(meta))) == ANSWER
    assert CotAnswer.from_release_meta(meta["cot"]) == ANSWER
    listed = {"questions": meta["cot"]["questions"], "answers": [meta["cot"]["answers"]]}
    assert CotAnswer.from_release_meta(listed) == ANSWER


def test_parse_flat_answer_is_lenient_on_case_and_whitespace() -> None:
    flat = (
        "Scene Description:  a room\n with a lamp. DEGRADATION DESCRIPTION: dark.\n"
        "Enhancement plan: brighten it. Answer: a bright room."
    )
    assert parse_flat_answer(flat) == {
        "scene": "a room with a lamp.",
        "degradation": "dark.",
        "plan": "brighten it.",
        "answer": "a bright room.",
    }


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ("scene description: a. enhancement plan: b. answer: c.", "once each in order"),
        (
            "degradation description: a. scene description: b. enhancement plan: c. answer: d.",
            "once each in order",
        ),
        (
            "intro scene description: a degradation description: b enhancement plan: c answer: d",
            "before",
        ),
        ("scene description:  degradation description: b enhancement plan: c answer: d", "empty"),
        (
            "scene description: a degradation description: b "
            "enhancement plan: c answer: d answer: e",
            "once each",
        ),
    ],
)
def test_malformed_flat_answers_are_rejected(flat: str, message: str) -> None:
    with pytest.raises(FlatAnswerError, match=message):
        parse_flat_answer(flat)


def test_bad_meta_records_are_rejected() -> None:
    with pytest.raises(FlatAnswerError, match="questions"):
        CotAnswer.from_release_meta({"cot": {"questions": ["only one"], "answers": "x"}})
    with pytest.raises(FlatAnswerError, match="answers"):
        CotAnswer.from_release_meta({"cot": {"questions": ["a", "b"], "answers": 3}})
    with pytest.raises(FlatAnswerError, match="must not be empty"):
        CotAnswer.from_flat(ANSWER.to_flat(), vague_question=" ", precise_question="p")


def test_fields_are_single_clean_paragraphs() -> None:
    data = ANSWER.model_dump()
    data["scene"] = "  A harbour\n\nwith   boats.  "
    assert CotAnswer(**data).scene == "A harbour with boats."
    data["scene"] = "A harbour. Answer: boats."
    with pytest.raises(ValueError, match="prefix"):
        CotAnswer(**data)
    data["scene"] = ""
    with pytest.raises(ValueError, match="empty"):
        CotAnswer(**data)


def test_answer_from_json_reports_the_problem() -> None:
    assert answer_from_json(ANSWER.model_dump_json()) == ANSWER
    with pytest.raises(ValueError, match="invalid JSON"):
        answer_from_json('{"scene": ')
    with pytest.raises(ValueError, match="schema violation: expected an object"):
        answer_from_json("[1, 2]")
    with pytest.raises(ValueError, match="schema violation: plan"):
        answer_from_json({k: v for k, v in ANSWER.model_dump().items() if k != "plan"})
    with pytest.raises(ValueError, match="schema violation"):
        answer_from_json({**ANSWER.model_dump(), "extra": "field"})


def test_result_rows_round_trip_through_parquet() -> None:
    ok = AnnotationResult(
        sample_id="a" * 32,
        status="ok",
        answer=ANSWER,
        reason=None,
        model="m",
        template_version="v+1",
        raw_response=ANSWER.model_dump_json(),
        response_sha256="0" * 64,
        attempts=2,
        latency_s=0.5,
    )
    failed = AnnotationResult(
        sample_id="b" * 32,
        status="failed",
        answer=None,
        reason="timeout",
        model="m",
        template_version="v+1",
        attempts=6,
    )
    table = annotation_table([ok, failed])
    assert table.schema.equals(ANNOTATION_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    rows = pq.read_table(io.BytesIO(buffer.getvalue())).to_pylist()
    assert rows[0]["cot_answers"] == ANSWER.to_flat()
    assert [AnnotationResult.from_row(row) for row in rows] == [ok, failed]


def test_result_status_and_answer_must_agree() -> None:
    with pytest.raises(ValueError, match="ok result needs an answer"):
        AnnotationResult("s", "ok", None, None, "m", "v")
    with pytest.raises(ValueError, match="needs a reason"):
        AnnotationResult("s", "failed", None, None, "m", "v")
    with pytest.raises(ValueError, match="status"):
        AnnotationResult("s", "dropped", None, "x", "m", "v")  # type: ignore[arg-type]


def test_request_from_a_pair_shard_sample(tmp_path: Path) -> None:
    png = encode_png(np.zeros((8, 8, 3), np.uint8))
    recipe = [{"op": "haze", "params": {"beta": 1.1}, "quantize": False}]
    meta = {"sample_id": "c" * 32, "deg": "haze", "recipe": recipe, "source": "demo"}
    write_shard([ShardSample("c" * 32, png, png, meta)], tmp_path / "s.tar")
    sample = next(read_shard(tmp_path / "s.tar"))
    request = AnnotationRequest.from_shard_sample(
        sample.key, sample.hq_png, sample.lq_png, sample.meta
    )
    assert request.sample_id == "c" * 32
    assert request.degradation_label == "haze"
    assert request.recipe == tuple(recipe)
    assert "png" not in repr(request).lower()  # image bytes are kept out of reprs
    with pytest.raises(ValueError, match="'deg'"):
        AnnotationRequest.from_shard_sample("k", png, png, {})


def test_request_validation() -> None:
    png = b"\x89PNG"
    with pytest.raises(ValueError, match="unknown degradation"):
        AnnotationRequest("s", png, png, "haze+smudge")
    with pytest.raises(ValueError, match="lq_png"):
        AnnotationRequest("s", b"", png, "haze")
    with pytest.raises(ValueError, match="sample_id"):
        AnnotationRequest("", png, png, "haze")
    with pytest.raises(TypeError, match="recipe"):
        AnnotationRequest("s", png, png, "haze", "haze")  # type: ignore[arg-type]
