"""Reading ViT checkpoints from disk and writing them atomically (temp name, then rename)."""

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from genft_tune._fs import write_atomically
from genft_tune.modules._base import dequantized

PathLike = Union[str, Path]

_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _unwrap(obj: Any, path: Path) -> Dict[str, torch.Tensor]:
    """Checkpoints saved by training scripts nest the weights under ``model`` or
    ``state_dict``; return the tensor dict."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            for key in ("model", "state_dict", "module"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
            else:
                break
    raise ValueError(f"{path} does not hold a state dict of tensors")


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a state dict from a file or a checkpoint directory.

    Files: ``.safetensors``, or ``.bin``/``.pt``/``.pth``/``.ckpt`` (loaded with
    ``weights_only=True``; weights nested under ``model``/``state_dict`` are
    unwrapped). Directories: ``model.safetensors``, a sharded
    ``model.safetensors.index.json``, ``pytorch_model.bin``, or their only
    ``.safetensors`` file.

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
        index = path / "model.safetensors.index.json"
        if (path / "model.safetensors").is_file():
            return load_file(str(path / "model.safetensors"))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state_dict = {}
            for shard in shards:
                state_dict.update(load_file(str(path / shard)))
            return state_dict
        if (path / "pytorch_model.bin").is_file():
            return read_state_dict(path / "pytorch_model.bin")
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            return load_file(str(candidates[0]))
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected model.safetensors, model.safetensors.index.json, "
            f"pytorch_model.bin or a single .safetensors file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in _TORCH_SUFFIXES:
        return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    raise ValueError(
        f"unsupported checkpoint format {path.suffix!r} ({path}); use .safetensors or one of "
        f"{list(_TORCH_SUFFIXES)} (JAX .npz ViT checkpoints: convert them with timm first)"
    )


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
