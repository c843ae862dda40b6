"""What GenFT's and WeGeFT's PEFT tuners share: the ``PeftType`` member each needs, a
tuner layer on PEFT's ``BaseTunerLayer`` (merge from the saved ``W0``, exact unmerge,
forward ``base(x) + update``) and a tuner model that keeps a method's shared tensors
once, on the tuner, per adapter."""

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Union

import torch
from torch import nn

from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils import PeftType


def peft_type(name: str) -> PeftType:
    """``PeftType[name]``, added to PEFT's enum when it is not a member yet (PEFT's
    ``register_peft_method`` accepts only members)."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_, member._value_ = name, name
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


class AdapterPeftLayer(nn.Module, BaseTunerLayer):
    """A PEFT tuner layer around an ``nn.Linear`` whose update is computed from its
    frozen ``W0``. Subclasses set ``adapter_layer_names`` and implement
    :meth:`update_layer`, :meth:`_has_adapter`, :meth:`_merged_weight` (fp32 maths,
    from the original ``W0``) and :meth:`_update` (``x @ dW.T`` for the forward)."""

    other_param_names = ()

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: Any, root: nn.Module, module_name: str):
        super().__init__()
        self.base_layer = base_layer
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ModuleDict() if name in self._module_stores else nn.ParameterDict())
        self._original: Optional[torch.Tensor] = None  # W0 before the first merge, restored by unmerge
        self._disable_adapters = False
        self.merged_adapters: List[str] = []
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.module_name = module_name
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, root)

    _module_stores: tuple = ()  # adapter_layer_names that hold modules rather than parameters

    # ---- per method ------------------------------------------------------------------

    def update_layer(self, adapter_name: str, config: Any, root: nn.Module) -> None:
        raise NotImplementedError

    def _has_adapter(self, adapter: str) -> bool:
        raise NotImplementedError

    def _merged_weight(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        """``W0 + dW`` (fp32 maths, no dropout), in ``weight``'s dtype."""
        raise NotImplementedError

    def _update(self, adapter: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T`` in the adapter's dtype (dropout when training)."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------

    def _finish_update(self, adapter_name: str) -> None:
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _original_weight(self) -> torch.Tensor:
        """``W0``: the base weight before any merge (every adapter's ``dW`` is made from it)."""
        return (self._original if self._original is not None else self.get_base_layer().weight).detach()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``dW`` (fp32 maths, no dropout) from the original ``W0``."""
        W0 = self._original_weight()
        return (self._merged_weight(adapter, W0).float() - W0.float()).to(W0.dtype)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """PEFT's ``convert_to_lora``/``save_as_lora`` may factor this layer: it is additive
        (``W0 + dW``) and :meth:`get_delta_weight` gives ``dW`` in the base's row order."""
        return True

    def merge(self, safe_merge: bool = False, adapter_names: Optional[List[str]] = None) -> None:
        for adapter in check_adapters_to_merge(self, adapter_names):
            if not self._has_adapter(adapter):
                continue
            base = self.get_base_layer()
            if self._original is None:  # the first merge: W0 + dW in one fp32 computation
                merged = self._merged_weight(adapter, base.weight.data)
            else:  # more: add this adapter's dW, also generated from the original W0
                merged = (base.weight.data.float() + self.get_delta_weight(adapter).float()).to(base.weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
            if self._original is None:
                self._original = base.weight.data.clone()
            base.weight.data = merged
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if self._original is not None:  # restores W0 bit for bit, no subtraction
            self.get_base_layer().weight.data = self._original
        self._original = None
        self.merged_adapters.clear()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        W0 = self.get_base_layer().weight
        for adapter in self.active_adapters:
            if self._has_adapter(adapter):
                result = result + self._update(adapter, x, W0).to(result.dtype)
        return result


class AdapterPeftModel(BaseTuner):
    """A PEFT tuner whose layers share tensors: one ``root`` module per adapter (built by
    :meth:`make_root`), registered on the tuner under ``root_attr`` so that PEFT saves
    it once (``base_model.<root_attr>.<...>``), and a ``tuner_layer_cls`` on every target
    ``nn.Linear``."""

    root_attr: str
    target_module_mapping: Dict[str, List[str]] = {}

    def make_root(self, peft_config: Any) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # the shared tensors sit at <root_attr>.<adapter>.<...>: saved as <root_attr>.<...>,
        # so that the file loads under any adapter name (PEFT maps keys back with this too)
        inner = f"{cls.root_attr}.{adapter_name}."
        if inner in key:
            return key.replace(inner, f"{cls.root_attr}.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs):
        if self.root_attr not in self._modules:
            setattr(self, self.root_attr, nn.ModuleDict())
        roots = getattr(self, self.root_attr)
        if adapter_name not in roots:
            roots[adapter_name] = self.make_root(peft_config)
        root = roots[adapter_name]
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, peft_config, root)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"{self.prefix.rstrip('_')} adapts torch.nn.Linear layers; {current_key} is {type(base).__name__}"
            )
        new = self.tuner_layer_cls(target, adapter_name, peft_config, root, target_name)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)


@dataclass
class AdapterPeftConfig(PeftConfig):
    """What our PEFT configs share: PEFT's targeting fields (``target_modules`` required)
    and the validation of their method's own config, whose fields each subclass repeats
    (``method_config_cls``; ``tests/test_peft_plugin.py`` checks that none is missing)."""

    target_modules: Optional[Union[List[str], str]] = field(default=None)
    exclude_modules: Optional[Union[List[str], str]] = field(default=None)
    modules_to_save: Optional[List[str]] = field(default=None)
    layers_to_transform: Optional[Union[List[int], int]] = field(default=None)
    layers_pattern: Optional[Union[List[str], str]] = field(default=None)

    method_config_cls: ClassVar[type]
    method_peft_type: ClassVar[PeftType]

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = self.method_peft_type
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if not self.target_modules:
            raise ValueError(f"{type(self).__name__} needs target_modules, e.g. ['q_proj', 'v_proj']")
        self.method_config()  # the same validation, the same messages as our config

    def method_config(self) -> Any:
        """Our config (``GenFTConfig``, ``WeGeFTConfig``) that these fields describe."""
        return self.method_config_cls(**{f.name: getattr(self, f.name) for f in fields(self.method_config_cls)})
