"""Regenerate the paper's tables (II, III, IV, V, VI, VIII) from score and runtime rows.

Each ``table_*`` function turns per-image rows (:mod:`~cotir_pipeline.evaluation.
scoring`) into a :class:`Table`: our rows, then the paper's reported rows
(the CoTIR paper and its releasethe runtime facts of section 5) labelled
"reported (paper)" and printed exactly as published. :func:`write_table` saves
Parquet + Markdown + HTML. PSNR has 2 decimals, other metrics 4 (the metric
table's ``decimals``). A cell that could not be computed is "n/a" with a
numbered footnote giving the reason; a mean is never taken over a partial set.
Every row carries the code version, metric versions and settings, the seed and
the method's checkpoint hash from the ``provenance`` argument
(:func:`table_provenance` builds one).

:func:`image_grid` draws LQ / each method / HQ for a few samples (Pillow);
:func:`bar_chart` draws one column as bars with matplotlib when it is installed
(it is not a declared dependency; without it the function returns None).
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cotir_pipeline.evaluation._io import find_image, read_rgb, write_text
from cotir_pipeline.evaluation.bench_sets import PROMPT_KINDS, BenchRecord, BenchSet
from cotir_pipeline.evaluation.metrics import METRIC_SETS, MetricSpec, get_metric
from cotir_pipeline.evaluation.scoring import RuntimeRow, ScoreRow
from cotir_pipeline.provenance import collect_provenance

OURS = "ours"
REPORTED = "reported (paper)"
PAPER = "CoTIR paper (arXiv 2606.17557)"
#: Groups of the AgenticIR set, in table order.
AGENTICIR_GROUPS: tuple[str, ...] = ("A", "B", "C")
ALL = "all"


@dataclass(frozen=True)
class Column:
    """A value column: key (a metric name or a derived quantity), header, printed decimals."""

    key: str
    header: str
    decimals: int
    lower_is_better: bool | None = None

    @classmethod
    def for_metric(cls, name: str) -> Column:
        """The column of a metric of the metric table (header with its direction arrow)."""
        spec: MetricSpec = get_metric(name)
        arrow = "↓" if spec.lower_is_better else "↑"
        return cls(name, f"{spec.label} {arrow}", spec.decimals, spec.lower_is_better)


RUNTIME = Column("runtime_s", "Runtime (s/image) ↓", 2, True)
PARAMETERS = Column("params_b", "Params (B)", 2)
STEPS = Column("steps", "Steps", 0)


@dataclass
class TableRow:
    """One printed row: its labels, values (None = n/a), and how each value came about."""

    labels: dict[str, str]
    source: str
    values: dict[str, float | None]
    reasons: dict[str, str] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Table:
    """A regenerated table: label columns, value columns, rows, notes and provenance."""

    key: str
    title: str
    label_columns: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: list[TableRow]
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def footnotes(self) -> list[str]:
        """Distinct n/a reasons in order of first appearance (footnote k is index k - 1)."""
        seen: list[str] = []
        for row in self.rows:
            for column in self.columns:
                reason = row.reasons.get(column.key)
                if row.values.get(column.key) is None and reason and reason not in seen:
                    seen.append(reason)
        return seen

    def cell(self, row: TableRow, column: Column) -> str:
        """The printed cell: the published text, the value with its decimals, or "n/a [k]"."""
        if column.key in row.published:
            return row.published[column.key]
        value = row.values.get(column.key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            reason = row.reasons.get(column.key)
            notes = self.footnotes()
            return f"n/a [{notes.index(reason) + 1}]" if reason in notes else "n/a"
        return f"{value:.{column.decimals}f}"


# --------------------------------------------------------------------------------------------
# Provenance


REQUIRED_PROVENANCE = ("code_version", "seed")


def table_provenance(
    seed: int,
    *,
    checkpoint_hashes: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A provenance dict for the tables from this process (code, git, package versions)."""

    snapshot = collect_provenance(dict(settings or {}))
    return {
        "code_version": snapshot.project_version,
        "git_commit": snapshot.git_commit,
        "git_dirty": snapshot.git_dirty,
        "packages": snapshot.packages,
        "seed": seed,
        "checkpoint_hashes": dict(checkpoint_hashes or {}),
        "settings": snapshot.settings,
    }


def _check_provenance(provenance: Mapping[str, Any]) -> None:
    if not isinstance(provenance, Mapping):
        raise TypeError(f"provenance must be a mapping, got {type(provenance).__name__}")
    missing = [key for key in REQUIRED_PROVENANCE if key not in provenance]
    if missing:
        raise ValueError(f"provenance lacks {missing}; build it with table_provenance(seed=...)")


def _row_provenance(
    provenance: Mapping[str, Any], method: str, metrics: Sequence[str]
) -> dict[str, Any]:
    packages = dict(provenance.get("packages") or {})
    hashes = dict(provenance.get("checkpoint_hashes") or {})
    return {
        "code_version": provenance["code_version"],
        "git_commit": provenance.get("git_commit"),
        "metric_versions": {name: packages.get(name) for name in ("pyiqa", "torch", "torchvision")},
        "metric_settings": {name: get_metric(name).settings_record() for name in metrics},
        "seed": provenance["seed"],
        "checkpoint_hash": hashes.get(method),
    }


# --------------------------------------------------------------------------------------------
# Aggregation


def _mean(rows: Sequence[ScoreRow]) -> tuple[float | None, str | None, int]:
    """Mean of a set of rows, or None with the reason when any value is missing."""
    if not rows:
        return None, "not scored in this run (no score rows for this cell)", 0
    missing = [row for row in rows if row.value is None]
    if missing:
        reasons = sorted({row.reason or "no value" for row in missing})
        prefix = "" if len(missing) == len(rows) else f"{len(missing)} of {len(rows)} images: "
        return None, prefix + "; ".join(reasons[:3]), len(rows)
    return float(np.mean([row.value for row in rows])), None, len(rows)


def _mean_of_means(
    groups: Sequence[Sequence[ScoreRow]],
) -> tuple[float | None, str | None, int]:
    """Mean over groups of each group's mean (AgenticIR: per combination, then per group)."""
    means = [_mean(group) for group in groups]
    for value, reason, _ in means:
        if value is None:
            return None, reason, sum(count for _, _, count in means)
    if not means:
        return None, "not scored in this run (no score rows for this cell)", 0
    values = [value for value, _, _ in means if value is not None]
    return float(np.mean(values)), None, sum(count for _, _, count in means)


def _methods(rows: Iterable[ScoreRow | RuntimeRow]) -> list[tuple[str, str]]:
    order: dict[tuple[str, str], None] = {}
    for row in rows:
        order.setdefault((row.method, row.prompt_kind), None)
    return list(order)


def _one_bench(rows: Sequence[ScoreRow], table: str) -> None:
    benches = sorted({row.bench for row in rows})
    if len(benches) > 1:
        raise ValueError(f"table {table} takes the scores of one bench set, got {benches}")


def _by(rows: Iterable[ScoreRow], *keys: str) -> dict[tuple[Any, ...], list[ScoreRow]]:
    grouped: dict[tuple[Any, ...], list[ScoreRow]] = defaultdict(list)
    for row in rows:
        grouped[tuple(getattr(row, key) for key in keys)].append(row)
    return grouped


def _metric_cells(
    rows: Sequence[ScoreRow], metrics: Sequence[str]
) -> tuple[dict[str, float | None], dict[str, str], dict[str, int]]:
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    counts: dict[str, int] = {}
    by_metric = _by(rows, "metric")
    for name in metrics:
        value, reason, count = _mean(by_metric.get((name,), []))
        values[name], counts[name] = value, count
        if reason:
            reasons[name] = reason
    return values, reasons, counts


def _reported_row(labels: dict[str, str], published: Mapping[str, str], citation: str) -> TableRow:
    values = {key: float(text) for key, text in published.items()}
    return TableRow(
        labels=labels,
        source=REPORTED,
        values=dict(values),
        published=dict(published),
        provenance={"source": f"{PAPER}, {citation}"},
    )


# --------------------------------------------------------------------------------------------
# The paper's reported numbers (the CoTIR paper and its public release)

_TABLE_II_REPORTED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "PromptIR",
        "",
        ("0.5343", "3.2822", "2.7011", "0.5081", "0.4314", "22.78", "0.8028", "0.2325"),
    ),
    (
        "OneRestore",
        "",
        ("0.5443", "3.4235", "2.9409", "0.5081", "0.4335", "24.76", "0.8584", "0.1676"),
    ),
    (
        "DA-CLIP",
        "",
        ("0.5765", "3.5149", "3.1581", "0.5119", "0.4609", "24.00", "0.8171", "0.1593"),
    ),
    ("HYPIR", "", ("0.6318", "3.8116", "3.5813", "0.5434", "0.5081", "21.55", "0.6930", "0.1737")),
    (
        "CoTIR-4B",
        "precise",
        ("0.6262", "3.8676", "3.7016", "0.5547", "0.5295", "25.19", "0.8454", "0.1128"),
    ),
    (
        "CoTIR-9B",
        "precise",
        ("0.6335", "3.8780", "3.7329", "0.5546", "0.5291", "25.34", "0.8415", "0.1023"),
    ),
)
_TABLE_IV_REPORTED: tuple[tuple[str, str, str, str], ...] = (
    ("AutoDIR", "19.96", "0.3020", "327"),
    ("AgenticIR", "16.98", "0.3366", "55"),
    ("Q-Agent", "19.83", "0.3010", "39"),
    ("CoTIR", "22.82", "0.1350", "4"),
)
_TABLE_V_REPORTED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("AgenticIR", "", ("0.3004", "0.4376", "54.79", "20.29", "0.6498", "0.3501")),
    ("CoTIR", "precise", ("0.3348", "0.4978", "55.23", "20.38", "0.6496", "0.2932")),
)
_TABLE_VIII_REPORTED: tuple[tuple[str, str, str, str, str], ...] = (
    ("CoTIR-12B", "512x512", "13.47", "20", "7.95"),
    ("CoTIR-4B", "512x512", "4.98", "5", "1.84"),
    ("CoTIR-9B", "512x512", "11.05", "5", "2.44"),
    ("AutoDIR", "7D subset", "", "", "327"),
    ("AgenticIR", "7D subset", "", "", "55"),
    ("Q-Agent", "7D subset", "", "", "39"),
    ("CoTIR", "7D subset", "", "", "4"),
)


# --------------------------------------------------------------------------------------------
# Tables


def _metric_table(
    key: str,
    title: str,
    rows: Sequence[ScoreRow],
    metrics: Sequence[str],
    provenance: Mapping[str, Any],
    *,
    split: str | None,
    include_all: bool,
) -> Table:
    """Rows per (method, prompt) and optionally per value of ``split`` (task, subset)."""
    _check_provenance(provenance)
    _one_bench(rows, key)
    label_columns = ("method", "prompt") + ((split,) if split else ())
    table = Table(
        key,
        title,
        label_columns,
        tuple(Column.for_metric(m) for m in metrics),
        [],
        provenance=dict(provenance),
    )
    by_method = _by(rows, "method", "prompt_kind")
    for method, prompt_kind in _methods(rows):
        method_rows = by_method[(method, prompt_kind)]
        parts: list[tuple[str | None, list[ScoreRow]]] = []
        if split:
            for (part,), part_rows in sorted(_by(method_rows, split).items()):
                parts.append((part, part_rows))
            if include_all:
                parts.append((ALL, method_rows))
        else:
            parts.append((None, method_rows))
        for part, part_rows in parts:
            values, reasons, counts = _metric_cells(part_rows, metrics)
            labels = {"method": method, "prompt": prompt_kind}
            if split:
                labels[split] = str(part)
            table.rows.append(
                TableRow(
                    labels,
                    OURS,
                    values,
                    reasons,
                    counts=counts,
                    provenance=_row_provenance(provenance, method, metrics),
                )
            )
    return table


def table_ii_overall(
    rows: Sequence[ScoreRow],
    provenance: Mapping[str, Any],
    *,
    metrics: Sequence[str] = METRIC_SETS["cotir_bench"],
    include_reported: bool = True,
) -> Table:
    """Table II: each method's mean of every metric over the whole CoTIR-Bench test set."""
    table = _metric_table(
        "II",
        "Overall results on CoTIR-Bench",
        rows,
        metrics,
        provenance,
        split=None,
        include_all=False,
    )
    if include_reported:
        paper_metrics = METRIC_SETS["cotir_bench"]
        for method, prompt, texts in _TABLE_II_REPORTED:
            published = {
                name: text
                for name, text in zip(paper_metrics, texts, strict=True)
                if name in metrics
            }
            table.rows.append(
                _reported_row({"method": method, "prompt": prompt}, published, "Table II")
            )
    table.notes.append("Mean over all test images of the set; PSNR on RGB, SSIM on Y (pyiqa).")
    return table


def table_iii_per_task(
    rows: Sequence[ScoreRow],
    provenance: Mapping[str, Any],
    *,
    metrics: Sequence[str] = METRIC_SETS["cotir_bench"],
) -> Table:
    """Table III: means per task code (MDR, LLE, DH, ...), with an "all" row per method."""
    table = _metric_table(
        "III",
        "Results per task on CoTIR-Bench",
        rows,
        metrics,
        provenance,
        split="task",
        include_all=True,
    )
    table.notes.append(
        "Task from each sample's degradation label (MDR for two or more), else its subset. "
        "The paper's per-task numbers are not available here: no reported rows."
    )
    return table


def _runtime_cell(
    runtimes: Sequence[RuntimeRow], method: str, prompt_kind: str
) -> tuple[float | None, str | None, int]:
    seconds = [r.seconds for r in runtimes if r.method == method and r.prompt_kind == prompt_kind]
    if not seconds:
        return None, "no runtime log for this run", 0
    return float(np.mean(seconds)), None, len(seconds)


def table_iv_seven_d(
    rows: Sequence[ScoreRow],
    runtimes: Sequence[RuntimeRow],
    provenance: Mapping[str, Any],
    *,
    include_reported: bool = True,
) -> Table:
    """Table IV: PSNR, LPIPS and runtime per image on the 7D subset, with the multi-round agents."""
    metrics = METRIC_SETS["seven_d"]
    table = _metric_table(
        "IV",
        "7D subset: fidelity and runtime per image",
        rows,
        metrics,
        provenance,
        split=None,
        include_all=False,
    )
    table.columns = (*table.columns, RUNTIME)
    for row in table.rows:
        value, reason, count = _runtime_cell(runtimes, row.labels["method"], row.labels["prompt"])
        row.values[RUNTIME.key], row.counts[RUNTIME.key] = value, count
        if reason:
            row.reasons[RUNTIME.key] = reason
    if include_reported:
        for method, psnr, lpips, seconds in _TABLE_IV_REPORTED:
            published = {"psnr": psnr, "lpips": lpips, RUNTIME.key: seconds}
            table.rows.append(
                _reported_row({"method": method, "prompt": ""}, published, "Table IV")
            )
    table.notes.append(
        "Runtime: mean seconds of the restore call per image on this machine (ours); the "
        "paper's on its GPUs. Runtimes from different machines are not comparable."
    )
    return table


def table_v_agenticir(
    rows: Sequence[ScoreRow],
    provenance: Mapping[str, Any],
    *,
    include_reported: bool = True,
) -> Table:
    """Table V: the AgenticIR set, averaged per combination, then per group (A, B, C) and all."""
    _check_provenance(provenance)
    _one_bench(rows, "V")
    metrics = METRIC_SETS["agenticir"]
    table = Table(
        "V",
        "AgenticIR set: per group",
        ("method", "prompt", "group"),
        tuple(Column.for_metric(m) for m in metrics),
        [],
        provenance=dict(provenance),
    )
    test_rows = [row for row in rows if row.subset in AGENTICIR_GROUPS]
    by_method = _by(test_rows, "method", "prompt_kind")
    for method, prompt_kind in _methods(rows):
        method_rows = by_method.get((method, prompt_kind), [])
        for group in (*AGENTICIR_GROUPS, ALL):
            chosen = [r for r in method_rows if group == ALL or r.subset == group]
            values: dict[str, float | None] = {}
            reasons: dict[str, str] = {}
            counts: dict[str, int] = {}
            for name in metrics:
                metric_rows = [r for r in chosen if r.metric == name]
                combinations = list(_by(metric_rows, "deg_type").values())
                values[name], reason, counts[name] = _mean_of_means(combinations)
                if reason:
                    reasons[name] = reason
            table.rows.append(
                TableRow(
                    {"method": method, "prompt": prompt_kind, "group": group},
                    OURS,
                    values,
                    reasons,
                    counts=counts,
                    provenance=_row_provenance(provenance, method, metrics),
                )
            )
    if include_reported:
        for method, prompt, texts in _TABLE_V_REPORTED:
            published = dict(zip(metrics, texts, strict=True))
            labels = {"method": method, "prompt": prompt, "group": "as reported"}
            table.rows.append(_reported_row(labels, published, "Table V"))
    table.notes.append(
        "Ours: mean per combination, then the mean of a group's combinations; 'all' is the mean "
        "of all combination means. Exploration samples are excluded. The paper's single row per "
        "method does not state its aggregation. Low-resolution outputs left small are upsampled "
        "bicubic before full-reference metrics."
    )
    return table


def table_vi_real_world(
    rows: Sequence[ScoreRow],
    provenance: Mapping[str, Any],
    *,
    metrics: Sequence[str] = METRIC_SETS["real_world"],
) -> Table:
    """Table VI: no-reference metrics on the real-world set, per source subset and overall."""
    full = [name for name in metrics if get_metric(name).full_reference]
    if full:
        raise ValueError(f"the real-world set has no ground truth; drop {full}")
    table = _metric_table(
        "VI",
        "Real-world set (no reference)",
        rows,
        metrics,
        provenance,
        split="subset",
        include_all=True,
    )
    table.notes.append(
        "No ground truth: no-reference metrics only. The paper's numbers are not carried in "
        "this project: no reported rows."
    )
    return table


@dataclass(frozen=True)
class MethodInfo:
    """What Table VIII lists for a method besides its measured runtime."""

    name: str
    parameters: int | None = None
    steps: int | None = None
    setting: str = ""


def table_viii_runtime(
    methods: Sequence[MethodInfo],
    runtimes: Sequence[RuntimeRow],
    provenance: Mapping[str, Any],
    *,
    include_reported: bool = True,
) -> Table:
    """Table VIII: parameters, sampling steps and runtime per image of each method."""
    _check_provenance(provenance)
    table = Table(
        "VIII",
        "Parameters and runtime",
        ("method", "prompt", "setting"),
        (PARAMETERS, STEPS, RUNTIME),
        [],
        provenance=dict(provenance),
    )
    for info in methods:
        present = {r.prompt_kind for r in runtimes if r.method == info.name}
        kinds = [k for k in PROMPT_KINDS if k in present] + sorted(present - set(PROMPT_KINDS))
        kinds = kinds or [""]
        for prompt_kind in kinds:
            value, reason, count = _runtime_cell(runtimes, info.name, prompt_kind)
            benches = sorted(
                {
                    r.bench
                    for r in runtimes
                    if r.method == info.name and r.prompt_kind == prompt_kind
                }
            )
            values: dict[str, float | None] = {
                PARAMETERS.key: info.parameters / 1e9 if info.parameters is not None else None,
                STEPS.key: float(info.steps) if info.steps is not None else None,
                RUNTIME.key: value,
            }
            reasons = {RUNTIME.key: reason} if reason else {}
            if info.parameters is None:
                reasons[PARAMETERS.key] = "not applicable or not given for this method"
            if info.steps is None:
                reasons[STEPS.key] = "not applicable or not given for this method"
            setting = info.setting or ", ".join(benches)
            table.rows.append(
                TableRow(
                    {"method": info.name, "prompt": prompt_kind, "setting": setting},
                    OURS,
                    values,
                    reasons,
                    counts={RUNTIME.key: count},
                    provenance=_row_provenance(provenance, info.name, ()),
                )
            )
    if include_reported:
        for method, setting, params, steps, seconds in _TABLE_VIII_REPORTED:
            published = {
                key: text
                for key, text in (
                    (PARAMETERS.key, params),
                    (STEPS.key, steps),
                    (RUNTIME.key, seconds),
                )
                if text
            }
            row = _reported_row(
                {"method": method, "prompt": "", "setting": setting},
                published,
                "Table VIII and section 5",
            )
            for key in (PARAMETERS.key, STEPS.key, RUNTIME.key):
                if key not in published:
                    row.values[key] = None
                    row.reasons[key] = "not reported"
            table.rows.append(row)
    table.notes.append(
        "Params include the CoT adapter. Paper runtimes: 512x512 on the authors' GPUs (CoTIR-12B "
        "20 steps, 4B/9B 5 steps); the agents' runtimes are per image on the 7D subset."
    )
    return table


# --------------------------------------------------------------------------------------------
# Output: Parquet, Markdown, HTML


def table_records(table: Table) -> list[dict[str, Any]]:
    """The table as flat records (one per row): labels, source, values, reasons, provenance."""
    records = []
    for row in table.rows:
        record: dict[str, Any] = {"table": table.key}
        record.update({name: row.labels.get(name, "") for name in table.label_columns})
        record["source"] = row.source
        for column in table.columns:
            value = row.values.get(column.key)
            record[column.key] = None if value is None else float(value)
        record["n_images"] = max(row.counts.values(), default=0)
        record["na_reasons"] = json.dumps(row.reasons, ensure_ascii=False, sort_keys=True)
        provenance = row.provenance
        record["code_version"] = provenance.get("code_version")
        record["git_commit"] = provenance.get("git_commit")
        record["metric_versions"] = json.dumps(provenance.get("metric_versions"), sort_keys=True)
        record["metric_settings"] = json.dumps(provenance.get("metric_settings"), sort_keys=True)
        seed = provenance.get("seed")
        record["seed"] = None if seed is None else int(seed)
        record["checkpoint_hash"] = provenance.get("checkpoint_hash")
        record["provenance_source"] = provenance.get("source", "this run")
        records.append(record)
    return records


def _headers(table: Table) -> list[str]:
    return (
        [name.capitalize() for name in table.label_columns]
        + ["Source"]
        + [column.header for column in table.columns]
    )


def _cells(table: Table, row: TableRow) -> list[str]:
    labels = [row.labels.get(name, "") for name in table.label_columns]
    return labels + [row.source] + [table.cell(row, column) for column in table.columns]


def _provenance_line(table: Table) -> str:
    provenance = table.provenance
    packages = provenance.get("packages") or {}
    commit = provenance.get("git_commit") or "unknown"
    dirty = " (uncommitted changes)" if provenance.get("git_dirty") else ""
    return (
        f"cotir-pipeline {provenance.get('code_version')}, git {commit}{dirty}, "
        f"pyiqa {packages.get('pyiqa', 'unknown')}, torch {packages.get('torch', 'unknown')}, "
        f"seed {provenance.get('seed')}"
    )


def render_markdown(table: Table) -> str:
    """The table as Markdown, with numbered n/a footnotes, notes and provenance."""
    headers = _headers(table)
    lines = [f"### Table {table.key}: {table.title}", ""]
    lines.append("| " + " | ".join(headers) + " |")
    aligns = ["---"] * (len(table.label_columns) + 1) + ["---:"] * len(table.columns)
    lines.append("| " + " | ".join(aligns) + " |")
    for row in table.rows:
        cells = [cell.replace("|", "\\|") for cell in _cells(table, row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for number, reason in enumerate(table.footnotes(), start=1):
        lines.append(f"[{number}] n/a: {reason}  ")
    for note in table.notes:
        lines.append(f"Note: {note}  ")
    lines.append(
        f"Rows marked '{REPORTED}' are copied from the {PAPER} as published; "
        f"'{OURS}' rows were computed by this run.  "
    )
    lines.append(f"Provenance: {_provenance_line(table)}.")
    return "\n".join(lines) + "\n"


def render_html(table: Table) -> str:
    """The table as a standalone HTML fragment (escaped), same content as the Markdown."""
    escape = html.escape
    parts = [f"<h3>Table {escape(table.key)}: {escape(table.title)}</h3>", "<table>", "<thead><tr>"]
    parts.extend(f"<th>{escape(header)}</th>" for header in _headers(table))
    parts.append("</tr></thead><tbody>")
    for row in table.rows:
        css = "reported" if row.source == REPORTED else "ours"
        cells = "".join(f"<td>{escape(cell)}</td>" for cell in _cells(table, row))
        parts.append(f'<tr class="{css}">{cells}</tr>')
    parts.append("</tbody></table>")
    notes = [
        f"<li>[{number}] n/a: {escape(reason)}</li>"
        for number, reason in enumerate(table.footnotes(), start=1)
    ]
    notes.extend(f"<li>Note: {escape(note)}</li>" for note in table.notes)
    notes.append(f"<li>Provenance: {escape(_provenance_line(table))}</li>")
    parts.append("<ul>" + "".join(notes) + "</ul>")
    return "\n".join(parts) + "\n"


def write_table(table: Table, out_dir: Path) -> dict[str, Path]:
    """Write ``table_<key>.parquet``, ``.md`` and ``.html`` into ``out_dir``; return the paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"table_{table.key.lower()}"
    parquet = folder / f"{stem}.parquet"
    temp = folder / f".{stem}.parquet.partial"
    pq.write_table(pa.Table.from_pylist(table_records(table)), temp)
    temp.replace(parquet)
    markdown = folder / f"{stem}.md"
    write_text(markdown, render_markdown(table))
    page = folder / f"{stem}.html"
    write_text(page, render_html(table))
    return {"parquet": parquet, "markdown": markdown, "html": page}


# --------------------------------------------------------------------------------------------
# Figures


def _fit(image: np.ndarray, tile: int) -> Image.Image:
    picture = Image.fromarray(image)
    scale = tile / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.BICUBIC)


def _pick_samples(bench: BenchSet, count: int) -> list[BenchRecord]:
    """One sample per degradation label in set order, until ``count``."""
    chosen: list[BenchRecord] = []
    seen: set[str] = set()
    for record in bench.records:
        if record.deg_type not in seen:
            seen.add(record.deg_type)
            chosen.append(record)
        if len(chosen) == count:
            break
    return chosen


def image_grid(
    bench: BenchSet,
    outputs: Mapping[str, Path],
    out_path: Path,
    *,
    sample_ids: Sequence[str] | None = None,
    count: int = 4,
    tile: int = 160,
) -> Path:
    """A PNG grid: one row per sample, columns LQ, each method's output, HQ.

    ``outputs`` maps a column title to the folder of that method's outputs
    (e.g. ``<out>/precise``). Each picture is fitted into ``tile`` px (LQ
    upscaled for display); a missing output is a grey tile marked "missing".
    """
    records = [bench.get(i) for i in sample_ids] if sample_ids else _pick_samples(bench, count)
    if not records:
        raise ValueError(f"bench {bench.name!r} has no samples to draw")
    titles = ["LQ", *outputs, "HQ"]
    label_height, gap = 14, 4
    font = ImageFont.load_default()
    # Whole titles, wrapped to the tile's width: a method name cut short would make the
    # vague and precise columns of one checkpoint look alike.
    wrapped = [_wrap_to_width(title, font, tile) for title in titles]
    header_height = label_height * max(len(lines) for lines in wrapped)
    width = len(titles) * (tile + gap) + gap
    height = header_height + len(records) * (tile + label_height + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, lines in enumerate(wrapped):
        for row, text in enumerate(lines):
            position = (gap + column * (tile + gap), 1 + row * label_height)
            draw.text(position, text, fill=(0, 0, 0), font=font)
    for line, record in enumerate(records):
        top = header_height + line * (tile + label_height + gap) + gap
        draw.text((gap, top), f"{record.deg_type} ({record.id})"[:100], fill=(0, 0, 0), font=font)
        paths: list[Path | None] = [bench.lq_file(record)]
        paths += [find_image(Path(folder), record.output_name) for folder in outputs.values()]
        paths.append(bench.hq_file(record))
        for column, path in enumerate(paths):
            left = gap + column * (tile + gap)
            if path is None:
                draw.rectangle(
                    [left, top + label_height, left + tile, top + label_height + tile],
                    fill=(200, 200, 200),
                )
                draw.text((left + 4, top + label_height + 4), "missing", fill=(0, 0, 0), font=font)
                continue
            canvas.paste(_fit(read_rgb(path), tile), (left, top + label_height))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out


def _wrap_to_width(
    text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken after '-', ' ' or '(' where
    possible and anywhere otherwise."""
    lines: list[str] = []
    rest = text
    while rest:
        cut = len(rest)
        while cut > 1 and font.getlength(rest[:cut]) > width:
            cut -= 1
        if cut < len(rest):
            breaks = [i + 1 for i, char in enumerate(rest[:cut]) if char in "- ("]
            if breaks and breaks[-1] > cut // 2:
                cut = breaks[-1]
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return lines or [""]


def bar_chart(table: Table, column: str, out_path: Path) -> Path | None:
    """One column of ``table`` as a horizontal bar chart (PNG); None without matplotlib.

    Rows whose value is n/a are left out and counted in the title.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    chosen = next((c for c in table.columns if c.key == column), None)
    if chosen is None:
        raise KeyError(f"table {table.key} has no column {column!r}")
    names, values, colours = [], [], []
    skipped = 0
    for row in table.rows:
        value = row.values.get(column)
        if value is None:
            skipped += 1
            continue
        names.append(" / ".join(v for v in (*row.labels.values(), row.source) if v))
        values.append(value)
        colours.append("#999999" if row.source == REPORTED else "#1f77b4")
    figure = Figure(figsize=(8, 0.35 * max(len(names), 1) + 1.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.barh(range(len(values)), values, color=colours)
    axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.invert_yaxis()
    title = f"Table {table.key}: {chosen.header} (grey: reported by the paper)"
    if skipped:
        title += f"; {skipped} n/a row(s) omitted"
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=100)
    return out


__all__ = [
    "ALL",
    "OURS",
    "PARAMETERS",
    "REPORTED",
    "RUNTIME",
    "STEPS",
    "Column",
    "MethodInfo",
    "Table",
    "TableRow",
    "bar_chart",
    "image_grid",
    "render_html",
    "render_markdown",
    "table_ii_overall",
    "table_iii_per_task",
    "table_iv_seven_d",
    "table_provenance",
    "table_records",
    "table_v_agenticir",
    "table_vi_real_world",
    "table_viii_runtime",
    "write_table",
]
