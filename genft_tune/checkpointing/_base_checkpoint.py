"""Reading a base checkpoint directory: its weight files (read by
:mod:`genft_tune._weights`), its ``config.json`` and the model family's key converter
between its layout and torchtune's.

The bottom of :mod:`genft_tune.checkpointing`: merge, verify, PEFT export and LoRA export
all read bases through this module; it imports none of them.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torchtune.models import convert_weights

from genft_tune._weights import (
    is_hf_layout,
    iter_tensors,
    SAFETENSORS_INDEX_FILE,
    tensor_shapes,
    TORCH_BIN_FILE,
    TORCH_BIN_INDEX_FILE,
    weight_files,
)
from genft_tune.models._families import Family, get_family

PathLike = Union[str, os.PathLike]
StateDictFn = Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]


@dataclass
class KeyConverter:
    """Per-tensor conversion between a checkpoint's layout and torchtune's.

    Both functions take and return state dicts and must work key by key (a dict
    with one entry gives a dict with one entry), as torchtune's converters do.
    """

    name: str
    to_tune: StateDictFn
    from_tune: StateDictFn
    # the Hugging Face model's module of a torchtune module, for a family whose module
    # names differ from its checkpoint keys (transformers 5's ViT); None: the same
    module_name: Optional[Callable[[str], Optional[str]]] = None
    # the model family (None for torchtune/Meta .pt checkpoints)
    family: Optional[Family] = None

    def tune_shapes(self, key: str, shape) -> Dict[str, Tuple[int, ...]]:
        """``{torchtune key: shape}`` of the tensor ``key`` (several for a fused tensor
        such as Phi-3's ``qkv_proj``; empty when the converter drops or does not know
        it), computed on a meta tensor of ``shape``."""
        try:
            out = self.to_tune({key: torch.empty(tuple(shape), device="meta")})
        except Exception:  # unknown to this family's mapping: copied untouched
            return {}
        return {k: tuple(v.shape) for k, v in out.items()}


def hf_converter(config: Dict[str, Any]) -> KeyConverter:
    """The key converter of the model family named by a Hugging Face ``config.json``.

    Raises:
        ValueError: for a model type no family converts.
    """
    family = get_family(config)
    return KeyConverter(
        family.name,
        lambda sd: family.to_tune(sd, config),
        lambda sd: family.from_tune(sd, config),
        family.module_name,
        family,
    )


def torch_converter(keys: List[str]) -> KeyConverter:
    """The converter of a torchtune/Meta ``.pt``/``.pth`` checkpoint with these keys."""
    if any(".attention.wq." in k for k in keys):
        return KeyConverter("meta", convert_weights.meta_to_tune, convert_weights.tune_to_meta)
    return KeyConverter("torchtune", dict, dict)  # already torchtune's layout


@dataclass
class BaseCheckpoint:
    """The weight files of a base checkpoint directory."""

    format: str  # "hf" (Hugging Face's layout: safetensors or pytorch_model*.bin) or "torch" (.pt/.pth...)
    files: List[Path]
    config: Optional[Dict[str, Any]]

    def iter_file(self, path: Path, lazy: bool = False) -> Iterator[Tuple[str, Any]]:
        """``(key, tensor)`` of one file, one tensor in memory at a time (safetensors)
        or memory-mapped (torch); ``lazy`` yields safetensors slices instead."""
        return iter_tensors(path, lazy=lazy)

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """``{key: shape}`` of every tensor, read from the headers (safetensors) or
        memory-mapped (torch)."""
        return tensor_shapes(self.files)


def find_base_checkpoint(base_dir: PathLike) -> BaseCheckpoint:
    """Detect the format and weight files of a base checkpoint directory
    (:func:`genft_tune._weights.weight_files`): Hugging Face's layout for safetensors and
    ``pytorch_model.bin`` (or its index's shards), torchtune's or Meta's for other torch files.

    Raises:
        FileNotFoundError: if the directory has no supported weight files.
    """
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        what = "is a file, not a folder" if base_dir.exists() else "does not exist"
        raise FileNotFoundError(f"base checkpoint directory {base_dir} {what}")
    config_path = base_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    files = weight_files(base_dir)
    if not files:
        raise FileNotFoundError(
            f"no base weights in {base_dir}: expected {SAFETENSORS_INDEX_FILE}, *.safetensors, {TORCH_BIN_FILE}, "
            f"{TORCH_BIN_INDEX_FILE}, or a .pt / .pth / .ckpt / .bin file (consolidated.00.pth)"
        )
    return BaseCheckpoint("hf" if is_hf_layout(base_dir, files) else "torch", files, config)


def base_layout(source: BaseCheckpoint, base_dir: Path):
    """``(converter, {key: shape}, {key: {torchtune key: shape}})`` of a base checkpoint,
    read from its headers (safetensors) or memory-mapped (torch)."""
    shapes = source.shapes()
    if source.format == "hf":
        if source.config is None:
            raise FileNotFoundError(f"{base_dir / 'config.json'} not found: needed to map the weights")
        converter = hf_converter(source.config)
    else:
        converter = torch_converter(list(shapes))
    return converter, shapes, {k: converter.tune_shapes(k, s) for k, s in shapes.items()}


__all__ = [
    "base_layout",
    "BaseCheckpoint",
    "find_base_checkpoint",
    "hf_converter",
    "KeyConverter",
    "torch_converter",
]
