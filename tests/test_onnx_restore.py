"""The ONNX engine: `cotir export-onnx`, then `cotir restore` without torch, same images."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cotir_test_support import noise_image
from models.checkpoint_io import save_checkpoint
from models.cli import export_onnx, restore
from models.lora import LoraScope, apply_lora
from models.onnx_restore import (
    EXPORT_DIR,
    MANIFEST_FILE,
    OnnxRestorer,
    StaleExportError,
    checkpoint_digest,
    levels_apart,
    read_manifest,
)
from models.restore import CoTIRRestorer
from models.testing import randomize_gates

PROMPT = "Remove the haze."
#: A fresh process running ``cotir restore`` (the command object, as the CLI runs it),
#: then reporting whether torch was imported.
COLD_RESTORE = (
    "import sys\n"
    "from models.cli import restore\n"
    "try:\n"
    "    restore.main(sys.argv[1:])\n"
    "except SystemExit as stop:\n"
    "    assert not stop.code, stop.code\n"
    "print('torch imported:', 'torch' in sys.modules)\n"
)


def _lq(path: Path, size: tuple[int, int]) -> Path:
    noise_image(*size, seed=3).save(path)
    return path


def _checkpoint(
    folder: Path, variant: str, meta: dict[str, object], scope: LoraScope = "paper"
) -> Path:
    """A trained-looking checkpoint: random LoRA and adapter gates on the variant's base."""
    trained = CoTIRRestorer.from_variant(variant)
    torch.manual_seed(0)
    apply_lora(trained.model, 4, init_b="random", scope=scope)
    randomize_gates(trained.model, 0.2)
    builds_in_code = variant != "demo"
    return save_checkpoint(
        trained.model, folder, variant=variant, include_base=builds_in_code, extra_meta=meta
    )


@pytest.fixture(scope="module")
def lq_start_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's main-row recipe: flow from the LQ, velocity = change to the prior, one
    step, LoRA on the text path too; exported through the command."""
    folder = tmp_path_factory.mktemp("lq-start") / "model"
    meta = {"flow_start": "reference", "velocity": "delta", "sample_steps": 1}
    _checkpoint(folder, "demo", meta, scope="text_path")
    result = CliRunner().invoke(export_onnx, [str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def test_a_cold_restore_on_the_export_never_imports_torch_and_matches_the_torch_engine(
    lq_start_checkpoint: Path, tmp_path: Path
) -> None:
    lq = _lq(tmp_path / "lq.png", (72, 56))  # resized to 80 x 64 and back, as torch does
    out = tmp_path / "out.png"
    arguments = [str(lq), "-p", PROMPT, "-o", str(out), "--checkpoint", str(lq_start_checkpoint)]
    completed = subprocess.run(
        [sys.executable, "-c", COLD_RESTORE, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "torch imported: False" in completed.stdout
    photo = Image.open(lq).convert("RGB")
    expected = CoTIRRestorer.from_pretrained(lq_start_checkpoint).restore(photo, PROMPT)
    worst, share = levels_apart(Image.open(out), expected)
    print(f"ONNX vs torch engine: at most {worst} level apart, {share:.4%} of values differ")
    assert worst <= 1
    assert share < 0.01
    untouched = np.asarray(photo.resize(expected.size))
    assert not np.array_equal(np.asarray(expected), untouched)  # the model did act


def test_an_export_made_from_other_checkpoint_files_is_never_used(
    lq_start_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for path in lq_start_checkpoint.iterdir():
        target = folder / path.name
        if path.is_dir():
            target.symlink_to(path, target_is_directory=True)
        else:
            target.write_bytes(path.read_bytes())
    meta = json.loads((folder / "cotir.json").read_text())
    meta["sample_steps"] = 2  # the checkpoint changed after its export
    (folder / "cotir.json").write_text(json.dumps(meta))
    lq = _lq(tmp_path / "lq.png", (32, 32))
    arguments = [str(lq), "-p", PROMPT, "--checkpoint", str(folder)]

    forced = CliRunner().invoke(
        restore, [*arguments, "-o", str(tmp_path / "a.png"), "--engine", "onnx"]
    )
    assert forced.exit_code == 1
    assert "other checkpoint files" in forced.output
    assert "cotir export-onnx" in forced.output

    automatic = CliRunner().invoke(restore, [*arguments, "-o", str(tmp_path / "b.png")])
    assert automatic.exit_code == 0, automatic.output
    assert "restoring with the torch engine" in automatic.output
    expected = CoTIRRestorer.from_pretrained(folder).restore(Image.open(lq), PROMPT, steps=2)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), np.asarray(expected))


def test_a_damaged_manifest_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / EXPORT_DIR).mkdir(parents=True)
    (folder / "cotir.json").write_text("{}")
    manifest = folder / EXPORT_DIR / MANIFEST_FILE
    for text, message in (
        ("{not json", "cannot be read"),
        ('{"format": "cotir-onnx", "version": 1}', "lacks base_shift, checkpoint_sha256"),
        ('{"format": "other", "version": 1}', "is not a version-1 cotir-onnx manifest"),
    ):
        manifest.write_text(text)
        with pytest.raises(StaleExportError, match=message):
            read_manifest(folder)


def test_an_export_missing_a_graph_is_refused_in_one_line(
    lq_start_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(lq_start_checkpoint, folder)
    (folder / EXPORT_DIR / "velocity.onnx").unlink()
    with pytest.raises(StaleExportError, match=r"lacks velocity\.onnx"):
        OnnxRestorer.from_checkpoint(folder)


def test_a_demo_checkpoint_without_an_export_restores_on_torch_with_a_tip(
    lq_start_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for path in lq_start_checkpoint.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    lq = _lq(tmp_path / "lq.png", (32, 32))
    out = tmp_path / "o.png"
    result = CliRunner().invoke(
        restore, [str(lq), "-p", PROMPT, "-o", str(out), "--checkpoint", str(folder)]
    )
    assert result.exit_code == 0, result.output
    assert f"tip: `cotir export-onnx {folder}`" in result.output
    expected = CoTIRRestorer.from_pretrained(folder).restore(Image.open(lq), PROMPT)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_the_onnx_engine_refuses_what_it_cannot_run(
    lq_start_checkpoint: Path, tmp_path: Path
) -> None:
    lq = _lq(tmp_path / "lq.png", (32, 32))
    base = [str(lq), "-p", PROMPT, "-o", str(tmp_path / "o.png"), "--engine", "onnx"]
    tiled = CliRunner().invoke(
        restore, [*base, "--checkpoint", str(lq_start_checkpoint), "--tile-size", "32"]
    )
    assert tiled.exit_code == 2
    assert "--tile-size" in tiled.output
    no_checkpoint = CliRunner().invoke(restore, base)
    assert no_checkpoint.exit_code == 2
    assert "no --checkpoint" in no_checkpoint.output
    unexported = tmp_path / "plain"
    unexported.mkdir()
    (unexported / "cotir.json").write_text("{}")
    missing = CliRunner().invoke(restore, [*base, "--checkpoint", str(unexported)])
    assert missing.exit_code == 1
    assert f"cotir export-onnx {unexported}" in missing.output


def test_a_current_export_is_kept_and_force_rewrites_it(lq_start_checkpoint: Path) -> None:
    manifest = lq_start_checkpoint / EXPORT_DIR / MANIFEST_FILE
    before = manifest.stat().st_mtime_ns
    kept = CliRunner().invoke(export_onnx, [str(lq_start_checkpoint)])
    assert kept.exit_code == 0, kept.output
    assert "current, kept" in kept.output
    assert manifest.stat().st_mtime_ns == before
    recorded = json.loads(manifest.read_text())
    assert recorded["checkpoint_sha256"] == checkpoint_digest(lq_start_checkpoint)
    assert (recorded["flow_start"], recorded["steps"]) == ("reference", 1)


def test_a_noise_start_flux1_checkpoint_exports_and_samples_like_torch(tmp_path: Path) -> None:
    """The paper's flow (seeded noise to the image, several shifted steps) on a FLUX.1
    toy: pooled text, distilled guidance and the FLUX.1 schedule go through the export."""
    from models.onnx_export import export_onnx as export

    folder = _checkpoint(tmp_path / "model", "tiny-kontext", {})
    export(folder)
    photo = Image.open(_lq(tmp_path / "lq.png", (48, 32))).convert("RGB")
    exported = OnnxRestorer.from_checkpoint(folder)
    assert exported.flow_start == "noise"
    ours = exported.restore(photo, PROMPT, steps=3, seed=7)
    expected = CoTIRRestorer.from_pretrained(folder).restore(photo, PROMPT, steps=3, seed=7)
    worst, share = levels_apart(ours, expected)
    print(f"noise start, 3 steps: at most {worst} level apart, {share:.4%} of values differ")
    assert worst <= 1
    assert share < 0.01
    other_seed = exported.restore(photo, PROMPT, steps=3, seed=8)
    assert not np.array_equal(np.asarray(other_seed), np.asarray(ours))
