"""The consistency filter: rule checks plus a CLIP image-text score, keep or drop per sample.

Score (reconstruction: the paper's score and threshold are not public). With
``f`` the CLIP image embedding, ``g`` the text embedding, both L2-normalised, and
``t`` the answer's degradation description::

    s = cos(f(LQ), g(t)) - cos(f(HQ), g(t))

The description is about what is wrong with the LQ image, so it should match the
LQ image better than the clean HQ image of the same scene: ``s > 0``. Comparing
against the HQ image cancels what both images share (the scene), which a plain
``cos(f(LQ), g(t))`` would reward even for a description that ignores the
degradation. A sample is kept when every rule passes and ``s >= threshold``
(default 0.0: "closer to LQ than to HQ"); both cosines are recorded too, so the
threshold can be re-chosen from the stored rows without recomputing.

The model name and a local checkpoint file come from configuration; nothing is
downloaded. Without them the filter runs the rules only, records
``clip not configured`` for every sample and no score.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cotir_pipeline.annotation.base import AnnotationRequest, AnnotationResult
from cotir_pipeline.annotation.rules import RuleConfig, check_answer
from cotir_pipeline.annotation.schema import CotAnswer
from cotir_pipeline.shards import STATUS_DROPPED, STATUS_FAILED, STATUS_OK

ClipStatus = Literal["scored", "clip not configured", "not scored: no answer", "unreadable image"]
CLIP_NOT_CONFIGURED: ClipStatus = "clip not configured"


class ClipFilterConfig(BaseModel):
    """Which CLIP to use (both or neither of model and checkpoint) and the threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str | None = Field(
        default=None, description="open_clip architecture name, e.g. ViT-L-14."
    )
    checkpoint_path: Path | None = Field(
        default=None, description="Local checkpoint file of that architecture (never fetched)."
    )
    threshold: float = Field(default=0.0, ge=-2.0, le=2.0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    device: str = Field(default="cpu", description="torch device, e.g. cpu or cuda:0.")

    @model_validator(mode="after")
    def _both_or_neither(self) -> ClipFilterConfig:
        if (self.model_name is None) != (self.checkpoint_path is None):
            raise ValueError("set both the CLIP model name and its checkpoint path, or neither")
        return self

    @property
    def configured(self) -> bool:
        """Whether a CLIP model is configured (otherwise only the rules run)."""
        return self.model_name is not None and self.checkpoint_path is not None


@dataclass(frozen=True)
class FilterItem:
    """One annotated sample to judge."""

    sample_id: str
    degradation_label: str
    lq_png: bytes
    hq_png: bytes
    answer: CotAnswer | None
    annotation_reason: str | None = None

    @classmethod
    def from_annotation(cls, request: AnnotationRequest, result: AnnotationResult) -> FilterItem:
        """Pair a request with its result (their sample ids must match)."""
        if request.sample_id != result.sample_id:
            raise ValueError(f"request {request.sample_id} paired with result {result.sample_id}")
        return cls(
            sample_id=request.sample_id,
            degradation_label=request.degradation_label,
            lq_png=bytes(request.lq_png),
            hq_png=bytes(request.hq_png),
            answer=result.answer,
            annotation_reason=result.reason,
        )


@dataclass(frozen=True)
class FilterDecision:
    """Keep (status ``ok``) or drop (``dropped``), with every reason and the score."""

    sample_id: str
    status: str
    reason: str | None
    rule_failures: tuple[str, ...]
    clip_status: ClipStatus
    clip_score: float | None
    clip_lq_cos: float | None
    clip_hq_cos: float | None
    threshold: float | None
    clip_model: str | None

    @property
    def kept(self) -> bool:
        """Whether the sample goes on to the training shards."""
        return self.status == STATUS_OK

    def to_row(self) -> dict[str, Any]:
        """One row of :data:`FILTER_SCHEMA`."""
        return {
            "sample_id": self.sample_id,
            "status": self.status,
            "reason": self.reason,
            "rule_failures": list(self.rule_failures),
            "clip_status": self.clip_status,
            "clip_score": self.clip_score,
            "clip_lq_cos": self.clip_lq_cos,
            "clip_hq_cos": self.clip_hq_cos,
            "threshold": self.threshold,
            "clip_model": self.clip_model,
        }


#: One row per sample of the ``filtered_annotations`` stage.
FILTER_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("rule_failures", pa.list_(pa.string())),
        pa.field("clip_status", pa.string(), nullable=False),
        pa.field("clip_score", pa.float64()),
        pa.field("clip_lq_cos", pa.float64()),
        pa.field("clip_hq_cos", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("clip_model", pa.string()),
    ]
)


def filter_table(decisions: Sequence[FilterDecision]) -> pa.Table:
    """Decisions as a typed Arrow table of :data:`FILTER_SCHEMA`."""
    rows = [decision.to_row() for decision in decisions]
    columns = {name: [row[name] for row in rows] for name in FILTER_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=FILTER_SCHEMA)


class ClipScorer:
    """A loaded open_clip model that scores (LQ, HQ, text) triples; loads on first use."""

    def __init__(self, config: ClipFilterConfig) -> None:
        if not config.configured:
            raise ValueError("ClipScorer needs a model name and a checkpoint path")
        self.config = config
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None

    @property
    def label(self) -> str:
        """``<model name>:<checkpoint file name>``, recorded with each score."""
        return f"{self.config.model_name}:{Path(str(self.config.checkpoint_path)).name}"

    def load(self) -> None:
        """Build the architecture and load the configured checkpoint (no download)."""
        if self._model is not None:
            return
        path = Path(str(self.config.checkpoint_path)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CLIP checkpoint (clip checkpoint_path) not found: {path}")
        import open_clip
        import torch

        name = str(self.config.model_name)
        if name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {name!r}")
        text_config = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
        if text_config.get("hf_tokenizer_name"):
            raise ValueError(
                f"open_clip model {name!r} needs a Hugging Face tokenizer, which would be "
                "downloaded; use an architecture with open_clip's own tokenizer (e.g. ViT-L-14)"
            )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(path), device=torch.device(self.config.device)
            )
        except (RuntimeError, AssertionError, KeyError, ValueError) as error:
            # load_state_dict (missing keys, shapes) or open_clip's own resize asserts
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise ValueError(f"{path} is not a {name} checkpoint: {detail}") from None
        model.eval()
        self._model = model
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(name)

    def score(
        self, lq_pngs: Sequence[bytes], hq_pngs: Sequence[bytes], texts: Sequence[str]
    ) -> list[tuple[float, float]]:
        """(cos(LQ, text), cos(HQ, text)) per triple, in batches of ``batch_size``.

        Raises ValueError for image bytes that cannot be decoded.
        """
        if not len(lq_pngs) == len(hq_pngs) == len(texts):
            raise ValueError("lq, hq and texts must have the same length")
        self.load()
        import torch

        device = torch.device(self.config.device)
        out: list[tuple[float, float]] = []
        size = self.config.batch_size
        for start in range(0, len(texts), size):
            images = []
            for data in [*lq_pngs[start : start + size], *hq_pngs[start : start + size]]:
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        images.append(self._preprocess(image.convert("RGB")))
                except Exception as error:
                    raise ValueError(f"cannot decode image: {error}") from None
            count = len(images) // 2
            with torch.inference_mode():
                pixels = torch.stack(images).to(device)
                tokens = self._tokenizer(list(texts[start : start + size])).to(device)
                image_features = self._model.encode_image(pixels, normalize=True)
                text_features = self._model.encode_text(tokens, normalize=True)
                lq_cos = (image_features[:count] * text_features).sum(dim=-1)
                hq_cos = (image_features[count:] * text_features).sum(dim=-1)
            out += list(
                zip(lq_cos.float().cpu().tolist(), hq_cos.float().cpu().tolist(), strict=True)
            )
        return out


class ConsistencyFilter:
    """Rule checks for every sample, CLIP scoring where configured; see the module docs."""

    def __init__(
        self,
        clip: ClipFilterConfig | None = None,
        rules: RuleConfig | None = None,
        *,
        scorer: ClipScorer | None = None,
    ) -> None:
        """``scorer`` reuses an already loaded model (its config must name the same model)."""
        self.clip_config = clip or ClipFilterConfig()
        self.rules = rules or RuleConfig()
        if scorer is not None:
            same = (scorer.config.model_name, scorer.config.checkpoint_path) == (
                self.clip_config.model_name,
                self.clip_config.checkpoint_path,
            )
            if not same:
                raise ValueError("the given scorer loads another model than the config names")
            self.scorer: ClipScorer | None = scorer
        else:
            self.scorer = ClipScorer(self.clip_config) if self.clip_config.configured else None

    def _scores(self, items: Sequence[FilterItem]) -> dict[str, tuple[float, float] | str]:
        """Cosines per sample id that has an answer, or why it has none."""
        scorer = self.scorer
        if scorer is None:
            return {}
        scorable = [(item, item.answer.degradation) for item in items if item.answer is not None]
        found: dict[str, tuple[float, float] | str] = {}
        size = self.clip_config.batch_size
        for start in range(0, len(scorable), size):
            batch = scorable[start : start + size]
            pairs: list[tuple[float, float] | str]
            try:
                pairs = list(
                    scorer.score(
                        [item.lq_png for item, _ in batch],
                        [item.hq_png for item, _ in batch],
                        [text for _, text in batch],
                    )
                )
            except ValueError:  # an unreadable image: score the batch one by one to find it
                pairs = [self._score_alone(scorer, item, text) for item, text in batch]
            for (item, _), pair in zip(batch, pairs, strict=True):
                found[item.sample_id] = pair
        return found

    @staticmethod
    def _score_alone(scorer: ClipScorer, item: FilterItem, text: str) -> tuple[float, float] | str:
        try:
            return scorer.score([item.lq_png], [item.hq_png], [text])[0]
        except ValueError:
            return "unreadable image"

    def run(self, items: Sequence[FilterItem]) -> list[FilterDecision]:
        """One decision per item, in order."""
        scores = self._scores(items)
        decisions = []
        for item in items:
            if item.answer is None:
                # Not a judgement: the sample has no annotation yet. It stays 'failed' (not
                # 'dropped'), so the shard is judged again once cot_annotations succeeds.
                detail = item.annotation_reason or "no answer"
                decisions.append(
                    FilterDecision(
                        sample_id=item.sample_id,
                        status=STATUS_FAILED,
                        reason=f"annotation failed: {detail}; judged again once annotated",
                        rule_failures=(),
                        clip_status="not scored: no answer",
                        clip_score=None,
                        clip_lq_cos=None,
                        clip_hq_cos=None,
                        threshold=None,
                        clip_model=None,
                    )
                )
                continue
            failures = check_answer(item.answer, item.degradation_label, self.rules)
            reasons = [str(failure) for failure in failures]
            score = lq_cos = hq_cos = None
            threshold = None
            clip_model = None
            if self.scorer is None:
                clip_status: ClipStatus = CLIP_NOT_CONFIGURED
            else:
                clip_model = self.scorer.label
                threshold = self.clip_config.threshold
                found = scores.get(item.sample_id)
                if found is None:
                    clip_status = "not scored: no answer"
                elif isinstance(found, str):
                    clip_status = "unreadable image"
                    reasons.append("clip: unreadable image")
                else:
                    clip_status = "scored"
                    lq_cos, hq_cos = found
                    score = lq_cos - hq_cos
                    if score < threshold:
                        reasons.append(f"clip: score {score:.4f} below threshold {threshold:g}")
            decisions.append(
                FilterDecision(
                    sample_id=item.sample_id,
                    status=STATUS_DROPPED if reasons else STATUS_OK,
                    reason="; ".join(reasons) if reasons else None,
                    rule_failures=tuple(str(failure) for failure in failures),
                    clip_status=clip_status,
                    clip_score=score,
                    clip_lq_cos=lq_cos,
                    clip_hq_cos=hq_cos,
                    threshold=threshold,
                    clip_model=clip_model,
                )
            )
        return decisions
