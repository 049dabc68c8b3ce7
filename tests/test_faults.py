"""Fault injection: what an operator meets, injected, and what the pipeline does about it.

Each test injects one fault through the real code path (the Dagster asset, the fetcher,
the trainer) and checks the outcome docs/RELIABILITY.md promises. Run them alone with
``pytest -m faults``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from assets.data_stage.assets import build_data_stage_assets
from assets.data_stage.resource import DataStageResource
from assets.resources import ObjectStoreResource
from cotir_pipeline.pair_stage import load_plan
from cotir_pipeline.sources.spec import SourceCatalog
from cotir_pipeline.store import LocalObjectStore

pytestmark = pytest.mark.faults


# -- a manual-mirror source that spreads its pairs over four split folders -------------------


def _lsrw_like(expected_pairs: int) -> SourceCatalog:
    """A catalog with one manual source laid out like LSRW: two sets x two cameras, the
    expected_files spot-checking two of the eight folders only."""
    splits = [
        {
            "name": split,
            "lq_glob": f"LSRW/{folder}/{camera}/low/*",
            "hq_glob": f"LSRW/{folder}/{camera}/high/*",
        }
        for split, folder in (("train", "Training data"), ("test", "Eval"))
        for camera in ("Nikon", "Huawei")
    ]
    return SourceCatalog.model_validate(
        {
            "version": 1,
            "sources": [
                {
                    "name": "lsrw_like",
                    "title": "LSRW-like manual mirror",
                    "tasks": ["LLE"],
                    "degradations": ["low_light"],
                    "license": "test data",
                    "homepage": "https://example.org/lsrw",
                    "citation": "A test source laid out like LSRW.",
                    "fetch": {
                        "method": "manual",
                        "instructions": "Put LSRW/ into the mirror folder.",
                        "expected_files": [
                            "LSRW/Training data/Nikon/low/*",
                            "LSRW/Eval/Huawei/high/*",
                        ],
                    },
                    "splits": splits,
                    "expected_pairs": expected_pairs,
                }
            ],
        }
    )


def _write_mirror(mirror: Path, per_folder: int) -> int:
    """``per_folder`` valid low/high pairs in each of the four camera folders."""
    rng = np.random.default_rng(0)
    for folder in ("Training data", "Eval"):
        for camera in ("Nikon", "Huawei"):
            for index in range(per_folder):
                for side, scale in (("low", 0.3), ("high", 1.0)):
                    target = mirror / "lsrw_like" / "LSRW" / folder / camera / side
                    target.mkdir(parents=True, exist_ok=True)
                    pixels = (rng.integers(0, 255, (24, 24, 3)) * scale).astype(np.uint8)
                    Image.fromarray(pixels).save(target / f"{camera}{index}.png")
    return 4 * per_folder


def _materialize_raw_pairs(
    catalog: SourceCatalog, tmp_path: Path, **data_stage: object
) -> tuple[dg.ExecuteInProcessResult, LocalObjectStore]:
    store = LocalObjectStore(tmp_path / "store")
    assets = build_data_stage_assets(catalog)
    resources = {
        "store": ObjectStoreResource(url=store.url),
        "data_stage": DataStageResource(
            stored_size=32,
            shard_size=8,
            cache_dir=str(tmp_path / "cache"),
            mirror_dir=str(tmp_path / "mirror"),
            **data_stage,  # type: ignore[arg-type]
        ),
    }
    result = dg.materialize(
        assets[:2], resources=resources, partition_key="lsrw_like", raise_on_error=False
    )
    return result, store


def test_a_manual_mirror_yields_every_pair_of_every_split(tmp_path: Path) -> None:
    """Before: only the spot-checked folders were read (0 ok, 'unpaired' drops)."""
    pairs = _write_mirror(tmp_path / "mirror", per_folder=6)
    result, store = _materialize_raw_pairs(_lsrw_like(expected_pairs=pairs), tmp_path)
    assert result.success
    plan = load_plan(store, "lsrw_like")
    assert sum(pair.status == "ok" for pair in plan) == pairs == 24
    assert {pair.split for pair in plan} == {"train", "test"}
    metadata = result.asset_materializations_for_node("raw_pairs")[0].metadata
    assert metadata["pair_count"].value == {"verdict": "ok", "found": 24, "expected": 24}


def test_a_source_far_below_its_expected_pairs_fails_naming_both_counts(
    tmp_path: Path,
) -> None:
    _write_mirror(tmp_path / "mirror", per_folder=6)
    result, store = _materialize_raw_pairs(_lsrw_like(expected_pairs=48), tmp_path)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert failure.user_failure_data is not None
    description = failure.user_failure_data.description or ""
    assert "24 pairs found, 48 expected" in description
    assert "50.0%" in description
    # The plan is stored anyway: it says which files went unpaired.
    assert len(load_plan(store, "lsrw_like")) == 24


def test_a_few_missing_pairs_within_the_tolerance_only_warn(tmp_path: Path) -> None:
    _write_mirror(tmp_path / "mirror", per_folder=6)
    result, _ = _materialize_raw_pairs(
        _lsrw_like(expected_pairs=25), tmp_path, pair_count_tolerance=0.1
    )
    assert result.success
    metadata = result.asset_materializations_for_node("raw_pairs")[0].metadata
    assert metadata["pair_count"].value == {"verdict": "short", "found": 24, "expected": 25}


# -- an annotation outage, then recovery -------------------------------------------------------


def test_samples_whose_annotation_failed_are_judged_again_after_it_recovers(
    tmp_path: Path,
) -> None:
    """Before: a failed annotation became a 'dropped' filter row, the shard counted as
    judged, and after a healthy re-run the samples stayed out of the training shards."""
    from dataclasses import replace

    from cotir_pipeline.annotation.clip_filter import ConsistencyFilter
    from cotir_pipeline.annotation.template_backend import TemplateBackend
    from cotir_pipeline.annotation_stage import (
        annotate_source,
        filter_source,
        write_training_shards,
    )
    from cotir_pipeline.pair_stage import plan_demo_pairs, recipe_refs, write_pair_shards

    class Outage(TemplateBackend):
        """About a third of the samples time out, as against an overloaded vLLM server."""

        def annotate(self, requests):  # type: ignore[no-untyped-def]
            return [
                replace(r, status="failed", answer=None, reason="timeout: read timed out")
                if int(r.sample_id[-2:], 16) % 3 == 0
                else r
                for r in super().annotate(requests)
            ]

    plan = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    train = [pair for pair in plan if pair.status == "ok" and pair.split == "train"][:24]
    store = LocalObjectStore(tmp_path / "store")
    write_pair_shards(store, train, size=48, shard_size=8)

    during = annotate_source(store, "demo", Outage())
    outage = during.not_ok
    assert 0 < outage < 24
    judged = filter_source(store, "demo", ConsistencyFilter())
    assert judged.reasons.get("annotation failed") == outage
    first = write_training_shards(store, ["demo"], shard_size=10)

    healthy = annotate_source(store, "demo", TemplateBackend())
    assert (healthy.ok, healthy.not_ok) == (24, 0)
    rejudged = filter_source(store, "demo", ConsistencyFilter())
    assert "annotation failed" not in rejudged.reasons
    assert rejudged.ok == first.samples + outage == 24 - rejudged.not_ok
    after = write_training_shards(store, ["demo"], shard_size=10)
    assert after.samples == rejudged.ok


# -- a degradation's kept set vanishes: its old training shard must not be trained on ---------


def test_shards_of_an_earlier_build_are_removed_and_never_trained_on(tmp_path: Path) -> None:
    """Before: the vanished degradation's old tar stayed in the store, and the trainer,
    which listed folders, trained on it."""
    import shutil
    from dataclasses import replace

    from cotir_pipeline.annotation.clip_filter import ConsistencyFilter
    from cotir_pipeline.annotation.template_backend import TemplateBackend
    from cotir_pipeline.annotation_stage import (
        annotate_source,
        filter_source,
        write_training_shards,
    )
    from cotir_pipeline.pair_stage import plan_demo_pairs, recipe_refs, write_pair_shards
    from models.data import discover_shards, resolve_shard_source

    plan = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    train = [pair for pair in plan if pair.status == "ok" and pair.split == "train"][:24]
    store = LocalObjectStore(tmp_path / "store")
    write_pair_shards(store, train, size=48, shard_size=8)
    annotate_source(store, "demo", TemplateBackend())
    filter_source(store, "demo", ConsistencyFilter())
    first = write_training_shards(store, ["demo"], shard_size=10)
    vanishing = sorted(first.by_degradation)[0]
    folder = f"training_shards/{vanishing}/"
    old_tars = [info.key for info in store.list(folder) if info.key.endswith(".tar")]
    assert old_tars

    # A stricter judgement drops every sample of that degradation.
    class DropAll:
        def run(self, items):  # type: ignore[no-untyped-def]
            return [
                replace(d, status="dropped", reason="stricter threshold")
                for d in ConsistencyFilter().run(items)
            ]

    for info in store.list(f"filtered_annotations/demo/{vanishing}/"):
        store.delete(info.key)
    filter_source(store, "demo", DropAll())  # only the deleted shard is judged again
    second = write_training_shards(store, ["demo"], shard_size=10)
    assert vanishing not in second.by_degradation
    assert set(old_tars) <= set(second.stale_removed)
    assert not list(store.list(f"training_shards/{vanishing}/"))

    # A reader's copy that still holds the old tar (e.g. a download cache) ignores it.
    shards = resolve_shard_source(store.uri("training_shards"), tmp_path / "cache")
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    (copy / vanishing).mkdir()
    stale = copy / vanishing / old_tars[0].rsplit("/", 1)[-1]
    stale.write_bytes(b"an old shard")
    lines: list[str] = []
    found = discover_shards(copy, log=lines.append)
    assert vanishing not in found
    assert sum(len(paths) for paths in found.values()) == second.shards_total
    assert len(lines) == 1
    assert f"{vanishing}/{stale.name}" in lines[0]

    # A listed shard that is gone is an error naming it, not a silently smaller set.
    listed = next(iter(found.values()))[0]
    Path(listed).unlink()
    with pytest.raises(FileNotFoundError, match="lists 1 shard"):
        discover_shards(copy)


# -- the vLLM bearer token ---------------------------------------------------------------------


def test_the_vllm_token_is_stored_nowhere_and_printed_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the token was a literal resource value, kept in runs.db, shown in the UI
    and printed by `cotir settings`."""
    from click.testing import CliRunner
    from dagster._serdes import serialize_value
    from vllm_protocol_double import ProtocolDouble

    from assets.definitions import build_definitions
    from cotir_pipeline.cli import cli
    from cotir_pipeline.settings import load_settings

    token = "sk-test-4f1c2b9e7d"
    with ProtocolDouble(model="test-vlm", api_key=token) as url:
        home = tmp_path / "dagster_home"
        home.mkdir()
        for name, value in {
            "COTIR_HOME": str(tmp_path / "cotir"),
            "COTIR_PROFILE": "demo",
            "COTIR_ANNOTATION_BACKEND": "vllm",
            "COTIR_VLLM_URLS": url,
            "COTIR_VLLM_MODEL": "test-vlm",
            "COTIR_VLLM_API_KEY": token,
        }.items():
            monkeypatch.setenv(name, value)
        settings = load_settings()
        definitions = build_definitions(settings)
        stages = ("raw_pairs", "pair_shards", "cot_annotations")
        job = definitions.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={dg.AssetKey(name) for name in stages}
        )
        with dg.DagsterInstance.local_temp(str(home)) as instance:
            # In a thread of its own: the browser tests' session-wide Playwright keeps an
            # event loop running in this thread, where the sync vLLM client refuses to run.
            with ThreadPoolExecutor(max_workers=1) as thread:
                result = thread.submit(
                    job.execute_in_process, instance=instance, partition_key="demo"
                ).result()
            # runs.db keeps each run's config and job snapshot (compressed, so read back):
            # the snapshot holds every resource's configured values, which the UI shows.
            stored = [
                serialize_value(instance.get_job_snapshot(run.job_snapshot_id))
                + json.dumps(run.run_config)
                for run in instance.get_runs()
            ]
        assert result.success
        assert stored
        assert all(token not in text for text in stored)
        assert any("COTIR_VLLM_API_KEY" in text for text in stored)  # the name, not the value
        annotated = result.asset_materializations_for_node("cot_annotations")[0].metadata
        assert annotated["annotated"].value > 0  # the server accepted the token

        printed = CliRunner().invoke(cli, ["settings"]).output
        assert token not in printed
        assert "COTIR_VLLM_API_KEY=***** (set)" in printed
        assert token not in CliRunner().invoke(cli, ["settings", "--json"]).output

    leaks = [
        str(path)
        for root in (home, tmp_path / "cotir")
        for path in root.rglob("*")
        if path.is_file() and token.encode() in path.read_bytes()
    ]
    assert leaks == []


# -- S3 outages: a restarting gateway, a hung endpoint, a killed multipart upload --------------


class SwitchableGateway:
    """A TCP forwarder on 127.0.0.1 in front of a real S3 server that can be taken down:
    while down, each new connection is reset at once, as a restarting gateway's port does.
    """

    def __init__(self, upstream: str) -> None:
        import socket
        import threading
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        self._target = (target.hostname, target.port)
        self.down = False
        self.refused = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        self._closing = False
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()

    def _accept(self) -> None:
        import socket
        import struct
        import threading

        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # RST: the connection dies before any answer
                continue
            upstream = socket.create_connection(self._target)
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: object, sink: object) -> None:
        import contextlib

        try:
            while data := source.recv(65536):  # type: ignore[attr-defined]
                sink.sendall(data)  # type: ignore[attr-defined]
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()  # type: ignore[attr-defined]

    def take_down(self) -> None:
        """Refuse new connections and cut the open ones (a client's pooled connections
        die with the gateway too)."""
        import contextlib
        import socket

        self.down = True
        for end in self._open:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def close(self) -> None:
        self.take_down()
        self._closing = True
        self._listener.close()


@pytest.mark.s3
def test_a_store_rides_through_a_short_gateway_outage(
    s3_credentials: object, make_s3_store: object, tmp_path: Path
) -> None:
    """Before: 6 attempts fitted in about 1 s, so a 3-second restart failed the step."""
    import threading
    import time

    from cotir_pipeline.store import S3ObjectStore, StoreError

    seeded = make_s3_store()  # type: ignore[operator]
    gateway = SwitchableGateway(s3_credentials.endpoint_url)  # type: ignore[attr-defined]
    try:
        store = S3ObjectStore(
            seeded.bucket, "runs/t1", endpoint_url=gateway.url, region="us-east-1"
        )
        store.put_bytes("before.txt", b"up")
        gateway.take_down()
        threading.Timer(3.0, lambda: setattr(gateway, "down", False)).start()
        started = time.monotonic()
        store.put_bytes("during.txt", b"rode it out")
        assert time.monotonic() - started >= 2.5
        assert gateway.refused >= 2
        assert store.get_bytes("during.txt") == b"rode it out"

        # A budget shorter than the outage fails, saying so.
        impatient = S3ObjectStore(
            seeded.bucket, "runs/t1", endpoint_url=gateway.url, retry_budget_s=1.0
        )
        gateway.take_down()
        with pytest.raises(StoreError, match="COTIR_STORE_RETRY_BUDGET_S=1"):
            impatient.get_bytes("before.txt")
    finally:
        gateway.down = False
        gateway.close()


@pytest.mark.s3
def test_a_hung_endpoint_fails_in_one_line_within_the_read_timeout(
    s3_credentials: object,
) -> None:
    """Before: a raw botocore ReadTimeoutError traceback after 240 s."""
    import socket
    import time

    from cotir_pipeline.store import S3ObjectStore, StoreUnavailableError

    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    silent.listen(16)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        store = S3ObjectStore("bucket", endpoint_url=endpoint, read_timeout_s=2.0)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            store.get_bytes("any.txt")
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    message = str(caught.value)
    assert "\n" not in message
    assert endpoint in message
    assert "did not answer within 2 s (COTIR_STORE_READ_TIMEOUT_S)" in message
    assert elapsed < 4.0


@pytest.mark.s3
def test_store_cleanup_aborts_the_parts_of_a_killed_multipart_upload(
    make_s3_store: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: SIGKILL during a multipart upload left its parts on the server for good."""
    from click.testing import CliRunner

    from cotir_pipeline.cli import cli

    store = make_s3_store()  # type: ignore[operator]
    key = "runs/t1/pair_shards/demo/big.tar"
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=key)
    store.client.upload_part(
        Bucket=store.bucket,
        Key=key,
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"x" * (5 * 1024 * 1024),
    )  # ... and the writer is killed here

    assert store.cleanup(older_than_s=3600) == []  # it may still be running
    listed = store.cleanup("pair_shards/", older_than_s=0, dry_run=True)
    assert len(listed) == 1
    assert listed[0].startswith("pair_shards/demo/big.tar (upload ")
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")

    monkeypatch.setenv("COTIR_STORE", store.url)
    monkeypatch.setenv("COTIR_S3_ENDPOINT_URL", store.endpoint_url)
    result = CliRunner().invoke(cli, ["store", "cleanup", "--older-than-hours", "0"])
    assert result.exit_code == 0, result.output
    assert "removed 1 leftover(s)" in result.output
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")
    assert store.cleanup(older_than_s=0) == []


def test_store_cleanup_removes_a_local_stores_partial_files(tmp_path: Path) -> None:
    import os
    import time

    store = LocalObjectStore(tmp_path / "store")
    store.put_text("pair_shards/demo/manifest.parquet", "finished")
    debris = tmp_path / "store" / "pair_shards" / "demo" / ".cotir-partial-1234-shard.tar"
    debris.write_bytes(b"half a shard")
    fresh = tmp_path / "store" / "pair_shards" / "demo" / ".cotir-partial-5678-shard.tar"
    fresh.write_bytes(b"being written")
    old = time.time() - 7200
    os.utime(debris, (old, old))
    assert store.cleanup(older_than_s=3600) == ["pair_shards/demo/.cotir-partial-1234-shard.tar"]
    assert not debris.exists()
    assert fresh.exists()
    assert store.get_text("pair_shards/demo/manifest.parquet") == "finished"


# -- corrupt stored shards: truncated tars, flipped bits ---------------------------------------


def _demo_pair_shards(store: LocalObjectStore, count: int = 24) -> list[object]:
    from cotir_pipeline.pair_stage import plan_demo_pairs, recipe_refs, write_pair_shards

    plan = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    train = [pair for pair in plan if pair.status == "ok" and pair.split == "train"][:count]
    write_pair_shards(store, train, size=48, shard_size=8)
    return train


def _flip_a_bit_in_a_png(tar: Path) -> str:
    """Flip one bit in the middle of the first HQ PNG's bytes; return the member name."""
    import tarfile

    with tarfile.open(tar) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(".hq.png"))
    data = bytearray(tar.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0x10
    tar.write_bytes(bytes(data))
    return member.name


def test_a_truncated_shard_is_rebuilt_on_resume_and_named(tmp_path: Path) -> None:
    """Before: resume took any existing tar as finished, and every re-run then crashed
    with a bare tarfile.ReadError naming no file."""
    from cotir_pipeline.pair_stage import write_pair_shards
    from cotir_pipeline.shard_checks import verify_source_shards
    from cotir_pipeline.shards import CorruptShardError, read_shard

    store = LocalObjectStore(tmp_path / "store")
    pairs = _demo_pair_shards(store)
    tars = sorted(p for p in (tmp_path / "store" / "pair_shards").rglob("*.tar"))
    victim = tars[0]
    original = victim.read_bytes()
    victim.write_bytes(original[: len(original) // 3])  # a copy killed a third of the way

    with pytest.raises(CorruptShardError, match=str(victim)):
        list(read_shard(victim))
    checked = verify_source_shards(store, "pair_shards/demo", mark_damaged_for_rebuild=False)
    key = victim.relative_to(tmp_path / "store").as_posix()
    assert checked.damaged_shards == [key]
    assert any(problem.startswith(f"{key}: truncated") for problem in checked.mismatches)

    again = write_pair_shards(store, pairs, size=48, shard_size=8)  # type: ignore[arg-type]
    assert again.shards_damaged == [key]
    assert again.shards_written == 1
    assert victim.read_bytes() == original  # deterministic: the same bytes again
    assert verify_source_shards(store, "pair_shards/demo").manifest_matches_shards


def test_a_flipped_bit_fails_the_check_names_the_shard_and_is_rebuilt(tmp_path: Path) -> None:
    """Before: the checks compared keys only, so a flipped bit passed every check."""
    from cotir_pipeline.pair_stage import write_pair_shards
    from cotir_pipeline.shard_checks import verify_source_shards

    store = LocalObjectStore(tmp_path / "store")
    pairs = _demo_pair_shards(store)
    victim = sorted((tmp_path / "store" / "pair_shards").rglob("*.tar"))[1]
    original = victim.read_bytes()
    member = _flip_a_bit_in_a_png(victim)
    key = victim.relative_to(tmp_path / "store").as_posix()

    checked = verify_source_shards(store, "pair_shards/demo", max_shards=None)
    assert not checked.manifest_matches_shards
    assert checked.damaged_shards == [key]
    assert f"{key}: 1 member(s) differ from their manifest sha256, e.g. {member}" in (
        checked.mismatches
    )
    assert not store.exists(key.removesuffix(".tar") + ".parquet")  # marked for rebuilding

    again = write_pair_shards(store, pairs, size=48, shard_size=8)  # type: ignore[arg-type]
    assert again.shards_written == 1
    assert victim.read_bytes() == original
    assert verify_source_shards(store, "pair_shards/demo", max_shards=None).manifest_matches_shards


def test_a_damaged_pair_is_never_copied_into_the_training_shards(tmp_path: Path) -> None:
    """Before: a bit-flipped PNG was copied into the training shards unnoticed."""
    from cotir_pipeline.annotation.clip_filter import ConsistencyFilter
    from cotir_pipeline.annotation.template_backend import TemplateBackend
    from cotir_pipeline.annotation_stage import (
        annotate_source,
        filter_source,
        write_training_shards,
    )
    from cotir_pipeline.shards import CorruptShardError

    store = LocalObjectStore(tmp_path / "store")
    _demo_pair_shards(store)
    annotate_source(store, "demo", TemplateBackend())
    filter_source(store, "demo", ConsistencyFilter())
    victim = sorted((tmp_path / "store" / "pair_shards").rglob("*.tar"))[0]
    _flip_a_bit_in_a_png(victim)
    key = victim.relative_to(tmp_path / "store").as_posix()
    with pytest.raises(CorruptShardError, match="differs from the sha256 its manifest recorded"):
        write_training_shards(store, ["demo"], shard_size=10)
    assert not store.exists(key.removesuffix(".tar") + ".parquet")
    assert not list(store.list("training_shards/"))  # nothing half-written was kept


# -- a bad setting, whatever the command ---------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "first_words"),
    [
        (
            ["-m", "cotir_pipeline.cli", "bench", "{bench}", "--method", "identity", "--out", "o"],
            "cotir: bad setting: COTIR_PROFILE:",
        ),
        (["-m", "cotir_pipeline.cli", "catalog", "list"], "cotir: bad setting: COTIR_PROFILE:"),
        (
            ["-m", "models.train", "--variant", "tiny", "--shards", "s", "--out", "o"],
            "models.train: bad setting: COTIR_PROFILE:",
        ),
    ],
    ids=["cotir bench", "cotir catalog list", "models.train"],
)
def test_every_command_stops_on_a_bad_setting_in_one_line(
    command: list[str], first_words: str, tmp_path: Path
) -> None:
    """Before: `cotir bench` and `models.train` ran with a bad COTIR_* value."""
    import os
    import subprocess
    import sys

    from cotir_pipeline.evaluation.bench_builders import build_demo_bench

    bench = build_demo_bench(tmp_path / "bench", patch_size=32, per_recipe=1)
    arguments = [part.replace("{bench}", str(bench.root)) for part in command]
    result = subprocess.run(
        [sys.executable, *arguments],
        env={**os.environ, "COTIR_PROFILE": "staging"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(first_words), result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing was run


# -- a training process killed mid-run ---------------------------------------------------------


def _training_shard_store(root: Path) -> LocalObjectStore:
    from cotir_pipeline.annotation.clip_filter import ConsistencyFilter
    from cotir_pipeline.annotation.template_backend import TemplateBackend
    from cotir_pipeline.annotation_stage import (
        annotate_source,
        filter_source,
        write_training_shards,
    )

    store = LocalObjectStore(root)
    _demo_pair_shards(store, count=16)
    annotate_source(store, "demo", TemplateBackend())
    filter_source(store, "demo", ConsistencyFilter())
    write_training_shards(store, ["demo"], shard_size=4)
    return store


def _kill_training_after(folder: Path, checkpoint: str) -> None:
    """SIGKILL the models.train process writing into ``folder`` once ``checkpoint``
    (e.g. ``step-0000004``) is there: a lost node, an out-of-memory kill."""
    import os
    import signal
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if list(folder.glob(f"*/*/checkpoints/{checkpoint}/checkpoint.json")):
            break
        time.sleep(0.02)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"models.train" in command and str(folder).encode() in b" ".join(command):
            os.kill(int(entry.name), signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_training_step_resumes_in_the_next_dagster_run(tmp_path: Path) -> None:
    """Before: no retry policy, so a crashed step stayed failed until someone re-ran it."""
    import threading

    from assets.training.assets import TRAINING_RETRY_POLICY, build_training_assets
    from assets.training.resource import TrainingResource

    store = _training_shard_store(tmp_path / "store")
    output = tmp_path / "training"
    training = TrainingResource(
        variant="tiny", steps=40, output_dir=str(output), extra_args=["--checkpoint-every", "2"]
    )
    assets = build_training_assets()
    checkpoint_asset = next(a for a in assets if a.key.path[-1] == "cotir_checkpoint")
    assert checkpoint_asset.op.retry_policy == TRAINING_RETRY_POLICY
    resources = {
        "store": ObjectStoreResource(url=store.url),
        "training": training,
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    killer = threading.Thread(target=_kill_training_after, args=(output, "step-0000004"))
    killer.start()
    # The training process is killed after its step-4 checkpoint: the step fails, and its
    # retry continues from the last checkpoint of the same run folder.
    first = dg.materialize(assets[:2], resources=resources, raise_on_error=False)
    killer.join()
    assert first.success
    retried = [e for e in first.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(retried) == 1
    metadata = first.asset_materializations_for_node("cotir_checkpoint")[0].metadata
    assert metadata["resumed_from_step"].value >= 4
    assert metadata["steps"].value == 40
    # The run folder is named by what determines the weights, not by the Dagster run: a
    # later run finds the finished checkpoint and trains nothing.
    second = dg.materialize(assets[:2], resources=resources)
    again = second.asset_materializations_for_node("cotir_checkpoint")[0].metadata
    assert again["run_folder"].value == metadata["run_folder"].value
    assert again["resumed_from_step"].value == 40
    assert again["checkpoint_sha256"].value == metadata["checkpoint_sha256"].value


def test_the_training_process_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """Before: the Pipes subprocess outlived its killed run, training on alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    shards = tmp_path / "shards"
    from training_shards_support import write_shards

    write_shards(shards)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-m', 'models.train', '--variant', "
            f"'tiny', '--steps', '100000', '--shards', {str(shards)!r}, '--out', "
            f"{str(tmp_path / 'run')!r}, '--no-plots'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "run" / "metrics.jsonl").exists():
        time.sleep(0.2)  # training has started
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    os.kill(parent.pid, signal.SIGKILL)  # the Dagster step process, killed
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        if (Path(f"/proc/{child}") / "stat").read_text().split()[2] == "Z":
            break  # exited, waiting to be reaped by init
        time.sleep(0.2)
    alive = Path(f"/proc/{child}").exists() and (
        (Path(f"/proc/{child}") / "stat").read_text().split()[2] != "Z"
    )
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "models.train outlived the process that started it"


# -- bench folders from elsewhere --------------------------------------------------------------


def test_foreign_degradation_labels_are_read_in_their_spellings_and_unknown_ones_reported(
    tmp_path: Path,
) -> None:
    """Before: unknown spellings were silently task 'unknown', the classical chain passed
    the image through, and a composite with one unknown part was passed through whole."""
    import json as json_module

    from click.testing import CliRunner

    from cotir_pipeline.cli import cli
    from cotir_pipeline.evaluation.bench_sets import (
        BenchRecord,
        BenchSample,
        record_task,
        unknown_labels,
        write_bench_set,
    )
    from cotir_pipeline.evaluation.restorers import SequentialToolChain

    rng = np.random.default_rng(1)
    labels = ["low-light", "Gaussian Noise", "haze_and_rain", "blur", "sepia+noise", "sepia"]
    samples = []
    for index, label in enumerate(labels):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        record = BenchRecord(f"s{index}", f"lq/s{index}.png", label, "Fix it.", "Fix it.", "x")
        samples.append(BenchSample(record, pixels, pixels))
    bench = write_bench_set(tmp_path / "bench", "foreign", samples)
    tasks = [record_task(record) for record in bench.records]
    assert tasks == ["LLE", "DN", "MDR", "DB", "MDR", "unknown"]
    assert unknown_labels(bench.records) == {"sepia": 1, "sepia+noise": 1}

    chain = SequentialToolChain()
    assert [part for part, _ in chain.plan("low-light")] == ["low_light"]
    plan = chain.plan("sepia+noise")
    assert [(part, tool is not None) for part, tool in plan] == [("sepia", False), ("noise", True)]
    _, trace = chain.restore_with_trace(samples[4].lq, "", "sepia+noise")
    assert trace[0].note == "not a known degradation label: passed through"
    assert trace[1].tool != "none"  # the known part is still restored

    result = CliRunner().invoke(
        cli,
        [
            "bench",
            str(bench.root),
            "--method",
            "classical_chain",
            "--out",
            str(tmp_path / "out"),
            "--metrics",
            "psnr,lpips",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.count("not recognised in any known spelling") == 1
    assert "'sepia' (1), 'sepia+noise' (1)" in result.stderr
    report = json_module.loads(result.stdout.strip().splitlines()[-1])
    assert report["unknown_labels"] == {"sepia": 1, "sepia+noise": 1}


# -- debris of a killed run --------------------------------------------------------------------


def test_the_next_run_of_a_partition_removes_what_a_killed_run_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: partial files in the store and scratch folders in TMPDIR survived every
    successful re-run."""
    import subprocess
    import sys
    import tempfile

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch_root))
    monkeypatch.setattr(tempfile, "tempdir", None)
    store = LocalObjectStore(tmp_path / "store")
    shard_folder = tmp_path / "store" / "pair_shards" / "demo" / "haze"
    shard_folder.mkdir(parents=True)
    # A writer that dies mid-write (SIGKILL: no clean-up code runs).
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from pathlib import Path\n"
            "from cotir_pipeline.scratch import scratch_dir\n"
            "from cotir_pipeline.store import LocalObjectStore\n"
            "from cotir_pipeline.store.local import write_atomically\n"
            "store = LocalObjectStore(Path(sys.argv[1]))\n"
            "held = [scratch_dir('verify'), None]\n"
            "scratch = held[0].__enter__()\n"
            "(scratch / 'shard.tar').write_bytes(b'half')\n"
            "held[1] = store.staging_dir()\n"
            "staging = held[1].__enter__()\n"
            "(staging / 'x.tar').write_bytes(b'half')\n"
            "def die(handle):\n"
            "    handle.write(b'half a shard')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "write_atomically(Path(sys.argv[2]) / 'haze-000000.tar', die)\n",
            str(tmp_path / "store"),
            str(shard_folder),
        ],
        env={**__import__("os").environ, "TMPDIR": str(scratch_root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    partial = list(shard_folder.glob(".cotir-partial-*"))
    staging = list((tmp_path / "store").glob(".cotir-partial-staging-*"))
    scratch = list(scratch_root.glob("cotir-verify-*"))
    assert partial
    assert staging
    assert scratch
    # A live writer's partial file (this process) is left alone.
    from cotir_pipeline.scratch import owner_tag

    live = shard_folder / f".cotir-partial-{owner_tag()}-abc-haze-000001.tar"
    live.write_bytes(b"being written")

    result = _materialize_demo_pair_shards(tmp_path)
    assert result.success
    assert not any(path.exists() for path in [*partial, *staging, *scratch])
    assert live.exists()
    assert list(store.list("pair_shards/demo/"))  # and the run itself did its work


def _materialize_demo_pair_shards(tmp_path: Path) -> dg.ExecuteInProcessResult:
    from cotir_pipeline.sources.catalog import load_catalog

    catalog = load_catalog()
    assets = build_data_stage_assets(catalog, only=["demo"])
    resources = {
        "store": ObjectStoreResource(url=LocalObjectStore(tmp_path / "store").url),
        "data_stage": DataStageResource(
            stored_size=32,
            shard_size=64,
            demo_patch_size=128,
            demo_stride=256,
            recipes_per_item=1,
            cache_dir=str(tmp_path / "cache"),
        ),
    }
    return dg.materialize(assets[1:3], resources=resources, partition_key="demo")


# -- a run worker killed while STARTED -----------------------------------------------------------


def test_a_run_whose_worker_was_killed_is_marked_failed(tmp_path: Path) -> None:
    """Before: with the default run launcher a killed run stayed STARTED for ever."""
    import os
    import subprocess
    import sys

    from dagster._core.events import EngineEventData
    from dagster._core.test_utils import create_run_for_test

    from assets.monitoring import build_dead_run_worker_sensor

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process has any more
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        runs = {}
        for name, pid in (("killed", gone.pid), ("alive", os.getpid())):
            run = create_run_for_test(
                instance, job_name=f"job_{name}", status=dg.DagsterRunStatus.STARTED
            )
            instance.report_engine_event(
                f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid)
            )
            runs[name] = run.run_id
        sensor = build_dead_run_worker_sensor()
        with dg.build_sensor_context(instance=instance) as context:
            result = sensor.evaluate_tick(context)
        assert result.skip_message == f"marked 1 run(s) failed: {runs['killed']}"
        killed = instance.get_run_by_id(runs["killed"])
        alive = instance.get_run_by_id(runs["alive"])
        assert killed is not None
        assert killed.status == dg.DagsterRunStatus.FAILURE
        assert alive is not None
        assert alive.status == dg.DagsterRunStatus.STARTED
        with dg.build_sensor_context(instance=instance) as context:
            again = sensor.evaluate_tick(context)
        assert again.skip_message == "every started run has a live worker"


# -- training killed in the middle of writing a checkpoint --------------------------------------


@pytest.mark.slow
def test_a_checkpoint_half_written_by_a_killed_run_is_ignored_and_the_resume_is_exact(
    tmp_path: Path,
) -> None:
    """A run killed while writing its step-8 checkpoint leaves a `.partial-step-0000008`
    folder and no `latest` update: the resume starts from the last finished checkpoint
    (step 4) and ends bit-identical to a run that was never interrupted."""
    from models.train import train
    from models.train_options import parse_options
    from training_shards_support import write_shards

    shards = write_shards(tmp_path / "shards", samples_per_shard=3)

    def run(out: Path, *extra: str) -> object:
        argv = ["--variant", "tiny", "--shards", str(shards), "--out", str(out)]
        return train(parse_options([*argv, "--steps", "8", "--no-plots", *extra]))

    straight = run(tmp_path / "straight")
    split = tmp_path / "split"
    run(split, "--stop-at", "4")
    half = split / "checkpoints" / ".partial-step-0000008"
    (half / "model").mkdir(parents=True)
    (half / "trainable.safetensors").write_bytes(b"\x00" * 100)  # cut off mid-write
    (half / "model" / "cotir.json").write_text("{")
    resumed = run(split, "--resume", "auto")
    assert resumed.start_step == 4  # type: ignore[attr-defined]
    assert resumed.final_step == 8  # type: ignore[attr-defined]
    assert resumed.checkpoint_sha256 == straight.checkpoint_sha256  # type: ignore[attr-defined]
    assert not half.exists()


def test_a_launcher_run_through_models_launch_dies_with_its_parent(tmp_path: Path) -> None:
    """`accelerate launch` runs through `python -m models.launch`: the launcher ends with
    the step that started it (its training processes end with the launcher)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cotir_test_support import REPO_ROOT

    (tmp_path / "sleeper.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    environment = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}"}
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-m', 'models.launch', 'sleeper'],"
            " stdout=subprocess.PIPE, text=True)\n"
            "child.stdout.readline()\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    stat = Path(f"/proc/{child}/stat")
    while time.monotonic() < deadline and stat.exists() and stat.read_text().split()[2] != "Z":
        time.sleep(0.1)
    alive = stat.exists() and stat.read_text().split()[2] != "Z"
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the launched module outlived the process that started it"
