"""One public way to put an adapter into any model, and to find it again.

::

    from genft_tune import apply_adapter, adapter_layers
    from genft_tune.modules import GenFTConfig

    model = torchtune.models.qwen2_5.qwen2_5_1_5b_instruct()
    apply_adapter(model, GenFTConfig(), ["q_proj", "v_proj"])   # in place; base frozen
    for name, layer in adapter_layers(model):                   # layers.0.attn.q_proj, ...
        ...
"""

from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchtune.modules.peft import get_adapter_params, set_trainable_params

from genft_tune.modules._method import (
    AdapterKind,
    adapter_kind_for_config,
    adapter_layers_by_kind,
    clean_module_name,
)


def _matches(name: str, targets: Sequence[str]) -> bool:
    # PEFT's target_modules: a target names a module by its full name or its last parts
    return any(name == t or name.endswith("." + t) for t in targets)


# The attention projections an adapter can target in a torchtune model (torchtune's
# LORA_ATTN_MODULES); the MLP and the lm head are switched on separately by the builders.
ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "output_proj")


def check_attn_modules(field: str, modules: Sequence[str]) -> List[str]:
    """Validate a builder's list of attention projection names.

    Args:
        field (str): the argument's name, for the error message.
        modules (Sequence[str]): names, each one of ``ATTN_MODULES``.

    Returns:
        List[str]: the names as a list.

    Raises:
        ValueError: if ``modules`` is a string, holds an unknown name or a duplicate.
    """
    if isinstance(modules, str) or modules is None:
        raise ValueError(f"{field} must be a list of names from {list(ATTN_MODULES)}, got {modules!r}")
    modules = list(modules)
    for name in modules:
        if name not in ATTN_MODULES:
            raise ValueError(f"{field} has an unknown entry {name!r}; allowed: {list(ATTN_MODULES)}")
    if len(set(modules)) != len(modules):
        raise ValueError(f"{field} has duplicate entries: {modules}")
    return modules


# Hugging Face / PEFT module names of a decoder -> torchtune's (the names its models use)
HF_TARGET_ALIASES = {
    "o_proj": "output_proj",
    "gate_proj": "w1",
    "up_proj": "w3",
    "down_proj": "w2",
    "self_attn": "attn",
    "lm_head": "output",
}


def target_alias(target: str) -> str:
    """``target`` in torchtune's names: ``o_proj`` -> ``output_proj``, ``gate_proj`` ->
    ``w1``, ``up_proj`` -> ``w3``, ``down_proj`` -> ``w2``,
    ``model.layers.0.self_attn.o_proj`` -> ``layers.0.attn.output_proj``."""
    parts = target.split(".")
    if parts and parts[0] == "model" and len(parts) > 1:
        parts = parts[1:]
    return ".".join(HF_TARGET_ALIASES.get(p, p) for p in parts)


def resolve_targets(names: Sequence[str], targets: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Each target as given when it names one of ``names`` (module names), else its
    torchtune spelling (:func:`target_alias`) when that does.

    Returns:
        Tuple[List[str], List[str]]: the resolved targets and those that match nothing.
    """
    resolved, unmatched = [], []
    for t in targets:
        alias = target_alias(t)
        if any(_matches(n, [t]) for n in names):
            resolved.append(t)
        elif alias != t and any(_matches(n, [alias]) for n in names):
            resolved.append(alias)
        else:
            unmatched.append(t)
    return resolved, unmatched


def apply_adapter(model: nn.Module, config: Any, targets: Sequence[str]) -> nn.Module:
    """Swap every linear of ``model`` whose name ends with one of ``targets`` for an
    adapted linear of ``config``'s method, in place.

    The new layers take over the old ones' weights and biases (plain or NF4) as their
    frozen base, on the same device and in the same dtype; the method's shared tensors
    are registered once, as ``model.<kind.root_attr>``; every parameter but the
    adapter's is frozen. Works on the meta device.

    Args:
        model (nn.Module): any model (a torchtune ``TransformerDecoder``, a ViT, ...).
        config (Any): a registered method's config (``GenFTConfig``, ``WeGeFTConfig``).
        targets (Sequence[str]): module-name suffixes, as PEFT's ``target_modules``
            (``["q_proj", "v_proj"]``, ``["layers.0.attn.q_proj"]``).

    Returns:
        nn.Module: ``model``.

    Raises:
        TypeError: if ``config`` is no registered method's config.
        ValueError: if ``targets`` is empty or a string, names no linear of the model,
            or the model already has this method's adapter.
    """
    kind = adapter_kind_for_config(config)
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty list of module names (e.g. ['q_proj', 'v_proj']), got {targets!r}")
    if hasattr(model, kind.root_attr):
        raise ValueError(f"the model already has a {kind.label} adapter ({kind.root_attr})")
    linears = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not isinstance(module, kind.layer_cls)
    ]
    # Hugging Face names (o_proj, gate_proj, ...) are aliases of torchtune's
    targets, unmatched = resolve_targets([clean_module_name(n) for n, _ in linears], targets)
    if unmatched:
        leaves = sorted({clean_module_name(n).rsplit(".", 1)[-1] for n, _ in linears})
        raise ValueError(
            f"targets {unmatched} match no linear layer of the model ({type(model).__name__}); "
            f"its linear layers are named {leaves} (Hugging Face names are accepted too: "
            + ", ".join(f"{k} = {v}" for k, v in HF_TARGET_ALIASES.items() if v in leaves) + ")"
        )
    found = [(name, module) for name, module in linears if _matches(clean_module_name(name), targets)]
    reference = found[0][1].weight
    with torch.device(reference.device):
        root = kind.make_root(config)
    for name, old in found:
        with torch.device(old.weight.device):
            new = kind.make_linear(root, clean_module_name(name), old.in_features, old.out_features, base=old)
        _cast_adapter(new, old.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    setattr(model, kind.root_attr, _cast_adapter(root, reference.dtype))
    set_trainable_params(model, get_adapter_params(model))
    return model


def _cast_adapter(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    # the adapter's own floating tensors only: the frozen base (maybe NF4) stays as it is
    for name, param in module.named_parameters():
        if name not in ("weight", "bias") and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return module


def adapter_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, layer)`` for every adapted linear of ``model`` (any registered method),
    with clean names: no activation-checkpointing, compile or FSDP wrapper parts."""
    for layers in adapter_layers_by_kind(model).values():
        for name, layer in layers.items():
            yield clean_module_name(name), layer


def adapter_kind_of(model: nn.Module) -> Optional[AdapterKind]:
    """The method of ``model``'s adapted layers, or None when it has none.

    Raises:
        ValueError: if the model mixes methods.
    """
    kinds = list(adapter_layers_by_kind(model))
    if len(kinds) > 1:
        both = "both " if len(kinds) == 2 else ""
        raise ValueError(
            f"the model has {both}{' and '.join(k.label for k in kinds)} layers; "
            "a recipe trains one adapter method at a time"
        )
    return kinds[0] if kinds else None


__all__ = ["adapter_layers", "adapter_kind_of", "apply_adapter"]
