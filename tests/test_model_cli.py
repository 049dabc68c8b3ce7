"""``cotir restore``: the entry-point command writes a PNG with the tiny variant on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cotir_pipeline.cli import cli
from cotir_test_support import noise_image
from models.cli import restore


def _lq_png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    noise_image(*size).save(path)
    return path


def test_cotir_restore_writes_a_png_of_the_input_size(tmp_path: Path) -> None:
    lq = _lq_png(tmp_path / "lq.png")
    out = tmp_path / "out" / "restored.png"
    result = CliRunner().invoke(
        cli, ["restore", str(lq), "-p", "Remove the rain.", "-o", str(out), "--steps", "2"]
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (40, 30)
    assert str(out) in result.output


def test_two_prompts_run_two_turns(tmp_path: Path) -> None:
    lq = _lq_png(tmp_path / "lq.png")
    out = tmp_path / "final.png"
    result = CliRunner().invoke(
        restore,
        [str(lq), "-p", "Remove the rain.", "-p", "Brighten it.", "-o", str(out), "--steps", "1"],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert (tmp_path / "final.turn1.png").is_file()


def test_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = CliRunner().invoke(restore, [str(broken), "-p", "x", "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "cannot read" in result.output
    lq = _lq_png(tmp_path / "lq.png")
    result = CliRunner().invoke(restore, [str(lq), "-p", " ", "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "must not be empty" in result.output


def test_full_variant_without_weights_fails_with_the_setting_name(tmp_path: Path) -> None:
    lq = _lq_png(tmp_path / "lq.png")
    result = CliRunner().invoke(
        restore,
        [str(lq), "-p", "x", "-o", str(tmp_path / "o.png"), "--variant", "cotir-4b"],
        env={"COTIR_WEIGHTS_DIR": ""},
    )
    assert result.exit_code == 1
    assert "COTIR_WEIGHTS_DIR" in result.output


def test_help_shows_a_real_example_and_stays_torch_free() -> None:
    result = CliRunner().invoke(cli, ["restore", "--help"])
    assert result.exit_code == 0
    assert "cotir restore lq.png -p" in result.output
    probe = (
        "import sys; from cotir_pipeline.cli import cli; "
        "cli.get_command(None, 'restore'); print('torch' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert completed.stdout.strip() == "False"


def test_checkpoint_folder_brings_its_own_variant(tmp_path: Path) -> None:
    from models.checkpoint_io import save_checkpoint
    from models.restore import CoTIRRestorer
    from models.testing import randomize_gates

    trained = CoTIRRestorer.from_variant("tiny-kontext")
    randomize_gates(trained.model, 0.2)
    save_checkpoint(trained.model, tmp_path / "ckpt", variant="tiny-kontext", include_base=True)
    lq = _lq_png(tmp_path / "lq.png")
    out = tmp_path / "o.png"
    args = [str(lq), "-p", "Dehaze.", "-o", str(out), "--steps", "1"]
    result = CliRunner().invoke(restore, [*args, "--checkpoint", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    expected = trained.restore(Image.open(lq), "Dehaze.", steps=1)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    result = CliRunner().invoke(restore, [*args, "--checkpoint", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_hidden_modules_look_uninstalled_only_inside_the_block() -> None:
    """The restore command hides unused optional packages while the model code loads."""
    import importlib.util

    from models.optional_imports import hidden_modules

    name = "cotir_probe_optional_package"
    with hidden_modules((name, "sys")):
        assert importlib.util.find_spec(name) is None
        assert sys.modules[name] is None
        assert sys.modules["sys"] is sys  # already imported: left alone
    assert name not in sys.modules


def test_nothing_is_hidden_once_a_probing_library_is_loaded() -> None:
    """diffusers decides at import whether bitsandbytes is there; hiding it later breaks it."""
    import diffusers  # noqa: F401 - the point of the test

    from models.optional_imports import modules_to_hide

    assert modules_to_hide() == ()


def test_a_checkpoint_whose_base_is_gone_is_refused_in_one_line(tmp_path: Path) -> None:
    """A demo checkpoint trained on another prior names the missing base, no traceback."""
    from cotir_pipeline.evaluation.bench_builders import build_demo_bench
    from models.checkpoint_io import save_checkpoint
    from models.restore import CoTIRRestorer

    trained = CoTIRRestorer.from_variant("demo")
    other_base = {"path": str(tmp_path / "elsewhere"), "sha256": "ab" * 32}
    save_checkpoint(
        trained.model, tmp_path / "ckpt", variant="demo", extra_meta={"base": other_base}
    )
    lq = _lq_png(tmp_path / "lq.png")
    args = [str(lq), "-p", "Dehaze.", "-o", str(tmp_path / "o.png"), "--steps", "1"]
    result = CliRunner().invoke(restore, [*args, "--checkpoint", str(tmp_path / "ckpt")])
    assert result.exit_code == 1
    assert "trained on base abababababababab" in result.output
    assert "Traceback" not in result.output

    build_demo_bench(tmp_path / "bench", patch_size=64, per_recipe=1)
    bench = CliRunner().invoke(
        cli,
        [
            "bench",
            str(tmp_path / "bench"),
            "--out",
            str(tmp_path / "out"),
            "--method",
            f"cotir:{tmp_path / 'ckpt'}",
            "--prompt",
            "precise",
        ],
    )
    assert bench.exit_code == 2
    assert "no such base is available" in bench.output
    assert bench.exception is None or isinstance(bench.exception, SystemExit)


def test_a_cold_restore_skips_unused_libraries_and_restores_the_same_image(
    tmp_path: Path,
) -> None:
    """A fresh ``cotir restore`` of a trained checkpoint never imports bitsandbytes or
    scipy (about two seconds of its cold start), and its PNG equals an in-process restore
    (the LoRA merged into the float32 weights); peft's unmerged layers give the same
    image to one level."""
    from models.checkpoint_io import save_checkpoint
    from models.lora import apply_lora
    from models.restore import CoTIRRestorer
    from models.testing import randomize_gates

    trained = CoTIRRestorer.from_variant("demo")
    torch.manual_seed(0)
    apply_lora(trained.model, 4, init_b="random")
    randomize_gates(trained.model, 0.2)
    save_checkpoint(trained.model, tmp_path / "ckpt", variant="demo")
    lq = _lq_png(tmp_path / "lq.png", size=(48, 40))
    out = tmp_path / "out.png"
    probe = (
        "import sys\n"
        "from cotir_pipeline.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "print('loaded:', sorted(n for n in ('bitsandbytes', 'scipy') if n in sys.modules))\n"
    )
    arguments = ["restore", str(lq), "-p", "Remove the haze.", "-o", str(out), "--steps", "2"]
    arguments += ["--checkpoint", str(tmp_path / "ckpt")]
    completed = subprocess.run(
        [sys.executable, "-c", probe, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "loaded: []" in completed.stdout
    photo = Image.open(lq).convert("RGB")
    merged = CoTIRRestorer.from_pretrained(tmp_path / "ckpt")
    expected = merged.restore(photo, "Remove the haze.", steps=2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    layered = CoTIRRestorer.from_pretrained(tmp_path / "ckpt", merge_lora=False)
    unmerged = np.asarray(layered.restore(photo, "Remove the haze.", steps=2), dtype=np.int16)
    assert np.abs(unmerged - np.asarray(expected, dtype=np.int16)).max() <= 1
    base = CoTIRRestorer.from_variant("demo").restore(photo, "Remove the haze.", steps=2)
    assert not np.array_equal(unmerged, np.asarray(base))  # the LoRA and gates did act


def test_the_bench_entry_point_loads_a_checkpoint_without_unused_libraries(
    tmp_path: Path,
) -> None:
    """``cotir bench --method cotir:DIR`` reaches the model through the ``cotir.restorers``
    entry point; loading it in a fresh process imports neither bitsandbytes (which on
    some CPUs asks the hub for a kernel and logs a warning) nor scipy, and the restorer
    it returns is the checkpoint's, named as the tables name it."""
    from models.checkpoint_io import save_checkpoint
    from models.lora import apply_lora
    from models.restore import CoTIRRestorer

    trained = CoTIRRestorer.from_variant("demo")
    apply_lora(trained.model, 4)  # peft's LoRA layers are what import bitsandbytes
    save_checkpoint(trained.model, tmp_path / "ckpt", variant="demo")
    probe = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "(point,) = [p for p in entry_points(group='cotir.restorers') if p.name == 'cotir']\n"
        "restorer = point.load()(sys.argv[1])\n"
        "print('loaded:', sorted(n for n in ('bitsandbytes', 'scipy') if n in sys.modules))\n"
        "print('name:', restorer.name)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "loaded: []" in completed.stdout
    assert "name: cotir-" in completed.stdout, completed.stdout


def test_release_compat_flag_reaches_the_restorer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.restore import CoTIRRestorer

    seen: list[bool] = []
    original = CoTIRRestorer.restore_turns

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(self.release_compat)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CoTIRRestorer, "restore_turns", spy)
    lq = _lq_png(tmp_path / "lq.png")
    args = [str(lq), "-p", "Dehaze.", "-o", str(tmp_path / "o.png"), "--steps", "1"]
    for flag in ([], ["--release-compat"]):
        result = CliRunner().invoke(restore, [*args, "--variant", "tiny", *flag])
        assert result.exit_code == 0, result.output
    assert seen == [False, True]
