"""The benchmark tables from every score in the store: Tables II-VI and VIII, grids, charts.

:func:`write_tables` reads every score and runtime row under ``metric_scores/`` and the
run records under ``restorations/``, builds the paper's tables (with the paper's
reported rows beside ours, :mod:`.tables`), one image grid per bench set and a bar chart
per table, replaces ``benchmark_tables/`` in the store with them, and checks that every
method with scores appears in its tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotir_pipeline.evaluation import tables as t
from cotir_pipeline.evaluation.bench_sets import PROMPT_KINDS, PromptKind
from cotir_pipeline.evaluation.method_names import prompt_matters
from cotir_pipeline.evaluation.method_runs import pick_ids
from cotir_pipeline.evaluation.scoring import (
    RuntimeRow,
    ScoreRow,
    read_runtime_rows,
    read_score_rows,
)
from cotir_pipeline.evaluation.stage import (
    BENCHMARK_TABLES_PREFIX,
    METRIC_SCORES_PREFIX,
    RESTORATIONS_PREFIX,
    RUN_RECORD,
    SAMPLE_ROWS_SUFFIX,
    BenchSpec,
    EvaluationOptions,
    local_bench,
)
from cotir_pipeline.store import ObjectStore
from cotir_pipeline.store.sync import local_files, push


def stored_rows(store: ObjectStore, work: Path) -> tuple[list[ScoreRow], list[RuntimeRow]]:
    """Every score and runtime row under metric_scores/ (one Parquet file per partition)."""
    scores: list[ScoreRow] = []
    runtimes: list[RuntimeRow] = []
    for number, info in enumerate(store.list(METRIC_SCORES_PREFIX + "/")):
        if not info.key.endswith(".parquet"):
            continue
        path = work / "rows" / f"{number}.parquet"
        store.download_file(info.key, path)
        if info.key.endswith(".runtime.parquet"):
            runtimes += read_runtime_rows(path)
        elif not info.key.endswith(SAMPLE_ROWS_SUFFIX):
            scores += read_score_rows(path)
    return scores, runtimes


def run_records(store: ObjectStore) -> dict[str, dict[str, Any]]:
    """The run record of each method (parameters, steps, checkpoint hash), any bench."""
    records: dict[str, dict[str, Any]] = {}
    for info in store.list(RESTORATIONS_PREFIX + "/"):
        if info.key.endswith("/" + RUN_RECORD):
            record = json.loads(store.get_text(info.key))
            records.setdefault(str(record.get("method")), record)
    return records


def method_grid(
    store: ObjectStore,
    options: EvaluationOptions,
    bench_name: str,
    methods: Sequence[str],
    out_path: Path,
    work: Path,
) -> tuple[Path, list[str]]:
    """LQ | each method's output | HQ for one sample per degradation (4 rows); the grid
    and its column titles."""
    bench = local_bench(store, bench_name, options.cache)
    ids = pick_ids(bench, 4)
    columns: dict[str, Path] = {}
    for method in methods:
        kinds: tuple[PromptKind, ...] = PROMPT_KINDS if prompt_matters(method) else ("precise",)
        for kind in kinds:
            folder = work / "grid" / bench_name / method / kind
            folder.mkdir(parents=True, exist_ok=True)
            for sample_id in ids:
                name = bench.get(sample_id).output_name
                key = f"{RESTORATIONS_PREFIX}/{method}/{bench_name}/{kind}/{name}"
                if store.exists(key):
                    store.download_file(key, folder / name)
            title = f"{method} ({kind})" if prompt_matters(method) else method
            columns[title] = folder
    grid = t.image_grid(bench, columns, out_path, sample_ids=ids, tile=128)
    return grid, ["LQ", *columns, "HQ"]


@dataclass
class TablesResult:
    """What :func:`write_tables` wrote, and its check."""

    markdown: dict[str, str]  # table key -> its Markdown
    charts: dict[str, str]  # table key -> chart file name, or why there is none
    grids: dict[str, tuple[Path, list[str]]]  # bench -> grid file and column titles
    out: Path  # the local folder that was uploaded
    files: list[str]  # relative paths under benchmark_tables/
    scores: list[ScoreRow]
    missing_per_table: dict[str, list[str]]  # table key -> methods with scores but no row
    not_in_store: list[str]  # written files that do not read back

    @property
    def passed(self) -> bool:
        """Every scored method is in its tables and every file is in the store."""
        return not self.missing_per_table and not self.not_in_store


def _sorted_methods(methods: set[str]) -> list[str]:
    """Built-ins first, then the rest, each alphabetically."""
    return sorted(methods, key=lambda m: (prompt_matters(m), m))


def _build_tables(
    scores: list[ScoreRow],
    runtimes: list[RuntimeRow],
    records: dict[str, dict[str, Any]],
    specs: Sequence[BenchSpec],
    provenance: dict[str, Any],
) -> list[tuple[t.Table, BenchSpec | None]]:
    """Each table with the bench set its rows come from (None: the profile has none)."""

    def bench_of(kind: str) -> BenchSpec | None:
        return next((spec for spec in specs if spec.kind == kind), None)

    def rows_of(spec: BenchSpec | None) -> list[ScoreRow]:
        return [row for row in scores if spec is not None and row.bench == spec.name]

    def times_of(spec: BenchSpec | None) -> list[RuntimeRow]:
        return [row for row in runtimes if spec is not None and row.bench == spec.name]

    main, agentic, seven, real = (
        bench_of(kind) for kind in ("cotir_bench", "agenticir", "seven_d", "real_world")
    )
    infos = [
        t.MethodInfo(
            name,
            parameters=records.get(name, {}).get("parameters"),
            steps=records.get(name, {}).get("steps"),
        )
        for name in _sorted_methods({row.method for row in times_of(main)})
    ]
    return [
        (t.table_ii_overall(rows_of(main), provenance), main),
        (t.table_iii_per_task(rows_of(main), provenance), main),
        (t.table_iv_seven_d(rows_of(seven), times_of(seven), provenance), seven),
        (t.table_v_agenticir(rows_of(agentic), provenance), agentic),
        (t.table_vi_real_world(rows_of(real), provenance), real),
        (t.table_viii_runtime(infos, times_of(main), provenance), main),
    ]


def _upload_replacing(store: ObjectStore, out: Path) -> dict[str, Path]:
    """Upload ``out`` as benchmark_tables/ and delete what an earlier run left there."""
    push(store, out, BENCHMARK_TABLES_PREFIX, refresh="always", remove_stale=True)
    return local_files(out)


def _write_each_table(
    built: list[tuple[t.Table, BenchSpec | None]],
    benches_with_rows: set[str],
    profile: str,
    out: Path,
) -> tuple[dict[str, str], dict[str, str]]:
    """Write every table (with a note on where its rows come from) and its bar chart into
    ``out``; the tables' Markdown and the charts' file names (or why there is none)."""
    markdown: dict[str, str] = {}
    for table, spec in built:
        if spec is None:
            table.notes.append(f"The {profile} profile has no set for this table.")
        else:
            table.notes.append(f"Our rows: bench set '{spec.name}', {spec.description}.")
            if spec.name not in benches_with_rows:
                table.notes.append(f"No scores of '{spec.name}' in the store yet.")
        paths = t.write_table(table, out)
        markdown[table.key] = paths["markdown"].read_text(encoding="utf-8")
    charts = {}
    for table, _ in built:
        column = t.RUNTIME.key if table.key == "VIII" else "psnr"
        if any(c.key == column for c in table.columns):
            chart = t.bar_chart(table, column, out / f"chart_{table.key.lower()}_{column}.png")
            charts[table.key] = chart.name if chart else "n/a: matplotlib is not installed"
    return markdown, charts


def write_tables(
    store: ObjectStore,
    options: EvaluationOptions,
    specs: Sequence[BenchSpec],
    work: Path,
    log: Callable[[str], None],
) -> TablesResult:
    """Build all tables, grids and charts in ``work`` and replace benchmark_tables/ with them."""
    scores, runtimes = stored_rows(store, work)
    records = run_records(store)
    ignored = sorted({row.bench for row in scores} - {spec.name for spec in specs})
    if ignored:
        log(f"score rows of bench sets outside this profile are left out: {ignored}")
    provenance = t.table_provenance(
        options.seed,
        checkpoint_hashes={
            method: str(record["checkpoint_hash"])
            for method, record in records.items()
            if record.get("checkpoint_hash")
        },
        settings={
            "profile": options.profile,
            "device": options.device,
            "benches": [spec.name for spec in specs],
            "seed": options.seed,
        },
    )
    built = _build_tables(scores, runtimes, records, specs, provenance)

    def methods_on(spec: BenchSpec) -> set[str]:
        return {row.method for row in scores if row.bench == spec.name}

    out = work / "out"
    benches_with_rows = {row.bench for row in [*scores, *runtimes]}
    markdown, charts = _write_each_table(built, benches_with_rows, options.profile, out)
    grids: dict[str, tuple[Path, list[str]]] = {}
    for spec in specs:
        methods = _sorted_methods(methods_on(spec))
        if methods:
            grids[spec.name] = method_grid(
                store, options, spec.name, methods, out / f"grid_{spec.name}.png", work
            )
    index = ["# Benchmark tables", ""]
    index += [f"![{name}](grid_{name}.png)" for name in grids]
    index += ["", *markdown.values()]
    (out / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    (out / "provenance.json").write_text(
        json.dumps(provenance, indent=2, sort_keys=True, default=str), encoding="utf-8"
    )
    files = _upload_replacing(store, out)
    untabled = {
        table.key: sorted(m for m in methods_on(spec) if f"| {m} |" not in markdown[table.key])
        for table, spec in built
        if spec is not None and table.key != "VIII"  # VIII lists runtimes, not scores
    }
    return TablesResult(
        markdown=markdown,
        charts=charts,
        grids=grids,
        out=out,
        files=sorted(files),
        scores=scores,
        missing_per_table={key: methods for key, methods in untabled.items() if methods},
        not_in_store=[
            name for name in files if not store.exists(f"{BENCHMARK_TABLES_PREFIX}/{name}")
        ],
    )
