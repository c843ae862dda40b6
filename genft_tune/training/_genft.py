"""GenFT-specific model helpers shared by the fine-tuning recipes."""

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional

import torch
from omegaconf import DictConfig
from torch import nn
from torchao.dtypes.nf4tensor import NF4Tensor

from genft_tune.modules import (
    GenFTGenerator,
    GenFTLinear,
    get_genft_config,
    get_genft_modules,
)

# Attention projections a GenFT adapter can target (torchtune's LoRA names).
GENFT_ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "output_proj")

# Wrapper prefixes that activation checkpointing, torch.compile and FSDP insert into
# module names but not into state-dict keys.
_WRAPPER_PARTS = re.compile(r"(^|\.)(_checkpoint_wrapped_module|_orig_mod|_fsdp_wrapped_module)(?=\.|$)")


def clean_module_name(name: str) -> str:
    """A module's qualified name with wrapper components removed, i.e. as it
    appears in state-dict keys (``layers.0._checkpoint_wrapped_module.attn.q_proj``
    -> ``layers.0.attn.q_proj``)."""
    return _WRAPPER_PARTS.sub("", name).lstrip(".")


def genft_target_modules(model: nn.Module) -> List[str]:
    """Qualified (state-dict) names of every :class:`GenFTLinear` in ``model``."""
    return [clean_module_name(n) for n in get_genft_modules(model)]


def check_genft_targets(cfg_model: DictConfig, model: nn.Module) -> None:
    """Check that the GenFT targets a model config asks for exist in the built model.

    Args:
        cfg_model (DictConfig): the ``model`` section of the recipe config.
        model (nn.Module): the instantiated model.

    Raises:
        ValueError: if the model has no GenFT layer, or a requested target
            (``genft_attn_modules``, ``apply_genft_to_mlp``, ``apply_genft_to_output``)
            produced no GenFT layer.
    """
    targets = genft_target_modules(model)
    if not targets:
        raise ValueError(
            f"model ({cfg_model.get('_component_')}) has no GenFT layers: nothing to fine-tune. "
            "Set model.genft_attn_modules (any of "
            f"{list(GENFT_ATTN_MODULES)}), model.apply_genft_to_mlp or model.apply_genft_to_output."
        )
    check_requested_targets(cfg_model, targets, method="genft", label="GenFT")


def check_requested_targets(
    cfg_model: DictConfig, targets: List[str], *, method: str, label: str
) -> None:
    """Check that every target a model config asks for (``<method>_attn_modules``,
    ``apply_<method>_to_mlp``, ``apply_<method>_to_output``) is among ``targets``, the
    adapted layers of the built model (state-dict names).

    Raises:
        ValueError: naming the config field whose target produced no adapted layer.
    """
    leaves = {t.rsplit(".", 1)[-1] for t in targets}
    for name in cfg_model.get(f"{method}_attn_modules", None) or []:
        if name not in leaves:
            raise ValueError(
                f"model.{method}_attn_modules asks for {name!r}, but the model has no {label} layer "
                f"named {name!r}; {label} layers found: {sorted(leaves)}"
            )
    if cfg_model.get(f"apply_{method}_to_mlp", False) and not any(
        ".mlp." in f".{t}." for t in targets
    ):
        raise ValueError(f"model.apply_{method}_to_mlp is True, but the model has no {label} MLP layer")
    if cfg_model.get(f"apply_{method}_to_output", False) and "output" not in targets:
        raise ValueError(
            f"model.apply_{method}_to_output is True, but the model's output projection is not a {label} layer"
        )


def validate_genft_model_config(cfg_model: DictConfig) -> None:
    """Cheap checks of a GenFT / WeGeFT model config before anything is built.

    Raises:
        ValueError: if ``genft_attn_modules`` or ``wegeft_attn_modules`` is not a list
            or names an unknown projection.
    """
    for field in ("genft_attn_modules", "wegeft_attn_modules"):
        attn = cfg_model.get(field, None)
        if attn is None:
            continue
        if isinstance(attn, str):
            raise ValueError(
                f"model.{field} must be a list (e.g. [q_proj, v_proj]), got the string {attn!r}"
            )
        for name in attn:
            if name not in GENFT_ATTN_MODULES:
                raise ValueError(
                    f"model.{field}: {name!r} is not an attention projection of the model; "
                    f"allowed: {list(GENFT_ATTN_MODULES)}"
                )


def named_genft_generators(model: nn.Module) -> Dict[str, GenFTGenerator]:
    """Every shared :class:`GenFTGenerator` by state-dict prefix
    (``genft_generators.<OUT>x<IN>``)."""
    return {
        clean_module_name(n): m for n, m in model.named_modules() if isinstance(m, GenFTGenerator)
    }


def genft_adapter_init_state_dict(model: nn.Module, *, seed: int) -> Dict[str, torch.Tensor]:
    """A freshly initialised GenFT adapter for ``model``, as an fp32 CPU state dict.

    The values depend only on ``seed`` and the model's GenFT layout (never on the
    device, the dtype, the world size or how much random state model construction
    consumed), so a single-device run and an FSDP run, whose model is built on the
    meta device, start from the same adapter. The global RNG is left untouched.

    Args:
        model (nn.Module): a model built with GenFT layers (may live on meta).
        seed (int): seed of the adapter's initialisation.

    Returns:
        Dict[str, torch.Tensor]: adapter keys (shared generators, then every layer's
        specific factors) to tensors.
    """
    config = get_genft_config(model)
    state: Dict[str, torch.Tensor] = {}
    twins: Dict[tuple, GenFTGenerator] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            for prefix, gen in sorted(named_genft_generators(model).items()):
                twin = GenFTGenerator(gen.in_dim, gen.out_dim, config=config)
                twins[(gen.out_dim, gen.in_dim)] = twin
                for name, param in twin.named_parameters():
                    state[f"{prefix}.{name}"] = param.detach().float()
            for prefix, layer in get_genft_modules(model).items():
                prefix = clean_module_name(prefix)
                gen = twins.get((layer.out_dim, layer.in_dim))
                if gen is None:  # a layer whose generator is not registered on the model
                    gen = GenFTGenerator(layer.in_dim, layer.out_dim, config=config)
                with torch.device("meta"):  # no (out, in) base weight is allocated
                    twin = GenFTLinear(layer.in_dim, layer.out_dim, generator=gen, use_bias=layer.use_bias)
                twin.to_empty(device="cpu")
                twin.initialize_parameters()
                for name in twin.adapter_params():
                    state[f"{prefix}.{name}"] = getattr(twin, name).detach().float()
    return state


def dequantize_state_dict(
    state_dict: Mapping[str, Any], dtype: Optional[torch.dtype] = None
) -> Dict[str, Any]:
    """Replace NF4 tensors by plain ones (their original dtype, or ``dtype``)."""
    out = {}
    for key, value in state_dict.items():
        if isinstance(value, NF4Tensor):
            value = value.get_original_weight()
            if dtype is not None:
                value = value.to(dtype)
        out[key] = value
    return out


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


__all__ = [
    "GENFT_ATTN_MODULES",
    "check_genft_targets",
    "check_requested_targets",
    "clean_module_name",
    "count_parameters",
    "dequantize_state_dict",
    "genft_adapter_init_state_dict",
    "genft_target_modules",
    "named_genft_generators",
    "validate_genft_model_config",
]
