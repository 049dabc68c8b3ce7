"""A shard run killed half-way and re-run ends exactly like an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cotir_pipeline.pair_stage import plan_demo_pairs, recipe_refs, save_plan
from cotir_pipeline.shard_checks import verify_source_shards
from cotir_pipeline.shards import read_manifest
from cotir_pipeline.store import LocalObjectStore
from cotir_test_support import REPO_ROOT

pytestmark = pytest.mark.slow

SHARD_SIZE = 6
KILL_AFTER_SHARDS = 4

# Runs the shard stage on the saved plan; with a kill point it SIGKILLs itself after
# that many shards have been stored, like a worker lost to the OOM killer.
RUNNER = textwrap.dedent(
    f"""
    import os, signal, sys
    from pathlib import Path
    from cotir_pipeline.pair_stage import load_plan, write_pair_shards
    from cotir_pipeline.store import LocalObjectStore

    store = LocalObjectStore(Path(sys.argv[1]))
    kill_after = int(sys.argv[2])

    def progress(done, total):
        if kill_after and done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    plan = load_plan(store, "demo")
    write_pair_shards(store, plan, size=64, shard_size={SHARD_SIZE}, progress=progress)
    """
)


def _run(store_dir: Path, kill_after: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(store_dir), str(kill_after)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result.returncode


def _snapshot(store: LocalObjectStore) -> dict[str, object]:
    """Everything the stage wrote, comparable across stores.

    Shards by digest; manifests by content with the store's own root URL taken out
    of the shard URIs; the run report without the written/skipped counts (which say
    how the run went, not what it produced).
    """
    snapshot: dict[str, object] = {}
    for info in store.list("pair_shards/"):
        data = store.get_bytes(info.key)
        if info.key.endswith(".parquet"):
            rows = read_manifest(data).to_pylist()
            for row in rows:
                if row["shard_uri"]:
                    row["shard_uri"] = row["shard_uri"].removeprefix(store.url)
            snapshot[info.key] = rows
        elif info.key.endswith(".json") and "sizes" not in info.key:
            report = json.loads(data)
            snapshot[info.key] = {
                k: v for k, v in report.items() if k not in ("shards_written", "shards_skipped")
            }
        else:
            snapshot[info.key] = hashlib.sha256(data).hexdigest()
    return snapshot


def test_killed_run_resumes_to_the_same_shards_and_manifest(tmp_path: Path) -> None:
    plan = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    subset = [pair for pair in plan if pair.status == "ok"][:60]
    stores = {name: LocalObjectStore(tmp_path / name) for name in ("interrupted", "straight")}
    for store in stores.values():
        save_plan(store, "demo", subset)

    assert _run(stores["interrupted"].root, KILL_AFTER_SHARDS) == -signal.SIGKILL
    partial = _snapshot(stores["interrupted"])
    root = stores["interrupted"].root
    finished_before = {
        path: path.stat().st_mtime_ns for path in root.rglob("*.tar") if path.is_file()
    }
    assert "pair_shards/demo/_SUCCESS.json" not in partial
    assert 0 < sum(key.endswith(".tar") for key in partial) < 60 // SHARD_SIZE

    assert _run(stores["interrupted"].root, 0) == 0
    assert _run(stores["straight"].root, 0) == 0
    resumed, straight = _snapshot(stores["interrupted"]), _snapshot(stores["straight"])
    assert resumed == straight, "resumed run differs from an uninterrupted one"
    # Shards finished before the kill were kept, not written again.
    assert finished_before
    for path, mtime in finished_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was rewritten"
    verification = verify_source_shards(stores["interrupted"], "pair_shards/demo")
    assert verification.manifest_matches_shards
    assert verification.manifest_rows == 60
