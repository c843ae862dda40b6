"""Weight files on disk: which ones a checkpoint folder has, their tensors one file at a
time, their shapes from the headers, and the state dict inside a training script's
``torch.save``. The one reader of weight files: base checkpoints (merge, verify, exports),
ViT checkpoints and the recipes' pre-flight all read through it. It knows file formats
only; which model family the keys belong to is decided above it
(:mod:`genft_tune.checkpointing._base_checkpoint`).

The files of a folder, first match wins (transformers' order, safetensors before pickles):
``model.safetensors``; the shards ``model.safetensors.index.json`` names; every other
``*.safetensors`` (shards without an index: their keys must not repeat);
``pytorch_model.bin``; the shards ``pytorch_model.bin.index.json`` names (all of these
are Hugging Face's layout, :func:`is_hf_layout`); every other ``.pt`` / ``.pth`` /
``.ckpt`` / ``.bin`` file (``consolidated.00.pth``, a training script's save) but the
trainers' files that hold no weights (``training_args.bin``, ``optimizer.pt``,
``rng_state*.pth``...).
"""

import fnmatch
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple, Union

import torch
from safetensors import safe_open

PathLike = Union[str, os.PathLike]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_BIN_FILE = "pytorch_model.bin"
TORCH_BIN_INDEX_FILE = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
# where training scripts nest the weights in what they torch.save
_WRAPPERS = ("model", "state_dict", "module")
# what Hugging Face's Trainer and torchtune save next to the weights: never weights
_NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "recipe_state.pt")
# a Hugging Face .bin shard, which is read through its index only
_BIN_SHARD = "pytorch_model-*-of-*.bin"


def _indexed_files(index: Path) -> List[Path]:
    """The shards a ``*.index.json`` names.

    Raises:
        FileNotFoundError: if one is missing.
    """
    folder = index.parent
    files = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{index} names missing shard(s) {missing[:3]}")
    return files


def weight_files(folder: PathLike) -> List[Path]:
    """The weight files of a checkpoint folder (see the module docstring); empty when it
    has none.

    Raises:
        FileNotFoundError: if an index names a missing shard, or for Hugging Face ``.bin``
            shards without their ``pytorch_model.bin.index.json``.
    """
    folder = Path(folder)
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE]
    if (folder / SAFETENSORS_INDEX_FILE).is_file():
        return _indexed_files(folder / SAFETENSORS_INDEX_FILE)
    safetensors_files = sorted(folder.glob("*.safetensors"))
    if safetensors_files:
        return safetensors_files
    if (folder / TORCH_BIN_FILE).is_file():
        return [folder / TORCH_BIN_FILE]
    if (folder / TORCH_BIN_INDEX_FILE).is_file():
        return _indexed_files(folder / TORCH_BIN_INDEX_FILE)
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix in TORCH_SUFFIXES and not any(fnmatch.fnmatch(p.name, n) for n in _NOT_WEIGHTS)
    )
    shards = [p.name for p in files if fnmatch.fnmatch(p.name, _BIN_SHARD)]
    if shards:  # read as loose torch files they would be taken for torchtune's layout
        raise FileNotFoundError(f"{folder} has Hugging Face weight shards {shards[:3]} but no {TORCH_BIN_INDEX_FILE}")
    return files


def is_hf_layout(folder: PathLike, files: List[Path]) -> bool:
    """Whether :func:`weight_files` found the folder's weights in Hugging Face's layout
    (safetensors, ``pytorch_model.bin`` or its index's shards) rather than torchtune's or
    Meta's (other torch files)."""
    folder = Path(folder)
    return bool(files) and (
        is_safetensors(files[0]) or files == [folder / TORCH_BIN_FILE] or (folder / TORCH_BIN_INDEX_FILE).is_file()
    )


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
        raise ValueError(f"cannot read weight file {path}: {e}") from e
    yield from sd.items()


def slice_shape(value: Any) -> Tuple[int, ...]:
    """The shape of a tensor or of a lazy safetensors slice."""
    return tuple(value.get_shape()) if hasattr(value, "get_shape") else tuple(value.shape)


def _all_tensors(files: Iterable[PathLike], value: Callable[[Any], Any], *, lazy: bool) -> Dict[str, Any]:
    """``{key: value(tensor)}`` of every tensor of the files.

    Raises:
        ValueError: if two files hold the same key (shards hold disjoint keys; two
            copies of a model would silently give the last one's tensors).
    """
    out: Dict[str, Any] = {}
    first: Dict[str, Path] = {}
    for path in files:
        for key, tensor in iter_tensors(path, lazy=lazy):
            if key in first:
                raise ValueError(
                    f"{Path(path).name} and {first[key].name} both hold {key!r}: the weight files of "
                    f"{Path(path).parent} are not shards of one model; keep one copy, or name the file to read"
                )
            first[key], out[key] = Path(path), value(tensor)
    return out


def tensor_shapes(files: Iterable[PathLike]) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of every tensor of the files, from the headers (safetensors) or
    memory-mapped (torch).

    Raises:
        ValueError: if two files hold the same key.
    """
    return _all_tensors(files, slice_shape, lazy=True)


def read_tensors(files: Iterable[PathLike]) -> Dict[str, torch.Tensor]:
    """Every tensor of the files, on CPU.

    Raises:
        ValueError: if two files hold the same key.
    """
    return _all_tensors(files, lambda t: t, lazy=False)


__all__ = [
    "is_hf_layout",
    "is_safetensors",
    "iter_tensors",
    "load_torch_file",
    "read_tensors",
    "SAFETENSORS_FILE",
    "SAFETENSORS_INDEX_FILE",
    "slice_shape",
    "tensor_shapes",
    "TORCH_BIN_FILE",
    "TORCH_BIN_INDEX_FILE",
    "TORCH_SUFFIXES",
    "unwrap_state_dict",
    "weight_files",
    "WEIGHT_SUFFIXES",
]
