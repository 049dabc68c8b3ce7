"""A training run's checkpoint folders: the inference export, the finished folders and
the newest of them, and their copies in the object store (marker last, ``latest``
pointer after it). The names come from :mod:`cotir_pipeline.checkpoint_layout`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cotir_pipeline.checkpoint_layout import CHECKPOINT_MARKER, LATEST_FILE, MODEL_DIR
from cotir_pipeline.store import inherited_store_config, open_store
from cotir_pipeline.store.local import write_atomically
from cotir_pipeline.store.sync import pull, push
from models.variants import Variant

if TYPE_CHECKING:
    from models.lora import LoraScope


def export_inference_checkpoint(
    trainable: Mapping[str, torch.Tensor],
    variant: Variant,
    folder: Path,
    *,
    lora_bias: bool = True,
    lora_scope: LoraScope = "paper",
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write adapter + LoRA as an inference checkpoint (``models.checkpoint_io`` layout).

    ``trainable`` holds the full (gathered) trainable tensors by parameter name; they are
    assigned into a skeleton built on the meta device, so no base weights are needed
    here and any wrapping (DDP, FSDP) of the training model is irrelevant.
    """
    from models.backbones import CoTIRTransformer
    from models.checkpoint_io import save_checkpoint
    from models.lora import apply_lora

    skeleton = CoTIRTransformer.from_variant(variant, device="meta")
    apply_lora(skeleton, variant.lora_rank, lora_bias=lora_bias, scope=lora_scope)
    wanted = {name for name, p in skeleton.named_parameters() if p.requires_grad}
    missing = sorted(wanted - set(trainable))
    if missing:
        raise ValueError(f"trainable state lacks {len(missing)} tensors, e.g. {missing[:3]}")
    selected = {name: trainable[name] for name in wanted}
    skeleton.load_state_dict(selected, strict=False, assign=True)
    return save_checkpoint(skeleton, folder, variant=variant.name, extra_meta=extra_meta)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers never see a partial file."""

    write_atomically(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def _open_store(url: str) -> Any:
    """The store at ``url`` with the client settings the launching process handed down."""

    return open_store(inherited_store_config(url))


def finished_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders with their completion marker, oldest first."""
    if not root.is_dir():
        return []
    return sorted(
        path
        for path in root.iterdir()
        if path.is_dir() and path.name.startswith("step-") and (path / CHECKPOINT_MARKER).is_file()
    )


def latest_checkpoint(root: Path) -> Path | None:
    """The newest finished checkpoint under ``root``.

    The ``latest`` pointer is written after a checkpoint's folder is renamed into place,
    so a process killed between the two leaves it naming the one before; the finished
    folders themselves are the record (their names sort by step).
    """
    finished = finished_checkpoints(root)
    return finished[-1] if finished else None


def fetch_latest_from_store(store_url: str, root: Path) -> Path | None:
    """Download the store's latest finished checkpoint into ``root``; None if it has none."""
    store = _open_store(store_url)
    if not store.exists(LATEST_FILE):
        return None
    name = store.get_text(LATEST_FILE).strip()
    if not store.exists(f"{name}/{CHECKPOINT_MARKER}"):
        return None
    target = root / name
    pull(store, name, target, refresh="always", last=(CHECKPOINT_MARKER,))
    return target


def upload_checkpoint(store_url: str, folder: Path) -> str:
    """Upload a finished checkpoint folder (marker last) and point ``latest`` at it."""
    store = _open_store(store_url)
    push(store, folder, folder.name, refresh="always", last=(CHECKPOINT_MARKER,))
    store.put_text(LATEST_FILE, folder.name + "\n")
    return f"{store.url.rstrip('/')}/{folder.name}/{MODEL_DIR}"
