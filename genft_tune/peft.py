"""GenFT as a Hugging Face PEFT method: ``import genft_tune.peft`` registers it.

::

    import genft_tune.peft  # registers GenFT with PEFT
    from peft import PeftModel, get_peft_model
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           genft_tune.peft.GenFTPeftConfig(target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)                       # adapter_config.json + adapter_model.safetensors
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    merged = model.merge_and_unload()                # a plain transformers model

PEFT's ``PeftType`` enum has no GENFT member, so importing this module adds one (PEFT's
``register_peft_method`` needs it). The shared generators live once, on the tuner
(``base_model.genft_generators.<OUT>x<IN>.*`` in the saved file), not per layer; each
adapted linear holds its specific factors (``genft_A1`` ...). The maths is this package's
own :class:`~genft_tune.modules.GenFTGenerator`; nothing of the equations is written again.
"""

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils import PeftType, register_peft_method

from genft_tune.modules import GenFTConfig, GenFTGenerators, merged_weight_fp32, tie_specific_factors
from genft_tune.modules.genft.layer import initialize_specific_factors, SPECIFIC, specific_factor_shapes

PREFIX = "genft_"


def _peft_type(name: str) -> PeftType:
    """``PeftType[name]``, added to PEFT's enum when it is not a member yet."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_, member._value_ = name, name
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


GENFT = _peft_type("GENFT")


@dataclass
class GenFTPeftConfig(PeftConfig):
    """:class:`~genft_tune.modules.GenFTConfig`'s fields as a PEFT config, plus PEFT's
    ``target_modules`` (required: e.g. ``["q_proj", "v_proj"]``) and friends; validated
    as :class:`GenFTConfig` is, with the same messages."""

    shared_dim: int = GenFTConfig.shared_dim
    specific_dim: int = GenFTConfig.specific_dim
    ratio: float = GenFTConfig.ratio
    scaling: float = GenFTConfig.scaling
    act_in: str = GenFTConfig.act_in
    act_out: str = GenFTConfig.act_out
    dropout: float = GenFTConfig.dropout
    init_a: str = GenFTConfig.init_a
    init_b: str = GenFTConfig.init_b
    generator_bias: bool = GenFTConfig.generator_bias
    zero_init: bool = GenFTConfig.zero_init
    recompute: bool = GenFTConfig.recompute
    stages: str = GenFTConfig.stages
    convention: str = GenFTConfig.convention
    target_modules: Optional[Union[List[str], str]] = field(default=None)
    exclude_modules: Optional[Union[List[str], str]] = field(default=None)
    modules_to_save: Optional[List[str]] = field(default=None)
    layers_to_transform: Optional[Union[List[int], int]] = field(default=None)
    layers_pattern: Optional[Union[List[str], str]] = field(default=None)

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = GENFT
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if not self.target_modules:
            raise ValueError("GenFTPeftConfig needs target_modules, e.g. ['q_proj', 'v_proj']")
        self.genft_config()  # the same validation, the same messages

    def genft_config(self) -> GenFTConfig:
        """The :class:`GenFTConfig` these fields describe."""
        return GenFTConfig(**{f.name: getattr(self, f.name) for f in fields(GenFTConfig)})


class GenFTPeftLinear(nn.Module, BaseTunerLayer):
    """A PEFT tuner layer: ``base_layer(x) + x @ dW.T`` with ``dW`` from the shared
    generator of the weight's shape and this layer's specific factors."""

    adapter_layer_names = tuple(f"{PREFIX}{n}" for n in SPECIFIC)
    other_param_names = ()

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: GenFTPeftConfig, generators: GenFTGenerators):
        super().__init__()
        self.base_layer = base_layer
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ParameterDict({}))
        self._genft_generators: Dict[str, Any] = {}  # adapter -> its GenFTGenerator (registered on the tuner)
        self._genft_original: Dict[str, torch.Tensor] = {}  # W0 kept by merge, restored by unmerge
        self._disable_adapters = False
        self.merged_adapters: List[str] = []
        base = self.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, generators)

    @property
    def tied(self) -> bool:
        return self.in_features == self.out_features

    def update_layer(self, adapter_name: str, config: GenFTPeftConfig, generators: GenFTGenerators) -> None:
        weight = self.get_base_layer().weight
        generator = generators.get(self.out_features, self.in_features)
        generator.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else None)
        self._genft_generators[adapter_name] = generator
        cfg = config.genft_config()
        factors = {n: nn.Parameter(torch.empty(*s)) for n, s in specific_factor_shapes(cfg, self.in_features, self.out_features).items()}
        initialize_specific_factors(factors, cfg, tied=self.tied)
        for name, param in factors.items():
            getattr(self, PREFIX + name)[adapter_name] = param
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _specific(self, adapter: str):
        def get(name):
            store = getattr(self, PREFIX + name)
            return store[adapter] if adapter in store else None

        return tie_specific_factors(get("A1"), get("B1"), get("A2"), get("B2"), tied=self.tied)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``dW`` (fp32 math, no dropout) from the original ``W0``."""
        W0 = self._genft_original.get(adapter, self.get_base_layer().weight)
        return (merged_weight_fp32(W0.detach(), self._genft_generators[adapter], self._specific(adapter)).float()
                - W0.detach().float()).to(W0.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[List[str]] = None) -> None:
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self._genft_generators:
                continue
            base = self.get_base_layer()
            W0 = base.weight.data.clone()
            merged = merged_weight_fp32(W0, self._genft_generators[adapter], self._specific(adapter))
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
            base.weight.data = merged
            self._genft_original[adapter] = W0
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        while self.merged_adapters:  # restores the saved W0 bit for bit, no subtraction
            self.get_base_layer().weight.data = self._genft_original.pop(self.merged_adapters.pop())

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
            if adapter not in self._genft_generators:
                continue
            generator = self._genft_generators[adapter]
            specific = self._specific(adapter)
            dtype = next(t.dtype for t in (*specific, *generator.shared_tensors()) if t is not None)
            delta = generator.delta_weight(W0.to(dtype), *specific, training=self.training)
            result = result + F.linear(x.to(dtype), delta).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "genft." + super().__repr__()


class GenFTPeftModel(BaseTuner):
    """The PEFT tuner of GenFT: one :class:`GenFTGenerators` per adapter on the tuner
    (``genft_generators``), :class:`GenFTPeftLinear` on every target linear."""

    prefix: str = PREFIX
    tuner_layer_cls = GenFTPeftLinear
    target_module_mapping: Dict[str, List[str]] = {}

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs):
        if "genft_generators" not in self._modules:
            self.genft_generators = nn.ModuleDict()
        if adapter_name not in self.genft_generators:
            self.genft_generators[adapter_name] = GenFTGenerators(peft_config.genft_config())
        generators = self.genft_generators[adapter_name]
        if isinstance(target, GenFTPeftLinear):
            target.update_layer(adapter_name, peft_config, generators)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(f"GenFT adapts torch.nn.Linear layers; {current_key} is {type(base).__name__}")
        new = GenFTPeftLinear(target, adapter_name, peft_config, generators)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)


register_peft_method(name="genft", config_cls=GenFTPeftConfig, model_cls=GenFTPeftModel, prefix=PREFIX)

__all__ = ["GenFTPeftConfig", "GenFTPeftLinear", "GenFTPeftModel"]
