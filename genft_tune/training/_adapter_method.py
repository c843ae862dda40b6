"""The adapter a model was built with (GenFT or WeGeFT), as one object for the recipes.

The recipes train, save, resume and merge both methods the same way; only these
operations differ between them: which state-dict keys are the adapter's, how the
adapter is freshly initialised, how it is merged into ``W0`` and which config fields
name its targets.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import torch
from omegaconf import DictConfig
from torch import nn

from genft_tune.modules import (
    GenFTConfig,
    get_genft_modules,
    get_wegeft_modules,
    is_genft_key,
    is_wegeft_key,
    merge_genft_state_dict,
    merge_wegeft_state_dict,
    validate_missing_and_unexpected_for_genft,
    WeGeFTConfig,
)
from genft_tune.modules.wegeft import WeGeFTFactors
from genft_tune.training._genft import (
    check_genft_targets,
    check_requested_targets,
    clean_module_name,
    genft_adapter_init_state_dict,
    GENFT_ATTN_MODULES,
)

METHOD_NAMES = ("genft", "wegeft")
_LABELS = {"genft": "GenFT", "wegeft": "WeGeFT"}


@dataclass(frozen=True)
class AdapterMethod:
    """What a recipe needs to know about a model's adapter.

    Build it with :func:`get_adapter_method`.

    Attributes:
        name (str): ``"genft"`` or ``"wegeft"`` (the adapter files' ``method`` field).
        config (Union[GenFTConfig, WeGeFTConfig]): the adapter's hyperparameters.
        target_modules (Union[List[str], Dict[str, Optional[str]]]): adapted linears by
            state-dict name; for WeGeFT a ``{name: shared factors key}`` mapping.
    """

    name: str
    config: Union[GenFTConfig, WeGeFTConfig]
    target_modules: Union[List[str], Dict[str, Optional[str]]]

    @property
    def label(self) -> str:
        """Display name for logs (``GenFT`` / ``WeGeFT``)."""
        return _LABELS[self.name]

    @property
    def is_key(self) -> Callable[[str], bool]:
        """Whether a state-dict key belongs to the adapter."""
        return is_genft_key if self.name == "genft" else is_wegeft_key

    def adapter_state_dict(self, state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """The adapter's entries of a full state dict, detached, on the CPU."""
        return {k: v.detach().cpu() for k, v in state_dict.items() if self.is_key(k)}

    def merge_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A plain state dict with ``W0 + dW`` (fp32 math) and no adapter keys."""
        merge = merge_genft_state_dict if self.name == "genft" else merge_wegeft_state_dict
        return merge(state_dict, config=self.config, target_modules=self.target_modules)

    def init_state_dict(self, model: nn.Module, *, seed: int) -> Dict[str, torch.Tensor]:
        """A fresh adapter that depends on ``seed`` and the model's layout only (not on
        the device, dtype or world size), as an fp32 CPU state dict."""
        if self.name == "genft":
            return genft_adapter_init_state_dict(model, seed=seed)
        return wegeft_adapter_init_state_dict(model, seed=seed)

    def check_targets(self, cfg_model: DictConfig, model: nn.Module) -> None:
        """Check that the targets the model config asks for exist in the built model."""
        if self.name == "genft":
            check_genft_targets(cfg_model, model)
        else:
            check_wegeft_targets(cfg_model, model)

    def validate_loaded_keys(
        self,
        *,
        missing_keys: Iterable[str],
        unexpected_keys: Iterable[str],
        base_loaded: bool,
        adapter_loaded: bool,
    ) -> None:
        """Check ``model.load_state_dict(..., strict=False)``'s result: after the base
        only the adapter's keys may be missing; after the adapter, nothing.

        Raises:
            ValueError: naming the first offending key.
        """
        validate_missing_and_unexpected_for_genft(
            missing_keys=missing_keys,
            unexpected_keys=unexpected_keys,
            base_loaded=base_loaded,
            adapter_loaded=adapter_loaded,
            is_key=self.is_key,
            label=self.label,
        )

    def check_resume_config(self, saved: Optional[Mapping[str, Any]]) -> None:
        """The adapter being resumed (its ``genft_config.json`` contents) must have been
        trained with this method and config.

        Raises:
            ValueError: naming the saved and current method, or every differing field.
        """
        saved = saved or {}
        method = saved.get("method", "genft")
        if method != self.name:
            raise ValueError(
                f"resume_from_checkpoint: the saved adapter is {method!r}, but the model is "
                f"built with {self.name!r}"
            )
        layout = saved.get("weight_layout", "torchtune")
        if layout != "torchtune":
            raise ValueError(
                f"resume_from_checkpoint: the saved adapter is in the {layout!r} weight layout "
                "(imported from the authors' code); torchtune models train in torchtune's layout"
            )
        saved = saved.get(f"{method}_config", saved.get("config", saved))
        current = self.config.to_dict()
        diff = {k: (saved[k], v) for k, v in current.items() if k in saved and saved[k] != v}
        if diff:
            raise ValueError(
                f"resume_from_checkpoint: the saved adapter's {self.label} config "
                f"differs from the model's (field: (saved, config)): {diff}"
            )

    def layers(self, model: nn.Module) -> Dict[str, nn.Module]:
        """``{state-dict name: adapted linear}`` of ``model`` (GenFTLinear / WeGeFTLinear)."""
        layers = get_genft_modules(model) if self.name == "genft" else get_wegeft_modules(model)
        return {clean_module_name(n): m for n, m in layers.items()}

    def clear_caches(self, model: nn.Module) -> None:
        """Drop every adapted layer's cached merged weight."""
        for layer in self.layers(model).values():
            layer.clear_cache()


def find_adapter_method(model: nn.Module) -> Optional[AdapterMethod]:
    """The adapter ``model`` was built with, or ``None`` when it has no GenFT or WeGeFT
    layer (e.g. a LoRA or linear-probe model of the image recipe).

    Raises:
        ValueError: if the model has both GenFT and WeGeFT layers.
    """
    genft = get_genft_modules(model)
    wegeft = get_wegeft_modules(model)
    if genft and wegeft:
        raise ValueError(
            "the model has both GenFT and WeGeFT layers; a recipe trains one adapter method at a time"
        )
    if genft:
        config = next(iter(genft.values())).config
        return AdapterMethod("genft", config, [clean_module_name(n) for n in genft])
    if wegeft:
        config = next(iter(wegeft.values())).config
        targets = {clean_module_name(n): m.factors.key for n, m in wegeft.items()}
        return AdapterMethod("wegeft", config, targets)
    return None


def get_adapter_method(model: nn.Module) -> AdapterMethod:
    """The adapter ``model`` was built with.

    Raises:
        ValueError: if the model has no GenFT or WeGeFT layer (nothing to fine-tune),
            or has both.
    """
    method = find_adapter_method(model)
    if method is not None:
        return method
    raise ValueError(
        f"the model ({type(model).__name__}) has no GenFT or WeGeFT layers: nothing to fine-tune. "
        "Use a genft_* / qgenft_* / wegeft_* model builder with at least one target "
        "(model.genft_attn_modules or model.wegeft_attn_modules, "
        f"any of {list(GENFT_ATTN_MODULES)}; or the apply_*_to_mlp / apply_*_to_output switches)."
    )


def check_wegeft_targets(cfg_model: DictConfig, model: nn.Module) -> None:
    """Check that the WeGeFT targets a model config asks for exist in the built model.

    Raises:
        ValueError: if a requested target (``wegeft_attn_modules``,
            ``apply_wegeft_to_mlp``, ``apply_wegeft_to_output``) produced no WeGeFT layer.
    """
    targets = [clean_module_name(n) for n in get_wegeft_modules(model)]
    check_requested_targets(cfg_model, targets, method="wegeft", label="WeGeFT")


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


__all__ = [
    "AdapterMethod",
    "check_wegeft_targets",
    "find_adapter_method",
    "get_adapter_method",
    "METHOD_NAMES",
    "wegeft_adapter_init_state_dict",
]
