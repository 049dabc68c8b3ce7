"""Find model weights on local disk; never download them.

Every model, text encoder and metric reads its weights through :func:`require_weights`,
so a missing file fails with one message that names the setting and the exact path
expected, instead of a hub download attempt or a deep traceback.
"""

from __future__ import annotations

from pathlib import Path

from cotir_pipeline.settings import CotirSettings


class MissingWeightsError(FileNotFoundError):
    """Weights a component needs are not where the settings say they should be."""


def require_weights(settings: CotirSettings, relative_path: str, *, what: str) -> Path:
    """Return ``COTIR_WEIGHTS_DIR/relative_path``, or raise naming the setting and the path.

    ``what`` says which component needs it (e.g. "FLUX.1 Kontext transformer"); the
    path may be a file or a folder (a diffusers ``save_pretrained`` directory).
    """
    if settings.weights_dir is None:
        raise MissingWeightsError(
            f"COTIR_WEIGHTS_DIR: not set, but the {what} needs {relative_path} inside it "
            "(set it to the folder that holds your local weights)"
        )
    candidate = settings.weights_dir / relative_path
    if not candidate.exists():
        raise MissingWeightsError(
            f"COTIR_WEIGHTS_DIR: the {what} needs {candidate}, which does not exist "
            f"(place the weights there or change COTIR_WEIGHTS_DIR)"
        )
    return candidate
