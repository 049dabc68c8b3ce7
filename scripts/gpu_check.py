#!/usr/bin/env python
"""Latency and peak memory of a full-size CoTIR variant on one CUDA GPU (random weights).

Builds the whole architecture in code with random weights (no downloads, no local
weights needed): the FLUX transformer with the CoT adapter and rank-96 LoRA, the
backbone's VAE, and its text encoder (Qwen3 for klein, T5-XXL + CLIP-L for Kontext)
with a stand-in tokenizer (prompts are padded to 512 tokens, so the token ids do not
change the cost). It then times ``CoTIRRestorer.restore`` end to end (text encoding,
VAE encode of the LQ image, N Euler steps, VAE decode) at 512x512 and prints the
median latency, the per-step transformer time and the peak GPU memory next to the
paper's Table VIII (CoTIR-4B 1.84 s at 5 steps).

    python scripts/gpu_check.py                      # cotir-4b, 512x512, 5 steps, bf16
    python scripts/gpu_check.py --variant cotir-9b
    python scripts/gpu_check.py --variant tiny --device cpu   # smoke test of this script

CI has no GPU: without CUDA the script refuses (exit 2) unless ``--device cpu`` is given
with a demo variant.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_NO_DEVICE = 2

#: Paper Table VIII, seconds per 512x512 image.
PAPER_SECONDS = {"cotir-12b": 7.95, "cotir-4b": 1.84, "cotir-9b": 2.44}

#: Text encoder configs of the released backbones (sizes only; weights are random).
QWEN3_CONFIGS = {
    "cotir-4b": {
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "cotir-9b": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
    },
}
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
}
CLIP_L = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "eos_token_id": 2,
}


def _tokenizer(max_length: int, chat: bool) -> Any:
    """A word-level stand-in tokenizer (the real ones are not needed to measure cost)."""
    from models.testing import word_level_tokenizer

    words = ["<pad>", "<unk>", "</s>", "<|im_start|>", "<|im_end|>", "user", "assistant"]
    return word_level_tokenizer(
        [*words, "please", "dehaze", "this", "photo"], max_length, chat=chat
    )


def build_restorer(variant_name: str, device: str, dtype: Any) -> Any:
    """The variant's full architecture with random weights, as a CoTIRRestorer."""
    import torch

    from models.backbones import CoTIRTransformer
    from models.codecs import Flux2VAECodec, FluxVAECodec, weightless_codec
    from models.lora import apply_lora
    from models.restore import CoTIRRestorer
    from models.text_encoders import MiniLMTextEncoder, Qwen3TextEncoder, T5ClipTextEncoder
    from models.variants import CodecKind, TextEncoderKind, get_variant

    variant = get_variant(variant_name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CoTIRTransformer.from_variant(variant)
            apply_lora(model, variant.lora_rank)
            if variant.codec is CodecKind.FLUX1_VAE:
                from diffusers import AutoencoderKL

                codec = FluxVAECodec(
                    AutoencoderKL(
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512),
                        latent_channels=16,
                        scaling_factor=0.3611,
                        shift_factor=0.1159,
                        use_quant_conv=False,
                        use_post_quant_conv=False,
                    )
                )
            elif variant.codec is CodecKind.FLUX2_VAE:
                from diffusers import AutoencoderKLFlux2

                codec = Flux2VAECodec(AutoencoderKLFlux2())
            else:
                codec = weightless_codec(variant.codec, variant.token_stride)
            if variant.text_encoder is TextEncoderKind.QWEN3:
                from transformers import Qwen3Config, Qwen3ForCausalLM

                qwen = Qwen3ForCausalLM(Qwen3Config(**QWEN3_CONFIGS[variant_name]))
                encoder = Qwen3TextEncoder(
                    qwen.eval(), _tokenizer(512, chat=True), variant.text_layers
                )
            elif variant.text_encoder is TextEncoderKind.T5_CLIP:
                from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

                encoder = T5ClipTextEncoder(
                    T5EncoderModel(T5Config(**T5_XXL)).eval(),
                    _tokenizer(512, chat=False),
                    CLIPTextModel(CLIPTextConfig(**CLIP_L)).eval(),
                    _tokenizer(77, chat=False),
                )
            else:
                encoder = MiniLMTextEncoder.from_folder()
    finally:
        torch.set_default_dtype(previous)
    encoder.requires_grad_(False)
    codec.requires_grad_(False)
    model.requires_grad_(False)
    return CoTIRRestorer(
        variant, model.to(dtype), codec.to(dtype), encoder.to(dtype), device=device
    )


def run_check(
    variant: str, device: str, size: int, steps: int, runs: int, dtype_name: str
) -> dict[str, Any]:
    """Build, warm up once, time ``runs`` restorations; return the measurements."""
    import numpy as np
    import torch
    from PIL import Image

    dtype = getattr(torch, dtype_name)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    started = time.perf_counter()
    restorer = build_restorer(variant, device, dtype)
    sync()
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in restorer.model.parameters())
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))
    prompt = "please dehaze this photo"

    restorer.restore(image, prompt, steps=steps)  # warm-up (kernels, allocator)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    totals, step_times = [], []
    for _ in range(runs):
        marks: list[float] = []

        def on_step(_i: int, _n: int, marks: list[float] = marks) -> None:
            sync()
            marks.append(time.perf_counter())

        sync()
        begin = time.perf_counter()
        restorer.restore(image, prompt, steps=steps, on_step=on_step)
        sync()
        totals.append(time.perf_counter() - begin)
        step_times.extend(b - a for a, b in itertools.pairwise(marks))
    result = {
        "variant": variant,
        "device": torch.cuda.get_device_name() if cuda else device,
        "dtype": dtype_name,
        "size": size,
        "steps": steps,
        "runs": runs,
        "transformer_params": params,
        "build_s": round(build_s, 1),
        "latency_s_median": round(statistics.median(totals), 3),
        "latency_s_all": [round(t, 3) for t in totals],
        "step_s_median": round(statistics.median(step_times), 4) if step_times else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "paper_s": PAPER_SECONDS.get(variant),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, refuse without CUDA, run and print the check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="cotir-4b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None, help="default: the variant's")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import torch

    from models.variants import get_variant

    try:
        variant = get_variant(args.variant)
    except KeyError as error:
        parser.error(str(error))
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA device is available; this check needs one GPU "
                "(about 20 GiB for cotir-4b). Use --device cpu --variant tiny to smoke-test "
                "the script itself.",
                file=sys.stderr,
            )
            return EXIT_NO_DEVICE
    elif not variant.is_demo:
        print(
            f"gpu_check: refusing to run {args.variant} on {args.device}; "
            "full-size variants need a CUDA device",
            file=sys.stderr,
        )
        return EXIT_NO_DEVICE
    if args.size % 16 or args.size < 16:
        parser.error("--size must be a positive multiple of 16")

    result = run_check(
        args.variant,
        args.device,
        args.size,
        args.steps or variant.steps,
        max(1, args.runs),
        args.dtype,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(json.dumps(result, indent=2))
    paper = result["paper_s"]
    print(
        f"\n{result['variant']} {result['size']}x{result['size']} {result['steps']} steps "
        f"({result['dtype']}, {result['device']}): {result['latency_s_median']:.3f} s per image"
        + (f" (paper: {paper:.2f} s)" if paper else "")
        + (f", peak {result['peak_memory_gib']:.2f} GiB" if result["peak_memory_gib"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
