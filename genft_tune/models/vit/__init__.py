"""ViT image classifiers with GenFT (and WeGeFT / LoRA baselines), and their checkpoint converters."""

from genft_tune.models.vit._checkpoint import read_state_dict, save_json, save_safetensors
from genft_tune.models.vit._component_builders import (
    vit,
    vit_genft,
    vit_lora,
    vit_wegeft,
)
from genft_tune.models.vit._convert_weights import (
    save_hf_vit,
    convert_timm_vit_state_dict,
    load_hf_vit_state_dict,
    load_timm_vit_state_dict,
    load_vit_state_dict,
    vit_hf_config,
    vit_hf_module_name,
    vit_hf_to_tune,
    vit_tune_to_hf,
)
from genft_tune.models.vit._model import ViTClassifier
from genft_tune.models.vit._model_builders import (
    vit_b16,
    vit_b16_genft,
    vit_b16_lora,
    vit_b16_wegeft,
    vit_tiny,
    vit_tiny_genft,
    vit_tiny_lora,
    vit_tiny_wegeft,
)

__all__ = [
    "convert_timm_vit_state_dict",
    "load_hf_vit_state_dict",
    "load_timm_vit_state_dict",
    "load_vit_state_dict",
    "read_state_dict",
    "save_hf_vit",
    "save_json",
    "save_safetensors",
    "vit",
    "vit_b16",
    "vit_b16_genft",
    "vit_b16_lora",
    "vit_b16_wegeft",
    "vit_genft",
    "vit_hf_config",
    "vit_hf_module_name",
    "vit_hf_to_tune",
    "vit_lora",
    "vit_tiny",
    "vit_tiny_genft",
    "vit_tiny_lora",
    "vit_tiny_wegeft",
    "vit_tune_to_hf",
    "vit_wegeft",
    "ViTClassifier",
]
