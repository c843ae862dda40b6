"""GenFT adapter files: ``genft_adapter.safetensors`` + ``genft_config.json``.

The safetensors file holds the adapter's tensors under the model's state-dict keys
(torchtune naming): each shared generator once (``genft_generators.2048x2048.P1``)
and every target's specific factors (``layers.0.attn.q_proj.A1``). The json records
every hyperparameter, the targets, the shape of every target's ``W0`` and of every
tensor, the base model, the package version and the format version, plus a sha256
of the tensor file so that a json and a tensor file from two different saves are
never taken for a pair.

WeGeFT adapters (:mod:`genft_tune.modules.wegeft`) use the same pair of files with
``"method": "wegeft"``.
"""

import hashlib
import json
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import genft_tune
from genft_tune._file_names import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from genft_tune._fs import write_pair_atomically
from genft_tune.modules import adapter_kinds, get_adapter_kind
from genft_tune.modules._method import adapter_kind_for_config, is_adapter_key

FORMAT_NAME = "genft-adapter"
FORMAT_VERSION = 1
# The weight layout an adapter was trained on: torchtune's (our recipes), or Hugging
# Face's (adapters imported from the authors' PEFT code, where q_proj/k_proj rows are
# in HF's RoPE order). Absent from the json means "torchtune".
WEIGHT_LAYOUTS = ("torchtune", "hf")

PathLike = Union[str, os.PathLike]
Shape = Tuple[int, ...]

_REQUIRED_FIELDS = (
    "format",
    "format_version",
    "method",
    "target_modules",
    "target_shapes",
    "tensor_shapes",
)


class AdapterFileError(ValueError):
    """An adapter directory is missing a file, or its files are corrupt or disagree."""


class AdapterFileConfig(dict):
    """The content of ``genft_config.json``: a plain ``dict`` (json keys) with typed
    accessors.

    Keys: ``format``, ``format_version``, ``method`` (``genft`` or ``wegeft``),
    ``genft_config`` or ``wegeft_config`` (every field of the method's config),
    ``target_modules`` (list of qualified names, torchtune naming), ``target_keys``
    (WeGeFT only: shared-factor key per target), ``target_shapes`` (``{name: [out, in]}``),
    ``tensor_shapes``, ``tensor_dtypes``, ``base_model``, ``genft_tune_version``,
    ``weights_sha256``, ``extra`` and (optional) ``modules_to_save``.
    """

    @property
    def method(self) -> str:
        return self["method"]

    @property
    def config(self) -> Any:
        """The adapter's hyperparameters as its method's config (``GenFTConfig``, ...)."""
        cls = get_adapter_kind(self.method).config_cls
        raw = self[f"{self.method}_config"]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @property
    def target_modules(self):
        """Names of the adapted linears, as the method's merge takes them (for WeGeFT a
        ``{name: shared key}`` mapping)."""
        return get_adapter_kind(self.method).targets_from_file(self)

    @property
    def target_shapes(self) -> Dict[str, Optional[Shape]]:
        return {k: (tuple(v) if v is not None else None) for k, v in self["target_shapes"].items()}

    @property
    def base_model(self) -> Optional[str]:
        return self.get("base_model")

    @property
    def weight_layout(self) -> str:
        """``torchtune`` (trained by our recipes) or ``hf`` (imported from the authors'
        code: merge applies it to the Hugging Face tensors as they are)."""
        return self.get("weight_layout", "torchtune")


_INT_LIST = re.compile(r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]")


def _dump_json(obj: Any) -> str:
    """Indented json with lists of ints (shapes) kept on one line."""
    text = json.dumps(obj, indent=2)
    return _INT_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_file_pair(
    output_dir: PathLike,
    *,
    tensors: Mapping[str, torch.Tensor],
    tensor_metadata: Dict[str, str],
    weights_name: str,
    config_name: str,
    config_text: Callable[[Path], str],
) -> None:
    """Write a safetensors file and the json that describes it, atomically as a pair.

    :func:`genft_tune._fs.write_pair_atomically`: an interrupted save never leaves a
    complete-looking pair (an existing json is removed first, the new one renamed last).

    Args:
        output_dir (PathLike): the directory.
        tensors (Mapping[str, torch.Tensor]): contiguous CPU tensors.
        tensor_metadata (Dict[str, str]): the safetensors header's metadata.
        weights_name (str): file name of the tensors.
        config_name (str): file name of the json.
        config_text (Callable[[Path], str]): the json's text, given the written
            (temporary) tensor file (e.g. to record its sha256).
    """
    write_pair_atomically(
        output_dir,
        data_name=weights_name,
        write_data=lambda tmp: save_file(dict(tensors), tmp, metadata=tensor_metadata),
        meta_name=config_name,
        meta_text=config_text,
    )


def save_adapter(
    output_dir: PathLike,
    *,
    adapter_state_dict: Mapping[str, torch.Tensor],
    config: Any,
    target_modules: Union[Sequence[str], Mapping[str, Optional[str]]],
    base_model: Optional[str] = None,
    extra: Optional[Dict[str, Any]] = None,
    target_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    modules_to_save: Optional[Mapping[str, torch.Tensor]] = None,
    weight_layout: str = "torchtune",
) -> Path:
    """Save an adapter as ``genft_adapter.safetensors`` + ``genft_config.json``.

    Both files are written under temporary names in ``output_dir``, fsynced, and
    renamed: an existing ``genft_config.json`` is removed first and the new one is
    renamed last, so an interrupted save never leaves a complete-looking pair (and a
    json never names a tensor file other than its own: it records its sha256).

    Args:
        output_dir (PathLike): directory to write into (created if needed).
        adapter_state_dict (Mapping[str, torch.Tensor]): the adapter's tensors under
            the model's state-dict keys; non-adapter keys are rejected.
        config (Any): the adapter's hyperparameters (``GenFTConfig``, ``WeGeFTConfig``); its
            type sets the ``method`` field (``genft`` / ``wegeft``).
        target_modules (Union[Sequence[str], Mapping[str, Optional[str]]]): qualified
            names of the adapted linears (torchtune naming); for WeGeFT also the
            ``{name: shared key}`` mapping of :func:`get_wegeft_target_modules`.
        base_model (Optional[str]): id or path of the base model.
        extra (Optional[Dict[str, Any]]): json-serializable extra information.
        target_shapes (Optional[Mapping[str, Sequence[int]]]): ``(out, in)`` of each
            target's ``W0``; inferred from the adapter's tensors when not given
            (``None`` in the json where that is ambiguous).
        modules_to_save (Optional[Mapping[str, torch.Tensor]]): full tensors of
            trained non-adapter modules (a new classifier ``head.weight``...), saved
            in the same file and listed under ``modules_to_save`` in the json; a merge
            replaces (or adds) them in the base.
        weight_layout (str): ``torchtune`` (default) or ``hf`` for an adapter trained
            on Hugging Face's weight layout (see :data:`WEIGHT_LAYOUTS`).

    Returns:
        Path: ``output_dir``.

    Raises:
        TypeError: if ``config`` is no registered adapter method's config.
        ValueError: if the state dict is empty or holds a non-adapter key.
    """
    kind = adapter_kind_for_config(config)
    method = kind.name
    if weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"weight_layout must be one of {list(WEIGHT_LAYOUTS)}, got {weight_layout!r}")
    output_dir = Path(output_dir)
    is_key = kind.is_key
    if not adapter_state_dict:
        raise ValueError("adapter_state_dict is empty: nothing to save")
    bad = [k for k in adapter_state_dict if not is_key(k)]
    if bad:
        raise ValueError(f"adapter_state_dict holds non-{method} keys, e.g. {bad[:3]}")
    if isinstance(target_modules, Mapping):
        targets = list(target_modules)
        target_keys = dict(target_modules)
    else:
        targets = list(target_modules)
        target_keys = None
    if not targets:
        raise ValueError("target_modules is empty")

    extra_tensors = dict(modules_to_save or {})
    clash = sorted(set(extra_tensors) & set(adapter_state_dict))
    if clash:
        raise ValueError(f"modules_to_save repeats adapter keys {clash[:3]}")
    adapter_like = [k for k in extra_tensors if is_adapter_key(k)]
    if adapter_like:
        raise ValueError(f"modules_to_save holds adapter keys {adapter_like[:3]}: pass them in adapter_state_dict")
    # copies: safetensors refuses tensors that share memory (tied factors, e.g. the
    # authors' q/v-shared A, B of a ViT block)
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in sorted({**adapter_state_dict, **extra_tensors}.items())
    }
    if target_shapes is not None:
        missing = [t for t in targets if t not in target_shapes]
        if missing:
            raise ValueError(f"target_shapes has no entry for targets {missing[:3]}")
        shapes = {t: [int(d) for d in target_shapes[t]] for t in targets}
    else:
        inferred = kind.target_shapes(tensors, targets, config)
        shapes = {t: (list(s) if s else None) for t, s in inferred.items()}

    meta: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "method": method,
        f"{method}_config": config.to_dict(),
        "target_modules": targets,
        "target_shapes": shapes,
        "tensor_shapes": {k: list(v.shape) for k, v in tensors.items()},
        "tensor_dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()},
        "base_model": base_model,
        "genft_tune_version": genft_tune.__version__,
        "extra": extra or {},
    }
    if target_keys is not None:
        meta["target_keys"] = target_keys
    if weight_layout != "torchtune":  # files of our own recipes stay as they were
        meta["weight_layout"] = weight_layout
    if extra_tensors:
        meta["modules_to_save"] = sorted(extra_tensors)

    def config_text(weights: Path) -> str:
        meta["weights_sha256"] = _sha256(weights)
        return _dump_json(meta)

    write_file_pair(
        output_dir,
        tensors=tensors,
        tensor_metadata={"format": "pt", "method": method},
        weights_name=ADAPTER_WEIGHTS_FILE,
        config_name=ADAPTER_CONFIG_FILE,
        config_text=config_text,
    )
    return output_dir


def _adapter_dir(path: PathLike) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE):
        return path.parent
    return path


def load_adapter_config(path: PathLike) -> AdapterFileConfig:
    """Read and validate ``genft_config.json`` of an adapter directory (no tensors).

    Raises:
        FileNotFoundError: if the directory or the json file does not exist.
        AdapterFileError: if the json is not valid or misses a field.
    """
    directory = _adapter_dir(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {directory} does not exist")
    config_path = directory / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: {directory} is not a complete GenFT adapter "
            f"(expected {ADAPTER_WEIGHTS_FILE} and {ADAPTER_CONFIG_FILE})"
        )
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{config_path} is not valid json: {e}") from e
    if not isinstance(raw, dict):
        raise AdapterFileError(f"{config_path} must hold a json object")
    missing = [f for f in _REQUIRED_FIELDS if f not in raw]
    if missing:
        raise AdapterFileError(f"{config_path} misses the field(s) {missing}")
    if raw["format"] != FORMAT_NAME:
        raise AdapterFileError(f"{config_path}: format must be {FORMAT_NAME!r}, got {raw['format']!r}")
    if not isinstance(raw["format_version"], int) or raw["format_version"] > FORMAT_VERSION:
        raise AdapterFileError(
            f"{config_path}: format_version {raw['format_version']!r} is not supported "
            f"(this genft_tune {genft_tune.__version__} reads up to {FORMAT_VERSION})"
        )
    methods = [k.name for k in adapter_kinds()]
    if raw["method"] not in methods:
        raise AdapterFileError(f"{config_path}: method must be one of {methods}, got {raw['method']!r}")
    if f"{raw['method']}_config" not in raw:
        raise AdapterFileError(f"{config_path} misses the field {raw['method']}_config")
    cfg = AdapterFileConfig(raw)
    try:
        cfg.config
    except (TypeError, ValueError) as e:
        raise AdapterFileError(f"{config_path}: invalid {cfg.method}_config: {e}") from e
    return cfg


def load_adapter(path: PathLike) -> Tuple[Dict[str, torch.Tensor], AdapterFileConfig]:
    """Load an adapter saved by :func:`save_adapter`.

    Args:
        path (PathLike): the adapter directory (or one of its two files).

    Returns:
        Tuple[Dict[str, torch.Tensor], AdapterFileConfig]: the tensors (model
        state-dict keys, ready for ``model.load_state_dict(..., strict=False)``) and
        the json's content.

    Raises:
        FileNotFoundError: if a file is missing.
        AdapterFileError: if the safetensors file is corrupt (the message names it),
            the json misses a field, or tensors disagree with the recorded shapes.
    """
    cfg = load_adapter_config(path)
    directory = _adapter_dir(path)
    weights_path = directory / ADAPTER_WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found: {directory} is not a complete GenFT adapter")
    expected_sha = cfg.get("weights_sha256")
    if expected_sha is not None and _sha256(weights_path) != expected_sha:
        raise AdapterFileError(
            f"{weights_path} does not match {directory / ADAPTER_CONFIG_FILE} (sha256 differs): "
            "the file is corrupt or the pair comes from two different saves"
        )
    try:
        state_dict = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterFileError(f"{weights_path} is not a valid safetensors file: {e}") from e
    recorded = cfg["tensor_shapes"]
    missing = sorted(set(recorded) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(recorded))
    if missing or unexpected:
        raise AdapterFileError(
            f"{weights_path} disagrees with {ADAPTER_CONFIG_FILE}: missing tensors {missing[:5]}, "
            f"unrecorded tensors {unexpected[:5]}"
        )
    for key, tensor in state_dict.items():
        if list(tensor.shape) != list(recorded[key]):
            raise AdapterFileError(
                f"{weights_path}: tensor {key} has shape {list(tensor.shape)}, "
                f"{ADAPTER_CONFIG_FILE} records {list(recorded[key])}"
            )
    return state_dict, cfg


def _shape_of(value: Any) -> Optional[Shape]:
    if value is None:
        return None
    if hasattr(value, "shape"):
        return tuple(int(d) for d in value.shape)
    return tuple(int(d) for d in value)


def check_adapter_matches_model(
    adapter_config: Mapping[str, Any],
    model: Union[nn.Module, Mapping[str, Any]],
    *,
    key_map: Optional[Any] = None,
) -> None:
    """Check that an adapter fits a base model before it is loaded or merged.

    Every target must exist in the model with a weight of the recorded ``(out, in)``
    shape (for GenFT, also the shape of a shared generator the adapter holds).

    Args:
        adapter_config (Mapping[str, Any]): the json of the adapter
            (:func:`load_adapter_config`).
        model (Union[nn.Module, Mapping[str, Any]]): a model, or a base state dict
            (tensors, or shapes: ``{key: (out, in)}``), torchtune naming unless
            ``key_map`` is given.
        key_map (Optional[Callable[[str], str]]): maps a torchtune weight key
            (``layers.0.attn.q_proj.weight``) to the key used by ``model``.

    Raises:
        ValueError: naming the target and the shapes when the adapter does not fit.
    """
    cfg = adapter_config if isinstance(adapter_config, AdapterFileConfig) else AdapterFileConfig(adapter_config)
    if isinstance(model, nn.Module):
        sd: Mapping[str, Any] = dict(model.state_dict(keep_vars=True))
    else:
        sd = model
    kind = get_adapter_kind(cfg["method"])
    problems = []
    for name, shape in cfg.target_shapes.items():
        key = f"{name}.weight"
        if key_map is not None:
            key = key_map(key)
        if key not in sd:
            problems.append(f"target {name!r}: the base model has no weight {key!r}")
            continue
        found = _shape_of(sd[key])
        if shape is not None and found != tuple(shape):
            problems.append(
                f"target {name!r}: the base weight {key!r} has shape {list(found)}, "
                f"the adapter was trained on shape {list(shape)}"
            )
        elif (why := kind.shape_problem(cfg["tensor_shapes"], found)) is not None:
            problems.append(f"target {name!r}: the base weight {key!r} has shape {list(found)}, but the {why}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            "the adapter does not fit this base model: " + "; ".join(problems[:5]) + more
        )


__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "AdapterFileError",
    "FORMAT_VERSION",
    "AdapterFileConfig",
    "check_adapter_matches_model",
    "load_adapter",
    "load_adapter_config",
    "save_adapter",
]
