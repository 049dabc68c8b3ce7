"""Training runs of the tiny variant on the CPU: outputs, modes, exact resume, two processes."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from cotir_pipeline.checkpoint_layout import CHECKPOINT_MARKER, CHECKPOINTS_DIR, LATEST_FILE
from cotir_test_support import REPO_ROOT
from models.consumption import (
    CONSUMED_DIR,
    ConsumptionLog,
    consumption_files,
    read_consumption,
)
from models.metrics_plots import read_jsonl
from models.run_checkpoints import latest_checkpoint
from models.train import ResumeError, TrainResult, train
from models.train_config import config_for_variant
from models.train_options import parse_options


def _run(shards: Path, out: Path, *extra: str) -> TrainResult:
    argv = ["--variant", "tiny", "--shards", str(shards), "--out", str(out), *extra]
    return train(parse_options(argv))


@pytest.fixture(scope="module")
def finished_run(shard_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("run")
    return _run(shard_root, out, "--steps", "8")


def test_a_run_writes_metrics_plots_and_a_loadable_checkpoint(finished_run: TrainResult) -> None:
    result = finished_run
    assert (result.start_step, result.final_step) == (0, 8)
    records = read_jsonl(result.metrics_path)
    assert [r["step"] for r in records] == list(range(1, 9))
    first = records[0]
    for key in (
        "loss",
        "loss_fm",
        "loss_scene",
        "loss_degradation",
        "loss_plan",
        "lambda_scene",
        "lambda_degradation",
        "lambda_plan",
        "violation_scene",
        "lr",
        "samples_per_s",
        "peak_memory_mib",
        "grad_norm",
    ):
        assert key in first, key
    config = config_for_variant("tiny").scaled(8)
    assert [r["lr"] for r in records] == pytest.approx([config.lr_at(s) for s in range(8)])
    assert [r["patch"] for r in records] == [config.stage_at(s).patch for s in range(8)]
    # Untrained heads are far from their targets: every constraint is violated, so every
    # multiplier grows each step (Adam: by about the dual lr of 1e-4).
    lambdas = [r["lambda_plan"] for r in records]
    assert all(b > a for a, b in itertools.pairwise(lambdas))
    assert lambdas[-1] == pytest.approx(8e-4, rel=0.05)
    assert all(r["violation_scene"] > 0 for r in records)
    assert (result.metrics_path.parent / "metrics.csv").read_text().startswith("step,")

    for name in ("loss", "multipliers"):
        with Image.open(result.plots[name]) as image:
            assert image.format == "PNG"
            assert image.size[0] > 300

    assert result.checkpoint is not None
    assert result.checkpoint.name == "step-0000008"
    marker = json.loads((result.checkpoint / "checkpoint.json").read_text())
    assert marker["model_sha256"] == result.checkpoint_sha256
    assert "trainable.safetensors" in marker["files"]
    root = result.checkpoint.parent
    assert (root / LATEST_FILE).read_text().strip() == "step-0000008"
    assert not list(root.glob(".partial-*"))

    from models.restore import CoTIRRestorer

    restorer = CoTIRRestorer.from_pretrained(result.checkpoint / "model")
    gate = float(restorer.model.cot_adapter.scale_planning.detach())
    assert gate != 0.0  # trained: the zero-initialised gate moved
    restored = restorer.restore(Image.new("RGB", (48, 48), (90, 100, 110)), "Remove the haze.")
    assert restored.size == (48, 48)


@pytest.mark.parametrize(
    ("mode", "lambda_keys"),
    [("none", []), ("union", ["lambda_union"]), ("fixed", ["lambda_scene"])],
)
def test_constraint_modes(shard_root: Path, tmp_path: Path, mode: str, lambda_keys: list) -> None:  # type: ignore[type-arg]
    result = _run(shard_root, tmp_path, "--steps", "2", "--constraint-mode", mode, "--no-plots")
    records = read_jsonl(result.metrics_path)
    assert sorted(k for k in records[-1] if k.startswith("lambda_")) == sorted(
        lambda_keys + (["lambda_degradation", "lambda_plan"] if mode == "fixed" else [])
    )
    if mode == "fixed":
        assert records[-1]["lambda_scene"] == 1.0  # fixed coefficients never move
    if mode == "union":
        assert records[-1]["lambda_union"] > 0
        assert "violation_union" in records[-1]
    if mode == "none":
        # Head losses are still measured, but nothing is added to L_FM.
        assert records[-1]["loss"] == pytest.approx(records[-1]["loss_fm"])
        assert records[-1]["loss_scene"] > 0


def test_resume_continues_exactly(shard_root: Path, tmp_path: Path) -> None:
    """2N steps in one go == N steps, stop, resume (from the store), N more steps."""
    steps = ["--steps", "8", "--no-plots"]
    straight = _run(shard_root, tmp_path / "straight", *steps)
    store = tmp_path / "store"
    split = tmp_path / "split"
    first = _run(shard_root, split, *steps, "--stop-at", "4", "--store-url", store.as_uri())
    assert first.final_step == 4
    assert (store / LATEST_FILE).read_text().strip() == "step-0000004"
    assert (store / "step-0000004" / "checkpoint.json").is_file()
    # Lose the local checkpoints: the resume has to fetch the latest one from the store.
    shutil.rmtree(split / CHECKPOINTS_DIR)
    second = _run(shard_root, split, *steps, "--resume", "--store-url", store.as_uri())
    assert (second.start_step, second.final_step) == (4, 8)

    expected = read_jsonl(straight.metrics_path)
    resumed = read_jsonl(second.metrics_path)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(expected, resumed, strict=True):
        for key in ("loss", "loss_fm", "loss_scene", "loss_plan", "lambda_scene", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)
    assert second.checkpoint_sha256 == straight.checkpoint_sha256
    # The consumption record: the same samples at the same steps as the straight run.
    assert read_consumption(split).equals(read_consumption(straight.metrics_path.parent))


def test_the_run_records_which_samples_each_step_consumed(
    finished_run: TrainResult, shard_root: Path, tmp_path: Path
) -> None:
    """Lineage credits a run only with the samples its batches held, with their steps."""
    out = finished_run.metrics_path.parent
    files = [path.name for path in consumption_files(out)]
    # One file per checkpoint interval: the record travels with the checkpoints.
    saved = sorted(int(path.name.split("-")[1]) for path in (out / CHECKPOINTS_DIR).glob("step-*"))
    bounds = [0, *saved]
    assert len(saved) >= 2
    assert files == [
        f"rank-00000-{start:07d}-{end:07d}.parquet" for start, end in itertools.pairwise(bounds)
    ]
    consumed = read_consumption(out)
    batches = [record["batch_size"] for record in read_jsonl(finished_run.metrics_path)]
    assert sum(consumed["times"].to_pylist()) == sum(batches)
    assert min(consumed["first_step"].to_pylist()) == 1
    assert max(consumed["last_step"].to_pylist()) == 8
    assert consumed["sample_id"].to_pylist() == sorted(consumed["sample_id"].to_pylist())
    middle = saved[-2]
    early = read_consumption(out, up_to_step=middle)
    assert set(early["sample_id"].to_pylist()) <= set(consumed["sample_id"].to_pylist())
    assert sum(early["times"].to_pylist()) == sum(batches[:middle])
    # A resume from the checkpoint before the last forgets what came after it.
    copy = tmp_path / "run"
    shutil.copytree(out / CONSUMED_DIR, copy / CONSUMED_DIR)
    assert ConsumptionLog(copy, rank=0, start_step=middle).forget_after(middle) == 1
    assert read_consumption(copy).equals(early)


def test_a_stale_latest_pointer_does_not_hide_a_newer_finished_checkpoint(
    tmp_path: Path,
) -> None:
    """A run killed after renaming step-4 into place but before rewriting ``latest``
    resumes from step 4, not from the step ``latest`` still names; unfinished folders
    (no marker) never count."""
    for step in (2, 4, 6):
        folder = tmp_path / f"step-{step:07d}"
        folder.mkdir()
        if step < 6:
            (folder / CHECKPOINT_MARKER).write_text("{}")
    (tmp_path / LATEST_FILE).write_text("step-0000002\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000004"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_resume_required_without_a_checkpoint_fails(shard_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="no finished checkpoint"):
        _run(shard_root, tmp_path, "--steps", "2", "--resume")
    # auto starts fresh instead.
    assert _run(shard_root, tmp_path, "--steps", "1", "--resume", "auto").final_step == 1


def test_bad_command_lines_exit(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_options(["--variant", "tiny", "--shards", "x", "--out", "y", "--steps", "0"])
    with pytest.raises(SystemExit):
        parse_options(["--variant", "tiny", "--out", "y"])  # --shards is required
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(tmp_path / "missing", tmp_path / "out", "--steps", "1")


@pytest.mark.slow
def test_two_processes_keep_identical_weights_on_different_samples(
    shard_root: Path, tmp_path: Path
) -> None:
    """accelerate launch with two CPU processes (DDP over gloo)."""
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "models.train",
        "--variant",
        "tiny",
        "--shards",
        str(shard_root),
        "--out",
        str(out),
        "--steps",
        "4",
        "--no-plots",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((out / "ranks" / f"rank-{r:05d}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # DDP averaged the gradients and the violations were averaged before the dual
    # step: both ranks end with bit-identical trainable weights and multipliers.
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["multipliers"] == ranks[1]["multipliers"]
    assert ranks[0]["multipliers"]["scene"] > 0
    # Each rank's consumption record, in step order.
    keys = [
        [
            sample
            for path in consumption_files(out)
            if path.name.startswith(f"rank-{rank:05d}-")
            for sample in pq.read_table(path)["sample_id"].to_pylist()
        ]
        for rank in (0, 1)
    ]
    assert len(keys[0]) == len(keys[1]) > 0
    assert keys[0] != keys[1]
    # The first round of each rank reads disjoint records of each type.
    assert set(keys[0][:4]).isdisjoint(keys[1][:4])
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["global_batch"] == 2 * r["batch_size"] for r in records)
    checkpoint = out / CHECKPOINTS_DIR / "step-0000004"
    assert (checkpoint / "rank-00000.pt").is_file()
    assert (checkpoint / "rank-00001.pt").is_file()


@pytest.mark.slow
def test_trainable_weights_are_fp32_unless_bf16_is_asked_for(
    finished_run: TrainResult, shard_root: Path, tmp_path: Path
) -> None:
    """fp32 master weights by default; --trainable-dtype bf16 trains them in bf16 (release)."""
    import torch
    from safetensors.torch import load_file

    assert finished_run.checkpoint is not None
    default = load_file(str(finished_run.checkpoint / "trainable.safetensors"))
    assert {tensor.dtype for tensor in default.values()} == {torch.float32}
    with pytest.raises(ValueError, match="needs bf16 mixed precision"):
        _run(shard_root, tmp_path / "fp32", "--steps", "2", "--trainable-dtype", "bf16")
    # A fresh process: accelerate's precision is fixed once per process.
    out = tmp_path / "bf16"
    command = [
        *(sys.executable, "-m", "models.train", "--variant", "tiny"),
        *("--shards", str(shard_root), "--out", str(out), "--steps", "2", "--no-plots"),
        *("--cpu", "--mixed-precision", "bf16", "--trainable-dtype", "bf16"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    checkpoint = out / CHECKPOINTS_DIR / "step-0000002"
    tensors = load_file(str(checkpoint / "trainable.safetensors"))
    assert {tensor.dtype for tensor in tensors.values()} == {torch.bfloat16}
    records = read_jsonl(out / "metrics.jsonl")
    assert len(records) == 2
    assert all(record["loss"] == record["loss"] for record in records)  # finite, not NaN
    gate = tensors["cot_adapter.scale_planning"]
    assert float(gate.float().abs().sum()) > 0  # the bf16 weights were updated
