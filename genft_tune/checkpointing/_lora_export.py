"""A GenFT or WeGeFT adapter as a standard PEFT LoRA (``adapter_config.json`` +
``adapter_model.safetensors``), for servers that take LoRA adapters only (vLLM, SGLang).

Every adapted linear's ``dW`` is computed from the Hugging Face base weights by the
merge's own code (:mod:`genft_tune.checkpointing._merge`: the family's converter puts the
rows in the order the adapter was trained on, torchtune's RoPE order for recipe-trained
q/k, and back), in fp32, then factored by a truncated SVD: ``lora_B = U_k S_k``,
``lora_A = V_k^T``, ``lora_alpha = r`` (scaling 1).

* WeGeFT's ``dW = (alpha/r) W0 phi^T psi`` has rank <= r: exact at ``rank >= r``.
* GenFT with ``act_out="identity"`` (the low-rank path) has rank <= a+b+1 (a+b without
  ``generator_bias``): exact from there.
* The dense GenFT default (gelu out) is full rank: the truncation costs something, and
  :class:`LayerCost` says how much (fraction of ``||dW||_F^2`` kept per layer).

One rank for every layer: SGLang copies each layer's factors into a buffer slice of the
config's ``r`` and asserts the shapes match (``sglang/srt/lora/mem_pool.py``), and vLLM
scales every layer by the config's ``lora_alpha / r`` ignoring ``rank_pattern`` /
``alpha_pattern`` (``vllm/lora/peft_helper.py``). A layer whose ``dW`` has fewer than ``r``
singular values (a narrow GQA ``k_proj``) gets zero rows/columns up to ``r``. With
``energy`` the rank is the smallest at which every layer keeps at least that fraction.
"""

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
from safetensors.torch import save_file

from genft_tune._file_names import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE
from genft_tune._fs import give_open_mode, new_folder
from genft_tune.checkpointing._adapter import _dump_json, AdapterFileConfig, check_adapter_matches_model
from genft_tune.checkpointing._base_checkpoint import BaseCheckpoint, find_base_checkpoint, KeyConverter
from genft_tune.checkpointing._merge import merge_base_tensor
from genft_tune.checkpointing._peft_format import (
    _converter,
    _short_targets,
    _task_type,
    PeftFormatError,
)
from genft_tune.checkpointing._read_adapter import read_adapter

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# vLLM's --max-lora-rank choices (vllm/config/lora.py, MaxLoRARanks)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LORA_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL = "base_model.model."


@dataclass(frozen=True)
class LayerCost:
    """What the truncation to ``rank`` costs one layer.

    Attributes:
        module (str): the Hugging Face module (``model.layers.0.self_attn.q_proj``).
        rank (int): singular components kept (at most ``min(out, in)``).
        numerical_rank (int): singular values of ``dW`` above fp32 noise (its rank).
        energy (float): fraction of ``||dW||_F^2`` kept (1.0 for ``dW = 0``).
    """

    module: str
    rank: int
    numerical_rank: int
    energy: float

    @property
    def relative_error(self) -> float:
        """``||dW - dW_r||_F / ||dW||_F``."""
        return math.sqrt(max(0.0, 1.0 - self.energy))

    @property
    def exact(self) -> bool:
        return self.rank >= self.numerical_rank


@dataclass
class LoraExport:
    """The written LoRA: where, at which rank, and each layer's :class:`LayerCost`."""

    output_dir: Path
    rank: int
    layers: List[LayerCost] = field(default_factory=list)

    def summary(self, per_layer: bool = False) -> List[str]:
        """Lines for the user: the energy kept (worst layer, mean), the exact layers and
        the vLLM ``--max-lora-rank`` to serve it with; every layer with ``per_layer``."""
        worst = min(self.layers, key=lambda c: c.energy)
        mean = sum(c.energy for c in self.layers) / len(self.layers)
        exact = sum(c.exact for c in self.layers)
        lines = [
            f"LoRA rank {self.rank} for {len(self.layers)} layers: {exact} exact (dW has rank <= {self.rank}); "
            f"energy lost (1 - fraction of ||dW||_F^2 kept): worst {1 - worst.energy:.1e} ({worst.module}, "
            f"relative Frobenius error {worst.relative_error:.1e}), mean {1 - mean:.1e}"
        ]
        if per_layer:
            lines += [
                f"  {c.module}: rank {c.rank} of {c.numerical_rank}, energy lost {1 - c.energy:.1e}, "
                f"relative error {c.relative_error:.1e}"
                for c in self.layers
            ]
        serve = next((r for r in VLLM_MAX_LORA_RANKS if r >= self.rank), None)
        lines.append(
            f"serve with vLLM --max-lora-rank {serve}" if serve is not None else
            f"rank {self.rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]}): "
            "choose a lower --rank for vLLM"
        )
        return lines


def check_rank_choice(rank: Optional[int], energy: Optional[float]) -> None:
    """Exactly one of ``rank`` (an int >= 1) and ``energy`` (in (0, 1]).

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    if (rank is None) == (energy is None):
        raise ValueError("pass exactly one of rank (a LoRA rank >= 1) and energy (a fraction in (0, 1])")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if energy is not None and not (0.0 < energy <= 1.0):
        raise ValueError(f"energy must be a fraction in (0, 1] (of the squared singular values kept), got {energy!r}")


def delta_weights(adapter_dir: PathLike, *, base_dir: PathLike) -> Iterator[Tuple[str, torch.Tensor, torch.dtype]]:
    """``(module, dW, base dtype)`` for every adapted linear of the Hugging Face base, one
    at a time: ``dW = merged - W0`` in fp32 and Hugging Face's row order, ``merged`` from
    the merge's own code (``genft-tune merge`` writes ``W0 + dW`` for the same tensors).

    Args:
        adapter_dir (PathLike): any adapter :func:`read_adapter` reads: ours
            (``genft_adapter.safetensors``), PEFT's pair (in the folder or its ``peft/``
            subfolder) or the GenFT authors'; GenFT or WeGeFT.
        base_dir (PathLike): the Hugging Face base (``config.json`` + safetensors).

    Raises:
        FileNotFoundError: for a missing base or adapter file.
        PeftFormatError: if the base is no Hugging Face checkpoint of a known family, or the
            adapter trains whole modules (a LoRA cannot hold them).
        ValueError: if the adapter does not fit the base.
    """
    source, converter = _hf_base(base_dir)
    yield from _deltas(source, converter, base_dir, *read_adapter(adapter_dir, base_dir=base_dir))


def _hf_base(base_dir: PathLike) -> Tuple[BaseCheckpoint, KeyConverter]:
    """The Hugging Face base checkpoint in ``base_dir`` and its family's key converter
    (found before the adapter is read, so a base of no known family is refused first).

    Raises:
        PeftFormatError: naming what it is not.
    """
    source = find_base_checkpoint(base_dir)
    if source.format != "hf" or source.config is None:
        raise PeftFormatError(f"{base_dir}: a LoRA is written for a Hugging Face base (config.json + safetensors)")
    return source, _converter(source.config)


def _deltas(
    source: BaseCheckpoint,
    converter: KeyConverter,
    base_dir: PathLike,
    adapter_sd: Dict[str, torch.Tensor],
    adapter_cfg: AdapterFileConfig,
) -> Iterator[Tuple[str, torch.Tensor, torch.dtype]]:
    """:func:`delta_weights` of an adapter already read (:func:`read_adapter`), on the base
    and converter :func:`_hf_base` found in ``base_dir``."""
    if adapter_cfg.get("modules_to_save"):
        raise PeftFormatError(
            f"the adapter also trains whole modules ({', '.join(adapter_cfg['modules_to_save'][:3])}): a LoRA for "
            "vLLM/SGLang cannot hold them (vLLM refuses modules_to_save); merge it instead (genft-tune merge)"
        )
    shapes = source.shapes()
    to_tune = {k: converter.tune_shapes(k, s) for k, s in shapes.items()}
    check_adapter_matches_model(adapter_cfg, {t: s for parts in to_tune.values() for t, s in parts.items()})
    target_keys = {f"{t}.weight" for t in adapter_cfg["target_modules"]}
    done = 0
    for path in source.files:
        for key, tensor in source.iter_file(path):
            hits = [t for t in to_tune.get(key, {}) if t in target_keys]
            if not hits:
                continue
            W0 = tensor.float()
            merged = merge_base_tensor(key, W0, hits, adapter_sd=adapter_sd, adapter_cfg=adapter_cfg, converter=converter)
            module = key[: -len(".weight")]
            if converter.module_name is not None and len(hits) == 1:  # model modules named apart from keys
                module = converter.module_name(hits[0][: -len(".weight")]) or module
            done += len(hits)
            yield module, merged - W0, tensor.dtype
    if done != len(target_keys):
        raise RuntimeError(f"found {done} adapted weights in {base_dir}, the adapter has {len(target_keys)}")


def _numerical_rank(S: torch.Tensor, shape: Tuple[int, int]) -> int:
    """Singular values above fp32 round-off of ``dW`` (numpy's ``matrix_rank`` rule)."""
    if S.numel() == 0 or S[0] == 0:
        return 0
    return int((S > S[0] * max(shape) * torch.finfo(torch.float32).eps).sum())


def _energy(S: torch.Tensor, k: int) -> float:
    total = float((S.double() ** 2).sum())
    return 1.0 if total == 0 else float((S[:k].double() ** 2).sum()) / total


def _cutoff(S: torch.Tensor, energy: float) -> int:
    """The smallest ``k`` whose top-``k`` singular values hold ``energy`` of ``sum S^2``."""
    cum = torch.cumsum(S.double() ** 2, dim=0)
    if cum.numel() == 0 or cum[-1] == 0:
        return 1
    return min(int(torch.searchsorted(cum, energy * cum[-1] * (1 - 1e-12)).item()) + 1, S.numel())


def lora_factors(delta: torch.Tensor, rank: int, module: str = "") -> Tuple[torch.Tensor, torch.Tensor, LayerCost]:
    """``(lora_A (rank, in), lora_B (out, rank), cost)`` with ``lora_B @ lora_A`` the best
    rank-``rank`` approximation of ``delta`` (fp32 SVD); zero-padded to ``rank`` when
    ``delta`` has fewer singular values."""
    U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)
    k = min(rank, S.numel())
    A = delta.new_zeros(rank, delta.shape[1], dtype=torch.float32)
    B = delta.new_zeros(delta.shape[0], rank, dtype=torch.float32)
    A[:k] = Vh[:k]
    B[:, :k] = U[:, :k] * S[:k]
    return A, B, LayerCost(module, k, _numerical_rank(S, tuple(delta.shape)), _energy(S, k))


def _uniform_rank(deltas: Iterator[Tuple[str, torch.Tensor, torch.dtype]], energy: float) -> int:
    """The smallest rank at which every layer keeps ``energy`` (a first pass over
    ``deltas``, singular values only, so that no layer's factors wait in memory for the
    others)."""
    return max(_cutoff(torch.linalg.svdvals(d), energy) for _, d, _ in deltas)


def export_lora_adapter(
    adapter_dir: PathLike,
    *,
    base_dir: PathLike,
    output_dir: PathLike,
    rank: Optional[int] = None,
    energy: Optional[float] = None,
    dtype: str = "auto",
    base_model_name_or_path: Optional[str] = None,
    overwrite: bool = False,
) -> LoraExport:
    """Write a GenFT/WeGeFT adapter as a PEFT LoRA of one rank for every layer.

    Args:
        adapter_dir (PathLike): ours, PEFT's pair or the GenFT authors' (see :func:`delta_weights`).
        base_dir (PathLike): the Hugging Face base; GenFT's ``dW`` is generated from its
            weights, WeGeFT's is made of them.
        output_dir (PathLike): the LoRA folder (must not exist unless ``overwrite``).
        rank (Optional[int]): the LoRA rank, or
        energy (Optional[float]): the fraction of each layer's ``||dW||_F^2`` to keep at
            least (the rank is the smallest that does it for every layer).
        dtype (str): of the factors: ``auto`` (each base weight's), ``fp32``, ``bf16``,
            ``fp16`` (vLLM casts to its ``--lora-dtype`` anyway).
        base_model_name_or_path (Optional[str]): for ``adapter_config.json`` (default:
            what the adapter records).
        overwrite (bool): replace an existing ``output_dir``.

    Returns:
        LoraExport: the folder, the rank and every layer's cost.

    Raises:
        ValueError: for a bad ``rank``/``energy``/``dtype`` or an adapter that does not fit.
        FileExistsError: if ``output_dir`` exists and ``overwrite`` is False.
        FileNotFoundError, PeftFormatError: as :func:`delta_weights`.
    """
    check_rank_choice(rank, energy)
    if dtype not in LORA_DTYPES:
        raise ValueError(f"dtype must be one of {list(LORA_DTYPES)}, got {dtype!r}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output directory {output_dir} exists (pass overwrite / --overwrite)")
    source, converter = _hf_base(base_dir)
    # read once (any format read_adapter reads); its json names the base
    adapter_sd, adapter_cfg = read_adapter(adapter_dir, base_dir=base_dir)
    if rank is None:
        rank = _uniform_rank(_deltas(source, converter, base_dir, adapter_sd, adapter_cfg), energy)
    tensors: Dict[str, torch.Tensor] = {}
    costs: List[LayerCost] = []
    for module, delta, base_dtype in _deltas(source, converter, base_dir, adapter_sd, adapter_cfg):
        A, B, cost = lora_factors(delta, rank, module)
        out_dtype = LORA_DTYPES[dtype] or base_dtype
        tensors[f"{MODEL}{module}.lora_A.weight"] = A.to(out_dtype).contiguous()
        tensors[f"{MODEL}{module}.lora_B.weight"] = B.to(out_dtype).contiguous()
        costs.append(cost)
    hf_config = source.config
    if base_model_name_or_path is None:
        base_model_name_or_path = adapter_cfg.base_model
    targets = _short_targets([c.module for c in costs], hf_config)
    if isinstance(targets, str):
        log.warning("The adapter does not cover every layer: target_modules is a regex of module names, which "
                    "PEFT and recent vLLM take; servers that expect module types (q_proj) may refuse it")
    config = lora_config(rank, targets, base_model_name_or_path=base_model_name_or_path, task_type=_task_type(hf_config))
    _write(output_dir, tensors, config)
    return LoraExport(output_dir, rank, costs)


def lora_config(rank: int, target_modules, *, base_model_name_or_path: Optional[str], task_type: Optional[str]) -> dict:
    """PEFT's ``LoraConfig`` fields for a LoRA whose scaling is 1 (``lora_alpha = r``), with
    no ``rank_pattern``/``alpha_pattern``, bias, DoRA, rsLoRA or ``modules_to_save``: what
    vLLM and SGLang serve."""
    return dict(
        peft_type="LORA",
        task_type=task_type,
        base_model_name_or_path=base_model_name_or_path,
        revision=None,
        inference_mode=True,
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=target_modules,
        exclude_modules=None,
        fan_in_fan_out=False,
        bias="none",
        use_rslora=False,
        use_dora=False,
        modules_to_save=None,
        init_lora_weights=True,
        layers_to_transform=None,
        layers_pattern=None,
        rank_pattern={},
        alpha_pattern={},
    )


def _write(output_dir: Path, tensors: Dict[str, torch.Tensor], config: dict) -> None:
    """Both files into a temporary folder next to ``output_dir``, renamed into place when
    complete: an interrupted export leaves no folder that looks like a LoRA."""
    with new_folder(output_dir) as tmp:
        save_file(dict(sorted(tensors.items())), str(tmp / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
        give_open_mode(tmp / PEFT_WEIGHTS_FILE)
        (tmp / PEFT_CONFIG_FILE).write_text(_dump_json(config))


__all__ = [
    "check_rank_choice",
    "delta_weights",
    "export_lora_adapter",
    "LayerCost",
    "lora_config",
    "lora_factors",
    "LoraExport",
    "LORA_DTYPES",
    "VLLM_MAX_LORA_RANKS",
]
