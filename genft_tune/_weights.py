"""Weight files on disk: which ones a checkpoint folder has, their tensors one file at a
time, their shapes from the headers, and the state dict inside a training script's
``torch.save``. The one reader of weight files: base checkpoints (merge, verify, exports),
ViT checkpoints and the recipes' pre-flight all read through it. It knows file formats
only; which model family the keys belong to is decided above it
(:mod:`genft_tune.checkpointing._base_checkpoint`).

The files of a folder, first match wins (transformers' order, safetensors before pickles):
``model.safetensors``; the shards ``model.safetensors.index.json`` names; every other
``*.safetensors`` (shards without an index); ``pytorch_model.bin``; every ``.pt`` /
``.pth`` / ``.ckpt`` / ``.bin`` file (``consolidated.00.pth``, a training script's save).
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Tuple, Union

import torch
from safetensors import safe_open

PathLike = Union[str, os.PathLike]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_BIN_FILE = "pytorch_model.bin"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
# where training scripts nest the weights in what they torch.save
_WRAPPERS = ("model", "state_dict", "module")


def weight_files(folder: PathLike) -> List[Path]:
    """The weight files of a checkpoint folder (see the module docstring); empty when it
    has none.

    Raises:
        FileNotFoundError: if ``model.safetensors.index.json`` names a missing shard.
    """
    folder = Path(folder)
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE]
    index = folder / SAFETENSORS_INDEX_FILE
    if index.is_file():
        files = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names missing shard(s) {missing[:3]}")
        return files
    safetensors_files = sorted(folder.glob("*.safetensors"))
    if safetensors_files:
        return safetensors_files
    if (folder / TORCH_BIN_FILE).is_file():
        return [folder / TORCH_BIN_FILE]
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in TORCH_SUFFIXES)


def is_safetensors(path: PathLike) -> bool:
    return Path(path).suffix == ".safetensors"


def unwrap_state_dict(obj: Any, path: PathLike) -> Dict[str, torch.Tensor]:
    """The tensor dict of what ``torch.load`` gave: training scripts nest the weights under
    ``model``, ``state_dict`` or ``module`` (up to three deep), next to other entries.

    Raises:
        ValueError: if no dict of tensors is found.
    """
    for _ in range(4):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    raise ValueError(f"{path} does not hold a state dict of tensors")


def load_torch_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """The state dict of a ``.pt``/``.pth``/``.bin``/``.ckpt`` file (``weights_only``;
    memory-mapped where the file's format allows), unwrapped."""
    try:
        obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # files saved without the zip format cannot be memory-mapped
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return unwrap_state_dict(obj, path)


def iter_tensors(path: PathLike, *, lazy: bool = False) -> Iterator[Tuple[str, Any]]:
    """``(key, tensor)`` of one weight file: one tensor in memory at a time (safetensors)
    or memory-mapped (torch); ``lazy`` yields safetensors slices (shape without data).

    Raises:
        ValueError: for a file that cannot be read, or of another format.
    """
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"unsupported weight file format {path.suffix!r} ({path}); use one of {list(WEIGHT_SUFFIXES)}")
    try:
        if is_safetensors(path):
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key, (f.get_slice(key) if lazy else f.get_tensor(key))
            return
        sd = load_torch_file(path)
    except Exception as e:
        if isinstance(e, (KeyboardInterrupt, GeneratorExit)):
            raise
        raise ValueError(f"cannot read weight file {path}: {e}") from e
    yield from sd.items()


def slice_shape(value: Any) -> Tuple[int, ...]:
    """The shape of a tensor or of a lazy safetensors slice."""
    return tuple(value.get_shape()) if hasattr(value, "get_shape") else tuple(value.shape)


def tensor_shapes(files: Iterable[PathLike]) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of every tensor of the files, from the headers (safetensors) or
    memory-mapped (torch)."""
    return {k: slice_shape(v) for path in files for k, v in iter_tensors(path, lazy=True)}


def read_tensors(files: Iterable[PathLike]) -> Dict[str, torch.Tensor]:
    """Every tensor of the files, on CPU."""
    return {k: v for path in files for k, v in iter_tensors(path)}


__all__ = [
    "is_safetensors",
    "iter_tensors",
    "load_torch_file",
    "read_tensors",
    "SAFETENSORS_FILE",
    "SAFETENSORS_INDEX_FILE",
    "slice_shape",
    "tensor_shapes",
    "TORCH_BIN_FILE",
    "TORCH_SUFFIXES",
    "unwrap_state_dict",
    "weight_files",
    "WEIGHT_SUFFIXES",
]
