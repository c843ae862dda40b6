"""The targets of a model config, checked against the built model, for every registered adapter method."""

from typing import List

from omegaconf import DictConfig
from torch import nn

from genft_tune.modules import adapter_kinds, adapter_layers, AdapterKind
from genft_tune.modules._apply import ATTN_MODULES, resolve_targets, target_alias


def adapter_target_modules(model: nn.Module, kind: AdapterKind) -> List[str]:
    """Qualified (state-dict) names of every ``kind`` layer in ``model``."""
    return [n for n, layer in adapter_layers(model) if isinstance(layer, kind.layer_cls)]


def check_adapter_targets(cfg_model: DictConfig, model: nn.Module, kind: AdapterKind) -> None:
    """Check that the targets a model config asks for exist in the built model.

    Args:
        cfg_model (DictConfig): the ``model`` section of the recipe config.
        model (nn.Module): the instantiated model.
        kind (AdapterKind): the adapter method.

    Raises:
        ValueError: if the model has no layer of the method, or a requested target
            (``targets``, ``<method>_attn_modules``, ``apply_<method>_to_mlp``,
            ``apply_<method>_to_output``) produced none.
    """
    targets = adapter_target_modules(model, kind)
    if not targets:
        raise ValueError(
            f"model ({cfg_model.get('_component_')}) has no {kind.label} layers: nothing to fine-tune. "
            f"Set model.targets or model.{kind.name}_attn_modules (any of "
            f"{list(ATTN_MODULES)}), model.apply_{kind.name}_to_mlp or model.apply_{kind.name}_to_output."
        )
    check_requested_targets(cfg_model, targets, method=kind.name, label=kind.label)


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
    for name in cfg_model.get("targets", None) or []:  # the generic builder's suffixes
        resolved, _ = resolve_targets(targets, [name])  # o_proj, gate_proj... as aliases
        name = resolved[0] if resolved else name
        if not any(t == name or t.endswith("." + name) for t in targets):
            raise ValueError(
                f"model.targets asks for {name!r}, but the model has no {label} layer named {name!r}; "
                f"{label} layers found: {sorted(leaves)}"
            )
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


def validate_model_config(cfg_model: DictConfig) -> None:
    """Cheap checks of a GenFT / WeGeFT model config before anything is built.

    Raises:
        ValueError: if ``genft_attn_modules`` or ``wegeft_attn_modules`` is not a list
            or names an unknown projection.
    """
    for kind in adapter_kinds():
        field = f"{kind.name}_attn_modules"
        attn = cfg_model.get(field, None)
        if attn is None:
            continue
        if isinstance(attn, str):
            raise ValueError(
                f"model.{field} must be a list (e.g. [q_proj, v_proj]), got the string {attn!r}"
            )
        for name in attn:
            if name not in ATTN_MODULES:
                alias = target_alias(name)
                hint = (
                    f"; {name!r} is called {alias!r} here" if alias in ATTN_MODULES
                    else f"; the MLP ({name}) is adapted with model.apply_{kind.name}_to_mlp=True"
                    if alias in ("w1", "w2", "w3") else ""
                )
                raise ValueError(
                    f"model.{field}: {name!r} is not an attention projection of the model; "
                    f"allowed: {list(ATTN_MODULES)}{hint}"
                )


__all__ = [
    "adapter_target_modules",
    "check_adapter_targets",
    "check_requested_targets",
    "validate_model_config",
]
