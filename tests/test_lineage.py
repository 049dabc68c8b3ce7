"""Sample lineage: build from real pair-stage rows plus later stages, look up, filter, CLI."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from cotir_pipeline.cli import cli
from cotir_pipeline.lineage.build import LineageInputError, build_lineage, build_lineage_from_store
from cotir_pipeline.lineage.read import LineageIndexMissingError, lookup, open_lineage, query
from cotir_pipeline.lineage.schema import (
    INDEX_KEY,
    LINEAGE_PREFIX,
    LINEAGE_SCHEMA,
    STAGE_LOCATIONS,
    STAGES,
)
from cotir_pipeline.lineage.where import WhereError, parse_where
from cotir_pipeline.pair_stage import (
    PlannedPair,
    plan_demo_pairs,
    plan_fetched_pairs,
    plan_table,
    recipe_refs,
    save_plan,
    write_pair_shards,
)
from cotir_pipeline.shards import read_manifest
from cotir_pipeline.sources.spec import SplitRule
from cotir_pipeline.store import LocalObjectStore, ObjectStore
from cotir_test_support import REPO_ROOT

RUN_A, RUN_B = "run-2026-11-02", "run-2026-11-20"


@dataclass
class Stages:
    """Every stage's rows for a small pipeline, and the ids that play each part."""

    plans: dict[str, list[PlannedPair]]
    manifests: dict[str, pa.Table]
    annotations: pa.Table
    filters: pa.Table
    training_shards: pa.Table
    runs: pa.Table
    benches: pa.Table
    evaluations: pa.Table
    trained: str  # reached training_runs
    filtered_out: str  # dropped by the filter
    annotation_failed: str
    benched: str  # in a bench set with evaluation rows
    fetched: str  # a fetched pair (LQ/HQ files)

    def inputs(self) -> dict[str, Any]:
        """Keyword arguments of build_lineage."""
        return {
            "raw_pairs": [plan_table(plan) for plan in self.plans.values()],
            "pair_shards": list(self.manifests.values()),
            "cot_annotations": self.annotations,
            "filtered_annotations": self.filters,
            "training_shards": self.training_shards,
            "training_runs": self.runs,
            "bench_sets": self.benches,
            "evaluation": self.evaluations,
        }


def _write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _pair_stage(store: ObjectStore, root: Path) -> tuple[dict[str, list[PlannedPair]], dict]:
    """Real pair-stage runs: a few demo pairs (train, bench, dropped) and a fetched source."""
    demo = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    chosen = (
        [pair for pair in demo if pair.split == "train" and pair.status == "ok"][:6]
        + [pair for pair in demo if pair.split == "bench" and pair.status == "ok"][:2]
        + [pair for pair in demo if pair.status != "ok"][:1]
    )
    for index in range(2):
        _write_image(root / "hq" / f"{index}.png", (48, 40), seed=index)
        _write_image(root / "lq" / f"{index}.png", (48, 40), seed=10 + index)
    _write_image(root / "lq" / "9.png", (48, 40), seed=9)  # no HQ: planned as dropped
    rules = [SplitRule(name="train", lq_glob="lq/*.png", hq_glob="hq/*.png")]
    fetched = plan_fetched_pairs("toy", root, rules, "rain")
    plans = {"demo": chosen, "toy": fetched}
    manifests = {}
    for source, plan in plans.items():
        write_pair_shards(store, plan, size=32, shard_size=4, fetched_root=root)
        save_plan(store, source, plan)
        manifests[source] = read_manifest(store.get_bytes(f"pair_shards/{source}/manifest.parquet"))
    return plans, manifests


def _later_stages(plans: dict[str, list[PlannedPair]], manifests: dict[str, pa.Table]) -> Stages:
    rows = [row for table in manifests.values() for row in table.to_pylist()]
    # The demo pairs go on through annotation and training (the fetched toy source stops
    # at its shards), whatever order their content-hash ids sort in.
    train = sorted(
        row["sample_id"]
        for row in rows
        if row["status"] == "ok" and row["split"] == "train" and row["source"] == "demo"
    )
    bench = sorted(
        row["sample_id"] for row in rows if row["status"] == "ok" and row["split"] == "bench"
    )
    fetched = next(row["sample_id"] for row in rows if row["source"] == "toy" and row["shard_uri"])
    failed, filtered_out, trained = train[0], train[1], train[2:]
    annotated = [failed, filtered_out, *trained]
    annotations = pa.table(
        {
            "sample_id": annotated,
            "status": ["failed"] + ["ok"] * (len(annotated) - 1),
            "reason": ["answer is not valid JSON"] + [None] * (len(annotated) - 1),
            "model": ["template"] * len(annotated),
            "template_version": ["cot-v1+abcd1234"] * len(annotated),
            "response_sha256": [f"{index:064x}" for index in range(len(annotated))],
            "answer_json": ["{}"] * len(annotated),  # extra columns are ignored
        }
    )
    kept = [filtered_out, *trained]
    filters = pa.table(
        {
            "sample_id": kept,
            "decision": ["drop"] + ["keep"] * len(trained),
            "score": pa.array([0.12] + [0.31] * len(trained), pa.float64()),
            "reason": ["clip consistency 0.12 < 0.2"] + [None] * len(trained),
        }
    )
    training_shards = pa.table(
        {
            "sample_id": trained,
            "shard_uri": ["s3://cotir/training_shards/rain/train-000000.tar"] * len(trained),
            "shard_key": trained,
        }
    )
    # Several rows per sample, in no order, with a repeat: lists are sorted and distinct.
    runs = pa.table(
        {
            "sample_id": [trained[0], trained[0], trained[0], *trained[1:]],
            "run_id": [RUN_B, RUN_A, RUN_B] + [RUN_A] * (len(trained) - 1),
        }
    )
    benches = pa.table({"sample_id": bench, "bench_set": ["cotir_bench_test"] * len(bench)})
    evaluations = pa.table(
        {
            "sample_id": [bench[0], bench[0]],
            "evaluation_row": ["cotir_bench_test/restormer", "cotir_bench_test/cotir@step-10"],
        }
    )
    return Stages(
        plans=plans,
        manifests=manifests,
        annotations=annotations,
        filters=filters,
        training_shards=training_shards,
        runs=runs,
        benches=benches,
        evaluations=evaluations,
        trained=trained[0],
        filtered_out=filtered_out,
        annotation_failed=failed,
        benched=bench[0],
        fetched=fetched,
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalObjectStore, Stages]:
    """A store with real pair-stage output and an index built from every stage's rows."""
    folder = tmp_path_factory.mktemp("lineage")
    store = LocalObjectStore(folder / "store")
    plans, manifests = _pair_stage(store, folder / "fetched")
    stages = _later_stages(plans, manifests)
    build_lineage(store, **stages.inputs())
    return store, stages


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# -- build and look-up ----------------------------------------------------------------------


def test_lookup_returns_the_chain_from_source_to_training(
    pipeline: tuple[LocalObjectStore, Stages],
) -> None:
    store, stages = pipeline
    record = lookup(store, stages.trained)
    assert record is not None
    manifest = {
        row["sample_id"]: row for table in stages.manifests.values() for row in table.to_pylist()
    }[stages.trained]
    assert (record.source, record.item_key, record.split) == ("demo", manifest["item_key"], "train")
    assert (record.stage, record.status, record.reason) == ("training_runs", "ok", None)
    raw = record.step("raw_pairs")
    planned = next(
        pair
        for pair in stages.plans["demo"]
        if pair.item_key == manifest["item_key"] and pair.seed == manifest["seed"]
    )
    assert raw.reached
    assert raw.details["recipe"] == planned.recipe
    assert raw.details["seed"] == planned.seed
    pair = record.step("pair_shards")
    assert pair.details["shard_uri"] == manifest["shard_uri"]
    assert pair.details["shard_key"] == stages.trained
    shard_key = manifest["shard_uri"].removeprefix(store.url + "/")
    assert store.exists(shard_key)
    annotation = record.step("cot_annotations")
    assert annotation.status == "ok"
    assert annotation.details["annotation_model"] == "template"
    assert record.step("filtered_annotations").details["filter_score"] == pytest.approx(0.31)
    assert record.step("training_shards").reached
    assert record.step("training_runs").details["training_runs"] == [RUN_A, RUN_B]
    assert not record.step("bench_sets").reached
    assert not record.step("evaluation").reached
    assert [step.stage for step in record.steps] == [stage.name for stage in STAGES]


def test_lookup_of_bench_and_fetched_samples(pipeline: tuple[LocalObjectStore, Stages]) -> None:
    store, stages = pipeline
    index = open_lineage(store)
    benched = index.lookup(stages.benched)
    assert benched is not None
    assert benched.stage == "evaluation"
    assert benched.step("bench_sets").details["bench_sets"] == ["cotir_bench_test"]
    assert benched.step("evaluation").details["evaluation_rows"] == [
        "cotir_bench_test/cotir@step-10",
        "cotir_bench_test/restormer",
    ]
    fetched = index.lookup(stages.fetched)
    assert fetched is not None
    raw = fetched.step("raw_pairs").details
    assert raw["lq_path"].startswith("lq/")
    assert raw["hq_path"].startswith("hq/")
    assert raw["recipe"] is None
    assert fetched.step("pair_shards").status == "ok"


def test_drops_and_failures_carry_the_reason_of_the_furthest_stage(
    pipeline: tuple[LocalObjectStore, Stages],
) -> None:
    store, stages = pipeline
    index = open_lineage(store)
    dropped = index.lookup(stages.filtered_out)
    assert dropped is not None
    assert (dropped.stage, dropped.status) == ("filtered_annotations", "dropped")
    assert dropped.reason == "clip consistency 0.12 < 0.2"
    failed = index.lookup(stages.annotation_failed)
    assert failed is not None
    assert (failed.stage, failed.status, failed.reason) == (
        "cot_annotations",
        "failed",
        "answer is not valid JSON",
    )
    rows = [row for table in stages.manifests.values() for row in table.to_pylist()]
    for row in rows:
        if row["status"] != "ok":
            record = index.lookup(row["sample_id"])
            assert record is not None
            assert (record.stage, record.status) == ("pair_shards", "dropped")
            assert record.reason == row["reason"]


def test_every_pair_stage_row_is_indexed(pipeline: tuple[LocalObjectStore, Stages]) -> None:
    store, stages = pipeline
    index = open_lineage(store)
    rows = [row for table in stages.manifests.values() for row in table.to_pylist()]
    assert index.samples == len(rows)
    for row in rows:
        found = index.lookup_row(row["sample_id"])
        assert found is not None
        assert found["pair_status"] == row["status"]
        assert found["raw_status"] is not None, "every pair row found its planned pair"


def test_missing_and_malformed_ids(pipeline: tuple[LocalObjectStore, Stages]) -> None:
    store, _ = pipeline
    assert lookup(store, "0" * 32) is None
    assert lookup(store, "f" * 32) is None
    for bad in ("", "XYZ", "1e72b94e/../x", "1E72B94EFBD4BD93", "'; drop"):
        with pytest.raises(ValueError, match="not a sample id"):
            lookup(store, bad)


def test_missing_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LineageIndexMissingError, match="cotir lineage --build"):
        open_lineage(tmp_path)
    with pytest.raises(LineageIndexMissingError, match="cotir lineage --build"):
        open_lineage(LocalObjectStore(tmp_path / "empty"))


def test_index_opens_from_a_path_or_url(pipeline: tuple[LocalObjectStore, Stages]) -> None:
    store, stages = pipeline
    for where in (store.root, store.root / LINEAGE_PREFIX, str(store.root), store.url):
        record = lookup(where, stages.trained)
        assert record is not None
        assert record.sample_id == stages.trained


def test_parts_are_sorted_versioned_and_small_row_grouped(
    pipeline: tuple[LocalObjectStore, Stages],
) -> None:
    store, _ = pipeline
    meta = json.loads(store.get_text(INDEX_KEY))
    assert meta["schema_version"] == 1
    assert meta["parts"]
    for part in meta["parts"]:
        parquet = pq.ParquetFile(store.root / part["key"])
        metadata = parquet.schema_arrow.metadata or {}
        assert metadata[b"cotir.lineage.schema_version"] == b"1"
        ids = parquet.read(columns=["sample_id"]).column(0).to_pylist()
        assert ids == sorted(ids)
        assert parquet.schema_arrow.names == LINEAGE_SCHEMA.names


# -- filters ---------------------------------------------------------------------------------


def _ids(result: Any) -> set[str]:
    return {row["sample_id"] for row in result.rows}


def test_query_filters_with_and_or_in_not_equal(
    pipeline: tuple[LocalObjectStore, Stages],
) -> None:
    store, stages = pipeline
    rows = [row for table in stages.manifests.values() for row in table.to_pylist()]
    dropped_demo = {r["sample_id"] for r in rows if r["source"] == "demo" and r["status"] != "ok"}
    dropped_demo.add(stages.filtered_out)  # a filter 'drop' is overall 'dropped'
    result = query(store, "source = 'demo' and status = 'dropped'", limit=100)
    assert _ids(result) == dropped_demo
    assert result.matched == len(dropped_demo)
    assert set(result.rows[0]) == {
        "sample_id",
        "source",
        "item_key",
        "split",
        "degradation",
        "stage",
        "status",
        "reason",
    }
    both = query(store, "status = 'failed' or stage = 'filtered_annotations'", limit=100)
    assert _ids(both) == {stages.annotation_failed, stages.filtered_out}
    listed = query(store, "stage in ('evaluation', 'training_runs') and source != 'toy'", 100)
    assert stages.benched in _ids(listed)
    assert stages.trained in _ids(listed)
    assert all(row["stage"] in ("evaluation", "training_runs") for row in listed.rows)
    nested = query(store, "not (status = 'ok') and (source = 'toy' or source = 'demo')", 100)
    assert {row["status"] for row in nested.rows} == {"dropped", "failed"}
    scored = query(store, "filter_score < 0.2 and filter_decision = 'drop'", 100)
    assert _ids(scored) == {stages.filtered_out}
    runs = query(store, f"training_runs contains '{RUN_B}'", 100)
    assert _ids(runs) == {stages.trained}
    nulls = query(store, "lq_path is not null", 100)
    assert {row["source"] for row in nulls.rows} == {"toy"}
    not_in = query(store, "stage not in ('pair_shards')", 100)
    assert all(row["stage"] != "pair_shards" for row in not_in.rows)


def test_query_limit_order_and_columns(pipeline: tuple[LocalObjectStore, Stages]) -> None:
    store, _ = pipeline
    everything = query(store, "sample_id is not null", limit=1000)
    assert everything.matched == len(everything.rows)
    ids = [row["sample_id"] for row in everything.rows]
    assert ids == sorted(ids)
    first = query(store, "sample_id is not null", limit=3, columns=["sample_id", "shard_uri"])
    assert [row["sample_id"] for row in first.rows] == ids[:3]
    assert first.matched == len(ids)
    assert set(first.rows[0]) == {"sample_id", "shard_uri"}
    assert query(store, "source = 'no such source'", limit=5).matched == 0
    with pytest.raises(ValueError, match="unknown columns"):
        query(store, "source = 'demo'", columns=["sample_id", "secret"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source = 'x'; drop table lineage", "unexpected character ';'"),
        ("source = 'x' or 1 = 1", "expected a column name"),
        ("__import__('os').system('id')", "unexpected character '.'"),
        ("__import__ = 'os'", "unknown column '__import__'"),
        ("password = 'x'", "unknown column 'password'"),
        ("source = 'x' -- comment", "unexpected character '-'"),
        ('source = "x"', "unexpected character '\"'"),
        ("source = 'unterminated", "unterminated string"),
        ("source = 3", "holds text"),
        ("seed = 'abc'", "holds numbers"),
        ("seed = 1.5", "holds integers"),
        ("source", "expected an operator"),
        ("source = 'a' and", "expected a column name"),
        ("(source = 'a'", "expected ')'"),
        ("source in 'a'", "expected '(' after 'in'"),
        ("training_runs = 'x'", "'contains'"),
        ("", "empty"),
        ("source = 'a' source = 'b'", "expected 'and', 'or'"),
        ("(" * 40 + "source = 'a'" + ")" * 40, "nests deeper"),
        ("source = '" + "x" * 5000 + "'", "longer than"),
    ],
)
def test_where_rejects_bad_filters_with_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(WhereError, match=re.escape(message)):
        parse_where(text)


def test_where_parses_quotes_keywords_and_columns() -> None:
    parsed = parse_where("reason = 'it''s bad' AND seed >= 3")
    assert parsed.columns == ["seed", "reason"]
    table = pa.table({"seed": [1, 5, None], "reason": ["it's bad", "it's bad", "it's bad"]})
    assert parsed.mask(table).to_pylist() == [False, True, False]
    with pytest.raises(WhereError, match="unknown column 'Source'"):
        parse_where("Source = 'x'")


# -- rebuilds, inputs, partitions -------------------------------------------------------------


def _snapshot(store: LocalObjectStore) -> dict[str, bytes]:
    return {info.key: store.get_bytes(info.key) for info in store.list(f"{LINEAGE_PREFIX}/")}


def test_rebuild_is_idempotent_and_a_change_replaces_parts(
    tmp_path: Path, pipeline: tuple[LocalObjectStore, Stages]
) -> None:
    _, stages = pipeline
    store = LocalObjectStore(tmp_path / "store")
    first = build_lineage(store, **stages.inputs())
    before = _snapshot(store)
    again = build_lineage(store, **stages.inputs())
    assert (again.parts_written, again.parts_unchanged) == (0, first.parts)
    assert not again.index_written
    assert _snapshot(store) == before

    inputs = stages.inputs()
    inputs["training_runs"] = pa.concat_tables(
        [stages.runs, pa.table({"sample_id": [stages.fetched], "run_id": ["run-new"]})]
    )
    changed = build_lineage(store, **inputs)
    assert changed.parts_written == 1
    assert changed.parts_deleted == 1
    record = lookup(store, stages.fetched)
    assert record is not None
    assert record.step("training_runs").details["training_runs"] == ["run-new"]
    assert len(list(store.list(f"{LINEAGE_PREFIX}/parts/"))) == changed.parts


def test_build_from_store_finds_every_stage(
    tmp_path: Path, pipeline: tuple[LocalObjectStore, Stages]
) -> None:
    source_store, stages = pipeline
    store = LocalObjectStore(tmp_path / "store")
    for info in source_store.list(""):
        if info.key.startswith(("raw_pairs/", "pair_shards/")) and info.key.count("/") == 2:
            store.put_bytes(info.key, source_store.get_bytes(info.key))
    later = {
        "cot_annotations": stages.annotations,
        "filtered_annotations": stages.filters,
        "training_shards": stages.training_shards,
        "training_runs": stages.runs,
        "bench_sets": stages.benches,
        "evaluation": stages.evaluations,
    }
    for stage, table in later.items():
        prefix, name = STAGE_LOCATIONS[stage]
        store.put_bytes(f"{prefix}/part-a/{name}", _parquet_bytes(table))
    report = build_lineage_from_store(store, hex_digits=1)
    assert report.hex_digits == 1
    assert report.parts <= 16
    assert set(report.stage_rows) == {stage.name for stage in STAGES}
    expected = open_lineage(source_store)
    built = open_lineage(store)
    assert built.samples == expected.samples
    for sample_id in (stages.trained, stages.benched, stages.fetched, stages.filtered_out):
        assert built.lookup_row(sample_id) == expected.lookup_row(sample_id)


def test_stages_are_optional_and_orphans_are_counted(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    ids = [f"{index:02x}" + "0" * 30 for index in (1, 2, 3)]
    report = build_lineage(
        store,
        filtered_annotations=pa.table(
            {"sample_id": ids[:2], "decision": ["keep", "drop"], "reason": [None, "rule"]}
        ),
        bench_sets=[pa.table({"sample_id": [ids[2]], "bench_set": ["agenticir"]})],
    )
    assert report.samples == 3
    assert report.orphans == 3
    assert lookup(store, ids[1]).status == "dropped"  # type: ignore[union-attr]
    bench = lookup(store, ids[2])
    assert bench is not None
    assert (bench.stage, bench.source) == ("bench_sets", None)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"cot_annotations": pa.table({"sample_id": ["ab" * 16]})}, r"lack required .*'status'"),
        (
            {"filtered_annotations": pa.table({"sample_id": ["NOT-HEX"], "decision": ["keep"]})},
            "not a content hash",
        ),
        (
            {"filtered_annotations": pa.table({"sample_id": ["ab" * 16], "decision": ["maybe"]})},
            "neither 'keep' nor 'drop'",
        ),
        (
            {
                "cot_annotations": pa.table(
                    {"sample_id": ["ab" * 16, "ab" * 16], "status": ["ok", "failed"]}
                )
            },
            "more than one row",
        ),
        (
            {
                "filtered_annotations": pa.table(
                    {"sample_id": ["ab" * 16], "decision": ["keep"], "score": ["high"]}
                )
            },
            "column 'score' has type string, which does not convert to float",
        ),
    ],
)
def test_bad_stage_rows_are_rejected_with_the_stage_named(
    tmp_path: Path, inputs: dict[str, Any], message: str
) -> None:
    with pytest.raises(LineageInputError, match=message):
        build_lineage(LocalObjectStore(tmp_path), **inputs)


def test_bad_arguments(tmp_path: Path, pipeline: tuple[LocalObjectStore, Stages]) -> None:
    _, stages = pipeline
    store = LocalObjectStore(tmp_path)
    with pytest.raises(ValueError, match="at least one stage"):
        build_lineage(store)
    with pytest.raises(ValueError, match="give both"):
        build_lineage(store, raw_pairs=plan_table(stages.plans["toy"]))
    with pytest.raises(ValueError, match="hex_digits"):
        build_lineage(store, bench_sets=stages.benches, hex_digits=3)


# -- CLI ---------------------------------------------------------------------------------------


def _invoke(store: LocalObjectStore, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"COTIR_STORE": str(store.root)})


def test_cli_prints_the_chain_and_json(pipeline: tuple[LocalObjectStore, Stages]) -> None:
    store, stages = pipeline
    result = _invoke(store, "lineage", stages.trained)
    assert result.exit_code == 0, result.output
    for text in (stages.trained, "training_runs", RUN_A, "recipe demo:", "furthest stage"):
        assert text in result.output
    as_json = _invoke(store, "lineage", stages.trained, "--json")
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)
    record = lookup(store, stages.trained)
    assert record is not None
    details = payload.pop("details")
    assert payload == json.loads(json.dumps(record.to_dict()))
    assert [step["stage"] for step in payload["chain"]] == [stage.name for stage in STAGES]
    # These toy runs were handed to the build directly: no per-run rows in the store.
    assert details == [
        "training:",
        f"  run {RUN_A}: trained on it (no step record)",
        f"  run {RUN_B}: trained on it (no step record)",
    ]


def test_cli_lists_samples_with_reasons(pipeline: tuple[LocalObjectStore, Stages]) -> None:
    store, _ = pipeline
    result = _invoke(store, "lineage", "--where", "source = 'demo' and status = 'dropped'")
    assert result.exit_code == 0, result.output
    assert "matching samples" in result.output
    assert "near-flat patch" in result.output or "dropped" in result.output
    listed = _invoke(store, "lineage", "--where", "status != 'ok'", "--json", "--limit", "1")
    payload = json.loads(listed.stdout)
    assert len(payload["rows"]) == 1
    assert payload["matched"] >= 3


def test_cli_errors_have_exit_codes(
    tmp_path: Path, pipeline: tuple[LocalObjectStore, Stages]
) -> None:
    store, _ = pipeline
    missing = _invoke(store, "lineage", "0" * 32)
    assert missing.exit_code == 1
    assert "not in the lineage index" in missing.output
    bad = _invoke(store, "lineage", "--where", "source = 'x'; rm -rf /")
    assert bad.exit_code == 2
    assert "bad --where" in bad.output
    malformed = _invoke(store, "lineage", "XYZ")
    assert malformed.exit_code == 2
    no_index = _invoke(LocalObjectStore(tmp_path), "lineage", "0" * 32)
    assert no_index.exit_code == 1
    assert "cotir lineage --build" in no_index.output
    usage = _invoke(store, "lineage")
    assert usage.exit_code == 2
    both = _invoke(store, "lineage", "0" * 32, "--where", "status = 'ok'")
    assert both.exit_code == 2


def test_cli_builds_the_index_from_the_store(
    tmp_path: Path, pipeline: tuple[LocalObjectStore, Stages]
) -> None:
    source_store, stages = pipeline
    store = LocalObjectStore(tmp_path / "store")
    for info in source_store.list(""):
        if info.key.startswith(("raw_pairs/", "pair_shards/")) and info.key.count("/") == 2:
            store.put_bytes(info.key, source_store.get_bytes(info.key))
    result = _invoke(store, "lineage", "--build", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == sum(len(table) for table in stages.manifests.values())
    shown = _invoke(store, "lineage", "--index", str(store.root), stages.fetched)
    assert shown.exit_code == 0, shown.output
    assert "lq lq/" in shown.output
    empty = _invoke(LocalObjectStore(tmp_path / "empty"), "lineage", "--build")
    assert empty.exit_code == 1
    assert "run the pair stage first" in empty.output


def test_help_shows_real_examples() -> None:
    result = CliRunner().invoke(cli, ["lineage", "--help"])
    assert result.exit_code == 0
    assert "cotir lineage --where \"source = 'gopro' and status = 'dropped'\"" in result.output


def test_lookup_command_stays_light(pipeline: tuple[LocalObjectStore, Stages]) -> None:
    """`cotir lineage ID` loads neither torch, dagster, pandas nor pyarrow.compute."""
    store, stages = pipeline
    script = (
        "import sys\n"
        "from cotir_pipeline.cli import cli\n"
        f"cli(['lineage', {stages.trained!r}], standalone_mode=False)\n"
        "heavy = ('torch', 'dagster', 'pandas', 'pyarrow.compute', 'models', 'assets')\n"
        "print('LOADED', sorted(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"COTIR_STORE": str(store.root), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


# -- S3 --------------------------------------------------------------------------------------


@pytest.mark.s3
def test_build_lookup_and_query_on_s3(
    make_s3_store: Callable[..., ObjectStore], pipeline: tuple[LocalObjectStore, Stages]
) -> None:
    _, stages = pipeline
    store = make_s3_store()
    first = build_lineage(store, **stages.inputs())
    again = build_lineage(store, **stages.inputs())
    assert (again.parts_written, again.parts_unchanged) == (0, first.parts)
    index = open_lineage(store)
    assert index.location.startswith("s3://")
    record = index.lookup(stages.trained)
    assert record is not None
    assert record.step("training_runs").details["training_runs"] == [RUN_A, RUN_B]
    assert index.lookup("0" * 32) is None
    result = index.query("status = 'failed' or stage = 'filtered_annotations'", limit=10)
    assert _ids(result) == {stages.annotation_failed, stages.filtered_out}
