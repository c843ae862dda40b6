"""Merge a saved adapter into a base checkpoint directory, shard by shard.

The adapter's keys are in torchtune naming (``layers.0.attn.q_proj``) and it was
trained in torchtune's weight layout; Hugging Face Llama checkpoints permute the
rows of ``q_proj``/``k_proj`` for their RoPE implementation. Each adapted tensor is
therefore converted to torchtune's layout with the model family's own converter
(torchtune's ``hf_to_tune`` ...), merged there in fp32 from the original ``W0``, and
converted back; every other tensor is copied untouched (or cast, with ``dtype``).

Tensors are read one at a time (safetensors) or memory-mapped (``.pt``/``.pth``) and
written out in shards of at most ``max_shard_size``, so peak memory is about one
output shard plus the adapter. The result is written into ``OUTPUT.tmp-*`` and
renamed at the end: an interrupted merge leaves no complete-looking output.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import save_file

from genft_tune._fs import give_open_mode, new_folder
from genft_tune._weights import SAFETENSORS_INDEX_FILE, TORCH_BIN_INDEX_FILE, WEIGHT_SUFFIXES
from genft_tune.cards._model_card import find_run_files, TRAINING_CONFIG_FILE, TRAINING_LOG_FILE, write_local_card
from genft_tune.checkpointing._adapter import (
    _dump_json,
    ADAPTER_CONFIG_FILE,
    check_adapter_matches_model,
    AdapterFileConfig,
)
from genft_tune.checkpointing._base_checkpoint import (
    base_layout,
    BaseCheckpoint,
    find_base_checkpoint,
    KeyConverter,
)
from genft_tune.checkpointing._read_adapter import read_adapter
from genft_tune.models._families import find_family, same_names
from genft_tune.modules import get_adapter_kind

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "auto": None}


def parse_size(size: Union[str, int]) -> int:
    """``"5GB"``, ``"500MB"``, ``"10KB"``, ``"1GiB"`` or a byte count -> bytes.

    Raises:
        ValueError: if the string is not a size.
    """
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(size).upper())
    if not m:
        raise ValueError(f"max_shard_size must look like 5GB, 500MB or a byte count, got {size!r}")
    unit = m.group(2) or "B"
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0] if unit != "B" else "B"]
    value = int(float(m.group(1)) * base**power)
    if value <= 0:
        raise ValueError(f"max_shard_size must be > 0, got {size!r}")
    return value


def check_adapter_fits_base(adapter_dir: PathLike, base_dir: PathLike) -> None:
    """Refuse an adapter trained on another base (another size or family) before anything
    is written from it.

    Raises:
        ValueError: naming the target and both shapes (:func:`check_adapter_matches_model`).
        FileNotFoundError: for a missing base or adapter file.
    """
    source = find_base_checkpoint(base_dir)
    _, adapter_cfg = read_adapter(adapter_dir, base_dir=base_dir)
    _, _, to_tune = base_layout(source, Path(base_dir))
    check_adapter_matches_model(adapter_cfg, {t: s for parts in to_tune.values() for t, s in parts.items()})


def _merge_one(
    tune_key: str,
    weight: torch.Tensor,
    adapter_sd: Dict[str, torch.Tensor],
    adapter_cfg: AdapterFileConfig,
) -> torch.Tensor:
    target = tune_key[: -len(".weight")]
    sd = dict(adapter_sd)
    sd[tune_key] = weight
    targets = adapter_cfg.target_modules
    one = {target: targets[target]} if isinstance(targets, Mapping) else [target]
    merged = get_adapter_kind(adapter_cfg.method).merge_state_dict(sd, config=adapter_cfg.config, target_modules=one)
    return merged[tune_key]


def merge_base_tensor(
    key: str,
    tensor: torch.Tensor,
    hits: Sequence[str],
    *,
    adapter_sd: Dict[str, torch.Tensor],
    adapter_cfg: AdapterFileConfig,
    converter: KeyConverter,
    out_key: Optional[str] = None,
    back_name: Callable[[str], str] = lambda k: k,
) -> torch.Tensor:
    """``W0 + dW`` for the base checkpoint's tensor ``key``, which holds the adapted
    weights ``hits`` (torchtune keys), merged in the rows the adapter was trained on: the
    tensor's own for an adapter on Hugging Face's layout, else torchtune's (converted
    there and back; a fused tensor has several parts). The one merge of a base tensor:
    :func:`merge_adapter_checkpoint` and the LoRA export's ``dW`` both call it.

    Args:
        key (str): the tensor's key in the base checkpoint.
        tensor (torch.Tensor): its value.
        hits (Sequence[str]): the adapted torchtune keys (``layers.0.attn.q_proj.weight``) in it.
        adapter_sd (Dict[str, torch.Tensor]): the adapter's tensors (torchtune keys).
        adapter_cfg (AdapterFileConfig): the adapter's config.
        converter (KeyConverter): the base's key converter.
        out_key (Optional[str]): the key the converted-back tensor must have (``key``).
        back_name (Callable[[str], str]): renames the converter's output keys.

    Raises:
        RuntimeError: if the key conversion does not give back one tensor named ``out_key``.
    """
    if adapter_cfg.weight_layout == "hf":  # dW was trained on these very rows
        return _merge_one(hits[0], tensor, adapter_sd, adapter_cfg)
    parts = converter.to_tune({key: tensor})
    for tk in hits:
        parts[tk] = _merge_one(tk, parts[tk], adapter_sd, adapter_cfg)
    back = {back_name(k): v for k, v in converter.from_tune(parts).items()}
    out_key = key if out_key is None else out_key
    if list(back) != [out_key]:
        raise RuntimeError(f"key conversion is not invertible: {key} -> {list(parts)} -> {list(back)}")
    return back[out_key]


class _ShardWriter:
    """Writes safetensors shards of at most ``max_bytes`` under temporary names and
    renames them ``model-0000i-of-0000N.safetensors`` once ``N`` is known."""

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.buffer: Dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: List[Tuple[Path, List[str]]] = []
        self.total = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.size + nbytes > self.max_bytes:
            self.flush()
        self.buffer[key] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.out_dir / f".shard-{len(self.files):05d}.tmp"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        give_open_mode(path)
        self.files.append((path, list(self.buffer)))
        self.buffer, self.size = {}, 0

    def finish(self) -> List[str]:
        self.flush()
        n = len(self.files)
        names = []
        weight_map = {}
        for i, (path, keys) in enumerate(self.files):
            name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.out_dir / name)
            names.append(name)
            weight_map.update({k: name for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.out_dir / SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return names


def merge_adapter_checkpoint(
    *,
    base_dir: PathLike,
    adapter_dir: PathLike,
    output_dir: PathLike,
    dtype: str = "auto",
    max_shard_size: Union[str, int] = "5GB",
    overwrite: bool = False,
    _after_shard: Optional[Callable[[int], None]] = None,
) -> Path:
    """Write ``W0 + dW`` for every adapted weight of a base checkpoint, in its format.

    Args:
        base_dir (PathLike): Hugging Face safetensors directory (sharded with
            ``model.safetensors.index.json`` or one file; ``config.json`` with the
            ``model_type`` of a family in ``genft_tune.models._families.FAMILIES``) or a
            torchtune/Meta directory (``consolidated.00.pth`` / ``*.pt``).
        adapter_dir (PathLike): saved by :func:`save_adapter`, or a PEFT GenFT/WeGeFT
            adapter (``adapter_config.json`` + ``adapter_model.safetensors``).
        output_dir (PathLike): the merged checkpoint (must not exist unless ``overwrite``).
        dtype (str): ``auto`` (keep each tensor's dtype), ``bf16``, ``fp16`` or ``fp32``
            (cast every floating tensor; ``config.json``'s ``torch_dtype`` follows).
        max_shard_size (Union[str, int]): largest output shard (safetensors only).
        overwrite (bool): replace an existing ``output_dir``.

    Returns:
        Path: ``output_dir``.

    Raises:
        ValueError: for a bad ``dtype``/size, an unknown model family, or an adapter
            that does not fit the base (naming the target and the shapes).
        FileExistsError: if ``output_dir`` exists and ``overwrite`` is False.
        FileNotFoundError: for a missing base or adapter file.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    cast = DTYPES[dtype]
    max_bytes = parse_size(max_shard_size)
    base_dir, output_dir = Path(base_dir), Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output directory {output_dir} exists (pass overwrite / --overwrite)")
    if output_dir.resolve() == base_dir.resolve():
        raise ValueError("output_dir must differ from base_dir")
    source = find_base_checkpoint(base_dir)
    adapter_sd, adapter_cfg = read_adapter(adapter_dir, base_dir=base_dir)  # ours, or PEFT's

    converter, shapes, to_tune = base_layout(source, base_dir)
    check_adapter_matches_model(adapter_cfg, {t: s for parts in to_tune.values() for t, s in parts.items()})
    hf_layout = adapter_cfg.weight_layout == "hf"
    if hf_layout and source.format != "hf":
        raise ValueError(
            f"the adapter in {adapter_dir} was trained on Hugging Face's weight layout (imported "
            f"from the authors' code); merge it into the Hugging Face checkpoint of its base, "
            f"not into a {converter.name} checkpoint"
        )
    target_keys = {f"{t}.weight" for t in adapter_cfg["target_modules"]}
    # trained non-adapter modules (e.g. a new classifier head) replace or join the base's
    replacements: Dict[str, torch.Tensor] = {}
    for tune_key in adapter_cfg.get("modules_to_save") or []:
        (src_key, value), = converter.from_tune({tune_key: adapter_sd[tune_key]}).items()
        replacements[src_key] = value
    family = find_family(source.config)
    config_updates = family.merged_config(source.config, replacements, adapter_cfg.get("extra") or {}) if family else {}
    out_name, back_name = (converter.family.output_names if converter.family else same_names)(shapes, replacements)
    log.info(
        f"Merging {len(target_keys)} adapted weights ({adapter_cfg.method}) into {base_dir} "
        f"({source.format}, {converter.name} layout, {len(source.files)} file(s))"
    )

    # written under a temporary name, swapped in when complete; what a killed earlier merge
    # into the same output left behind is removed (logged)
    with new_folder(output_dir) as tmp_dir:
        merged_count = 0
        writer = _ShardWriter(tmp_dir, max_bytes) if source.format == "hf" else None
        for i, path in enumerate(source.files):
            out_sd: Dict[str, torch.Tensor] = {}
            for key, tensor in source.iter_file(path):
                hits = [t for t in to_tune.get(key, {}) if t in target_keys]
                if key in replacements:
                    tensor = replacements.pop(key).to(tensor.dtype)
                elif hits:
                    tensor = merge_base_tensor(
                        key, tensor, hits, adapter_sd=adapter_sd, adapter_cfg=adapter_cfg, converter=converter,
                        out_key=out_name(key), back_name=back_name,
                    )
                    merged_count += 1 if hf_layout else len(hits)
                if cast is not None and tensor.is_floating_point():
                    tensor = tensor.to(cast)
                if out_name(key) is None:  # not part of the output model (a ViTModel's pooler)
                    continue
                if writer is not None:
                    writer.add(out_name(key), tensor)
                else:
                    out_sd[out_name(key)] = tensor
            if i == len(source.files) - 1:  # new tensors (a head the base lacks) go last
                for key, tensor in replacements.items():
                    if cast is not None and tensor.is_floating_point():
                        tensor = tensor.to(cast)
                    if writer is not None:
                        writer.add(key, tensor)
                    else:
                        out_sd[key] = tensor
            if writer is None:
                torch.save(out_sd, tmp_dir / path.name)
                del out_sd
            if _after_shard is not None:
                _after_shard(i)
        if merged_count != len(target_keys):
            raise RuntimeError(f"merged {merged_count} weights, expected {len(target_keys)}")
        if writer is not None:
            writer.finish()
        _copy_non_weights(base_dir, tmp_dir, source, cast, config_updates)
        _copy_run_files(Path(adapter_dir), adapter_cfg, tmp_dir)
        _write_card(tmp_dir, base_dir=base_dir, final_path=output_dir)
    log.info(f"Merged checkpoint ({merged_count} weights updated) written to {output_dir}")
    return output_dir


def _copy_non_weights(
    base_dir: Path,
    out_dir: Path,
    source: BaseCheckpoint,
    cast: Optional[torch.dtype],
    config_updates: Optional[Dict[str, Any]] = None,
) -> None:
    """Copy tokenizer, generation config and every other non-weight file; update
    ``config.json``'s ``torch_dtype``. Subdirectories holding weights (e.g. the
    ``original/`` Meta copy of Llama 3 repos) are skipped: they would be unmerged, and so
    is the base's model card (``README.md``): it describes the base (:func:`_write_card`)."""
    weight_names = {p.name for p in source.files} | {SAFETENSORS_INDEX_FILE, TORCH_BIN_INDEX_FILE, "README.md"}
    for path in sorted(base_dir.iterdir()):
        if path.name in weight_names or path.name.startswith("."):
            continue
        if path.is_dir():
            if any(p.suffix in WEIGHT_SUFFIXES for p in path.rglob("*")):
                log.warning(f"Not copying {path}: it holds (unmerged) weights")
                continue
            shutil.copytree(path, out_dir / path.name)
        elif path.suffix in WEIGHT_SUFFIXES:
            log.warning(f"Not copying {path}: an unused weight file")
        elif path.name == "config.json" and (cast is not None or config_updates):
            config = json.loads(path.read_text())
            config.update(config_updates or {})
            if cast is not None:
                config["torch_dtype"] = str(cast).replace("torch.", "")
                if "dtype" in config:
                    config["dtype"] = config["torch_dtype"]
            (out_dir / path.name).write_text(json.dumps(config, indent=2) + "\n")
        else:
            shutil.copy2(path, out_dir / path.name)


def _copy_run_files(adapter_dir: Path, adapter_cfg: AdapterFileConfig, out_dir: Path) -> None:
    """The adapter's ``genft_config.json`` (hyperparameters, for the model card), the
    training run's config when it belongs to this adapter, and the run's whole metric log,
    every log of a resumed run joined (:func:`~genft_tune.cards.find_run_files`)."""
    (out_dir / ADAPTER_CONFIG_FILE).write_text(_dump_json(dict(adapter_cfg)))
    run = find_run_files(adapter_dir, dict(adapter_cfg))
    if run.config is not None and not (out_dir / TRAINING_CONFIG_FILE).exists():
        shutil.copy2(run.config, out_dir / TRAINING_CONFIG_FILE)
    if run.logs and not (out_dir / TRAINING_LOG_FILE).exists():
        (out_dir / TRAINING_LOG_FILE).write_text(run.log_text())


def _write_card(out_dir: Path, *, base_dir: Path, final_path: Path) -> None:
    """The merged model's own ``README.md`` (:func:`~genft_tune.cards.write_local_card`);
    none, with a warning, when it cannot be written (the merge itself is complete)."""
    try:
        write_local_card(out_dir, base_dir=base_dir, final_path=final_path)
    except (ValueError, OSError) as e:
        log.warning(f"No model card written for {final_path}: {e}")


__all__ = [
    "check_adapter_fits_base",
    "DTYPES",
    "merge_adapter_checkpoint",
    "merge_base_tensor",
    "parse_size",
]
