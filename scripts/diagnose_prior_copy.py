"""Where does a demo prior lose its copy? Its one-step estimate of the target, by time and size.

For each prior folder, the held-out crops of the prior's record (photos it never trained
on) are noised to fixed flow times t (z_t = (1 - t) x + t eps, the reference being the
clean crop itself, the copy instruction) and the prior's velocity gives its estimate of
the clean image, x_hat = z_t - t v. The PSNR of x_hat against the crop, per t and per
crop size, shows whether the copy fails where the target must come from the reference
alone (t near 1) or everywhere, and whether it depends on how many tokens the attention
spreads over (64 px crops are 64 tokens per image, 128 px crops 256).

It is a diagnosis, not a benchmark: nothing is timed and nothing is written.

    PYTHONPATH=. .venv/bin/python scripts/diagnose_prior_copy.py --prior models/demo_prior
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from models.backbones import grid_to_tokens, load_transformer, tokens_to_grid
from models.prior import (
    COPY,
    PriorConfig,
    codec_for,
    load_prior_photos,
    predict_velocity,
    psnr,
    read_record,
)
from models.text_encoders import MiniLMTextEncoder
from models.variants import get_variant

#: Flow times the estimate is taken at (1: pure noise, the target only in the reference).
TIMES = (1.0, 0.95, 0.8, 0.5, 0.2, 0.05)


@torch.no_grad()
def copy_estimates(
    prior: Path, sizes: list[int], times: tuple[float, ...], seed: int
) -> dict[int, tuple[float, list[float]]]:
    """Per crop size: the mean PSNR (dB) of the crops through the codec alone (the ceiling
    of any copy), and of the one-step clean estimate at each of ``times``."""
    record = read_record(prior)
    config = PriorConfig(**record["config"])
    variant = get_variant(config.variant)
    kind = variant.backbone
    transformer = load_transformer(kind, prior, dtype=torch.float32).eval()
    codec = codec_for(config.variant)
    prompt = COPY.prompts[0]
    text = MiniLMTextEncoder.from_folder().encode([prompt], variant.max_text_tokens).embeds
    crops = load_prior_photos(config).evaluation * 2 - 1
    generator = torch.Generator().manual_seed(seed)
    results: dict[int, tuple[float, list[float]]] = {}
    for size in sizes:
        if size > crops.shape[-1] or size % variant.token_stride:
            raise SystemExit(
                f"--sizes: {size} px must divide by {variant.token_stride} and be at most "
                f"the record's {crops.shape[-1]} px held-out crops"
            )
        images = crops[:, :, :size, :size]
        reference = grid_to_tokens(codec.encode(images))
        grid = size // variant.token_stride
        scores = []
        for t in times:
            noise = torch.randn(reference.shape, generator=generator)
            noisy = (1 - t) * reference + t * noise
            velocity = predict_velocity(
                transformer,
                config.variant,
                noisy,
                reference,
                text.expand(reference.shape[0], -1, -1),
                torch.full((reference.shape[0],), t),
                grid,
            )
            estimate = codec.decode(tokens_to_grid(noisy - t * velocity, grid, grid))
            scores.append(float(psnr((estimate + 1) / 2, (images + 1) / 2).mean()))
        ceiling = psnr((codec.decode(codec.encode(images)) + 1) / 2, (images + 1) / 2)
        results[size] = (float(ceiling.mean()), scores)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", type=Path, action="append", required=True, help="Prior folder.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="Crop sizes (px).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the noise.")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| prior | crop | codec alone | " + " | ".join(f"t = {t}" for t in TIMES) + " |")
    print("|---|---:|---:|" + "---:|" * len(TIMES))
    for prior in args.prior:
        estimates = copy_estimates(prior, args.sizes, TIMES, args.seed)
        for size, (ceiling, scores) in estimates.items():
            cells = " | ".join(f"{score:.2f}" for score in scores)
            print(f"| {prior} | {size} px | {ceiling:.2f} | {cells} |")


if __name__ == "__main__":
    main()
