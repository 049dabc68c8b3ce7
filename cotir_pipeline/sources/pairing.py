"""Match the LQ and HQ files of an extracted dataset, following one split rule.

A rule (:class:`~cotir_pipeline.sources.spec.SplitRule`) names two globs and two
key regexes. Every image file a glob finds gets a key from its regex; LQ and HQ
files with the same key form a pair, so one HQ file may serve many LQ files (14
rain variants of one clean image). Nothing is dropped silently: a file whose
name does not fit its regex, or whose key has no partner, is listed as
unmatched, and a key shared by several HQ files is listed as ambiguous, because
guessing the partner would put wrong pairs into training.

Two conventions of the catalog are handled by :func:`collect_single_side`: an
empty ``hq_glob`` marks a no-reference set (real-world images, no ground
truth) and an empty ``lq_glob`` a clean-only set (degraded later by recipes).

Only image files count (:data:`IMAGE_SUFFIXES`, any case). Archive debris that
macOS zips carry (``__MACOSX/`` folders and ``._*`` AppleDouble files) is not
data and is skipped. Results are sorted, so the same folder always gives the
same lists in the same order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cotir_pipeline.sources.spec import SplitRule

#: Suffixes (lower case) of the files pairing considers; others are ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

#: Separator of the parts of a key built from several ``key_*`` groups.
KEY_PART_SEPARATOR = "/"

_KEY_GROUP = "key"
_KEY_PART_PREFIX = "key_"


@dataclass(frozen=True)
class FilePair:
    """One LQ file and its HQ file; ``degradation`` is the rule's label (None: the source's)."""

    key: str
    lq: Path
    hq: Path
    split: str
    degradation: str | None


@dataclass(frozen=True)
class PairingResult:
    """Pairs of one split rule, plus every file or key that could not be paired.

    Each image found lands in exactly one place: a pair, ``unmatched_lq``,
    ``unmatched_hq``, or (HQ files only) behind a key in ``duplicate_hq_keys``.
    LQ files whose key is ambiguous are in ``unmatched_lq``.
    """

    pairs: list[FilePair]
    unmatched_lq: list[Path]
    unmatched_hq: list[Path]
    duplicate_hq_keys: list[str]


@dataclass(frozen=True)
class SingleImage:
    """An image of a one-sided split (no-reference LQ or clean-only HQ)."""

    key: str
    path: Path
    split: str
    degradation: str | None


@dataclass(frozen=True)
class SingleSideResult:
    """Images of a one-sided split; ``side`` says which glob was used."""

    side: Literal["lq", "hq"]
    images: list[SingleImage]
    unmatched: list[Path]


def is_image_file(path: Path) -> bool:
    """True for a regular file with an image suffix that is not archive debris."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("._"):
        return False
    if "__MACOSX" in path.parts:
        return False
    return path.is_file()


def list_images(root: Path, pattern: str) -> list[Path]:
    """Image files under ``root`` matching the glob ``pattern``, sorted by path."""
    if not pattern:
        raise ValueError("an empty glob matches nothing; check the split rule")
    if Path(pattern).is_absolute():
        raise ValueError(f"glob {pattern!r} must be relative to the dataset root")
    return sorted((path for path in root.glob(pattern) if is_image_file(path)), key=_sort_key)


def key_group_names(pattern: re.Pattern[str]) -> list[str]:
    """Groups that make up a key: ``key`` and every ``key_*`` group, in pattern order."""
    groups = sorted(pattern.groupindex.items(), key=lambda item: item[1])
    return [name for name, _ in groups if name == _KEY_GROUP or name.startswith(_KEY_PART_PREFIX)]


def file_key(path: Path, root: Path, pattern: re.Pattern[str], key_on: str = "stem") -> str | None:
    """The key ``pattern`` gives ``path`` (None when it does not match).

    The regex must match the whole stem (``key_on="stem"``) or the whole POSIX
    path relative to ``root`` without the suffix (``key_on="path"``). The key is
    the ``key`` group, extended by any ``key_*`` groups, joined in pattern order.
    """
    if key_on == "path":
        relative = path.relative_to(root)
        text = (relative.parent / relative.stem).as_posix()
    else:
        text = path.stem
    match = pattern.fullmatch(text)
    if match is None:
        return None
    parts = [match.group(name) for name in key_group_names(pattern)]
    if not parts or not all(parts):
        return None  # no key group, or an optional one that took no part
    return KEY_PART_SEPARATOR.join(parts)


def pair_split(root: Path, rule: SplitRule) -> PairingResult:
    """Pair the LQ and HQ files of ``rule`` under ``root`` (an extracted dataset).

    Raises ValueError for a one-sided rule (empty glob): use
    :func:`collect_single_side` for those.
    """
    if not rule.lq_glob or not rule.hq_glob:
        raise ValueError(
            f"split {rule.name!r} has an empty {'hq' if not rule.hq_glob else 'lq'}_glob "
            "(a one-sided set); use collect_single_side()"
        )
    lq_pattern = re.compile(rule.lq_key)
    hq_pattern = re.compile(rule.hq_key)

    hq_by_key: dict[str, list[Path]] = defaultdict(list)
    unmatched_hq: list[Path] = []
    for path in list_images(root, rule.hq_glob):
        key = file_key(path, root, hq_pattern, rule.key_on)
        if key is None:
            unmatched_hq.append(path)
        else:
            hq_by_key[key].append(path)
    duplicates = {key for key, paths in hq_by_key.items() if len(paths) > 1}

    pairs: list[FilePair] = []
    unmatched_lq: list[Path] = []
    used_keys: set[str] = set()
    for path in list_images(root, rule.lq_glob):
        key = file_key(path, root, lq_pattern, rule.key_on)
        if key is None or key not in hq_by_key or key in duplicates:
            unmatched_lq.append(path)
            continue
        used_keys.add(key)
        pairs.append(FilePair(key, path, hq_by_key[key][0], rule.name, rule.degradation))

    for key, paths in hq_by_key.items():
        if key not in used_keys and key not in duplicates:
            unmatched_hq.extend(paths)

    pairs.sort(key=lambda pair: (pair.key, _sort_key(pair.lq)))
    return PairingResult(
        pairs=pairs,
        unmatched_lq=sorted(unmatched_lq, key=_sort_key),
        unmatched_hq=sorted(unmatched_hq, key=_sort_key),
        duplicate_hq_keys=sorted(duplicates),
    )


def collect_single_side(root: Path, rule: SplitRule) -> SingleSideResult:
    """Images of a one-sided rule: LQ only (empty ``hq_glob``) or HQ only (empty ``lq_glob``).

    Raises ValueError for a two-sided rule (use :func:`pair_split`) or one with
    both globs empty.
    """
    if bool(rule.lq_glob) == bool(rule.hq_glob):
        raise ValueError(
            f"split {rule.name!r} must have exactly one empty glob to be one-sided; "
            "use pair_split() for paired splits"
        )
    side: Literal["lq", "hq"] = "lq" if rule.lq_glob else "hq"
    pattern = re.compile(rule.lq_key if side == "lq" else rule.hq_key)
    images: list[SingleImage] = []
    unmatched: list[Path] = []
    for path in list_images(root, rule.lq_glob or rule.hq_glob):
        key = file_key(path, root, pattern, rule.key_on)
        if key is None:
            unmatched.append(path)
        else:
            images.append(SingleImage(key, path, rule.name, rule.degradation))
    images.sort(key=lambda image: (image.key, _sort_key(image.path)))
    return SingleSideResult(side=side, images=images, unmatched=unmatched)


def clean_images(root: Path, rules: Iterable[SplitRule]) -> list[SingleImage]:
    """The distinct clean (HQ) images a source offers, for synthesis from it.

    Paired rules contribute every HQ file whose name fits ``hq_key`` (paired or
    not); clean-only rules their files; no-reference rules nothing. A file found
    by two rules is listed once, with the first rule's split.
    """
    seen: dict[Path, SingleImage] = {}
    for rule in rules:
        if not rule.hq_glob:
            continue
        pattern = re.compile(rule.hq_key)
        for path in list_images(root, rule.hq_glob):
            key = file_key(path, root, pattern, rule.key_on)
            if key is not None and path not in seen:
                seen[path] = SingleImage(key, path, rule.name, None)
    return sorted(seen.values(), key=lambda image: _sort_key(image.path))


def _sort_key(path: Path) -> str:
    return path.as_posix()
