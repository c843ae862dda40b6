"""Adapter files (``genft_adapter.safetensors`` + ``genft_config.json``; Hugging Face PEFT's
``adapter_config.json`` + ``adapter_model.safetensors`` both ways) and merging adapters into
base checkpoints."""

from genft_tune.checkpointing._adapter import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    AdapterFileError,
    check_adapter_matches_model,
    FORMAT_VERSION,
    GenFTAdapterConfig,
    load_genft_adapter,
    load_genft_adapter_config,
    save_genft_adapter,
)

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "AdapterFileError",
    "check_adapter_matches_model",
    "FORMAT_VERSION",
    "GenFTAdapterConfig",
    "load_genft_adapter",
    "load_genft_adapter_config",
    "save_genft_adapter",
]

from genft_tune.checkpointing._merge import (  # noqa: E402
    DTYPES,
    find_base_checkpoint,
    merge_adapter_checkpoint,
    parse_size,
)
from genft_tune.checkpointing._verify import verify_merge  # noqa: E402

__all__ += ["DTYPES", "find_base_checkpoint", "merge_adapter_checkpoint", "parse_size", "verify_merge"]

from genft_tune.checkpointing._authors import import_authors_adapter, read_authors_adapter  # noqa: E402

__all__ += ["import_authors_adapter", "read_authors_adapter"]

from genft_tune.checkpointing._peft_format import (  # noqa: E402
    export_peft_adapter,
    import_peft_adapter,
    load_any_adapter,
    PEFT_SUBDIR,
    PeftFormatError,
)

__all__ += ["export_peft_adapter", "import_peft_adapter", "load_any_adapter", "PEFT_SUBDIR", "PeftFormatError"]

from genft_tune.checkpointing._hf_checkpointer import finalize_merged_folder, HFCheckpointer  # noqa: E402

__all__ += ["finalize_merged_folder", "HFCheckpointer"]

# Method-neutral names (the files serve every adapter method; the genft_* names stay valid).
AdapterFileConfig = GenFTAdapterConfig
save_adapter = save_genft_adapter
load_adapter = load_genft_adapter
load_adapter_config = load_genft_adapter_config

__all__ += ["AdapterFileConfig", "load_adapter", "load_adapter_config", "save_adapter"]
