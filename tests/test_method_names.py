"""One grammar of method names: the tables, the partitions, the app and `cotir bench`."""

from __future__ import annotations

import json
from pathlib import Path

from cotir_pipeline.checkpoint_layout import CHECKPOINT_MARKER, checkpoint_folder_method
from cotir_pipeline.cli import _table_name
from cotir_pipeline.evaluation.method_names import checkpoint_method

MARKER = {"run": "r0123456789", "step": 600, "variant": "demo", "model_sha256": "ab" * 32}


def _step_folder(root: Path) -> Path:
    step = root / "checkpoints" / "step-0000600"
    (step / "model").mkdir(parents=True)
    (step / CHECKPOINT_MARKER).write_text(json.dumps(MARKER))
    return step


def test_a_checkpoint_folder_is_named_as_the_tables_name_it(tmp_path: Path) -> None:
    step = _step_folder(tmp_path)
    expected = checkpoint_method(MARKER, MARKER["model_sha256"])
    assert expected == "cotir-demo-paper-r0123456789-s600"
    assert checkpoint_folder_method(step) == expected
    assert checkpoint_folder_method(step / "model") == expected  # the inference part


def test_the_bench_command_reports_table_names(tmp_path: Path) -> None:
    step = _step_folder(tmp_path)
    assert _table_name(f"cotir:{step}") == "cotir-demo-paper-r0123456789-s600"
    assert _table_name(f"cotir:{step / 'model'}") == "cotir-demo-paper-r0123456789-s600"
    assert _table_name(f"folder:{tmp_path / 'Other Method'}") == "folder-other-method"
    assert _table_name("classical_chain") == "classical_chain"
    unmarked = tmp_path / "release_copy"
    unmarked.mkdir()
    assert _table_name(f"cotir:{unmarked}") == "cotir-release_copy"
