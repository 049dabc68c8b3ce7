"""The layout of a training checkpoint, on disk and in the object store: the one home of its names.

Training (``models.train``) writes, per run::

    <run folder>/checkpoints/latest            the name of the newest finished step
    <run folder>/checkpoints/step-NNNNNNN/
        model/                                 what ``from_pretrained`` loads (cotir.json, ...)
        trainable.safetensors, training_state.pt
        checkpoint.json                        the marker, written last

A step folder is finished when its marker exists. Uploaded runs keep the same step
folders under ``checkpoints/<variant>/<run id>/`` in the object store, where the
evaluation stage finds them (:func:`find_checkpoints`) and the app lists them. The
release's checkpoints are a folder with ``cot_adapter.pt`` and ``lora.pt`` instead of
``model/``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotir_pipeline.evaluation.method_names import (
    COTIR_METHOD_PREFIX,
    checkpoint_method,
    method_name,
)

if TYPE_CHECKING:
    from cotir_pipeline.store import ObjectInfo, ObjectStore

#: Store prefix of uploaded checkpoints: ``checkpoints/<variant>/<run id>/step-NNNNNNN/``.
CHECKPOINTS_PREFIX = "checkpoints"
#: A run folder's sub-folder of step checkpoints.
CHECKPOINTS_DIR = "checkpoints"
#: File naming the newest finished step folder (beside the step folders).
LATEST_FILE = "latest"
#: A checkpoint folder is finished when this file exists in it (written last).
CHECKPOINT_MARKER = "checkpoint.json"
#: The inference part of a training checkpoint (what ``from_pretrained`` loads).
MODEL_DIR = "model"
#: The project's own checkpoint record inside ``model/``.
META_FILE = "cotir.json"
#: The release's adapter file: a folder holding it is a release checkpoint.
RELEASE_ADAPTER_FILE = "cot_adapter.pt"
#: The marker field training writes: sha256 over the model files.
MODEL_HASH_FIELD = "model_sha256"
#: Marker fields that carry the checkpoint's hash, first found wins (else it is computed).
HASH_FIELDS: tuple[str, ...] = ("checkpoint_hash", MODEL_HASH_FIELD, "sha256")


class CheckpointLayoutError(ValueError):
    """A stored checkpoint folder whose model part cannot be told apart."""


@dataclass(frozen=True)
class CheckpointRef:
    """A finished checkpoint folder in the store and its content hash."""

    folder: str
    hash: str
    marker: Mapping[str, Any]
    files: tuple[ObjectInfo, ...]

    @property
    def method(self) -> str:
        """Its method name (:func:`~cotir_pipeline.evaluation.method_names.checkpoint_method`)."""
        return checkpoint_method(self.marker, self.hash)

    @property
    def final(self) -> bool:
        """Whether this is the last checkpoint of its run (markers without the field: yes)."""
        return bool(self.marker.get("final", True))


def _read_marker(raw: bytes) -> dict[str, Any]:
    """A marker's fields; an empty or unreadable marker still marks a finished folder."""
    try:
        marker = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return marker if isinstance(marker, dict) else {}


def find_checkpoints(store: ObjectStore, prefix: str = CHECKPOINTS_PREFIX) -> list[CheckpointRef]:
    """Every folder under ``prefix`` whose :data:`CHECKPOINT_MARKER` exists, with its hash.

    The hash is the marker's first :data:`HASH_FIELDS` entry (the training stage writes
    ``model_sha256``: the same weights give the same method), else sha256 over the
    marker's bytes and the (name, size) list of the folder's files. Markers nested
    below another checkpoint folder are checkpoints of their own.
    """
    objects = list(store.list(prefix.rstrip("/") + "/"))
    folders = sorted(
        info.key.rsplit("/", 1)[0]
        for info in objects
        if info.key.rsplit("/", 1)[-1] == CHECKPOINT_MARKER and "/" in info.key
    )
    found = []
    for folder in folders:
        nested = [other for other in folders if other.startswith(folder + "/")]
        files = [
            info
            for info in objects
            if info.key.startswith(folder + "/")
            and not any(info.key.startswith(other + "/") for other in nested)
        ]
        raw = store.get_bytes(f"{folder}/{CHECKPOINT_MARKER}")
        marker = _read_marker(raw)
        declared = next(
            (str(marker[k]).lower() for k in HASH_FIELDS if isinstance(marker.get(k), str)), ""
        )
        if re.fullmatch(r"[0-9a-f]{12,}", declared):
            digest = declared
        else:
            hasher = hashlib.sha256(raw)
            for info in files:
                hasher.update(f"\n{info.key[len(folder) + 1 :]}:{info.size}".encode())
            digest = hasher.hexdigest()
        found.append(CheckpointRef(folder, digest, marker, tuple(files)))
    return found


def model_subfolder(ref: CheckpointRef) -> str:
    """The part of a checkpoint ``from_pretrained`` loads ("" for the folder itself).

    The marker's ``model_dir`` when given; else the folder itself when it holds
    ``cotir.json`` (ours) or ``cot_adapter.pt`` (the release); else its one
    sub-folder that does (the training stage's ``model/``). Only that part is
    downloaded, never the optimizer state beside it.
    """
    relative = {info.key[len(ref.folder) + 1 :] for info in ref.files}
    named = ref.marker.get("model_dir")
    if isinstance(named, str) and named.strip("/"):
        return named.strip("/")
    holders = sorted(
        {
            name.rsplit("/", 1)[0] if "/" in name else ""
            for name in relative
            if name.rsplit("/", 1)[-1] in (META_FILE, RELEASE_ADAPTER_FILE)
        }
    )
    if "" in holders:
        return ""
    if len(holders) == 1:
        return holders[0]
    raise CheckpointLayoutError(
        f"checkpoint {ref.folder}: expected one folder with {META_FILE} or "
        f"{RELEASE_ADAPTER_FILE}, found {holders or 'none'} (or name it as model_dir in "
        f"{CHECKPOINT_MARKER})"
    )


def checkpoint_folder_method(folder: Path) -> str:
    """The method name of a checkpoint folder on disk, as the tables name it.

    ``folder`` is a training step folder or its ``model/`` part. The marker of the step
    folder gives ``cotir-<variant>-<recipe>-<run>-s<step>``; a folder without one (the
    release's files, a copy) is ``cotir-<folder name>``.
    """
    for step in (folder, folder.parent):
        marker_path = step / CHECKPOINT_MARKER
        if marker_path.is_file():
            marker = _read_marker(marker_path.read_bytes())
            digest = marker.get(MODEL_HASH_FIELD)
            if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{12,}", digest):
                return checkpoint_method(marker, digest)
    return method_name(COTIR_METHOD_PREFIX, folder.name, COTIR_METHOD_PREFIX + "checkpoint")
