"""The adapter a model was built with, as one object for the recipes.

The recipes train, save, resume and merge every registered adapter method the same
way; what differs between methods (which state-dict keys are the adapter's, a fresh
initialisation, the merge into ``W0``, the config fields that name its targets) is
asked of the method's :class:`~genft_tune.modules.AdapterKind`.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from omegaconf import DictConfig
from torch import nn

from genft_tune.modules import adapter_layers, AdapterKind, get_adapter_kind
from genft_tune.modules._apply import adapter_kind_of, ATTN_MODULES
from genft_tune.modules._method import method_name_in_file, validate_missing_and_unexpected
from genft_tune.training._targets import check_adapter_targets


@dataclass(frozen=True)
class ModelAdapter:
    """What a recipe needs to know about a model's adapter.

    Build it with :func:`get_model_adapter`.

    Attributes:
        name (str): the registered method (``"genft"``, ``"wegeft"``: the adapter
            files' ``method`` field).
        config (Any): the adapter's hyperparameters (``GenFTConfig``, ``WeGeFTConfig``).
        target_modules (Union[List[str], Dict[str, Optional[str]]]): adapted linears by
            state-dict name; for WeGeFT a ``{name: shared factors key}`` mapping.
        target_shapes (Dict[str, Tuple[int, int]]): ``(out, in)`` of each target's ``W0``.
    """

    name: str
    config: Any
    target_modules: Union[List[str], Dict[str, Optional[str]]]
    target_shapes: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @property
    def kind(self) -> AdapterKind:
        return get_adapter_kind(self.name)

    @property
    def label(self) -> str:
        """Display name for logs (``GenFT`` / ``WeGeFT``)."""
        return self.kind.label

    @property
    def is_key(self) -> Callable[[str], bool]:
        """Whether a state-dict key belongs to the adapter."""
        return self.kind.is_key

    def adapter_state_dict(self, state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """The adapter's entries of a full state dict, detached, on the CPU."""
        return {k: v.detach().cpu() for k, v in state_dict.items() if self.is_key(k)}

    def merge_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A plain state dict with ``W0 + dW`` (fp32 math) and no adapter keys."""
        return self.kind.merge_state_dict(state_dict, config=self.config, target_modules=self.target_modules)

    def init_state_dict(self, model: nn.Module, *, seed: int) -> Dict[str, torch.Tensor]:
        """A fresh adapter that depends on ``seed`` and the model's layout only (not on
        the device, dtype or world size), as an fp32 CPU state dict."""
        return self.kind.init_state_dict(model, seed=seed)

    def check_targets(self, cfg_model: DictConfig, model: nn.Module) -> None:
        """Check that the targets the model config asks for exist in the built model."""
        check_adapter_targets(cfg_model, model, self.kind)

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
        validate_missing_and_unexpected(
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
        method = method_name_in_file(saved)
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
        """``{state-dict name: adapted linear}`` of ``model`` for this method."""
        return {n: m for n, m in adapter_layers(model) if isinstance(m, self.kind.layer_cls)}

    def clear_caches(self, model: nn.Module) -> None:
        """Drop every adapted layer's cached merged weight."""
        for layer in self.layers(model).values():
            layer.clear_cache()


def find_model_adapter(model: nn.Module) -> Optional[ModelAdapter]:
    """The adapter ``model`` was built with, or ``None`` when it has no adapted layer of
    a registered method (e.g. a LoRA or linear-probe model of the image recipe).

    Raises:
        ValueError: if the model mixes methods.
    """
    kind = adapter_kind_of(model)
    if kind is None:
        return None
    layers = dict(adapter_layers(model))
    config = next(iter(layers.values())).config
    shapes = {n: (m.out_dim, m.in_dim) for n, m in layers.items()}
    return ModelAdapter(kind.name, config, kind.target_modules(layers), shapes)


def get_model_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter ``model`` was built with.

    Raises:
        ValueError: if the model has no GenFT or WeGeFT layer (nothing to fine-tune),
            or has both.
    """
    adapter = find_model_adapter(model)
    if adapter is not None:
        return adapter
    raise ValueError(
        f"the model ({type(model).__name__}) has no GenFT or WeGeFT layers: nothing to fine-tune. "
        "Use a genft_* / qgenft_* / wegeft_* model builder with at least one target "
        "(model.genft_attn_modules or model.wegeft_attn_modules, "
        f"any of {list(ATTN_MODULES)}; or the apply_*_to_mlp / apply_*_to_output switches)."
    )


__all__ = ["find_model_adapter", "get_model_adapter", "ModelAdapter"]
