"""The consistency filter on the real open_clip code path, with a randomly initialised model.

No CLIP weights are downloaded: the smallest open_clip architecture (ViT-S-32-alt)
is built with random weights, its state dict saved to a temp file, and the filter
loads that file through its configured-checkpoint path, exactly as it loads real
weights. Scores from random weights mean nothing; the tests check the mechanics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cotir_pipeline.annotation.clip_filter import (
    CLIP_NOT_CONFIGURED,
    FILTER_SCHEMA,
    ClipFilterConfig,
    ClipScorer,
    ConsistencyFilter,
    FilterDecision,
    FilterItem,
    filter_table,
)
from cotir_pipeline.annotation.schema import CotAnswer
from cotir_pipeline.shards import encode_png

ARCH = "ViT-S-32-alt"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine two threads spin and run 5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT-S-32-alt state dict on disk."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "random-vit-s-32-alt.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def scorer(checkpoint: Path) -> ClipScorer:
    """One loaded model shared by the tests (loading takes about a second)."""
    config = ClipFilterConfig(model_name=ARCH, checkpoint_path=checkpoint)
    loaded = ClipScorer(config)
    loaded.load()
    return loaded


def _answer(degradation: str) -> CotAnswer:
    return CotAnswer(
        vague_question="Make this clearer.",
        precise_question="Remove the noise from this photo.",
        scene="A textured surface with scattered bright and dark spots.",
        degradation=degradation,
        plan="Remove the noise, keeping the textures intact.",
        answer="The restored image is clean and sharp.",
    )


def _items(count: int) -> list[FilterItem]:
    generator = np.random.default_rng(0)
    items = []
    for index in range(count):
        hq = generator.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        noise = generator.normal(0, 40, hq.shape)
        lq = np.clip(hq + noise, 0, 255).astype(np.uint8)
        text = f"Strong grainy noise number {index} covers the image."
        items.append(
            FilterItem(f"s{index}", "noise", encode_png(lq), encode_png(hq), _answer(text))
        )
    return items


COUNT = 6


@pytest.fixture(scope="module")
def baseline(checkpoint: Path, scorer: ClipScorer) -> list[FilterDecision]:
    """Decisions with a threshold every finite score passes."""
    config = ClipFilterConfig(
        model_name=ARCH, checkpoint_path=checkpoint, threshold=-2.0, batch_size=4
    )
    return ConsistencyFilter(config, scorer=scorer).run(_items(COUNT))


def test_scores_are_finite_and_recorded(checkpoint: Path, baseline: list[FilterDecision]) -> None:
    assert [d.sample_id for d in baseline] == [f"s{i}" for i in range(COUNT)]
    for decision in baseline:
        assert decision.clip_status == "scored"
        assert decision.clip_score is not None
        assert decision.clip_lq_cos is not None
        assert decision.clip_hq_cos is not None
        assert math.isfinite(decision.clip_score)
        assert -1.0 <= decision.clip_lq_cos <= 1.0
        assert decision.clip_score == pytest.approx(decision.clip_lq_cos - decision.clip_hq_cos)
        assert decision.clip_model == f"{ARCH}:{checkpoint.name}"
        assert decision.kept, decision.reason


def test_threshold_decides_keep_or_drop(
    checkpoint: Path, scorer: ClipScorer, baseline: list[FilterDecision]
) -> None:
    scores = [d.clip_score for d in baseline if d.clip_score is not None]
    threshold = float(np.median(scores))
    config = ClipFilterConfig(
        model_name=ARCH, checkpoint_path=checkpoint, threshold=threshold, batch_size=5
    )
    decisions = ConsistencyFilter(config, scorer=scorer).run(_items(COUNT))
    # Same inputs, other batching: the same scores.
    assert [d.clip_score for d in decisions] == pytest.approx(scores, abs=1e-5)
    kept = [d for d in decisions if d.kept]
    dropped = [d for d in decisions if not d.kept]
    assert kept
    assert dropped
    for decision in kept:
        assert decision.clip_score is not None
        assert decision.clip_score >= threshold
        assert decision.reason is None
    for decision in dropped:
        assert decision.clip_score is not None
        assert decision.clip_score < threshold
        assert decision.reason is not None
        assert "below threshold" in decision.reason
        assert decision.threshold == threshold


def test_rules_and_clip_combine(checkpoint: Path, scorer: ClipScorer) -> None:
    config = ClipFilterConfig(model_name=ARCH, checkpoint_path=checkpoint, threshold=-2.0)
    good, unreadable = _items(2)
    wrong = FilterItem("wrong", "haze", good.lq_png, good.hq_png, good.answer)
    broken = FilterItem("broken", "noise", b"not an image", unreadable.hq_png, unreadable.answer)
    failed = FilterItem("failed", "noise", good.lq_png, good.hq_png, None, "timeout after 300 s")
    decisions = ConsistencyFilter(config, scorer=scorer).run([good, wrong, broken, failed])
    by_id = {d.sample_id: d for d in decisions}
    assert by_id["s0"].kept
    assert not by_id["wrong"].kept
    assert by_id["wrong"].clip_status == "scored"  # scored anyway, for threshold studies
    assert by_id["wrong"].rule_failures
    assert "labels_named" in (by_id["wrong"].reason or "")
    assert by_id["broken"].clip_status == "unreadable image"
    assert by_id["broken"].clip_score is None
    assert not by_id["broken"].kept
    assert by_id["failed"].clip_status == "not scored: no answer"
    # Not judged: it stays 'failed', so the filter looks at it again once it is annotated.
    assert by_id["failed"].status == "failed"
    assert by_id["failed"].reason == (
        "annotation failed: timeout after 300 s; judged again once annotated"
    )
    table = filter_table(decisions)
    assert table.schema.equals(FILTER_SCHEMA)
    assert isinstance(table, pa.Table)


def test_without_clip_only_the_rules_run() -> None:
    items = _items(3)
    items[2] = FilterItem(
        "refusal",
        "noise",
        items[2].lq_png,
        items[2].hq_png,
        _answer("I'm sorry, I cannot see any noise in this image."),
    )
    decisions = ConsistencyFilter().run(items)
    for decision in decisions:
        assert decision.clip_status == CLIP_NOT_CONFIGURED
        assert decision.clip_score is None
        assert decision.clip_lq_cos is None
        assert decision.threshold is None
        assert decision.clip_model is None
    assert [d.kept for d in decisions] == [True, True, False]
    assert "refusal" in (decisions[2].reason or "")


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        ClipFilterConfig(model_name=ARCH)
    with pytest.raises(ValueError, match="both"):
        ClipFilterConfig(checkpoint_path=tmp_path / "w.pt")
    missing = ClipFilterConfig(model_name=ARCH, checkpoint_path=tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        ClipScorer(missing).load()
    (tmp_path / "w.pt").write_bytes(b"")
    unknown = ClipFilterConfig(model_name="ViT-Nonexistent", checkpoint_path=tmp_path / "w.pt")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipScorer(unknown).load()
    hf_tokenizer = ClipFilterConfig(
        model_name="roberta-ViT-B-32", checkpoint_path=tmp_path / "w.pt"
    )
    with pytest.raises(ValueError, match="Hugging Face tokenizer"):
        ClipScorer(hf_tokenizer).load()
    with pytest.raises(ValueError, match="needs a model"):
        ClipScorer(ClipFilterConfig())


def test_checkpoint_of_another_architecture_is_refused(checkpoint: Path) -> None:
    other = ClipFilterConfig(model_name="ViT-S-32", checkpoint_path=checkpoint)
    with pytest.raises(ValueError, match="is not a ViT-S-32 checkpoint"):
        ClipScorer(other).load()
