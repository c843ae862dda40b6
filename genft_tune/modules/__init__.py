from genft_tune.modules.genft import (
    ACTIVATIONS,
    FACTOR_INITS,
    genft_linear,
    GenFTConfig,
    GenFTGenerator,
    GenFTGenerators,
    GenFTLinear,
    generator_key,
    merged_weight_fp32,
)
from genft_tune.modules.merge import (
    get_genft_adapter_state_dict,
    get_genft_config,
    get_genft_modules,
    is_genft_key,
    merge_genft_state_dict,
    validate_missing_and_unexpected_for_genft,
)

__all__ = [
    "ACTIVATIONS",
    "FACTOR_INITS",
    "genft_linear",
    "GenFTConfig",
    "GenFTGenerator",
    "GenFTGenerators",
    "GenFTLinear",
    "generator_key",
    "merged_weight_fp32",
    "get_genft_adapter_state_dict",
    "get_genft_config",
    "get_genft_modules",
    "is_genft_key",
    "merge_genft_state_dict",
    "validate_missing_and_unexpected_for_genft",
]
