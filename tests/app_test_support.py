"""A demo-variant checkpoint laid out as a training run writes it, for the app's tests.

It is the shipped editing prior with a small random LoRA and slightly open adapter gates
(not trained: the tests check that the app finds, loads and runs a checkpoint, not what
it learned). The LoRA is scaled down so the output stays the prior's near-copy of the
input, a picture rather than noise in the screenshot the browser test takes.
"""

from __future__ import annotations

import json
from pathlib import Path

from cotir_pipeline.digests import folder_sha256

RUN = "rtestapp0001"
STEP = 2


def save_demo_run(training_root: Path, run: str = RUN, step: int = STEP) -> Path:
    """``<training_root>/demo/<run>/checkpoints/step-N/{model/, checkpoint.json}``; returns
    the step folder."""
    import torch

    from models.checkpoint_io import save_checkpoint
    from models.lora import apply_lora
    from models.restore import CoTIRRestorer
    from models.testing import randomize_gates

    restorer = CoTIRRestorer.from_variant("demo")
    torch.manual_seed(0)
    apply_lora(restorer.model, 4, init_b="random")
    with torch.no_grad():
        for name, parameter in restorer.model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(1e-3)
    randomize_gates(restorer.model, 0.02)
    step_folder = training_root / "demo" / run / "checkpoints" / f"step-{step:07d}"
    save_checkpoint(restorer.model, step_folder / "model", variant="demo")
    marker = {
        "step": step,
        "total_steps": step,
        "final": True,
        "run": run,
        "variant": "demo",
        "flow_start": "noise",
        "constraint_mode": "lagrangian",
        "model_sha256": folder_sha256(step_folder / "model"),
    }
    (step_folder / "checkpoint.json").write_text(json.dumps(marker), encoding="utf-8")
    return step_folder
