"""Reading ViT checkpoints from disk and writing them atomically (temp name, then rename)."""

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from safetensors.torch import save_file

from genft_tune._fs import write_atomically
from genft_tune._weights import read_tensors, weight_files, WEIGHT_SUFFIXES
from genft_tune.modules._base import dequantized

PathLike = Union[str, Path]


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from a file or a checkpoint directory
    (:mod:`genft_tune._weights`, the reader of every weight file).

    Files: ``.safetensors``, or ``.bin``/``.pt``/``.pth``/``.ckpt`` (loaded with
    ``weights_only=True``; weights nested under ``model``/``state_dict``/``module`` are
    unwrapped). Directories: ``model.safetensors``, a sharded
    ``model.safetensors.index.json``, their other ``.safetensors`` files,
    ``pytorch_model.bin``, or their torch files.

    Args:
        path (PathLike): file or directory.

    Returns:
        Dict[str, torch.Tensor]: the tensors, on CPU.

    Raises:
        FileNotFoundError: if nothing loadable is found.
        ValueError: for an unsupported format (e.g. a JAX ``.npz``).
    """
    path = Path(path)
    if path.is_dir():
        files = weight_files(path)
        if not files:
            raise FileNotFoundError(
                f"no checkpoint in {path}: expected model.safetensors, model.safetensors.index.json, "
                f"pytorch_model.bin or a .safetensors / .pt / .pth / .ckpt file"
            )
        return read_tensors(files)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"unsupported checkpoint format {path.suffix!r} ({path}); use one of "
            f"{list(WEIGHT_SUFFIXES)} (JAX .npz ViT checkpoints: convert them with timm first)"
        )
    return read_tensors([path])


def save_safetensors(
    state_dict: Dict[str, torch.Tensor], path: PathLike, *, metadata: Optional[Dict[str, str]] = None
) -> None:
    """Write tensors to ``path`` atomically (contiguous CPU copies; NF4 dequantised)."""
    tensors = {key: dequantized(value.detach()).cpu().contiguous().clone() for key, value in state_dict.items()}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


def save_json(obj: Any, path: PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    write_atomically(path, write)
