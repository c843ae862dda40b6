"""Helpers for the GenFT fine-tuning recipes (``recipes/genft_finetune_*.py``)."""

from genft_tune.training._adapter_files import checkpoint_dir_of, save_adapter_files
from genft_tune.training._adapter_method import (
    AdapterMethod,
    check_wegeft_targets,
    find_adapter_method,
    get_adapter_method,
    METHOD_NAMES,
    wegeft_adapter_init_state_dict,
)
from genft_tune.training._config import (
    ConfigError,
    user_errors,
    validate_checkpoint_files,
    validate_image_recipe_config,
    validate_components,
    validate_recipe_config,
)
from genft_tune.training._distributed import (
    all_gather_objects,
    distributed_backend,
    gather_adapter_state_dict,
    init_distributed,
)
from genft_tune.training._genft import (
    adapter_target_modules,
    check_adapter_targets,
    check_genft_targets,
    check_requested_targets,
    clean_module_name,
    dequantize_state_dict,
    GENFT_ATTN_MODULES,
    genft_adapter_init_state_dict,
    genft_target_modules,
    named_genft_generators,
    validate_genft_model_config,
)
from genft_tune.training._loop import recipe_state_dict, sft_collate, validation_loss

# method-neutral names (the recipes' adapter serves every method; the genft_* names stay valid)
validate_model_config = validate_genft_model_config
from genft_tune.training._lr_schedulers import get_linear_schedule_with_warmup
from genft_tune.training._precision import (
    convert_frozen_linears_to_float8,
    FP8_RECIPES,
    FP8_TOKEN_MULTIPLE,
    PadToMultiple,
    supports_float8,
    validate_fp8_training,
    validate_optimizer_config,
)
from genft_tune.training._state import (
    ADAPTER_DIR_KEY,
    atomic_torch_save,
    GENFT_CONFIG_KEY,
    get_rng_state,
    load_recipe_state,
    recipe_state_path,
    save_recipe_state,
    set_rng_state,
    STEPS_IN_EPOCH_KEY,
    WORLD_SIZE_KEY,
)

__all__ = [
    "AdapterMethod",
    "checkpoint_dir_of",
    "save_adapter_files",
    "ConfigError",
    "user_errors",
    "adapter_target_modules",
    "check_adapter_targets",
    "check_wegeft_targets",
    "find_adapter_method",
    "get_adapter_method",
    "METHOD_NAMES",
    "wegeft_adapter_init_state_dict",
    "ADAPTER_DIR_KEY",
    "all_gather_objects",
    "atomic_torch_save",
    "check_genft_targets",
    "check_requested_targets",
    "clean_module_name",
    "convert_frozen_linears_to_float8",
    "dequantize_state_dict",
    "distributed_backend",
    "FP8_RECIPES",
    "FP8_TOKEN_MULTIPLE",
    "PadToMultiple",
    "gather_adapter_state_dict",
    "GENFT_ATTN_MODULES",
    "GENFT_CONFIG_KEY",
    "genft_adapter_init_state_dict",
    "genft_target_modules",
    "get_linear_schedule_with_warmup",
    "recipe_state_dict",
    "validate_model_config",
    "sft_collate",
    "validation_loss",
    "get_rng_state",
    "init_distributed",
    "load_recipe_state",
    "named_genft_generators",
    "recipe_state_path",
    "save_recipe_state",
    "set_rng_state",
    "STEPS_IN_EPOCH_KEY",
    "supports_float8",
    "validate_checkpoint_files",
    "validate_components",
    "validate_fp8_training",
    "validate_image_recipe_config",
    "validate_genft_model_config",
    "validate_optimizer_config",
    "validate_recipe_config",
    "WORLD_SIZE_KEY",
]
