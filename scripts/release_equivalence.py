"""Compare our CoT adapter and RoPE with the public release's code, numerically, on CPU.

Needs a local checkout of the official CoTIR repository (it is not a dependency and is
not run in CI). For each backbone layout it builds the release's ``CoTAdapter`` with
random weights, loads the same weights into ours through ``convert_release_adapter``
(the path a released ``cot_adapter.pt`` takes), feeds both the same streams, and prints
the largest absolute difference of each output: the injected text residual and the
three CoT predictions (s, d, p), in float32 and in bfloat16. The release's rotary
embedding (``EmbedND``) is converted to diffusers' (cos, sin) form for ours by computing
diffusers' ``FluxPosEmbed`` / ``Flux2PosEmbed`` on the same ids. A second table compares
the release's RoPE as its sampler computes it (from bf16 ids) with ours: the exact RoPE
ours uses by default, and ``ReleaseRotaryEmbedding``, which release-compatibility mode
uses.

    .venv/bin/python scripts/release_equivalence.py --release /path/to/CoTIR           # tiny
    .venv/bin/python scripts/release_equivalence.py --release /path/to/CoTIR --real    # + real

``--real`` adds the adapters of CoTIR-12B, 4B and 9B at their real widths and depths
(about 1-1.8 B parameters each, built twice: 8-15 GB of memory, minutes on 2 cores)
with short sequences.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Case:
    """One adapter configuration and the RoPE layout of its backbone."""

    name: str
    layout: str  # "flux1" or "flux2"
    hidden: int
    heads: int
    depth: int
    text_dim: int
    axes: tuple[int, ...]
    theta: int


TINY = (
    Case("tiny FLUX.1 layout", "flux1", 64, 4, 2, 48, (4, 6, 6), 10000),
    Case("tiny FLUX.2 layout", "flux2", 64, 4, 2, 48, (4, 4, 4, 4), 2000),
)
#: The release's configs/train_cotir-*.yaml (cot_adapter block) and its backbones' RoPE.
REAL = (
    Case("CoTIR-12B adapter", "flux1", 3072, 24, 6, 4096, (16, 56, 56), 10000),
    Case("CoTIR-4B adapter", "flux2", 3072, 24, 6, 7680, (32, 32, 32, 32), 2000),
    Case("CoTIR-9B adapter", "flux2", 4096, 32, 6, 12288, (32, 32, 32, 32), 2000),
)


def _ids(case: Case, n_text: int, grid: int) -> torch.Tensor:
    """Joint [text ; image] position ids as the backbone builds them (FLUX.2: text on l)."""
    n_image = grid * grid
    ids = torch.zeros(n_text + n_image, len(case.axes))
    rows = torch.arange(n_image) // grid
    cols = torch.arange(n_image) % grid
    ids[n_text:, 1] = rows.float()
    ids[n_text:, 2] = cols.float()
    if case.layout == "flux2":
        ids[:n_text, 3] = torch.arange(n_text).float()
    return ids


def _ours_rotary(case: Case, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if case.layout == "flux1":
        from diffusers.models.transformers.transformer_flux import FluxPosEmbed

        return FluxPosEmbed(theta=case.theta, axes_dim=list(case.axes))(ids)
    from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed

    return Flux2PosEmbed(theta=case.theta, axes_dim=list(case.axes))(ids)


def _release_pe(release: dict[str, object], case: Case, ids: torch.Tensor) -> torch.Tensor:
    module = release["flux1_layers"] if case.layout == "flux1" else release["flux2_model"]
    embed = module.EmbedND(dim=sum(case.axes), theta=case.theta, axes_dim=list(case.axes))  # type: ignore[attr-defined]
    return embed(ids.unsqueeze(0))


def _import_release(root: Path) -> dict[str, object]:
    if not (root / "cotir" / "adapter.py").is_file():
        raise SystemExit(f"{root} is not a CoTIR checkout (no cotir/adapter.py)")
    sys.path.insert(0, str(root))
    return {
        "adapter": importlib.import_module("cotir.adapter"),
        "flux1_layers": importlib.import_module("cotir.flux.modules.layers"),
        "flux2_model": importlib.import_module("cotir.flux2.model"),
    }


def compare(release: dict[str, object], case: Case, *, n_text: int, grid: int) -> list[str]:
    """Table rows: max |ours - release| per output, fp32 and bf16."""
    from models.checkpoint_io import convert_release_adapter, load_adapter_weights
    from models.cot_adapter import CoTAdapter, CoTAdapterConfig

    torch.manual_seed(0)
    theirs = (
        release["adapter"]
        .CoTAdapter(  # type: ignore[attr-defined]
            hidden_size=case.hidden,
            num_heads=case.heads,
            mlp_ratio=4.0,
            qk_scale=None,
            out_channels=case.text_dim,
            depth=case.depth,
        )
        .eval()
    )
    with torch.no_grad():
        for gate in ("scale_sharpness", "scale_degradation", "scale_planning"):
            getattr(theirs, gate).fill_(0.5)
    ours = CoTAdapter(
        CoTAdapterConfig(
            hidden_size=case.hidden, num_heads=case.heads, text_dim=case.text_dim, depth=case.depth
        )
    ).eval()
    state = {f"module.cot_adapter.{k}": v for k, v in theirs.state_dict().items()}
    load_adapter_weights(type("Model", (), {"cot_adapter": ours})(), convert_release_adapter(state))

    generator = torch.Generator().manual_seed(1)
    text = torch.randn(1, n_text, case.hidden, generator=generator)
    image = torch.randn(1, grid * grid, case.hidden, generator=generator)
    vec = torch.randn(1, case.hidden, generator=generator)
    ids = _ids(case, n_text, grid)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        theirs_d, ours_d = theirs.to(dtype), ours.to(dtype)
        t, i, v = text.to(dtype), image.to(dtype), vec.to(dtype)
        with torch.no_grad():
            residual, s, d, p = theirs_d(t, i, v, _release_pe(release, case, ids))
            out = ours_d(t, i, v, _ours_rotary(case, ids))
        diffs = {
            "text": out.text - (t + residual),
            "s": out.scene - s,
            "d": out.degradation - d,
            "p": out.plan - p,
        }
        cells = " | ".join(f"{diff.float().abs().max().item():.2e}" for diff in diffs.values())
        rows.append(f"| {case.name} | {str(dtype).removeprefix('torch.')} | {cells} |")
    return rows


def rope_rows(release: dict[str, object], case: Case, n_text: int) -> list[str]:
    """The release's RoPE from bf16 ids against exact RoPE and against our compat RoPE."""
    from models.restore import ReleaseRotaryEmbedding

    ids = _ids(case, n_text, 4)
    as_released = _release_pe(release, case, ids.to(torch.bfloat16))[0, 0]  # (N, D/2, 2, 2)
    released_cos, released_sin = as_released[..., 0, 0], as_released[..., 1, 0]
    exact_cos, exact_sin = _ours_rotary(case, ids)
    compat_cos, compat_sin = ReleaseRotaryEmbedding(case.theta, case.axes)(ids)

    def gap(cos: torch.Tensor, sin: torch.Tensor) -> float:
        return max(
            (cos[:, ::2] - released_cos).abs().max().item(),
            (sin[:, ::2] - released_sin).abs().max().item(),
        )

    return [
        f"| {case.name}, {n_text} text ids | {gap(exact_cos, exact_sin):.3f} "
        f"| {gap(compat_cos, compat_sin):.2e} |"
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the difference tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--release", type=Path, required=True, help="CoTIR checkout.")
    parser.add_argument("--real", action="store_true", help="Also the real-size adapters.")
    parser.add_argument("--text-tokens", type=int, default=8)
    parser.add_argument("--grid", type=int, default=4, help="Image tokens per side.")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    release = _import_release(args.release.resolve())
    print("| case | dtype | text | s | d | p |")
    print("|---|---|---:|---:|---:|---:|")
    for case in TINY + (REAL if args.real else ()):
        for row in compare(release, case, n_text=args.text_tokens, grid=args.grid):
            print(row, flush=True)
    print()
    print("| RoPE cos/sin against the release's (bf16 ids) | ours, exact | ours, compat mode |")
    print("|---|---:|---:|")
    for case in (TINY[1], REAL[1]):
        for row in rope_rows(release, case, 512):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
