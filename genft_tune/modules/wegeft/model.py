"""WeGeFT at the model level: its layers, state-dict keys, merge, a fresh adapter for a
model, and :data:`WEGEFT`, its :class:`AdapterKind`."""

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from genft_tune.modules._method import (
    AdapterKind,
    clean_module_name,
    PeftNames,
    register_adapter_kind,
    renamed_prefix,
)
from genft_tune.modules.wegeft.config import (
    FACTOR_NAMES,
    FACTORS_ATTR,
    LAYER_FACTORS_ATTR,
    PEFT_LAYER_FACTORS_ATTR,
    PEFT_PREFIX,
    WeGeFTConfig,
)
from genft_tune.modules.wegeft.layer import (
    WeGeFTFactors,
    WeGeFTLinear,
    WeGeFTSharedFactors,
    wegeft_linear,
    wegeft_merged_weight,
)


def get_wegeft_modules(model: nn.Module) -> Dict[str, WeGeFTLinear]:
    """All :class:`WeGeFTLinear` layers of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WeGeFTLinear)}


def get_wegeft_target_modules(model: nn.Module) -> Dict[str, Optional[str]]:
    """``{layer name: shared factors key or None}``: the ``target_modules`` that
    :func:`merge_wegeft_state_dict` needs for this model."""
    return {n: m.factors.key for n, m in get_wegeft_modules(model).items()}


def get_wegeft_config(model: nn.Module) -> WeGeFTConfig:
    """The :class:`WeGeFTConfig` of a model built with WeGeFT layers.

    Raises:
        ValueError: if the model has no WeGeFT layers.
    """
    for module in model.modules():
        if isinstance(module, (WeGeFTLinear, WeGeFTFactors, WeGeFTSharedFactors)):
            return module.config
    raise ValueError("model has no WeGeFT layers")


def is_wegeft_key(key: str) -> bool:
    """Whether a state-dict key belongs to the WeGeFT adapter (shared or per layer)."""
    if key.startswith(FACTORS_ATTR + "."):
        return True
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2] == LAYER_FACTORS_ATTR and parts[-1] in FACTOR_NAMES


def get_wegeft_adapter_state_dict(
    state_dict: Dict[str, Any], device: Optional[str] = "cpu"
) -> Dict[str, Any]:
    """The adapter's entries of a full state dict: each shared pair once, plus every
    per-layer pair."""
    return {
        k: (v.to(device) if device is not None else v)
        for k, v in state_dict.items()
        if is_wegeft_key(k)
    }


@torch.no_grad()
def merge_wegeft_state_dict(
    state_dict: Dict[str, torch.Tensor],
    *,
    config: WeGeFTConfig,
    target_modules: Union[Sequence[str], Mapping[str, Optional[str]]],
) -> Dict[str, torch.Tensor]:
    """Turn a WeGeFT model's state dict into a plain one: ``W = W0 + dW`` for every
    target, computed in fp32 from the original ``W0`` (no dropout) and cast to its
    dtype; all WeGeFT keys are dropped.

    Args:
        state_dict (Dict[str, torch.Tensor]): full state dict (base + adapter keys).
        config (WeGeFTConfig): the adapter's hyperparameters.
        target_modules (Union[Sequence[str], Mapping[str, Optional[str]]]): qualified
            names of the adapted linears (``layers.0.attn.q_proj``...). With
            ``config.shared`` a layer's factors are ``wegeft_factors.<key>``, where
            ``key`` is the mapping's value (see :func:`get_wegeft_target_modules`) or,
            for a plain sequence, the name's last component (``q_proj``); per-layer
            factors are ``<name>.wegeft``.

    Returns:
        Dict[str, torch.Tensor]: a new state dict with merged weights.

    Raises:
        ValueError: if a target's weight or factor is missing, or shapes disagree.
    """
    if isinstance(target_modules, Mapping):
        targets = dict(target_modules)
    else:
        targets = {name: None for name in target_modules}
    merged = {k: v for k, v in state_dict.items() if not is_wegeft_key(k)}
    for prefix, key in targets.items():
        weight_key = f"{prefix}.weight"
        if weight_key not in state_dict:
            raise ValueError(f"target module {prefix!r} has no weight {weight_key!r} in the state dict")
        W0 = state_dict[weight_key]
        if config.shared:
            fprefix = f"{FACTORS_ATTR}.{key if key is not None else prefix.rsplit('.', 1)[-1]}"
        else:
            fprefix = f"{prefix}.{LAYER_FACTORS_ATTR}"
        factors = []
        for name in FACTOR_NAMES:
            fkey = f"{fprefix}.{name}"
            if fkey not in state_dict:
                raise ValueError(f"missing WeGeFT tensor {fkey} for {prefix!r} in the state dict")
            expected = (config.rank, W0.shape[1])
            if tuple(state_dict[fkey].shape) != expected:
                raise ValueError(
                    f"{fkey} has shape {tuple(state_dict[fkey].shape)}, expected {expected} "
                    f"(rank, in_dim of {weight_key})"
                )
            factors.append(state_dict[fkey])
        merged[weight_key] = wegeft_merged_weight(W0, *factors, config)
    return merged


def wegeft_adapter_init_state_dict(model: nn.Module, *, seed: int) -> Dict[str, torch.Tensor]:
    """A freshly initialised WeGeFT adapter (``psi`` kaiming-uniform, ``phi`` zero) for
    ``model``, as an fp32 CPU state dict that depends only on ``seed`` and the model's
    layout (so a single-device and an FSDP run start alike). The global RNG is untouched.

    Args:
        model (nn.Module): a model built with WeGeFT layers (may live on meta).
        seed (int): seed of the initialisation.

    Returns:
        Dict[str, torch.Tensor]: ``<factors prefix>.phi`` / ``.psi`` for every factor
        pair (shared ones once), in sorted prefix order.
    """
    pairs = {
        clean_module_name(n): m for n, m in model.named_modules() if isinstance(m, WeGeFTFactors)
    }
    state: Dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for prefix, factors in sorted(pairs.items()):
            with torch.device("cpu"):
                twin = WeGeFTFactors(factors.in_dim, config=factors.config)
            for name, param in twin.named_parameters():
                state[f"{prefix}.{name}"] = param.detach().float()
    return state


def shared_keys_renamed(key_of: Mapping[str, str], renamed: Mapping[str, str]) -> Dict[str, str]:
    """Shared pairs are keyed by module type, which torchtune's and Hugging Face's namings
    spell differently (torchtune's ``output_proj`` is Hugging Face's ``o_proj``): each key
    of ``key_of`` (module -> key) under the other naming (``renamed``: module -> its name
    there). A key that is its modules' own type becomes their type there; a group key
    (several types sharing a pair) keeps its name."""
    members: Dict[str, set] = {}
    for module, key in key_of.items():
        members.setdefault(key, set()).add(module)
    out = {}
    for key, modules in members.items():
        theirs = {renamed[m].rsplit(".", 1)[-1] for m in modules}
        own_type = all(m.rsplit(".", 1)[-1] == key for m in modules) and len(theirs) == 1
        out[key] = theirs.pop() if own_type else key
    return out


class WeGeFTKind(AdapterKind):
    """WeGeFT as an adapter method (see :class:`~genft_tune.modules.AdapterKind`)."""

    name = "wegeft"
    label = "WeGeFT"
    description = "WeGeFT"  # model cards: "trained with WeGeFT"
    config_cls = WeGeFTConfig
    layer_cls = WeGeFTLinear
    root_attr = FACTORS_ATTR
    # wegeft.phi -> wegeft_layer_factors.phi (the PEFT layer's per-adapter store,
    # genft_tune.modules.wegeft.peft); shared pairs are keyed by module type
    peft_names = PeftNames(
        "WEGEFT",
        FACTORS_ATTR,
        lambda rest: f"{PEFT_LAYER_FACTORS_ATTR}." + rest[len(f"{LAYER_FACTORS_ATTR}."):],
        renamed_prefix(f"{PEFT_LAYER_FACTORS_ATTR}.", f"{LAYER_FACTORS_ATTR}."),
        rename_shared_keys=shared_keys_renamed,
        prefix=PEFT_PREFIX,
    )

    def make_root(self, config: WeGeFTConfig) -> WeGeFTSharedFactors:
        return WeGeFTSharedFactors(config)

    def make_linear(self, root, name, in_dim, out_dim, *, use_bias=False, quantize_base=False, base=None, **quantization_kwargs):
        # shared factors are keyed by module type: the name's last part (q_proj, w1, ...)
        factors = root.factors_for(name.rsplit(".", 1)[-1], in_dim)
        return wegeft_linear(
            in_dim, out_dim, factors=factors, use_bias=use_bias, quantize_base=quantize_base, base=base,
            **quantization_kwargs,
        )

    is_key = staticmethod(is_wegeft_key)

    def target_modules(self, layers):
        return {n: m.factors.key for n, m in layers.items()}

    def targets_from_file(self, meta):
        keys = meta.get("target_keys") or {}
        return {n: keys.get(n) for n in meta["target_modules"]}

    def merge_state_dict(self, state_dict, *, config, target_modules):
        return merge_wegeft_state_dict(state_dict, config=config, target_modules=target_modules)

    def init_state_dict(self, model, *, seed):
        return wegeft_adapter_init_state_dict(model, seed=seed)


WEGEFT = register_adapter_kind(WeGeFTKind())
