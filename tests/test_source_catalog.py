"""The packaged source catalog is complete and consistent, and bad entries fail clearly."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotir_pipeline.degradations import get_recipe_set
from cotir_pipeline.sources.catalog import (
    CATALOG_PATH,
    DEMO_PHOTOS,
    CatalogError,
    catalog_table,
    check_catalog,
    load_catalog,
    task_coverage,
)
from cotir_pipeline.sources.spec import SourceCatalog
from cotir_pipeline.tasks import TaskCode, parse_degradation_label

SYNTHETIC_SOURCES = {"demo", "agenticir", "cdd11_synthetic", "seven_d", "unseen_composites"}

# Datasets the brief names explicitly; each must be in the catalog under this id.
REQUIRED_SOURCES = {
    "lol", "lol_v2", "lsrw", "sice", "fivek", "reside_its", "reside_ots", "reside_sots",
    "reside_rtts", "haze4k", "nh_haze_20", "nh_haze_21", "nh_haze_23", "dense_haze", "o_haze",
    "i_haze", "rain100l", "rain100h", "rain1400", "spa_data", "raindrop_qian", "rainds",
    "snow100k", "csd", "srrs", "did_mdn", "gopro", "hide", "realblur", "reds", "div2k",
    "flickr2k", "realsr", "drealsr", "sidd", "polyu", "dnd", "cbsd68", "kodak24", "mcmaster",
    "urban100", "srd", "istd", "uieb", "euvp", "lsui", "ruie", "flare7k", "flare7kpp", "clwd",
    "logo_watermark", "dped", "zurich_raw2rgb", "live1", "classic5", "cdd11", "allweather",
    "outdoor_rain", "sir2", "zhang_reflection", "nature", "bdn_real", "mio100",
}  # fmt: skip


@pytest.fixture(scope="module")
def catalog() -> SourceCatalog:
    return load_catalog()


def _all_rules(catalog: SourceCatalog) -> list[tuple[str, int, Any]]:
    return [
        (source.name, index, rule)
        for source in catalog.sources
        for index, rule in enumerate(source.splits)
    ]


# -- the packaged catalog -----------------------------------------------------------------


def test_packaged_catalog_loads_from_the_package_folder(catalog: SourceCatalog) -> None:
    assert CATALOG_PATH.name == "catalog.yaml"
    assert CATALOG_PATH.parent.name == "sources"
    assert CATALOG_PATH.is_file()
    assert catalog.version == 1
    assert load_catalog(CATALOG_PATH) == catalog


def test_at_least_sixty_fetched_sources(catalog: SourceCatalog) -> None:
    fetched = [source.name for source in catalog.sources if source.fetch is not None]
    assert len(fetched) >= 60, f"only {len(fetched)} fetched sources"
    synthetic = {source.name for source in catalog.sources if source.synthesis is not None}
    assert synthetic == SYNTHETIC_SOURCES
    assert len(fetched) + len(synthetic) == len(catalog.sources)


def test_required_datasets_are_present(catalog: SourceCatalog) -> None:
    names = {source.name for source in catalog.sources}
    assert REQUIRED_SOURCES - names == set()


def test_every_task_code_is_covered_by_a_fetched_source(catalog: SourceCatalog) -> None:
    fetched = {source.name for source in catalog.sources if source.fetch is not None}
    coverage = task_coverage(catalog)
    uncovered = [task.value for task in TaskCode if not set(coverage[task]) & fetched]
    assert uncovered == []


def test_source_names_are_unique(catalog: SourceCatalog) -> None:
    names = [source.name for source in catalog.sources]
    assert len(names) == len(set(names))


def test_fetched_sources_have_split_rules_and_synthetic_ones_none(
    catalog: SourceCatalog,
) -> None:
    for source in catalog.sources:
        if source.fetch is not None:
            assert source.splits, source.name
            assert source.synthesis is None, source.name
        else:
            assert source.synthesis is not None, source.name
            assert source.splits == [], source.name


def test_every_key_regex_compiles_with_a_key_group(catalog: SourceCatalog) -> None:
    for name, index, rule in _all_rules(catalog):
        for field in ("lq_key", "hq_key"):
            pattern = re.compile(getattr(rule, field))
            assert "key" in pattern.groupindex, f"{name} splits[{index}].{field}"


def test_paired_rules_build_keys_from_the_same_groups(catalog: SourceCatalog) -> None:
    def groups(text: str) -> list[str]:
        compiled = re.compile(text)
        ordered = sorted(compiled.groupindex, key=compiled.groupindex.__getitem__)
        return [group for group in ordered if group == "key" or group.startswith("key_")]

    for name, index, rule in _all_rules(catalog):
        if rule.lq_glob and rule.hq_glob:
            assert groups(rule.lq_key) == groups(rule.hq_key), f"{name} splits[{index}]"


def test_clean_from_names_a_fetched_catalog_source_or_the_demo_photos(
    catalog: SourceCatalog,
) -> None:
    by_name = {source.name: source for source in catalog.sources}
    for source in catalog.sources:
        if source.synthesis is None:
            continue
        clean = source.synthesis.clean_from
        if clean == DEMO_PHOTOS:
            continue
        assert clean in by_name, f"{source.name}: {clean}"
        assert by_name[clean].fetch is not None
        assert not by_name[clean].real_world
    assert by_name["agenticir"].synthesis.clean_from == "mio100"
    assert by_name["demo"].synthesis.clean_from == DEMO_PHOTOS


def test_real_world_sources_are_exactly_those_without_ground_truth(
    catalog: SourceCatalog,
) -> None:
    for source in catalog.sources:
        if not source.splits:
            continue
        no_reference = all(rule.hq_glob == "" for rule in source.splits)
        assert source.real_world == no_reference, source.name
    real = {source.name for source in catalog.sources if source.real_world}
    assert {"reside_rtts", "ruie", "yang_real_rain", "nh_haze_21_23_real", "dnd"} <= real


def test_split_degradations_are_known_and_listed(catalog: SourceCatalog) -> None:
    for name, index, rule in _all_rules(catalog):
        if rule.degradation is not None:
            parse_degradation_label(rule.degradation)
            source = catalog.get(name)
            assert rule.degradation in source.degradations, f"{name} splits[{index}]"


def test_cdd11_has_one_rule_per_class_and_split(catalog: SourceCatalog) -> None:
    cdd11 = catalog.get("cdd11")
    for split in ("train", "test"):
        labels = [rule.degradation for rule in cdd11.splits if rule.name == split]
        assert sorted(labels) == sorted(cdd11.degradations)


def test_packaged_catalog_passes_the_cross_checks(catalog: SourceCatalog) -> None:
    assert check_catalog(catalog) == []


def test_no_checksum_is_made_up(catalog: SourceCatalog) -> None:
    # The catalog ships no digests today; any added later must be a real sha256.
    for source in catalog.sources:
        if source.fetch is not None and source.fetch.method == "http":
            for file in source.fetch.files:
                assert file.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", file.sha256)


def test_synthetic_degradations_match_their_recipe_sets(catalog: SourceCatalog) -> None:
    for source in catalog.sources:
        if source.synthesis is None:
            continue
        labels = {recipe.label for recipe in get_recipe_set(source.synthesis.recipe_set)}
        assert set(source.degradations) == labels, source.name


def test_catalog_table_has_one_flat_row_per_source(catalog: SourceCatalog) -> None:
    rows = catalog_table(catalog)
    assert [row["name"] for row in rows] == [source.name for source in catalog.sources]
    columns = {
        "name",
        "title",
        "tasks",
        "degradations",
        "fetch",
        "license",
        "expected_pairs",
        "real_world",
    }
    assert all(set(row) == columns for row in rows)
    by_name = {row["name"]: row for row in rows}
    assert by_name["cdd11"]["tasks"] == "MDR, LLE, DH, DR, DS"
    assert by_name["demo"]["fetch"] == "synthetic"
    assert by_name["div2k"]["fetch"] == "http"
    assert by_name["reside_rtts"]["real_world"] is True
    assert by_name["div2k"]["expected_pairs"] == 900
    assert all(
        isinstance(value, str | int | bool | type(None)) for r in rows for value in r.values()
    )


def test_task_coverage_lists_every_code_in_catalog_order(catalog: SourceCatalog) -> None:
    coverage = task_coverage(catalog)
    assert list(coverage) == list(TaskCode)
    order = [source.name for source in catalog.sources]
    for names in coverage.values():
        assert names == sorted(names, key=order.index)
    assert "nh_haze_20" in coverage[TaskCode.NHDH]
    assert "div2k" not in coverage[TaskCode.DH]


# -- bad catalogs -------------------------------------------------------------------------

GOOD_SOURCE: dict[str, Any] = {
    "name": "good",
    "title": "A good source",
    "tasks": ["DN"],
    "degradations": ["noise"],
    "license": "unknown (see homepage)",
    "homepage": "https://example.org/good",
    "citation": "Someone Else. A Paper About Noise. Venue 2020.",
    "fetch": {"method": "http", "files": [{"url": "https://example.org/good.zip"}]},
    "splits": [{"name": "train", "lq_glob": "noisy/*", "hq_glob": "clean/*"}],
}


def _source(**changes: Any) -> dict[str, Any]:
    source = copy.deepcopy(GOOD_SOURCE)
    for key, value in changes.items():
        if value is None:
            source.pop(key, None)
        else:
            source[key] = value
    return source


def _write(tmp_path: Path, *sources: dict[str, Any], name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"version": 1, "sources": list(sources)}), encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert caught.value.problems
    for line in caught.value.problems:
        assert line.startswith(f"{path}: "), line
    return caught.value.problems


def test_a_good_minimal_catalog_loads(tmp_path: Path) -> None:
    catalog = load_catalog(_write(tmp_path, _source()))
    assert [source.name for source in catalog.sources] == ["good"]


def test_catalog_error_is_a_value_error() -> None:
    assert issubclass(CatalogError, ValueError)


def test_unknown_task_names_the_entry_the_field_and_the_value(tmp_path: Path) -> None:
    path = _write(tmp_path, _source(), _source(name="bad", tasks=["DN", "XYZ"]))
    (line,) = _problems(path)
    assert "source 'bad' (sources[1])" in line
    assert ": tasks[1]: " in line
    assert "'XYZ'" in line


def test_bad_sha256_names_the_nested_field_without_the_union_tag(tmp_path: Path) -> None:
    fetch = {"method": "http", "files": [{"url": "https://example.org/a.zip", "sha256": "abc"}]}
    (line,) = _problems(_write(tmp_path, _source(name="bad", fetch=fetch)))
    assert "source 'bad' (sources[0]): fetch.files[0].sha256: " in line
    assert "64 lowercase hex" in line


def test_missing_key_group_names_the_regex_field(tmp_path: Path) -> None:
    rule = {"name": "train", "lq_glob": "a/*", "hq_glob": "b/*", "lq_key": r"^(\d+)$"}
    (line,) = _problems(_write(tmp_path, _source(name="bad", splits=[rule])))
    assert "source 'bad' (sources[0]): splits[0].lq_key: " in line
    assert "(?P<key>" in line


def test_fetch_and_synthesis_together_are_rejected(tmp_path: Path) -> None:
    synthesis = {"clean_from": "demo_photos", "recipe_set": "demo"}
    (line,) = _problems(_write(tmp_path, _source(name="bad", synthesis=synthesis)))
    assert "source 'bad' (sources[0])" in line
    assert "'fetch'" in line
    assert "'synthesis'" in line


def test_missing_field_and_unnamed_entry_use_the_index(tmp_path: Path) -> None:
    (line,) = _problems(_write(tmp_path, _source(), _source(name=None)))
    assert ": sources[1]: name: " in line
    assert "required" in line.lower()


def test_each_problem_is_one_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _source(name="first", tasks=["NOPE"]),
        _source(name="second", degradations=["fog"]),
    )
    problems = _problems(path)
    assert len(problems) == 2
    assert "source 'first' (sources[0]): tasks[0]" in problems[0]
    assert "source 'second' (sources[1]): degradations" in problems[1]
    assert "'fog'" in problems[1]


def test_unknown_split_degradation_is_caught_after_the_schema(tmp_path: Path) -> None:
    rule = {"name": "train", "lq_glob": "a/*", "hq_glob": "b/*", "degradation": "noise+fog"}
    (line,) = _problems(_write(tmp_path, _source(name="bad", splits=[rule])))
    assert "source 'bad' (sources[0]): splits[0].degradation: " in line
    assert "'fog'" in line


def test_split_degradation_must_be_listed_by_the_source(tmp_path: Path) -> None:
    rule = {"name": "train", "lq_glob": "a/*", "hq_glob": "b/*", "degradation": "jpeg"}
    (line,) = _problems(_write(tmp_path, _source(name="bad", splits=[rule])))
    assert "splits[0].degradation: 'jpeg' is not listed" in line


def test_tasks_must_match_the_degradations(tmp_path: Path) -> None:
    path = _write(tmp_path, _source(name="bad", tasks=["DN", "SR"]))
    (line,) = _problems(path)
    # codes are listed in TaskCode order
    assert "source 'bad' (sources[0]): tasks: [SR, DN] do not match" in line
    assert line.endswith("[DN]")


def test_clean_from_must_name_a_source(tmp_path: Path) -> None:
    synthetic = _source(
        name="synth",
        fetch=None,
        splits=None,
        synthesis={"clean_from": "nowhere", "recipe_set": "demo"},
    )
    (line,) = _problems(_write(tmp_path, _source(), synthetic))
    assert "source 'synth' (sources[1]): synthesis.clean_from: 'nowhere'" in line


def test_clean_from_may_name_a_fetched_source(tmp_path: Path) -> None:
    synthetic = _source(
        name="synth", fetch=None, splits=None, synthesis={"clean_from": "good", "recipe_set": "x"}
    )
    catalog = load_catalog(_write(tmp_path, _source(), synthetic))
    assert catalog.get("synth").synthesis is not None


def test_real_world_sources_must_not_have_ground_truth(tmp_path: Path) -> None:
    (line,) = _problems(_write(tmp_path, _source(name="bad", real_world=True)))
    assert "source 'bad' (sources[0]): splits[0].hq_glob: a real_world source" in line


def test_an_empty_hq_glob_requires_real_world(tmp_path: Path) -> None:
    rule = {"name": "test", "lq_glob": "a/*", "hq_glob": ""}
    (line,) = _problems(_write(tmp_path, _source(name="bad", splits=[rule])))
    assert "splits[0].hq_glob: empty (no ground truth) but the source is not real_world" in line


def test_paired_rules_need_matching_key_groups(tmp_path: Path) -> None:
    rule = {
        "name": "train",
        "lq_glob": "a/*",
        "hq_glob": "b/*",
        "lq_key": r"^(?P<key>\d+)_(?P<key_frame>\d+)$",
        "hq_key": r"^(?P<key>\d+)$",
    }
    (line,) = _problems(_write(tmp_path, _source(name="bad", splits=[rule])))
    assert "splits[0].hq_key: key groups ['key'] differ" in line


def test_expected_pairs_must_add_up(tmp_path: Path) -> None:
    rules = [
        {"name": "train", "lq_glob": "a/*", "hq_glob": "b/*", "expected_pairs": 10},
        {"name": "test", "lq_glob": "c/*", "hq_glob": "d/*", "expected_pairs": 5},
    ]
    path = _write(tmp_path, _source(name="bad", splits=rules, expected_pairs=16))
    (line,) = _problems(path)
    assert "expected_pairs: 16 but the splits' expected_pairs add up to 15" in line


def test_duplicate_names_are_a_catalog_problem(tmp_path: Path) -> None:
    (line,) = _problems(_write(tmp_path, _source(), _source()))
    assert ": catalog: duplicate source name 'good'" in line


def test_invalid_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nsources:\n  - name: [unclosed\n", encoding="utf-8")
    (line,) = _problems(path)
    assert "not valid YAML (line " in line


def test_a_catalog_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    (line,) = _problems(path)
    assert "expected a mapping" in line


def test_a_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    (line,) = _problems(path)
    assert "cannot read the catalog" in line
