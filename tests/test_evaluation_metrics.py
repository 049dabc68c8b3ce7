"""The metric table, offline availability (no network, no download) and PSNR/SSIM numbers."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from cotir_pipeline.evaluation import metrics
from cotir_pipeline.evaluation.metrics import (
    METRIC_SETS,
    METRICS,
    Available,
    InputTooSmallError,
    MetricUnavailableError,
    Unavailable,
    WeightLocations,
    get_metric,
    load_metric,
    match_reference_size,
    mean_score,
    metric_availability,
    score_pairs,
)
from cotir_test_support import demo_photo_pixels

PAPER_METRICS = ("clipiqa+", "qalign", "liqe", "maclip", "clipiqa", "psnr", "ssim", "lpips")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> WeightLocations:
    """An empty TORCH_HOME and HF cache, HF offline, and any socket connection an error."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return WeightLocations(torch_hub=tmp_path / "torch" / "hub", hf_cache=tmp_path / "hf")


def test_table_lists_the_papers_metrics_with_their_settings() -> None:
    assert tuple(METRICS)[:8] == PAPER_METRICS
    assert set(METRICS) == {*PAPER_METRICS, "maniqa", "musiq"}
    assert METRIC_SETS["agenticir"] == ("maniqa", "clipiqa", "musiq", "psnr", "ssim", "lpips")
    for names in METRIC_SETS.values():
        assert all(name in METRICS for name in names)
    assert get_metric("psnr").pyiqa_options() == {"test_y_channel": False}
    assert get_metric("ssim").pyiqa_options()["test_y_channel"] is True
    assert get_metric("psnr").decimals == 2
    assert {spec.decimals for name, spec in METRICS.items() if name != "psnr"} == {4}
    assert [n for n, s in METRICS.items() if s.lower_is_better] == ["lpips"]
    assert [n for n, s in METRICS.items() if s.needs_cuda] == ["maclip"]
    assert get_metric("maclip").min_size == 224
    assert get_metric("psnr").format(21.456) == "21.46"
    assert get_metric("lpips").format(0.12345) == "0.1235"
    assert get_metric("ssim").format(None) == "n/a"
    with pytest.raises(KeyError, match="known: clipiqa"):
        get_metric("niqe")


def test_table_agrees_with_pyiqa_configs_and_weight_urls() -> None:
    """Names, modes, directions, options and weight file names as pyiqa itself defines them."""
    import torchvision
    from pyiqa.archs import clip_model, clipiqa_arch, liqe_arch, lpips_arch, maniqa_arch, musiq_arch
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from timm.models import get_pretrained_cfg

    for spec in METRICS.values():
        config = DEFAULT_CONFIGS[spec.pyiqa_name]
        assert config["metric_mode"] == ("FR" if spec.full_reference else "NR"), spec.name
        assert config.get("lower_better", False) == spec.lower_is_better, spec.name
        for key, value in spec.options:
            assert config["metric_opts"].get(key, value) == value, (spec.name, key)

    def cached_name(url: str) -> str:  # what pyiqa's load_file_from_url saves it as
        return Path(urlparse(url).path).name

    expected_pyiqa = {
        "clipiqa+": cached_name(clipiqa_arch.default_model_urls["clipiqa+"]),
        "liqe": cached_name(liqe_arch.default_model_urls["koniq"]),
        "lpips": cached_name(lpips_arch.default_model_urls["0.1_alex"]),
        "maniqa": cached_name(maniqa_arch.default_model_urls["koniq"]),
        "musiq": cached_name(musiq_arch.default_model_urls["koniq10k"]),
    }
    for name, filename in expected_pyiqa.items():
        assert filename in [w.filename for w in METRICS[name].weights if w.store == "pyiqa"]
    clip_files = {Path(url).name: url.split("/")[-2] for url in clip_model._MODELS.values()}
    for spec in METRICS.values():
        for weight in spec.weights:
            if weight.store == "clip":
                assert clip_files[weight.filename] == weight.sha256
    alexnet = Path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name
    assert alexnet in [w.filename for w in METRICS["lpips"].weights]
    timm_repo = get_pretrained_cfg("vit_base_patch8_224").hf_hub_id
    assert timm_repo in [w.repo_id for w in METRICS["maniqa"].weights]


def test_weight_metrics_are_na_with_the_exact_folder_and_no_network(
    offline: WeightLocations,
) -> None:
    torch_hub = offline.torch_hub
    for name, spec in METRICS.items():
        result = metric_availability(name, "cpu", locations=offline)
        if not spec.weights:
            assert isinstance(result, Available), name
            continue
        assert isinstance(result, Unavailable), name
        assert result.reason, name
    lpips = metric_availability("lpips", "cpu", locations=offline)
    assert (
        f"LPIPS_v0.1_alex-df73285e.pth (LPIPS linear layers) not found in {torch_hub}/pyiqa/"
        in (lpips.reason)
    )
    assert (
        f"alexnet-owt-7be5be79.pth (torchvision AlexNet) not found in {torch_hub}/checkpoints/"
        in (lpips.reason)
    )
    clipiqa = metric_availability("clipiqa", "cpu", locations=offline)
    assert f"RN50.pt (OpenAI CLIP ResNet-50) not found in {torch_hub}/clip/" in clipiqa.reason
    maniqa = metric_availability("maniqa", "cpu", locations=offline)
    assert str(offline.hf_cache / "models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k") in (
        maniqa.reason
    )
    maclip = metric_availability("maclip", "cpu", locations=offline)
    assert maclip.reason.startswith("CUDA required")
    with pytest.raises(MetricUnavailableError, match="lpips: weights missing"):
        load_metric("lpips", "cpu", locations=offline)


def test_default_locations_follow_torch_home(offline: WeightLocations) -> None:
    """With TORCH_HOME set, the default check names $TORCH_HOME/hub/... (torch's own rule)."""
    assert WeightLocations.current().torch_hub == offline.torch_hub
    result = metric_availability("musiq", "cpu")
    assert isinstance(result, Unavailable)
    assert f"{offline.torch_hub}/pyiqa/" in result.reason


def test_present_weights_make_a_metric_available(offline: WeightLocations) -> None:
    folder = offline.torch_hub / "pyiqa"
    folder.mkdir(parents=True)
    (folder / "musiq_koniq_ckpt-e95806b9.pth").write_bytes(b"stand-in")
    result = metric_availability("musiq", "cpu", locations=offline)
    assert isinstance(result, Available)
    assert result.files == (folder / "musiq_koniq_ckpt-e95806b9.pth",)


def test_a_clip_file_with_the_wrong_hash_is_reported(offline: WeightLocations) -> None:
    clip = offline.torch_hub / "clip"
    clip.mkdir(parents=True)
    (clip / "RN50.pt").write_bytes(b"not the real file")
    result = metric_availability("clipiqa", "cpu", locations=offline)
    assert isinstance(result, Unavailable)
    assert "wrong SHA-256" in result.reason


def test_hf_snapshot_with_all_shards_counts_as_present(offline: WeightLocations) -> None:
    repo = offline.hf_cache / "models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert "no weight file" in metric_availability("maniqa", locations=offline).reason
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert "ckpt_koniq10k.pt" in metric_availability("maniqa", locations=offline).reason
    (offline.torch_hub / "pyiqa").mkdir(parents=True)
    (offline.torch_hub / "pyiqa" / "ckpt_koniq10k.pt").write_bytes(b"x")
    assert isinstance(metric_availability("maniqa", locations=offline), Available)


def test_bad_device_is_an_error() -> None:
    with pytest.raises(ValueError, match="device must be"):
        metric_availability("psnr", "tpu")


def _photo_pair(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    clean = demo_photo_pixels("coffee")[100 : 100 + size, 200 : 200 + size]
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    return noisy, clean


def test_psnr_and_ssim_agree_with_skimage(tmp_path: Path) -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    restored_paths, reference_paths, expected_psnr, expected_ssim = [], [], [], []
    for index, size in enumerate((96, 64)):
        noisy, clean = _photo_pair(size)
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "hq").mkdir(exist_ok=True)
        Image.fromarray(noisy).save(tmp_path / "out" / f"s{index}.png")
        Image.fromarray(clean).save(tmp_path / "hq" / f"s{index}.png")
        restored_paths.append(tmp_path / "out" / f"s{index}.png")
        reference_paths.append(tmp_path / "hq" / f"s{index}.png")
        expected_psnr.append(peak_signal_noise_ratio(clean, noisy, data_range=255))

        def luma(image: np.ndarray) -> np.ndarray:  # pyiqa: YIQ's Y on 0..255, rounded
            return np.round(image.astype(np.float64) @ [0.299, 0.587, 0.114])

        expected_ssim.append(
            structural_similarity(
                luma(clean),
                luma(noisy),
                data_range=255,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
        )
    psnr = score_pairs("psnr", restored_paths, reference_paths)
    ssim = score_pairs("ssim", restored_paths, reference_paths)
    np.testing.assert_allclose(psnr, expected_psnr, atol=1e-3)
    np.testing.assert_allclose(ssim, expected_ssim, atol=1e-4)
    assert mean_score(psnr) == pytest.approx(float(np.mean(expected_psnr)), abs=1e-3)


def test_scoring_rules(tmp_path: Path) -> None:
    noisy, clean = _photo_pair(64)
    psnr = load_metric("psnr")
    small = np.asarray(Image.fromarray(noisy).resize((16, 16), Image.Resampling.BICUBIC))
    upsampled = match_reference_size(small, clean.shape[:2])
    assert upsampled.shape == clean.shape
    assert psnr.score_arrays(small, clean) == pytest.approx(psnr.score_arrays(upsampled, clean))
    with pytest.raises(ValueError, match="aspect ratios differ"):
        match_reference_size(noisy[:, :32], clean.shape[:2])
    with pytest.raises(InputTooSmallError, match="at least 11 px"):
        load_metric("ssim").score_arrays(noisy[:8, :8], clean[:8, :8])
    with pytest.raises(ValueError, match="reference image is required"):
        psnr.score_arrays(noisy)
    Image.fromarray(noisy).save(tmp_path / "a.png")
    Image.fromarray(clean).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="file names differ"):
        score_pairs(psnr, [tmp_path / "a.png"], [tmp_path / "b.png"])
    assert metrics.mean_score([1.0, 2.0]) == 1.5
    with pytest.raises(ValueError, match="empty"):
        mean_score([])
