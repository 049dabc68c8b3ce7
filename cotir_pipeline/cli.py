"""The ``cotir`` command line: the one entry point besides the Dagster UI.

Bad settings end the command with one line naming the variable and exit code 2,
never a traceback.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cotir_pipeline.provenance import package_versions
from cotir_pipeline.settings import CotirSettings, Profile, SettingsError, load_settings
from cotir_pipeline.store import ObjectStore, StoreConfig, StoreError, open_store

if TYPE_CHECKING:
    from cotir_pipeline.lineage.read import LineageIndex

EXIT_BAD_SETTING = 2
EXIT_CHECK_FAILED = 1


def _settings_or_exit() -> CotirSettings:
    try:
        return load_settings()
    except SettingsError as error:
        click.echo(f"cotir: bad setting: {error}", err=True)
        sys.exit(EXIT_BAD_SETTING)


#: Entry-point group through which other layers add commands (``models`` adds
#: ``restore``) without this library importing them: the layering stays one-way.
PLUGIN_GROUP = "cotir.commands"


class PluginGroup(click.Group):
    """A click group that also offers commands registered under :data:`PLUGIN_GROUP`.

    Plugins load only when their command is listed or run, so ``cotir doctor``
    never imports torch.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(point.name for point in entry_points(group=PLUGIN_GROUP))
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        for point in entry_points(group=PLUGIN_GROUP):
            if point.name == cmd_name:
                loaded = point.load()
                if not isinstance(loaded, click.Command):
                    raise click.ClickException(f"plugin {point.value} is not a click command")
                return loaded
        return None


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """CoTIR data, training and benchmark pipeline.

    Settings come from COTIR_* environment variables (see `cotir settings`).
    """


#: Settings that hold secrets: `cotir settings` prints them masked.
SECRET_SETTINGS = ("vllm_api_key",)
MASK = "***** (set)"


@cli.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of NAME=value lines.")
def show_settings(as_json: bool) -> None:
    """Print the effective settings after validation.

    \b
    Example:
      COTIR_STORE=s3://my-bucket/cotir cotir settings --json
    """
    settings = _settings_or_exit()
    values = settings.model_dump(mode="json")
    for name in SECRET_SETTINGS:  # say whether a secret is set, never what it is
        if values.get(name) is not None:
            values[name] = MASK
    if as_json:
        click.echo(json.dumps(values, indent=2, sort_keys=True))
        return
    for name, value in sorted(values.items()):
        click.echo(f"COTIR_{name.upper()}={'' if value is None else value}")


@cli.group("store")
def store_group() -> None:
    """Maintenance of the object store (COTIR_STORE)."""


@store_group.command("cleanup")
@click.option(
    "--older-than-hours",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    help="Only what was left longer ago than this (younger ones may belong to a running writer).",
)
@click.option("--prefix", default="", help="Only under this key prefix, e.g. pair_shards/.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def store_cleanup(older_than_hours: float, prefix: str, dry_run: bool) -> None:
    """Remove what killed writers left in the store: unfinished S3 multipart uploads
    (their parts stay on the server until aborted), a local store's partial files and
    staging folders. Finished objects are never touched.

    \b
    Example:
      COTIR_STORE=s3://cotir/runs cotir store cleanup --older-than-hours 6 --dry-run
    """
    settings = _settings_or_exit()
    store = open_store(StoreConfig.from_settings(settings))
    try:
        removed = store.cleanup(prefix, older_than_s=older_than_hours * 3600, dry_run=dry_run)
    except (StoreError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        click.echo(f"{verb}: {item}")
    click.echo(f"{verb} {len(removed)} leftover(s) under {store.url}/{prefix}")


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Check the settings, the object store and the installed packages.

    Exits 0 when everything needed by the current profile works, 1 when a check
    fails, 2 on a bad setting.

    \b
    Example:
      COTIR_STORE=s3://cotir/demo COTIR_S3_ENDPOINT_URL=http://127.0.0.1:7480 cotir doctor
    """
    settings = _settings_or_exit()
    checks: list[dict[str, str]] = [
        {"check": "settings", "status": "ok", "detail": f"profile={settings.profile.value}"}
    ]
    try:
        open_store(StoreConfig.from_settings(settings)).check()
        checks.append({"check": "store", "status": "ok", "detail": settings.store})
    except StoreError as error:
        checks.append({"check": "store", "status": "failed", "detail": str(error)})
    if settings.weights_dir is not None:
        checks.append({"check": "weights", "status": "ok", "detail": str(settings.weights_dir)})
    elif settings.profile is Profile.FULL:
        checks.append(
            {"check": "weights", "status": "failed", "detail": "COTIR_WEIGHTS_DIR: not set"}
        )
    else:
        checks.append(
            {"check": "weights", "status": "ok", "detail": "not needed by the demo profile"}
        )
    for name, version in package_versions().items():
        checks.append(
            {
                "check": f"package {name}",
                "status": "ok" if version else "missing",
                "detail": version or "not installed",
            }
        )
    failed = [check for check in checks if check["status"] != "ok"]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": checks}, indent=2))
    else:
        for check in checks:
            click.echo(f"{check['status']:>7}  {check['check']:<28} {check['detail']}")
    if failed:
        sys.exit(EXIT_CHECK_FAILED)


# -- lineage ---------------------------------------------------------------------------
# The lineage and catalog commands import their libraries inside the command, so
# `cotir --help` and `cotir doctor` never load pyarrow, and `cotir lineage ID` loads
# only pyarrow and the lineage package (no torch, no dagster).

EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2


def _store_for(settings: CotirSettings, location: str | None) -> ObjectStore:
    """The store holding the lineage index: ``location`` (a folder or URL) or COTIR_STORE."""
    if location is None:
        return open_store(StoreConfig.from_settings(settings))
    try:
        return open_store(StoreConfig.from_settings(settings).at(location))
    except ValueError as error:
        click.echo(f"cotir: bad --index {location!r}: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)


class _TqdmProgress:
    """A tqdm bar per build phase, on stderr."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.bar = None

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if phase != self.phase:
            self.close()
            units = {"read": "rows", "join": "sources", "write": "parts"}
            unit = units.get(phase.split(" ", 1)[0], "steps")
            self.bar = tqdm(total=total, desc=phase, unit=unit, unit_scale=True, file=sys.stderr)
            self.phase = phase
        assert self.bar is not None
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _format_rows(rows: list[dict], columns: tuple[str, ...], max_width: int = 60) -> list[str]:
    """Rows as fixed-width text columns (long values cut with an ellipsis)."""

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(row.get(name)) for name in columns] for row in rows]
    widths = [max([len(name)] + [len(line[i]) for line in cells]) for i, name in enumerate(columns)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True))]
    for line in cells:
        lines.append(
            "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True))
        )
    return [line.rstrip() for line in lines]


@cli.command("lineage")
@click.argument("sample_id", required=False)
@click.option(
    "--where",
    "where",
    metavar="FILTER",
    help="List samples matching FILTER, e.g. \"source = 'gopro' and status = 'dropped'\" "
    "(=, !=, <, >, in (...), not in, is [not] null, contains, and, or, not, parentheses).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Most rows --where lists.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--index",
    "index_location",
    metavar="URL",
    help="Store holding sample_lineage/ (a folder, file:// or s3:// URL); default COTIR_STORE.",
)
@click.option(
    "--build",
    is_flag=True,
    help="(Re)build the index first from every stage's manifests in the store.",
)
@click.option(
    "--checkpoint",
    "checkpoint",
    metavar="NAME",
    help="Summarise what trained a checkpoint (a method such as "
    "cotir-demo-paper-r1a2b3c-s600, or a run id): samples per source and degradation.",
)
def lineage(
    sample_id: str | None,
    where: str | None,
    limit: int,
    as_json: bool,
    index_location: str | None,
    build: bool,
    checkpoint: str | None,
) -> None:
    """Show the lineage of one sample, or list samples matching a filter.

    The chain runs from the source file (or recipe and seed) through the pair
    shard, annotation, filter decision and training shard to the training runs,
    bench sets and evaluation rows that used the sample.

    \b
    Examples:
      cotir lineage 1e72b94efbd4bd93dff1bf06ba4743bd
      cotir lineage 1e72b94efbd4bd93dff1bf06ba4743bd --json
      cotir lineage --where "source = 'gopro' and status = 'dropped'" --limit 20
      cotir lineage --where "stage = 'filtered_annotations' and filter_score < 0.2"
      cotir lineage --where "training_runs contains 'run-2026-11-26'" --json
      cotir lineage --build
      cotir lineage --checkpoint cotir-demo-paper-r7f1cbf3f9d-s600
    """
    if checkpoint is not None:
        _checkpoint_summary(checkpoint, index_location, as_json)
        return
    if sample_id is None and where is None and not build:
        raise click.UsageError("give a SAMPLE_ID, --where FILTER, --checkpoint NAME or --build")
    if sample_id is not None and where is not None:
        raise click.UsageError("give either a SAMPLE_ID or --where, not both")
    settings = _settings_or_exit()
    store = _store_for(settings, index_location)
    if build:
        _build_lineage_index(store, as_json=as_json, report=sample_id is None and where is None)
        if sample_id is None and where is None:
            return
    if sample_id is not None:
        _print_sample_chain(store, sample_id, as_json)
    else:
        _print_matching_samples(store, str(where), limit, as_json)


def _open_lineage_or_exit(store: ObjectStore) -> LineageIndex:
    """The lineage index; exit with the not-found code, saying why, when there is none."""
    # Only what the command needs: a lookup loads neither the builder nor the filter
    # language (both import pyarrow.compute).
    from cotir_pipeline.lineage.read import LineageIndexError, open_lineage

    try:
        return open_lineage(store)
    except (LineageIndexError, StoreError) as error:
        click.echo(f"cotir: {error}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except ValueError as error:
        click.echo(f"cotir: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _build_lineage_index(store: ObjectStore, *, as_json: bool, report: bool) -> None:
    """`cotir lineage --build`: (re)build the index, and print what it did when ``report``."""
    from cotir_pipeline.lineage.build import (
        LineageInputError,
        build_lineage_from_store,
        report_json,
    )

    progress = _TqdmProgress()
    try:
        built = build_lineage_from_store(store, progress=progress)
    except (LineageInputError, StoreError) as error:
        progress.close()
        click.echo(f"cotir: lineage build failed: {error}", err=True)
        sys.exit(EXIT_CHECK_FAILED)
    progress.close()
    if not report:
        return
    if as_json:
        click.echo(report_json(built))
        return
    per_sample = built.bytes_per_sample()["total"]
    click.echo(
        f"indexed {built.samples} samples in {built.parts} parts "
        f"({built.parts_written} written, {built.parts_unchanged} unchanged) "
        f"in {built.seconds:.1f} s; {per_sample:.0f} bytes per sample; "
        f"status {built.status_counts}"
    )


def _print_sample_chain(store: ObjectStore, sample_id: str, as_json: bool) -> None:
    """`cotir lineage ID`: the sample's chain, with the details of the stages' own rows."""
    from cotir_pipeline.lineage.read import LineageIndexError

    index = _open_lineage_or_exit(store)
    try:
        record = index.lookup(sample_id)
    except ValueError as error:  # not a sample id
        click.echo(f"cotir: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except (LineageIndexError, StoreError) as error:
        click.echo(f"cotir: {error}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    if record is None:
        if as_json:
            click.echo("null")
        click.echo(f"cotir: sample {sample_id} is not in the lineage index", err=True)
        sys.exit(EXIT_NOT_FOUND)
    from cotir_pipeline.lineage.details import chain_details

    details = chain_details(store, record)
    if as_json:
        click.echo(json.dumps({**record.to_dict(), "details": details}, indent=2))
    else:
        click.echo(record.format() + ("\n\n" + "\n".join(details) if details else ""))


def _print_matching_samples(store: ObjectStore, where: str, limit: int, as_json: bool) -> None:
    """`cotir lineage --where FILTER`: how many samples match, and the first ``limit``."""
    from cotir_pipeline.lineage.read import LineageIndexError

    index = _open_lineage_or_exit(store)
    try:
        result = index.query(where, limit=limit)
    except ValueError as error:  # a filter the query refused
        click.echo(f"cotir: {_bad_where_prefix(error, where)}{error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except (LineageIndexError, StoreError) as error:
        click.echo(f"cotir: {error}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    if as_json:
        payload = {"where": where, "matched": result.matched, "rows": result.rows}
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"{len(result.rows)} of {result.matched} matching samples (where {where})")
    for line in _format_rows(result.rows, result.columns) if result.rows else []:
        click.echo(line)


def _bad_where_prefix(error: ValueError, where: str) -> str:
    """``"bad --where: "`` when ``error`` is the filter language's (loaded by the query)."""
    from cotir_pipeline.lineage.where import WhereError

    return "bad --where: " if isinstance(error, WhereError) else ""


def _checkpoint_summary(name: str, index_location: str | None, as_json: bool) -> None:
    """``cotir lineage --checkpoint NAME``: what trained it, per source and degradation."""
    from cotir_pipeline.lineage.details import checkpoint_summary

    store = _store_for(_settings_or_exit(), index_location)
    try:
        summary = checkpoint_summary(store, name)
    except ValueError as error:
        click.echo(f"cotir: {error}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    limit = f" up to step {summary['up_to_step']}" if summary["up_to_step"] else ""
    click.echo(
        f"run {summary['run_label']}{limit}: {summary['samples']} samples, {summary['draws']} draws"
    )
    rows = summary["by_source_and_degradation"]
    for line in _format_rows(rows, ("source", "degradation", "samples", "draws")):
        click.echo(line)


# -- catalog ---------------------------------------------------------------------------


@cli.group("catalog")
def catalog() -> None:
    """The source catalog: the datasets the pipeline draws from."""


_CATALOG_COLUMNS = ("name", "tasks", "fetch", "expected_pairs", "real_world", "license", "title")


@catalog.command("list")
@click.option(
    "--task",
    "task",
    metavar="CODE",
    help="Only sources covering this task code (e.g. DR, DH, LLE, SR; case-insensitive).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows with every field.")
def catalog_list(task: str | None, as_json: bool) -> None:
    """List the source catalog as a table.

    \b
    Examples:
      cotir catalog list
      cotir catalog list --task DR
      cotir catalog list --task dh --json
    """
    _settings_or_exit()
    from cotir_pipeline.sources.catalog import CatalogError, catalog_table, load_catalog
    from cotir_pipeline.tasks import TaskCode

    code: str | None = None
    if task is not None:
        codes = {member.value.upper(): member.value for member in TaskCode}
        code = codes.get(task.upper())
        if code is None:
            click.echo(
                f"cotir: unknown task {task!r}; task codes: {', '.join(sorted(codes.values()))}",
                err=True,
            )
            sys.exit(EXIT_BAD_INPUT)
    try:
        rows = catalog_table(load_catalog())
    except CatalogError as error:
        click.echo(f"cotir: the source catalog is invalid:\n{error}", err=True)
        sys.exit(EXIT_CHECK_FAILED)
    if code is not None:
        rows = [row for row in rows if code in row["tasks"].split(", ")]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for line in _format_rows(rows, _CATALOG_COLUMNS, max_width=48):
        click.echo(line)
    pairs = sum(row["expected_pairs"] or 0 for row in rows)
    click.echo(f"{len(rows)} sources, {pairs} expected pairs" + (f" (task {code})" if code else ""))


def main() -> None:
    """Console-script entry point."""
    cli()


# -- bench ---------------------------------------------------------------------------------

#: Entry-point group of restorer factories for `cotir bench --method NAME:ARG` (``models``
#: registers ``cotir``: a CoTIR checkpoint folder), so this library never imports torch.
RESTORER_GROUP = "cotir.restorers"


def _table_name(method: str) -> str:
    """What the tables call the method a ``--method`` value names (the one grammar of
    method names, :mod:`cotir_pipeline.evaluation.method_names`): ``folder:PATH`` is
    ``folder-<folder name>``, ``cotir:DIR`` the checkpoint's run-and-step name."""
    from cotir_pipeline.checkpoint_layout import checkpoint_folder_method
    from cotir_pipeline.evaluation.method_names import FOLDER_METHOD_PREFIX, method_name

    kind, _, argument = method.partition(":")
    if kind == "folder" and argument:
        name = Path(argument).name
        return method_name(FOLDER_METHOD_PREFIX, name, FOLDER_METHOD_PREFIX + "outputs")
    if kind == "cotir" and argument:
        return checkpoint_folder_method(Path(argument))
    return method


def _restorer_for(method: str, prompt_kind: str) -> object:
    """The restorer a ``--method`` value names (folders hold one subfolder per prompt kind)."""
    from cotir_pipeline.evaluation.restorers import (
        FolderRestorer,
        IdentityRestorer,
        SequentialToolChain,
    )

    kind, _, argument = method.partition(":")
    if kind == "identity" and not argument:
        return IdentityRestorer()
    if kind == "classical_chain" and not argument:
        return SequentialToolChain()
    if kind == "folder" and argument:
        name = _table_name(method)
        return FolderRestorer.for_release(Path(argument), prompt_kind, name)  # type: ignore[arg-type]
    for point in entry_points(group=RESTORER_GROUP):
        if point.name == kind and argument:
            return point.load()(argument)
    known = ", ".join(
        ["identity", "classical_chain", "folder:PATH"]
        + [f"{point.name}:ARG" for point in entry_points(group=RESTORER_GROUP)]
    )
    raise click.BadParameter(f"unknown method {method!r} (known: {known})", param_hint="--method")


def _averages(
    rows: list[Any], prompt_kinds: tuple[str, ...], metrics: list[str]
) -> dict[str, dict[str, object]]:
    """Per prompt kind and metric: the mean over every image, or n/a with the reasons when
    any image has no value (a mean over part of a set would not be comparable)."""
    averages: dict[str, dict[str, object]] = {}
    for kind in prompt_kinds:
        for name in metrics:
            values = [r.value for r in rows if r.prompt_kind == kind and r.metric == name]
            present = [v for v in values if v is not None]
            reasons = {
                r.reason for r in rows if r.prompt_kind == kind and r.metric == name and r.reason
            }
            averages.setdefault(kind, {})[name] = (
                round(sum(present) / len(present), 4)
                if present and len(present) == len(values)
                else f"n/a ({'; '.join(sorted(reasons))[:200] or 'no value'})"
            )
    return averages


def _warn_of_unknown_labels(records: list[Any]) -> dict[str, int]:
    """Say once per label, with its count, which degradation labels no known spelling
    matches (their task is 'unknown'); return them."""
    from cotir_pipeline.evaluation.bench_sets import unknown_labels

    unknown = unknown_labels(records)
    if unknown:
        listed = ", ".join(f"{label!r} ({count})" for label, count in unknown.items())
        click.echo(
            f"cotir bench: degradation labels not recognised in any known spelling (their "
            f"task is 'unknown'; the classical chain passes those parts through): {listed}",
            err=True,
        )
    return unknown


@cli.command("bench")
@click.argument("bench_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--method",
    default="classical_chain",
    show_default=True,
    help="identity, classical_chain, folder:PATH (another method's outputs), or "
    "cotir:CHECKPOINT_DIR (a trained CoTIR checkpoint).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where outputs go (<out>/vague/, <out>/precise/) and the scores (scores.parquet).",
)
@click.option(
    "--prompt",
    "prompt_kinds",
    type=click.Choice(["vague", "precise"]),
    multiple=True,
    default=("vague", "precise"),
    show_default=True,
    help="Which prompts to run.",
)
@click.option(
    "--metrics",
    default="psnr,ssim",
    show_default=True,
    help="Comma-separated pyiqa metrics; unavailable ones are reported n/a with the reason.",
)
@click.option("--device", default="cpu", show_default=True, help="Device for the metrics.")
@click.option("--json", "as_json", is_flag=True, help="Print the averages as JSON.")
def bench(
    bench_dir: Path,
    method: str,
    out: Path,
    prompt_kinds: tuple[str, ...],
    metrics: str,
    device: str,
    as_json: bool,
) -> None:
    """Restore a bench set (test.jsonl + lq/ + hq/) with a method and score the outputs.

    Interrupted runs resume: existing outputs are kept.

    \b
    Example (the demo bench that `make demo` writes into the store):
      cotir bench .cotir/store/bench_sets/demo_bench --method classical_chain --out runs/cc
    """
    from tqdm import tqdm

    from cotir_pipeline.evaluation.bench_sets import (
        BenchFormatError,
        read_bench_set,
    )
    from cotir_pipeline.evaluation.restorers import run_restorer
    from cotir_pipeline.evaluation.scoring import evaluate_outputs, write_rows
    from cotir_pipeline.weights import MissingWeightsError

    _settings_or_exit()  # the restorers read COTIR_WEIGHTS_DIR and the metrics' caches
    try:
        bench_set = read_bench_set(bench_dir)
    except (BenchFormatError, FileNotFoundError) as error:
        click.echo(f"cotir bench: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    unknown = _warn_of_unknown_labels(bench_set.records)
    names = [name.strip() for name in metrics.split(",") if name.strip()]
    method_name = _table_name(method)  # as the tables call it, in the score rows
    rows = []
    with tqdm(total=len(prompt_kinds) * 2, desc="bench", unit="step", file=sys.stderr) as bar:
        for kind in prompt_kinds:
            try:
                restorer = _restorer_for(method, kind)
            except (MissingWeightsError, FileNotFoundError) as error:
                click.echo(f"cotir bench: {error}", err=True)
                sys.exit(EXIT_BAD_SETTING)
            summary = run_restorer(restorer, bench_set, out, kind)  # type: ignore[arg-type]
            bar.update(1)
            for sample, reason in summary.failed:
                click.echo(f"  {kind}: {sample} failed: {reason}", err=True)
            rows += evaluate_outputs(
                bench_set,
                out / kind,
                names,
                method=method_name,
                prompt_kind=kind,  # type: ignore[arg-type]
                device=device,
            )
            bar.update(1)
    write_rows(rows, out / "scores.parquet")
    averages = _averages(rows, prompt_kinds, names)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "bench": str(bench_dir),
                    "method": method,
                    "name": method_name,
                    "mean": averages,
                    "unknown_labels": unknown,
                }
            )
        )
        return
    click.echo(f"{method_name} ({method}) on {bench_dir} ({len(bench_set.records)} samples):")
    for kind, values in averages.items():
        click.echo(f"  {kind:8} " + "  ".join(f"{name}={value}" for name, value in values.items()))
    click.echo(f"scores: {out / 'scores.parquet'}")


if __name__ == "__main__":  # at the end: every command is defined by then
    main()
