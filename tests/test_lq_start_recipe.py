"""The demo's LQ-start recipe: flow from the LQ tokens, the velocity as the change to the base.

An untrained fine-tune under this recipe is the identity map (it restores its input
unchanged), the property that keeps nearly clean inputs near their own PSNR; the same
weights read as a plain velocity are the prior's edit of the input, which is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cotir_test_support import demo_photo_pixels

PROMPT = "Please remove the haze."


def _save_untrained(folder: Path, velocity: str, **meta: object) -> Path:
    from models.checkpoint_io import save_checkpoint
    from models.lora import apply_lora
    from models.restore import CoTIRRestorer

    restorer = CoTIRRestorer.from_variant("demo")
    # B = 0: no change to the prior yet, also on the text path the main recipe adds.
    apply_lora(restorer.model, 4, scope="text_path")
    save_checkpoint(
        restorer.model,
        folder,
        variant="demo",
        extra_meta={"flow_start": "reference", "velocity": velocity, **meta},
    )
    return folder


def _photo_crop() -> Image.Image:
    return Image.fromarray(demo_photo_pixels()).crop((0, 0, 64, 64))


def test_an_untrained_lq_start_fine_tune_restores_its_input_unchanged(tmp_path: Path) -> None:
    from models.restore import CoTIRRestorer

    image = _photo_crop()
    pixels = np.asarray(image, dtype=np.int16)
    delta = CoTIRRestorer.from_pretrained(_save_untrained(tmp_path / "delta", "delta"))
    assert delta.flow_start == "reference"
    assert delta.model.velocity_delta
    restored = np.asarray(delta.restore(image, PROMPT), dtype=np.int16)
    # Unchanged up to the codec: the demo codec keeps colour at half resolution, so the
    # input's own encode/decode round trip is what an untrained fine-tune must give back.
    from models.restore import pil_to_tensor, tensor_to_pil

    round_trip = delta.codec.decode(delta.codec.encode(pil_to_tensor(image)))
    expected = np.asarray(tensor_to_pil(round_trip), dtype=np.int16)
    assert np.abs(restored - expected).max() <= 1  # float rounding only

    plain = CoTIRRestorer.from_pretrained(_save_untrained(tmp_path / "plain", "model"))
    assert not plain.model.velocity_delta
    edited = np.asarray(plain.restore(image, PROMPT), dtype=np.int16)
    assert np.abs(edited - pixels).mean() > 5  # the prior's own velocity moves the image


def test_a_checkpoint_with_an_unknown_velocity_is_refused(tmp_path: Path) -> None:
    from models.restore import CoTIRRestorer

    folder = _save_untrained(tmp_path / "model", "delta")
    meta_path = folder / "cotir.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["velocity"] = "residual"
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown velocity 'residual'"):
        CoTIRRestorer.from_pretrained(folder)


def test_a_checkpoint_trained_at_the_flows_start_is_sampled_in_its_one_step(
    tmp_path: Path,
) -> None:
    """--flow-times start trains at t = 1 only; the checkpoint says so (sample_steps 1) and
    the restorer takes that one step unless a call asks for more."""
    from models.restore import CoTIRRestorer

    image = _photo_crop()
    one = CoTIRRestorer.from_pretrained(_save_untrained(tmp_path / "one", "delta", sample_steps=1))
    assert one.default_steps == 1
    steps: list[tuple[int, int]] = []
    one.restore(image, PROMPT, on_step=lambda step, total: steps.append((step, total)))
    assert steps == [(1, 1)]
    steps.clear()
    one.restore(image, PROMPT, steps=3, on_step=lambda step, total: steps.append((step, total)))
    assert steps[-1] == (3, 3)
    default = CoTIRRestorer.from_pretrained(_save_untrained(tmp_path / "four", "delta"))
    assert default.default_steps == default.variant.steps

    folder = _save_untrained(tmp_path / "bad", "delta", sample_steps=0)
    with pytest.raises(ValueError, match="sample_steps must be a positive int"):
        CoTIRRestorer.from_pretrained(folder)


def test_training_at_the_flows_start_needs_the_lq_start_flow() -> None:
    from pydantic import ValidationError

    from models.train_options import build_config, parse_options

    base = ["--variant", "demo", "--shards", "s", "--out", "o", "--flow-times", "start"]
    with pytest.raises(ValidationError, match="needs flow_start 'reference'"):
        build_config(parse_options(base))
    config = build_config(parse_options([*base, "--flow-start", "reference"]))
    assert config.flow_times == "start"
