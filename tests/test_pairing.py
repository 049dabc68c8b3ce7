"""LQ/HQ pairing by split rules, on small folders made here (files need not be real images)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from cotir_pipeline.sources.catalog import load_catalog
from cotir_pipeline.sources.pairing import (
    IMAGE_SUFFIXES,
    FilePair,
    PairingResult,
    clean_images,
    collect_single_side,
    file_key,
    list_images,
    pair_split,
)
from cotir_pipeline.sources.spec import SplitRule

MANY_TO_ONE = r"^(?P<key>\d+)_\d+$"
NUMBER = r"^(?P<key>\d+)$"


def _touch(root: Path, *paths: str) -> None:
    for relative in paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(relative.encode())


def _rule(**fields: object) -> SplitRule:
    values: dict[str, object] = {"name": "train", "lq_glob": "lq/*", "hq_glob": "hq/*"}
    values.update(fields)
    return SplitRule.model_validate(values)


def _names(paths: list[Path], root: Path) -> list[str]:
    return [path.relative_to(root).as_posix() for path in paths]


def _pairs(result: PairingResult, root: Path) -> list[tuple[str, str, str]]:
    return [
        (pair.key, pair.lq.relative_to(root).as_posix(), pair.hq.relative_to(root).as_posix())
        for pair in result.pairs
    ]


def test_same_stem_pairs(tmp_path: Path) -> None:
    _touch(tmp_path, "lq/a.png", "lq/b.png", "hq/a.png", "hq/b.png")
    result = pair_split(tmp_path, _rule())
    assert _pairs(result, tmp_path) == [
        ("a", "lq/a.png", "hq/a.png"),
        ("b", "lq/b.png", "hq/b.png"),
    ]
    assert result.unmatched_lq == result.unmatched_hq == result.duplicate_hq_keys == []


def test_pairs_may_differ_in_suffix_and_carry_split_and_degradation(tmp_path: Path) -> None:
    _touch(tmp_path, "lq/a.jpg", "hq/a.png")
    result = pair_split(tmp_path, _rule(name="test", degradation="rain+haze"))
    assert result.pairs == [
        FilePair("a", tmp_path / "lq/a.jpg", tmp_path / "hq/a.png", "test", "rain+haze")
    ]


def test_many_lq_files_share_one_hq_file(tmp_path: Path) -> None:
    _touch(
        tmp_path, "lq/1_1.png", "lq/1_2.png", "lq/1_14.png", "lq/2_1.png", "hq/1.png", "hq/2.png"
    )
    result = pair_split(tmp_path, _rule(lq_key=MANY_TO_ONE, hq_key=NUMBER))
    assert _pairs(result, tmp_path) == [
        ("1", "lq/1_1.png", "hq/1.png"),
        ("1", "lq/1_14.png", "hq/1.png"),
        ("1", "lq/1_2.png", "hq/1.png"),
        ("2", "lq/2_1.png", "hq/2.png"),
    ]
    assert result.unmatched_lq == result.unmatched_hq == []


def test_unmatched_files_on_both_sides_are_recorded(tmp_path: Path) -> None:
    _touch(tmp_path, "lq/1_1.png", "lq/3_1.png", "hq/1.png", "hq/4.png")
    result = pair_split(tmp_path, _rule(lq_key=MANY_TO_ONE, hq_key=NUMBER))
    assert [pair.key for pair in result.pairs] == ["1"]
    assert _names(result.unmatched_lq, tmp_path) == ["lq/3_1.png"]
    assert _names(result.unmatched_hq, tmp_path) == ["hq/4.png"]


def test_stems_that_do_not_fit_the_regex_are_unmatched_not_dropped(tmp_path: Path) -> None:
    _touch(tmp_path, "lq/1_1.png", "lq/readme_x.png", "lq/1.png", "hq/1.png", "hq/cover.png")
    result = pair_split(tmp_path, _rule(lq_key=MANY_TO_ONE, hq_key=NUMBER))
    assert [pair.lq.name for pair in result.pairs] == ["1_1.png"]
    assert _names(result.unmatched_lq, tmp_path) == ["lq/1.png", "lq/readme_x.png"]
    assert _names(result.unmatched_hq, tmp_path) == ["hq/cover.png"]


def test_the_regex_must_match_the_whole_stem(tmp_path: Path) -> None:
    _touch(tmp_path, "lq/12_3_extra.png", "hq/12.png")
    result = pair_split(tmp_path, _rule(lq_key=r"(?P<key>\d+)_\d+", hq_key=NUMBER))
    assert result.pairs == []
    assert _names(result.unmatched_lq, tmp_path) == ["lq/12_3_extra.png"]


def test_duplicate_hq_keys_are_ambiguous_and_never_paired(tmp_path: Path) -> None:
    _touch(tmp_path, "lq/1_1.png", "lq/2_1.png", "hq/1.png", "hq/1.jpg", "hq/2.png")
    result = pair_split(tmp_path, _rule(lq_key=MANY_TO_ONE, hq_key=NUMBER))
    assert result.duplicate_hq_keys == ["1"]
    assert [pair.key for pair in result.pairs] == ["2"]
    # the LQ file of the ambiguous key is listed; the HQ files stand behind the key
    assert _names(result.unmatched_lq, tmp_path) == ["lq/1_1.png"]
    assert result.unmatched_hq == []


def test_every_image_is_accounted_for_exactly_once(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        *(f"lq/{i}_{j}.png" for i in range(6) for j in range(3)),
        *(f"hq/{i}.png" for i in range(1, 8)),
        "hq/3.jpg",
        "lq/odd.png",
        "hq/odd.png",
    )
    result = pair_split(tmp_path, _rule(lq_key=MANY_TO_ONE, hq_key=NUMBER))
    lq_seen = [pair.lq for pair in result.pairs] + result.unmatched_lq
    assert sorted(lq_seen) == sorted(list_images(tmp_path, "lq/*"))
    hq_used = {pair.hq for pair in result.pairs}
    hq_ambiguous = {p for p in list_images(tmp_path, "hq/*") if p.stem in result.duplicate_hq_keys}
    assert hq_used | set(result.unmatched_hq) | hq_ambiguous == set(list_images(tmp_path, "hq/*"))
    assert not hq_used & set(result.unmatched_hq)
    assert result.duplicate_hq_keys == ["3"]
    assert _names(result.unmatched_hq, tmp_path) == ["hq/6.png", "hq/7.png", "hq/odd.png"]


def test_only_image_files_are_considered(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "lq/a.PNG",
        "lq/b.JpEg",
        "lq/c.tif",
        "lq/d.webp",
        "lq/notes.txt",
        "lq/e.png.json",
        "lq/._a.png",
        "lq/__MACOSX/f.png",
        "hq/a.png",
        "hq/b.jpg",
        "hq/c.TIFF",
        "hq/d.bmp",
        "hq/list.csv",
    )
    (tmp_path / "lq/folder.png").mkdir()
    result = pair_split(tmp_path, _rule(lq_glob="lq/**/*"))
    assert [pair.key for pair in result.pairs] == ["a", "b", "c", "d"]
    assert result.unmatched_lq == result.unmatched_hq == []
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == IMAGE_SUFFIXES


def test_order_is_deterministic_whatever_the_creation_order(tmp_path: Path) -> None:
    names = [f"{i}_{j}" for i in range(12) for j in range(4)]
    results = []
    for attempt, seed in enumerate((1, 2)):
        root = tmp_path / f"run{attempt}"
        shuffled = names[:]
        random.Random(seed).shuffle(shuffled)
        _touch(root, *(f"lq/{name}.png" for name in shuffled))
        _touch(root, *(f"hq/{i}.png" for i in random.Random(seed).sample(range(14), 14)))
        result = pair_split(root, _rule(lq_key=MANY_TO_ONE, hq_key=NUMBER))
        results.append((_pairs(result, root), _names(result.unmatched_hq, root)))
    assert results[0] == results[1]
    pairs, unmatched_hq = results[0]
    assert pairs == sorted(pairs)
    assert unmatched_hq == ["hq/12.png", "hq/13.png"]


def test_path_keys_join_key_groups_for_reused_file_names(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "seqA/blur/000001.png",
        "seqA/sharp/000001.png",
        "seqB/blur/000001.png",
        "seqB/sharp/000001.png",
    )
    by_stem = pair_split(tmp_path, _rule(lq_glob="*/blur/*", hq_glob="*/sharp/*"))
    assert by_stem.duplicate_hq_keys == ["000001"]
    assert by_stem.pairs == []

    by_path = pair_split(
        tmp_path,
        _rule(
            key_on="path",
            lq_glob="*/blur/*",
            hq_glob="*/sharp/*",
            lq_key=r"^(?P<key>[^/]+)/blur/(?P<key_frame>\d+)$",
            hq_key=r"^(?P<key>[^/]+)/sharp/(?P<key_frame>\d+)$",
        ),
    )
    assert _pairs(by_path, tmp_path) == [
        ("seqA/000001", "seqA/blur/000001.png", "seqA/sharp/000001.png"),
        ("seqB/000001", "seqB/blur/000001.png", "seqB/sharp/000001.png"),
    ]


def test_file_key_rejects_empty_optional_key_parts(tmp_path: Path) -> None:
    pattern = re.compile(r"^(?P<key>\d+)(?:_(?P<key_view>[a-z]+))?$")
    assert file_key(tmp_path / "12_left.png", tmp_path, pattern) == "12/left"
    assert file_key(tmp_path / "12.png", tmp_path, pattern) is None
    assert file_key(tmp_path / "x.png", tmp_path, pattern) is None


def test_pair_split_refuses_one_sided_rules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty hq_glob"):
        pair_split(tmp_path, _rule(hq_glob=""))
    with pytest.raises(ValueError, match="empty lq_glob"):
        pair_split(tmp_path, _rule(lq_glob=""))


def test_absolute_globs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="relative"):
        list_images(tmp_path, str(tmp_path / "*.png"))


def test_no_reference_split_lists_lq_images(tmp_path: Path) -> None:
    _touch(tmp_path, "real/b.jpg", "real/a.png", "real/notes.txt")
    result = collect_single_side(tmp_path, _rule(name="test", lq_glob="real/*", hq_glob=""))
    assert result.side == "lq"
    assert [(image.key, image.split) for image in result.images] == [("a", "test"), ("b", "test")]
    assert result.unmatched == []


def test_clean_only_split_lists_hq_images_and_unmatched_names(tmp_path: Path) -> None:
    _touch(tmp_path, "kodak/kodim01.png", "kodak/kodim02.png", "kodak/readme.png")
    rule = _rule(name="test", lq_glob="", hq_glob="kodak/*", hq_key=r"^kodim(?P<key>\d+)$")
    result = collect_single_side(tmp_path, rule)
    assert result.side == "hq"
    assert [image.key for image in result.images] == ["01", "02"]
    assert _names(result.unmatched, tmp_path) == ["kodak/readme.png"]


def test_collect_single_side_refuses_paired_rules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pair_split"):
        collect_single_side(tmp_path, _rule())


def test_clean_images_collects_distinct_hq_files(tmp_path: Path) -> None:
    _touch(tmp_path, "lq/1_1.png", "hq/1.png", "hq/2.png", "hq/bad.png", "extra/x.png")
    rules = [
        _rule(lq_key=MANY_TO_ONE, hq_key=NUMBER),
        _rule(name="val", lq_glob="lq/*", hq_glob="hq/*", lq_key=MANY_TO_ONE, hq_key=NUMBER),
        _rule(name="test", lq_glob="", hq_glob="extra/*"),
        _rule(name="test", lq_glob="lq/*", hq_glob=""),
    ]
    images = clean_images(tmp_path, rules)
    assert [(image.path.relative_to(tmp_path).as_posix(), image.split) for image in images] == [
        ("extra/x.png", "test"),
        ("hq/1.png", "train"),
        ("hq/2.png", "train"),
    ]


# -- the packaged catalog's rules pair realistic layouts -------------------------------------


@pytest.mark.parametrize(
    ("source", "rule_index", "lq_files", "hq_files", "expected_keys"),
    [
        (
            "reside_its",
            0,
            ["ITS/hazy/1_1_0.90179.png", "ITS/hazy/1_2_0.82.png", "ITS/hazy/2_1_0.7.png"],
            ["ITS/clear/1.png", "ITS/clear/2.png"],
            ["1", "1", "2"],
        ),
        (
            "rain1400",
            0,
            ["x/training/rainy_image/901_1.jpg", "x/training/rainy_image/901_14.jpg"],
            ["x/training/ground_truth/901.jpg"],
            ["901", "901"],
        ),
        (
            "div2k",
            0,
            ["DIV2K_train_LR_bicubic/X4/0001x4.png"],
            ["DIV2K_train_HR/0001.png"],
            ["0001"],
        ),
        (
            "gopro",
            0,
            ["GOPRO_Large/train/GOPR0372_07_00/blur/000047.png"],
            ["GOPRO_Large/train/GOPR0372_07_00/sharp/000047.png"],
            ["GOPR0372_07_00/000047"],
        ),
        (
            "sidd",
            0,
            ["SIDD_Medium_Srgb/Data/0001_001_S6/0001_NOISY_SRGB_010.PNG"],
            ["SIDD_Medium_Srgb/Data/0001_001_S6/0001_GT_SRGB_010.PNG"],
            ["0001/010"],
        ),
        (
            "nh_haze_20",
            0,
            ["NH-HAZE/01_hazy.png", "NH-HAZE/02_hazy.png"],
            ["NH-HAZE/01_GT.png", "NH-HAZE/02_GT.png"],
            ["01", "02"],
        ),
        (
            "sice",
            0,
            ["Dataset_Part1/7/1.JPG", "Dataset_Part1/7/2.JPG"],
            ["Dataset_Part1/Label/7.JPG"],
            ["7", "7"],
        ),
        (
            "cbsd68",
            0,
            ["m/CBSD68/noisy5/0000.png", "m/CBSD68/noisy50/0000.png"],
            ["m/CBSD68/original_png/0000.png"],
            ["0000", "0000"],
        ),
    ],
)
def test_catalog_rules_pair_a_miniature_of_the_release(
    tmp_path: Path,
    source: str,
    rule_index: int,
    lq_files: list[str],
    hq_files: list[str],
    expected_keys: list[str],
) -> None:
    rule = load_catalog().get(source).splits[rule_index]
    _touch(tmp_path, *lq_files, *hq_files)
    result = pair_split(tmp_path, rule)
    assert [pair.key for pair in result.pairs] == expected_keys
    assert result.unmatched_lq == result.unmatched_hq == result.duplicate_hq_keys == []


def test_cdd11_class_rule_labels_its_pairs(tmp_path: Path) -> None:
    cdd11 = load_catalog().get("cdd11")
    rule = next(r for r in cdd11.splits if r.lq_glob == "CDD-11_train/haze_rain/*")
    _touch(tmp_path, "CDD-11_train/haze_rain/000001.png", "CDD-11_train/clear/000001.png")
    (pair,) = pair_split(tmp_path, rule).pairs
    assert (pair.split, pair.degradation) == ("train", "rain+haze")
