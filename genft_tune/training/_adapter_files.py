"""The recipes' adapter checkpoint: our pair (``genft_adapter.safetensors`` +
``genft_config.json``) and, where the base is a Hugging Face checkpoint that PEFT's
format can describe, PEFT's pair (``adapter_config.json`` + ``adapter_model.safetensors``,
``base_model_name_or_path`` the base's Hub id when known) in the ``peft/`` subfolder,
as torchtune writes one for LoRA (a subfolder, so that transformers still loads merged
weights in the same folder as a plain model)."""

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from genft_tune.checkpointing import save_adapter
from genft_tune.checkpointing._peft_format import write_peft_files
from genft_tune.cards._base import base_hub_id
from genft_tune.training._model_adapter import ModelAdapter

PathLike = Union[str, os.PathLike]


def checkpoint_dir_of(checkpointer: Any) -> Optional[Path]:
    """The base checkpoint directory a torchtune checkpointer reads (None if unknown)."""
    path = getattr(checkpointer, "_checkpoint_dir", None)
    return Path(path) if path else None


def save_adapter_files(
    adapter_dir: PathLike,
    *,
    adapter: ModelAdapter,
    adapter_state_dict: Mapping[str, torch.Tensor],
    base_dir: Optional[PathLike],
    extra: Optional[Dict[str, Any]] = None,
    modules_to_save: Optional[Mapping[str, torch.Tensor]] = None,
) -> None:
    """Write a recipe's adapter checkpoint into ``adapter_dir`` (see the module docstring).

    Args:
        adapter_dir (PathLike): the checkpoint folder (``epoch_0``, ``step_100``).
        adapter (ModelAdapter): the model's adapter.
        adapter_state_dict (Mapping[str, torch.Tensor]): its tensors (torchtune naming).
        base_dir (Optional[PathLike]): the base checkpoint directory.
        extra (Optional[Dict[str, Any]]): more json-serializable information.
        modules_to_save (Optional[Mapping[str, torch.Tensor]]): trained non-adapter tensors.
    """
    hub_id = base_hub_id(base_dir)
    base = hub_id or (str(base_dir) if base_dir else None)
    save_adapter(
        adapter_dir,
        adapter_state_dict=adapter_state_dict,
        config=adapter.config,
        target_modules=adapter.target_modules,
        target_shapes=adapter.target_shapes or None,
        base_model=base,
        extra={**(extra or {}), **({"base_model_path": str(base_dir)} if base_dir else {})},
        modules_to_save=modules_to_save,
    )
    write_peft_files(adapter_dir, base_dir=base_dir, base_model_name_or_path=base)


__all__ = ["checkpoint_dir_of", "save_adapter_files"]
