"""Save and load CoTIR checkpoints (adapter + LoRA), ours and the public release's.

Our layout, one folder:

- ``cot_adapter.safetensors``: the adapter, keys ``cot_adapter.*`` (the release's names);
- ``pytorch_lora_weights.safetensors``: the LoRA in diffusers' format (keys
  ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` / ``lora_B.bias``), written
  by the pipeline class's own ``save_lora_weights``, so a stock ``FluxKontextPipeline`` or
  ``Flux2KleinPipeline`` loads it with ``pipe.load_lora_weights(folder)``;
- ``transformer/`` (optional): the base transformer in diffusers' ``save_pretrained``
  layout, for bases that are not on disk elsewhere (the demo variants);
- ``cotir.json``: variant, backbone, adapter sizes, LoRA rank, bias and scope; written last, so
  a folder without it is an unfinished save.

The public release ships ``cot_adapter.pt`` and ``lora.pt``, plain state dicts, possibly
saved from a DDP-wrapped model (leading ``module.``). The adapter's keys are ours
already (strip ``module.`` and ``cot_adapter.``). The LoRA is in the original FLUX
layout; :func:`convert_release_lora` maps it to diffusers' modules:

============================================  ===============================================
release key (per ``lora_A``/``lora_B``)         diffusers module
============================================  ===============================================
FLUX.1 ``single_blocks.i.linear1``             ``single_transformer_blocks.i.attn.to_q``,
                                               ``.attn.to_k``, ``.attn.to_v``, ``.proj_mlp``:
                                               B's rows (and B's bias) split [h, h, h, 4h],
                                               the same A copied to each
FLUX.1 ``single_blocks.i.linear2``             ``single_transformer_blocks.i.proj_out``
FLUX.1 ``single_blocks.i.modulation.lin``      ``single_transformer_blocks.i.norm.linear``
FLUX.2 ``single_blocks.i.linear1``             ``single_transformer_blocks.i.attn.to_qkv_mlp_proj``
FLUX.2 ``single_blocks.i.linear2``             ``single_transformer_blocks.i.attn.to_out``
``final_layer.linear``                         ``proj_out``
``final_layer.adaLN_modulation.1``             ``norm_out.linear``, B's row halves and B's bias
                                               halves swapped (FLUX: shift, scale; diffusers:
                                               scale, shift)
============================================  ===============================================

Because B(A x) restricted to a block of output rows equals B[rows](A x), splitting the
fused LoRA is exact; the tests check the mapping numerically, not by name.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from cotir_pipeline.checkpoint_layout import META_FILE
from cotir_pipeline.weights import MissingWeightsError
from models.backbones import BackboneKind, CoTIRTransformer
from models.lora import ADAPTER_NAME, LORA_SCOPES, LoraScope, apply_lora, has_lora

ADAPTER_FILE = "cot_adapter.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
BASE_DIR = "transformer"
RELEASE_LORA_FILE = "lora.pt"
FORMAT_NAME = "cotir-checkpoint"
FORMAT_VERSION = 1
ADAPTER_PREFIX = "cot_adapter."

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint's contents do not fit the model (bad keys, shapes or metadata)."""


# -- our format ----------------------------------------------------------------------------


def adapter_state_dict(model: CoTIRTransformer) -> StateDict:
    """The adapter's weights with ``cot_adapter.`` keys (the release's names), detached."""
    return {
        ADAPTER_PREFIX + name: tensor.detach()
        for name, tensor in model.cot_adapter.state_dict().items()
    }


def lora_state_dict(model: CoTIRTransformer) -> StateDict:
    """The LoRA weights in peft/diffusers naming (no adapter name, no ``transformer.``)."""
    from peft.utils import get_peft_model_state_dict

    if not has_lora(model):
        return {}
    with warnings.catch_warnings():
        # peft mistakes the 1-D lora_B biases for unsharded ZeRO-3 tensors.
        warnings.filterwarnings("ignore", message=".*invalid shape.*")
        state = get_peft_model_state_dict(model.transformer, adapter_name=ADAPTER_NAME)
    return {name: tensor.detach() for name, tensor in state.items()}


def _pipeline_class(kind: BackboneKind) -> Any:
    from diffusers import Flux2KleinPipeline, FluxKontextPipeline

    return FluxKontextPipeline if kind is BackboneKind.FLUX1_KONTEXT else Flux2KleinPipeline


def _lora_settings(model: CoTIRTransformer) -> dict[str, Any] | None:
    if not has_lora(model):
        return None
    from models.lora import capped_ranks, lora_scope_of

    config = model.transformer.peft_config[ADAPTER_NAME]
    scope = lora_scope_of(model)
    return {
        "rank": int(config.r),
        "alpha": float(config.lora_alpha),
        "bias": bool(config.lora_bias),
        # Modules whose rank is their smaller side (alpha equal: scale 1.0), as the release.
        "capped": capped_ranks(model, int(config.r), scope),
        # Which Linears carry LoRA (models.lora.lora_targets); absent in older checkpoints.
        "scope": scope,
    }


def base_state_dict(model: CoTIRTransformer) -> StateDict:
    """The transformer's own weights without LoRA, in diffusers' names."""
    state = {}
    for name, tensor in model.transformer.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.detach()
    return state


def save_checkpoint(
    model: CoTIRTransformer,
    folder: Path,
    *,
    variant: str | None = None,
    include_base: bool = False,
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write adapter, LoRA (if any), optionally the base transformer, and ``cotir.json``.

    ``extra_meta`` adds fields to ``cotir.json`` (training writes ``flow_start`` and the
    ``base`` it started from), never replacing the layout fields.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    save_file(
        {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()},
        str(folder / ADAPTER_FILE),
    )
    lora = lora_state_dict(model)
    if lora:
        _pipeline_class(model.kind).save_lora_weights(
            str(folder),
            transformer_lora_layers={k: v.contiguous().cpu() for k, v in lora.items()},
            weight_name=LORA_FILE,
            safe_serialization=True,
        )
    if include_base:
        base = folder / BASE_DIR
        base.mkdir(exist_ok=True)
        model.transformer.save_config(str(base))
        save_file(
            {k: v.contiguous().cpu() for k, v in base_state_dict(model).items()},
            str(base / "diffusion_pytorch_model.safetensors"),
        )
    config = model.cot_adapter.config
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "variant": variant,
        "backbone": model.kind.value,
        "adapter": {
            "hidden_size": config.hidden_size,
            "num_heads": config.num_heads,
            "text_dim": config.text_dim,
            "depth": config.depth,
            "mlp_ratio": config.mlp_ratio,
        },
        "lora": _lora_settings(model),
        "has_base": include_base,
    }
    for key, value in (extra_meta or {}).items():
        if key in meta:
            raise ValueError(f"extra_meta may not replace the layout field {key!r}")
        if value is not None:
            meta[key] = value
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def read_checkpoint_meta(folder: Path) -> dict[str, Any]:
    """``cotir.json`` of a checkpoint folder; MissingWeightsError when it is absent."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise MissingWeightsError(f"{path} does not exist: not a (finished) CoTIR checkpoint")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a CoTIR checkpoint (format {meta.get('format')!r})")
    return meta


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingWeightsError(f"the {what} needs {path}, which does not exist")
    return path


def load_adapter_weights(model: CoTIRTransformer, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``cot_adapter.*`` weights strictly (every key present, none extra, shapes equal)."""
    inner = {}
    for name, tensor in state.items():
        if not name.startswith(ADAPTER_PREFIX):
            raise CheckpointError(f"adapter key {name!r} lacks the {ADAPTER_PREFIX!r} prefix")
        inner[name.removeprefix(ADAPTER_PREFIX)] = tensor
    try:
        model.cot_adapter.load_state_dict(inner, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"adapter weights do not fit: {error}") from None


def load_lora_weights(model: CoTIRTransformer, state: Mapping[str, torch.Tensor]) -> None:
    """Load LoRA weights (peft naming, no adapter name) into the model's existing LoRA.

    Every LoRA tensor of the model must be given and no other key: a partial or
    mismatched LoRA is an error, not a silent half-load.
    """
    from peft.utils import set_peft_model_state_dict

    expected = set(lora_state_dict(model))
    given = {name.removeprefix("transformer.") for name in state}
    if expected != given:
        missing = sorted(expected - given)[:5]
        extra = sorted(given - expected)[:5]
        raise CheckpointError(f"LoRA keys do not match the model: missing {missing}, extra {extra}")
    clean = {name.removeprefix("transformer."): tensor for name, tensor in state.items()}
    try:
        result = set_peft_model_state_dict(model.transformer, clean, adapter_name=ADAPTER_NAME)
    except RuntimeError as error:
        raise CheckpointError(f"LoRA weights do not fit: {error}") from None
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise CheckpointError(f"LoRA keys not loaded: {sorted(unexpected)[:5]}")


def _infer_lora(state: Mapping[str, torch.Tensor]) -> tuple[int, bool]:
    """The file's nominal rank (its largest) and whether B has biases.

    Modules narrower than the nominal rank hold their smaller side instead (the
    release's cap); :func:`load_lora_weights` then checks every module's shape.
    """
    ranks = {t.shape[0] for name, t in state.items() if name.endswith("lora_A.weight")}
    if not ranks:
        raise CheckpointError("the LoRA state dict has no lora_A weights")
    has_bias = any(name.endswith("lora_B.bias") for name in state)
    return max(ranks), has_bias


def _ensure_lora(
    model: CoTIRTransformer, rank: int, bias: bool, scope: LoraScope = "paper"
) -> None:
    if has_lora(model):
        current = _lora_settings(model) or {}
        if (current.get("rank"), current.get("bias"), current.get("scope")) != (rank, bias, scope):
            raise CheckpointError(
                f"the model's LoRA (rank {current.get('rank')}, bias {current.get('bias')}, "
                f"scope {current.get('scope')}) does not match the checkpoint's (rank {rank}, "
                f"bias {bias}, scope {scope})"
            )
        return
    apply_lora(model, rank, lora_bias=bias, scope=scope)


def _checkpoint_scope(lora_meta: Mapping[str, Any]) -> LoraScope:
    """The ``scope`` of a checkpoint's LoRA settings (``paper`` when it predates scopes)."""
    scope = lora_meta.get("scope", "paper")
    if scope not in LORA_SCOPES:
        raise CheckpointError(f"unknown LoRA scope {scope!r} (known: {', '.join(LORA_SCOPES)})")
    return cast("LoraScope", scope)


def merge_lora_weights(
    model: CoTIRTransformer, state: Mapping[str, torch.Tensor], scope: LoraScope = "paper"
) -> None:
    """Add every LoRA's ``B A`` (and B's bias) into its base Linear, for inference.

    The merged model computes the same function as the LoRA'd one (LoRA scale is 1.0
    everywhere, :func:`models.lora.lora_config`) up to float rounding, with one low-rank
    matmul pair fewer per targeted Linear (a warm demo restore in 0.82x the time) and no
    peft layers. The sum is taken in float32 and stored in the weights' dtype, so
    merge only float32 weights: in bf16 a small delta would round away (callers keep
    peft's unmerged layers there). A FLUX.2 Linear without a bias gets one when B has a
    bias. The keys must match the model's LoRA targets exactly, as for
    :func:`load_lora_weights`.
    """
    from torch import nn

    from models.lora import lora_targets

    if has_lora(model):
        raise CheckpointError("the model has peft LoRA layers already; load, do not merge")
    pattern = re.compile(lora_targets(model.kind, scope))
    targets = {
        name: module
        for name, module in model.transformer.named_modules()
        if isinstance(module, nn.Linear) and pattern.fullmatch(name)
    }
    clean = {name.removeprefix("transformer."): tensor for name, tensor in state.items()}
    biased = any(name.endswith("lora_B.bias") for name in clean)
    parts = ("lora_A.weight", "lora_B.weight", *(("lora_B.bias",) if biased else ()))
    expected = {f"{name}.{part}" for name in targets for part in parts}
    if expected != set(clean):
        missing = sorted(expected - set(clean))[:5]
        extra = sorted(set(clean) - expected)[:5]
        raise CheckpointError(f"LoRA keys do not match the model: missing {missing}, extra {extra}")
    with torch.no_grad():
        for name, module in targets.items():
            down = clean[f"{name}.lora_A.weight"].float()
            up = clean[f"{name}.lora_B.weight"].float()
            rank = down.shape[0]
            if down.shape != (rank, module.in_features) or up.shape != (module.out_features, rank):
                raise CheckpointError(
                    f"LoRA weights do not fit {name}: A {tuple(down.shape)}, B {tuple(up.shape)} "
                    f"for a Linear {module.in_features} -> {module.out_features}"
                )
            dtype = module.weight.dtype
            module.weight.copy_((module.weight.float() + up @ down).to(dtype))
            if biased:
                shift = clean[f"{name}.lora_B.bias"].float()
                if module.bias is None:
                    module.bias = nn.Parameter(shift.to(dtype), requires_grad=False)
                else:
                    module.bias.copy_((module.bias.float() + shift).to(dtype))


def load_checkpoint(
    model: CoTIRTransformer, folder: Path, *, merge_lora: bool = False
) -> dict[str, Any]:
    """Load adapter and LoRA from our layout into ``model`` (adding LoRA layers if needed;
    with ``merge_lora``, adding the LoRA into the base weights instead, for inference)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    if meta.get("backbone") != model.kind.value:
        raise CheckpointError(
            f"{folder} holds a {meta.get('backbone')} checkpoint, the model is {model.kind.value}"
        )
    adapter = load_file(str(_require_file(folder / ADAPTER_FILE, "CoTIR checkpoint")))
    load_adapter_weights(model, adapter)
    lora_meta = meta.get("lora")
    if lora_meta:
        lora_path = _require_file(folder / LORA_FILE, "CoTIR checkpoint's LoRA")
        state = load_file(str(lora_path))
        scope = _checkpoint_scope(lora_meta)
        if merge_lora:
            merge_lora_weights(model, state, scope)
        else:
            _ensure_lora(model, int(lora_meta["rank"]), bool(lora_meta["bias"]), scope)
            load_lora_weights(model, state)
    return meta


# -- the public release --------------------------------------------------------------------


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop DDP's leading ``module.`` from every key that has it."""
    return {name.removeprefix("module."): tensor for name, tensor in state.items()}


def convert_release_adapter(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Release ``cot_adapter.pt`` -> our adapter keys (``cot_adapter.*``; names are identical)."""
    converted = strip_module_prefix(state)
    bad = [name for name in converted if not name.startswith(ADAPTER_PREFIX)]
    if bad:
        raise CheckpointError(f"not a CoT adapter state dict, unexpected keys: {bad[:5]}")
    return converted


_SINGLE = re.compile(
    r"^single_blocks\.(\d+)\.(linear1|linear2|modulation\.lin)\.(lora_[AB])\.(weight|bias)$"
)
_FINAL = re.compile(r"^final_layer\.(linear|adaLN_modulation\.1)\.(lora_[AB])\.(weight|bias)$")


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def convert_release_lora(
    state: Mapping[str, torch.Tensor],
    kind: BackboneKind,
    *,
    hidden_size: int,
    mlp_hidden_dim: int | None = None,
) -> StateDict:
    """Release ``lora.pt`` (original FLUX layout) -> peft/diffusers LoRA keys.

    ``hidden_size`` is h; ``mlp_hidden_dim`` the FLUX.1 single blocks' MLP width (4h by
    default) used to split the fused ``linear1``. See the module docstring for the map.
    """
    h = hidden_size
    m = mlp_hidden_dim if mlp_hidden_dim is not None else 4 * h
    out: StateDict = {}
    for name, tensor in strip_module_prefix(state).items():
        single = _SINGLE.match(name)
        final = _FINAL.match(name)
        if single:
            index, layer, lora, param = single.groups()
            prefix = f"single_transformer_blocks.{index}."
            if kind is BackboneKind.FLUX1_KONTEXT:
                if layer == "linear1":
                    targets = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
                    if lora == "lora_A":
                        pieces = [tensor] * 4
                    else:
                        if tensor.shape[0] != 3 * h + m:
                            raise CheckpointError(
                                f"{name}: {tensor.shape[0]} rows, expected 3h + m = {3 * h + m}"
                            )
                        pieces = list(tensor.split([h, h, h, m], dim=0))
                    for target, piece in zip(targets, pieces, strict=True):
                        out[f"{prefix}{target}.{lora}.{param}"] = piece.clone()
                    continue
                target = {"linear2": "proj_out", "modulation.lin": "norm.linear"}[layer]
            else:
                if layer == "modulation.lin":
                    raise CheckpointError(f"{name}: FLUX.2 single blocks have no own modulation")
                target = {"linear1": "attn.to_qkv_mlp_proj", "linear2": "attn.to_out"}[layer]
            out[f"{prefix}{target}.{lora}.{param}"] = tensor.clone()
        elif final:
            layer, lora, param = final.groups()
            if layer == "linear":
                out[f"proj_out.{lora}.{param}"] = tensor.clone()
            else:
                value = _swap_halves(tensor) if lora == "lora_B" else tensor.clone()
                out[f"norm_out.linear.{lora}.{param}"] = value
        else:
            raise CheckpointError(f"unexpected key in the release LoRA: {name!r}")
    return out


def _torch_load(path: Path) -> StateDict:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict")
    return dict(state)


def load_release_checkpoint(
    model: CoTIRTransformer,
    adapter_path: Path,
    lora_path: Path | None,
    *,
    merge_lora: bool = False,
) -> None:
    """Load the release's ``cot_adapter.pt`` and ``lora.pt`` into ``model``.

    LoRA layers of the file's rank (scale 1.0, bias if the file has biases) are added
    when the model has none yet; with ``merge_lora`` the LoRA is added into the base
    weights instead (:func:`merge_lora_weights`).
    """
    adapter = _torch_load(_require_file(Path(adapter_path), "CoTIR release adapter"))
    load_adapter_weights(model, convert_release_adapter(adapter))
    if lora_path is None:
        return
    raw = _torch_load(_require_file(Path(lora_path), "CoTIR release LoRA"))
    mlp = None
    if model.kind is BackboneKind.FLUX1_KONTEXT:
        mlp = int(model.transformer.single_transformer_blocks[0].mlp_hidden_dim)
    converted = convert_release_lora(
        raw, model.kind, hidden_size=model.cot_adapter.config.hidden_size, mlp_hidden_dim=mlp
    )
    if merge_lora:
        merge_lora_weights(model, converted)
        return
    rank, bias = _infer_lora(converted)
    _ensure_lora(model, rank, bias)
    load_lora_weights(model, converted)
