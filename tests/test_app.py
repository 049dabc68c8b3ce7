"""`cotir app`'s logic without a browser: methods, prompts, turns, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from app_test_support import RUN, STEP, save_demo_run
from PIL import Image

from cotir_app.session import (
    CLASSICAL_LABEL,
    IDENTITY_LABEL,
    AppError,
    MethodOption,
    MetricPool,
    RestorerPool,
    RestoreSettings,
    Session,
    custom_checkpoint,
    fit_long_edge,
    matched_prompt,
    method_options,
    read_image,
    restore_turn,
    suggest_prompt,
)
from cotir_pipeline.annotation.prompts import spe_prompts


def _pair() -> tuple[np.ndarray, np.ndarray]:
    from cotir_pipeline.demo_photos import DEMO_PHOTOS, load_photo

    photo = next(p for p in DEMO_PHOTOS if p.photo_id == "coffee")
    clean = load_photo(photo)[100:164, 200:264]
    hazy = np.clip(clean * 0.6 + 0.4 * 220, 0, 255).astype(np.uint8)
    return hazy, clean


@pytest.fixture(scope="module")
def training_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("app") / "training"
    save_demo_run(root)
    return root


def test_the_method_menu_lists_the_builtins_and_each_run_by_its_table_name(
    training_root: Path,
) -> None:
    options = method_options(training_root)
    assert [option.label for option in options[:2]] == [IDENTITY_LABEL, CLASSICAL_LABEL]
    checkpoints = [option for option in options if option.kind == "cotir"]
    assert [option.label for option in checkpoints] == [f"cotir-demo-paper-{RUN}-s{STEP}"]
    assert checkpoints[0].checkpoint == (
        training_root / "demo" / RUN / "checkpoints" / f"step-{STEP:07d}" / "model"
    )
    assert method_options(training_root / "missing")[2:] == []


def test_prompts_come_from_the_release_prompt_file_or_the_bench_listing(tmp_path: Path) -> None:
    release = tmp_path / "release"
    (release / "images").mkdir(parents=True)
    (release / "prompts").mkdir()
    (release / "prompts" / "000018.txt").write_text("Remove the rain streaks.\n")
    found = matched_prompt(release / "images" / "000018.png")
    assert found is not None
    assert found.pick("precise") == "Remove the rain streaks."

    bench = tmp_path / "bench"
    (bench / "lq").mkdir(parents=True)
    record = {
        "id": "a",
        "lq_path": "lq/a.png",
        "deg_type": "haze",
        "gen_prompt": "Improve this photo.",
        "spe_prompt": "Please remove the haze.",
    }
    (bench / "test.jsonl").write_text("not json\n" + json.dumps(record) + "\n")
    found = matched_prompt(bench / "lq" / "a.png")
    assert found is not None
    assert (found.pick("precise"), found.pick("vague"), found.degradation) == (
        "Please remove the haze.",
        "Improve this photo.",
        "haze",
    )
    assert matched_prompt(bench / "lq" / "b.png") is None


def test_a_named_degradation_suggests_its_precise_instruction() -> None:
    assert suggest_prompt("haze") == spe_prompts("haze")[0]
    assert suggest_prompt("rain+noise") == f"{spe_prompts('rain')[0]} {spe_prompts('noise')[0]}"
    with pytest.raises(AppError, match="not a degradation"):
        suggest_prompt("sunburn")


def test_turns_refine_the_last_output_and_going_back_drops_later_turns(tmp_path: Path) -> None:
    hazy, clean = _pair()
    session = Session(source=hazy, source_name="coffee", reference=clean)
    pool, metrics = RestorerPool(), MetricPool()
    classical = RestoreSettings(
        MethodOption(CLASSICAL_LABEL, "classical"), "Please remove the haze.", "haze"
    )
    first = restore_turn(
        session, classical, refine=False, pool=pool, metrics=metrics, output_dir=tmp_path
    )
    identity_psnr = 10 * np.log10(255**2 / np.mean((hazy.astype(float) - clean) ** 2))
    assert first.number == 1
    assert first.metrics["psnr"] > identity_psnr + 1
    assert np.array_equal(np.asarray(Image.open(first.path)), first.output)

    brighter = RestoreSettings(
        MethodOption(IDENTITY_LABEL, "identity"), "Make it brighter.", enhance=True
    )
    second = restore_turn(
        session, brighter, refine=True, pool=pool, metrics=metrics, output_dir=tmp_path
    )
    assert second.number == 2
    assert np.array_equal(second.input, first.output)
    assert second.output.mean() > first.output.mean()  # the Retinex gamma brightened it
    assert [turn.number for turn in session.turns] == [1, 2]

    assert session.go_back(1) is first
    assert len(session.turns) == 1
    with pytest.raises(AppError, match="no turn 3"):
        session.go_back(3)
    again = restore_turn(
        session, classical, refine=False, pool=pool, metrics=metrics, output_dir=tmp_path
    )
    assert [turn.number for turn in session.turns] == [1]
    assert again is session.turns[0]


def test_a_checkpoint_is_loaded_once_and_restores_in_tiles(
    training_root: Path, tmp_path: Path
) -> None:
    hazy, clean = _pair()
    session = Session(source=hazy, reference=clean)
    pool, metrics = RestorerPool(), MetricPool()
    option = method_options(training_root)[2]
    settings = RestoreSettings(option, "Please remove the haze.", steps=2, tile_size=32)
    turn = restore_turn(
        session, settings, refine=False, pool=pool, metrics=metrics, output_dir=tmp_path
    )
    assert turn.output.shape == hazy.shape
    assert set(turn.metrics) == {"psnr", "ssim"}
    model = pool.get(option, "cpu")
    restore_turn(session, settings, refine=True, pool=pool, metrics=metrics, output_dir=tmp_path)
    assert pool.get(option, "cpu") is model
    assert len(pool.loaded) == 1


def test_problems_are_messages_not_tracebacks(training_root: Path, tmp_path: Path) -> None:
    hazy, _ = _pair()
    pool, metrics = RestorerPool(), MetricPool()

    def run(settings: RestoreSettings, session: Session | None = None) -> None:
        restore_turn(
            session or Session(source=hazy),
            settings,
            refine=False,
            pool=pool,
            metrics=metrics,
            output_dir=tmp_path,
        )

    missing = custom_checkpoint(str(tmp_path / "no-such-checkpoint"), None)
    with pytest.raises(AppError, match="no-such-checkpoint"):
        run(RestoreSettings(missing, "Please remove the haze."))
    with pytest.raises(AppError, match="COTIR_WEIGHTS_DIR"):
        run(RestoreSettings(custom_checkpoint("CoTIR/cotir-4b", "cotir-4b"), "Dehaze it."))
    with pytest.raises(AppError, match="needs the degradation"):
        run(RestoreSettings(MethodOption(CLASSICAL_LABEL, "classical"), "Dehaze it."))
    with pytest.raises(AppError, match="instruction is empty"):
        run(RestoreSettings(MethodOption(IDENTITY_LABEL, "identity"), "  "))
    with pytest.raises(AppError, match="input image first"):
        run(RestoreSettings(MethodOption(IDENTITY_LABEL, "identity"), "Dehaze it."), Session())

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(AppError, match="cannot be read"):
        read_image(bad, "input image")
    with pytest.raises(AppError, match="does not exist"):
        read_image(tmp_path / "absent.png")

    # Above the demo model's untiled limit (512 x 512 px): refused unless tiled.
    option = method_options(training_root)[2]
    large = np.full((520, 640, 3), 128, np.uint8)
    with pytest.raises(AppError, match=r"Image too large.*tile"):
        run(RestoreSettings(option, "Please remove the haze.", steps=1), Session(source=large))


def test_the_long_edge_limit_scales_down_only() -> None:
    image = np.zeros((300, 600, 3), np.uint8)
    assert fit_long_edge(image, 200).shape == (100, 200, 3)
    assert fit_long_edge(image, 0) is image
    assert fit_long_edge(image, 1000) is image
