"""Adapter files and checkpoints: our adapter pair (``genft_adapter.safetensors`` +
``genft_config.json``), Hugging Face PEFT's pair both ways, the GenFT authors' format,
merging adapters into base checkpoints (and ``--verify``), LoRA export, and
torchtune's HF checkpointer for the families it lacks.

Inside, imports run one way: ``_base_checkpoint`` (a base checkpoint's files, through
:mod:`genft_tune._weights`, and its family's key converter) and ``_adapter`` (our pair) at
the bottom; ``_authors`` (the authors' format) on ``_adapter``; ``_peft_format`` (PEFT's
pair) on all three; ``_read_adapter`` (``read_adapter``: any folder, in our layout) on
those; ``_merge``, ``_verify`` and ``_lora_export`` on it; ``_peft_lora`` (a genuine PEFT
LoRA) on ``_lora_export`` and ``_peft_format``; ``_hf_checkpointer`` on top. Model cards
come from :mod:`genft_tune.cards`, below this package; :mod:`genft_tune.hub` is above.
"""

from genft_tune.checkpointing._adapter import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    AdapterFileError,
    AdapterFileConfig,
    load_adapter,
    load_adapter_config,
    save_adapter,
)
from genft_tune.checkpointing._authors import import_authors_adapter
from genft_tune.checkpointing._hf_checkpointer import finalize_merged_folder, HFCheckpointer
from genft_tune.checkpointing._merge import DTYPES, merge_adapter_checkpoint, parse_size
from genft_tune.checkpointing._peft_format import (
    export_peft_adapter,
    import_peft_adapter,
    PEFT_SUBDIR,
    PeftFormatError,
)
from genft_tune.checkpointing._peft_lora import save_peft_lora
from genft_tune.checkpointing._read_adapter import read_adapter
from genft_tune.checkpointing._verify import verify_merge

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "AdapterFileConfig",
    "AdapterFileError",
    "DTYPES",
    "export_peft_adapter",
    "finalize_merged_folder",
    "HFCheckpointer",
    "import_authors_adapter",
    "import_peft_adapter",
    "load_adapter",
    "load_adapter_config",
    "merge_adapter_checkpoint",
    "parse_size",
    "PEFT_SUBDIR",
    "PeftFormatError",
    "read_adapter",
    "save_adapter",
    "save_peft_lora",
    "verify_merge",
]
