"""Load the source catalog (``catalog.yaml``) and summarize it.

The catalog is data: the datasets CoTIR-style training draws from, how to fetch
them and how to pair their files. :func:`load_catalog` validates it with the
schema of :mod:`cotir_pipeline.sources.spec` and then checks what one entry
cannot check alone (synthetic sources name a real clean source, tasks agree
with degradations, one-sided splits agree with ``real_world``). Every problem
becomes one line naming the file, the entry and the field, so a typo is found
when the catalog loads, not halfway through a fetch.

Conventions beyond the schema (see docs/SOURCES.md):

- ``hq_glob: ""``: a no-reference split (real-world images without ground
  truth); a source is ``real_world`` exactly when all its splits are like that.
- ``lq_glob: ""``: a clean-only split (reference images that recipes degrade,
  e.g. Kodak24 or LIVE1).
- ``expected_pairs`` of a one-sided split counts its images.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cotir_pipeline.sources.pairing import key_group_names
from cotir_pipeline.sources.spec import SourceCatalog, SourceDataset
from cotir_pipeline.tasks import TaskCode, parse_degradation_label, task_of

_CATALOG_RESOURCE = files("cotir_pipeline.sources").joinpath("catalog.yaml")

#: The catalog shipped with the package.
CATALOG_PATH = Path(str(_CATALOG_RESOURCE))

#: ``synthesis.clean_from`` value for the photographs shipped inside installed packages.
DEMO_PHOTOS = "demo_photos"


class CatalogError(ValueError):
    """The catalog cannot be read or is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def load_catalog(path: Path | None = None) -> SourceCatalog:
    """Read, validate and cross-check a catalog file (default: the packaged one).

    Raises :class:`CatalogError` with one line per problem, e.g.
    ``catalog.yaml: source 'lol' (sources[0]): tasks[0]: input should be ... (got 'LOW')``.
    """
    label = str(path if path is not None else CATALOG_PATH)
    try:
        text = path.read_text(encoding="utf-8") if path is not None else _read_packaged()
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError([f"{label}: cannot read the catalog: {error}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        position = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or str(error)
        raise CatalogError([f"{label}: not valid YAML{position}: {problem}"]) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        message = f"{label}: expected a mapping with 'version' and 'sources', got {kind}"
        raise CatalogError([message])
    try:
        catalog = SourceCatalog.model_validate(data)
    except ValidationError as error:
        raise CatalogError(_validation_problems(label, data, error)) from None
    problems = [f"{label}: {line}" for line in check_catalog(catalog)]
    if problems:
        raise CatalogError(problems)
    return catalog


def check_catalog(catalog: SourceCatalog) -> list[str]:
    """Cross-entry and convention checks the schema cannot do; one line per problem."""
    names = {source.name: source for source in catalog.sources}
    problems: list[str] = []
    for index, source in enumerate(catalog.sources):
        entry = f"source {source.name!r} (sources[{index}])"
        problems += [f"{entry}: {line}" for line in _check_source(source, names)]
    return problems


def catalog_table(catalog: SourceCatalog) -> list[dict[str, Any]]:
    """One flat row per source (for a table in the UI or the docs)."""
    rows = []
    for source in catalog.sources:
        rows.append(
            {
                "name": source.name,
                "title": source.title,
                "tasks": ", ".join(task.value for task in source.tasks),
                "degradations": ", ".join(source.degradations),
                "fetch": source.fetch.method if source.fetch is not None else "synthetic",
                "license": source.license,
                "expected_pairs": source.expected_pairs,
                "real_world": source.real_world,
            }
        )
    return rows


def task_coverage(catalog: SourceCatalog) -> dict[TaskCode, list[str]]:
    """Names of the sources covering each task code (every code present, maybe empty)."""
    coverage: dict[TaskCode, list[str]] = {task: [] for task in TaskCode}
    for source in catalog.sources:
        for task in source.tasks:
            coverage[task].append(source.name)
    return coverage


# -- helpers ---------------------------------------------------------------------------------


def _read_packaged() -> str:
    return _CATALOG_RESOURCE.read_text(encoding="utf-8")


def _check_source(source: SourceDataset, names: Mapping[str, SourceDataset]) -> list[str]:
    problems: list[str] = []
    labels = list(source.degradations)
    for number, rule in enumerate(source.splits):
        where = f"splits[{number}]"
        if rule.degradation is not None:
            try:
                parse_degradation_label(rule.degradation)
            except ValueError as error:
                problems.append(f"{where}.degradation: {error}")
                continue
            if rule.degradation not in source.degradations:
                problems.append(
                    f"{where}.degradation: {rule.degradation!r} is not listed in 'degradations'"
                )
        if not rule.lq_glob and not rule.hq_glob:
            problems.append(f"{where}: lq_glob and hq_glob are both empty")
        elif source.real_world and rule.hq_glob:
            problems.append(
                f"{where}.hq_glob: a real_world source has no ground truth; set hq_glob to ''"
            )
        elif not source.real_world and not rule.hq_glob:
            problems.append(
                f"{where}.hq_glob: empty (no ground truth) but the source is not real_world"
            )
        if rule.lq_glob and rule.hq_glob:
            lq_groups = key_group_names(re.compile(rule.lq_key))
            hq_groups = key_group_names(re.compile(rule.hq_key))
            if lq_groups != hq_groups:
                problems.append(
                    f"{where}.hq_key: key groups {hq_groups} differ from lq_key's {lq_groups}, "
                    "so no key could ever match"
                )

    implied = {task_of(parse_degradation_label(label)) for label in labels}
    declared = set(source.tasks)
    if implied != declared:
        problems.append(
            f"tasks: {_codes(declared)} do not match the tasks of the degradations "
            f"{_codes(implied)}"
        )
    if len(declared) != len(source.tasks):
        problems.append("tasks: a task code is listed twice")

    counts = [rule.expected_pairs for rule in source.splits]
    if source.expected_pairs is not None and counts and all(count is not None for count in counts):
        total = sum(count for count in counts if count is not None)
        if total != source.expected_pairs:
            problems.append(
                f"expected_pairs: {source.expected_pairs} but the splits' expected_pairs "
                f"add up to {total}"
            )

    if source.synthesis is not None:
        if source.splits:
            problems.append("splits: a synthetic source has no split rules (leave it empty)")
        if source.real_world:
            problems.append("real_world: a synthetic source always has ground truth")
        clean = source.synthesis.clean_from
        if clean != DEMO_PHOTOS:
            target = names.get(clean)
            if target is None:
                problems.append(
                    f"synthesis.clean_from: {clean!r} is neither a catalog source "
                    f"nor {DEMO_PHOTOS!r}"
                )
            elif target.synthesis is not None or target.real_world:
                problems.append(
                    f"synthesis.clean_from: {clean!r} has no clean images of its own "
                    "(it is synthetic or real_world)"
                )
    return problems


def _codes(tasks: set[TaskCode]) -> str:
    order = list(TaskCode)
    return "[" + ", ".join(task.value for task in sorted(tasks, key=order.index)) + "]"


def _validation_problems(label: str, data: Any, error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        location = tuple(item.get("loc", ()))
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        message = message.splitlines()[0] if message else "invalid value"
        given = item.get("input")
        scalar = isinstance(given, str | int | float | bool)
        if item.get("type") != "missing" and scalar and repr(given) not in message:
            message = f"{message} (got {given!r})"
        entry, field = _describe_location(location, data)
        parts = [label, entry] + ([field] if field else []) + [message]
        problems.append(": ".join(parts))
    return problems


def _describe_location(location: tuple[Any, ...], data: Any) -> tuple[str, str]:
    """(entry label, field path) of a pydantic error location, read against the raw YAML."""
    sources = data.get("sources") if isinstance(data, dict) else None
    if (
        len(location) >= 2
        and location[0] == "sources"
        and isinstance(location[1], int)
        and isinstance(sources, list)
        and 0 <= location[1] < len(sources)
    ):
        index = location[1]
        raw = sources[index]
        name = raw.get("name") if isinstance(raw, dict) else None
        entry = (
            f"source {name!r} (sources[{index}])" if isinstance(name, str) else f"sources[{index}]"
        )
        return entry, _field_path(location[2:], raw)
    return "catalog", _field_path(location, data)


def _field_path(location: Sequence[Any], raw: Any) -> str:
    """Dotted path such as ``fetch.files[0].sha256``.

    Pydantic adds the tag of a discriminated union (``http``) to the location;
    it is not a key of the YAML, so it is left out.
    """
    path = ""
    current = raw
    for step in location:
        if isinstance(step, int):
            path += f"[{step}]"
            current = current[step] if isinstance(current, list) and step < len(current) else None
            continue
        if isinstance(current, dict) and step not in current and current.get("method") == step:
            continue  # discriminator tag
        path += f".{step}" if path else str(step)
        current = current.get(step) if isinstance(current, dict) else None
    return path
