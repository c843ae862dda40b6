"""Adapter layers and the adapter-method registry.

A method is one package here, in the manner of Hugging Face PEFT's tuners: ``genft/``
and ``wegeft/`` each hold their config, math, layer, state-dict helpers, registry entry
(an :class:`AdapterKind`, with its PEFT names and key rules) and their PEFT tuner.
What every method's layer does alike is :class:`AdapterLinear`; :func:`apply_adapter`
puts any registered method into any model. The names below are what a user calls; each
method's further helpers (``get_genft_adapter_state_dict``, ``is_wegeft_key``, ...)
are in its package.
"""

from genft_tune.modules._apply import adapter_layers, apply_adapter
from genft_tune.modules._base import AdapterLinear
from genft_tune.modules._load_base import load_base_checkpoint
from genft_tune.modules._method import (
    AdapterKind,
    adapter_kinds,
    get_adapter_kind,
    register_adapter_kind,
    validate_missing_and_unexpected,
)
from genft_tune.modules.genft import genft_linear, GenFTConfig, GenFTGenerators, GenFTLinear, merge_genft_state_dict
from genft_tune.modules.wegeft import (
    merge_wegeft_state_dict,
    WeGeFTConfig,
    wegeft_linear,
    WeGeFTLinear,
    WeGeFTSharedFactors,
)

__all__ = [
    "AdapterKind",
    "AdapterLinear",
    "adapter_kinds",
    "adapter_layers",
    "apply_adapter",
    "get_adapter_kind",
    "load_base_checkpoint",
    "register_adapter_kind",
    "validate_missing_and_unexpected",
    "genft_linear",
    "GenFTConfig",
    "GenFTGenerators",
    "GenFTLinear",
    "merge_genft_state_dict",
    "merge_wegeft_state_dict",
    "WeGeFTConfig",
    "wegeft_linear",
    "WeGeFTLinear",
    "WeGeFTSharedFactors",
]
