"""What the fine-tuning recipes (``recipes/genft_finetune_*.py``) call beside torchtune's
``training``: the pre-flight of a run (config, data, checkpoint), the adapter a model was
built with (:class:`ModelAdapter`, for every registered method), its files and the
recipe state for kill-safe resume, precision and distributed helpers, and the loop's
collate and validation. Everything here serves every adapter method alike."""

from genft_tune.modules._base import dequantize_state_dict  # the recipes' merged save
from genft_tune.training._adapter_files import checkpoint_dir_of, save_adapter_files
from genft_tune.training._config import (
    preflight,
    user_errors,
    validate_image_recipe_config,
    validate_recipe_config,
)
from genft_tune.training._data_check import (
    CheckedRows,
    data_reports,
    dataset_label,
    loss_or_zero,
    skip_none_collate,
)
from genft_tune.training._distributed import all_gather_objects, gather_adapter_state_dict, init_distributed
from genft_tune.training._interrupt import deferred_interrupt, EXIT_INTERRUPTED, interrupted_message
from genft_tune.training._loop import recipe_state_dict, sft_collate, validation_loss
from genft_tune.training._lr_schedulers import get_linear_schedule_with_warmup
from genft_tune.training._model_adapter import find_model_adapter, get_model_adapter, ModelAdapter
from genft_tune.training._precision import (
    convert_frozen_linears_to_float8,
    validate_fp8_training,
    validate_optimizer_config,
)
from genft_tune.training._state import (
    ADAPTER_DIR_KEY,
    get_rng_state,
    load_recipe_state,
    save_recipe_state,
    set_rng_state,
    STEPS_IN_EPOCH_KEY,
    WORLD_SIZE_KEY,
)

__all__ = [
    "ADAPTER_DIR_KEY",
    "all_gather_objects",
    "CheckedRows",
    "checkpoint_dir_of",
    "convert_frozen_linears_to_float8",
    "data_reports",
    "dataset_label",
    "deferred_interrupt",
    "dequantize_state_dict",
    "EXIT_INTERRUPTED",
    "find_model_adapter",
    "gather_adapter_state_dict",
    "get_linear_schedule_with_warmup",
    "get_model_adapter",
    "get_rng_state",
    "init_distributed",
    "interrupted_message",
    "load_recipe_state",
    "loss_or_zero",
    "ModelAdapter",
    "preflight",
    "recipe_state_dict",
    "save_adapter_files",
    "save_recipe_state",
    "set_rng_state",
    "sft_collate",
    "skip_none_collate",
    "STEPS_IN_EPOCH_KEY",
    "user_errors",
    "validate_fp8_training",
    "validate_image_recipe_config",
    "validate_optimizer_config",
    "validate_recipe_config",
    "validation_loss",
    "WORLD_SIZE_KEY",
]
