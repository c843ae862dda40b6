"""A model trained with torchtune's :class:`~torchtune.modules.peft.LoRALinear` (the image
recipe's LoRA baseline) as Hugging Face PEFT's own LoRA: ``adapter_model.safetensors`` +
``adapter_config.json`` as PEFT's ``save_pretrained`` writes them for a ``LoraConfig``, so
that ``PeftModel.from_pretrained`` loads it onto the Hugging Face base.

* Tensors: ``base_model.model.<module>.lora_A.weight`` (torchtune's ``lora_a``) and
  ``lora_B.weight`` (``lora_b``; rows in Hugging Face's order where the family reorders
  them), ``<module>`` the Hugging Face model's module named by the family's converter
  (``vit.layers.0.attention.q_proj``); trained whole modules (a new classifier head) as
  PEFT's ``modules_to_save`` (``base_model.model.classifier.weight``).
* Config: ``r``, ``lora_alpha`` (torchtune's ``scale = alpha / rank`` is PEFT's
  ``lora_alpha / r``), ``lora_dropout``, ``target_modules`` in Hugging Face names,
  ``modules_to_save``, ``base_model_name_or_path``.

What PEFT's LoRA cannot hold (several ranks or alphas, a trained base weight of an adapted
linear, a trained tensor with no Hugging Face module) raises :class:`PeftFormatError`.
"""

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn
from torchtune.modules.peft import LoRALinear

from genft_tune._file_names import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE
from genft_tune.checkpointing._adapter import _dump_json, write_file_pair
from genft_tune.checkpointing._lora_export import lora_config
from genft_tune.checkpointing._peft_format import (
    _converter,
    _hf_module,
    _row_order,
    _saved_modules,
    _short_targets,
    _task_type,
    MODEL,
    PeftFormatError,
)

PathLike = Union[str, os.PathLike]


def _number(x: float) -> Union[int, float]:
    return int(x) if float(x).is_integer() else float(x)


def peft_lora_files(
    model: nn.Module,
    *,
    hf_config: Mapping[str, Any],
    modules_to_save: Optional[Mapping[str, torch.Tensor]] = None,
    base_model_name_or_path: Optional[str] = None,
) -> tuple:
    """PEFT's ``(tensors, adapter_config.json)`` of ``model``'s LoRA layers.

    Args:
        model (nn.Module): a torchtune model with :class:`LoRALinear` layers (torchtune naming).
        hf_config (Mapping[str, Any]): the Hugging Face ``config.json`` of the model, which
            names its family.
        modules_to_save (Optional[Mapping[str, torch.Tensor]]): trained tensors besides the
            LoRA factors (``head.weight``), by torchtune key.
        base_model_name_or_path (Optional[str]): the base's Hub id or path, for PEFT.

    Returns:
        Tuple[Dict[str, torch.Tensor], Dict[str, Any]]: the tensors (CPU) and the config.

    Raises:
        PeftFormatError: if the model has no LoRA layer, its layers differ in rank or alpha,
            or a tensor has no place in PEFT's format.
    """
    lora = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not lora:
        raise PeftFormatError("the model has no LoRALinear layer")
    settings = {(m.rank, float(m.alpha), float(getattr(m.dropout, "p", 0.0))) for m in lora.values()}
    if len(settings) != 1:
        raise PeftFormatError(f"the LoRA layers differ in (rank, alpha, dropout): {sorted(settings)}")
    (rank, alpha, dropout), = settings
    converter = _converter(hf_config)
    saved_sd = dict(modules_to_save or {})
    inside = [k for k in saved_sd if any(k.startswith(f"{t}.") for t in lora)]
    if inside:
        raise PeftFormatError(f"a base weight of an adapted linear trained ({inside[0]}): a LoRA cannot hold it")
    saved = _saved_modules(converter, sorted(saved_sd), {k: tuple(v.shape) for k, v in saved_sd.items()})

    tensors: Dict[str, torch.Tensor] = {}
    hf_modules = []
    for target, layer in lora.items():
        shape = (layer.out_dim, layer.in_dim)
        module = _hf_module(converter, target, shape)
        hf_modules.append(module)
        lora_b = layer.lora_b.weight.detach()
        rows = _row_order(converter, target, shape)  # W_hf = W_tune[rows], so dW's rows too
        tensors[f"{MODEL}{module}.lora_A.weight"] = layer.lora_a.weight.detach()
        tensors[f"{MODEL}{module}.lora_B.weight"] = lora_b if rows is None else lora_b[rows.to(lora_b.device)]
    for key, value in saved_sd.items():
        tensors[f"{MODEL}{saved[key]}"] = value.detach()
    tensors = {k: v.cpu().contiguous().clone() for k, v in sorted(tensors.items())}

    config = {
        **lora_config(
            rank,
            _short_targets(hf_modules, hf_config),
            base_model_name_or_path=base_model_name_or_path,
            task_type=_task_type(hf_config),
        ),
        "lora_alpha": _number(alpha),
        "lora_dropout": dropout,
        "modules_to_save": sorted({k.rpartition(".")[0] for k in saved.values()}) or None,
    }
    return tensors, config


def save_peft_lora(
    output_dir: PathLike,
    model: nn.Module,
    *,
    hf_config: Mapping[str, Any],
    modules_to_save: Optional[Mapping[str, torch.Tensor]] = None,
    base_model_name_or_path: Optional[str] = None,
) -> Path:
    """Write :func:`peft_lora_files` into ``output_dir`` (both files, atomically as a pair).

    Returns:
        Path: ``output_dir``.

    Raises:
        PeftFormatError: as :func:`peft_lora_files` (nothing is written then).
    """
    tensors, config = peft_lora_files(
        model, hf_config=hf_config, modules_to_save=modules_to_save, base_model_name_or_path=base_model_name_or_path
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_file_pair(
        output_dir,
        tensors=tensors,
        tensor_metadata={"format": "pt"},
        weights_name=PEFT_WEIGHTS_FILE,
        config_name=PEFT_CONFIG_FILE,
        config_text=lambda _: _dump_json(config),
    )
    return output_dir


__all__ = ["peft_lora_files", "save_peft_lora"]
