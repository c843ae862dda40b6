"""Check a merged checkpoint: the unmerged model (base + adapter) and the merged plain
model must give the same outputs.

Both models start as the same plain model built from the base's ``config.json``:
decoders (Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 2, Phi-3/4) with their torchtune
component builder, ViT classifiers with :func:`genft_tune.models.vit.vit`; the family's
entry (``genft_tune.models._families``) builds and loads the model and gives the example
input (logits on a tokenized prompt; on a seeded random image for ViT). The unmerged
model then has every adapter target swapped for a GenFT or WeGeFT layer holding the same
base weight, and loads the adapter. Everything runs in fp32 on CPU and loads whole
models: meant for checks on small models.
"""

import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from genft_tune.checkpointing._adapter import AdapterFileConfig
from genft_tune.checkpointing._base_checkpoint import find_base_checkpoint, hf_converter
from genft_tune.checkpointing._read_adapter import read_adapter
from genft_tune.models._families import get_family
from genft_tune.modules import apply_adapter, get_adapter_kind

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _load_tune_state_dict(directory: Path) -> Dict[str, torch.Tensor]:
    source = find_base_checkpoint(directory)
    if source.format != "hf" or source.config is None:
        raise ValueError(f"verify needs a Hugging Face checkpoint with config.json, got {directory}")
    converter = hf_converter(source.config)
    sd = {}
    for path in source.files:
        for key, tensor in source.iter_file(path):
            sd[key] = tensor.float()
    return converter.to_tune(sd)


def _add_adapter(model: nn.Module, adapter_cfg: AdapterFileConfig, adapter_sd: Dict[str, torch.Tensor]) -> nn.Module:
    """Put the adapter's method on its targets (keeping the loaded base weights), then
    load the adapter; every adapter tensor must be used and present."""
    kind = get_adapter_kind(adapter_cfg.method)
    targets = list(adapter_cfg["target_modules"])
    for name in targets:
        if not isinstance(_submodule(model, name), nn.Linear):
            raise ValueError(f"adapter target {name!r} is not a linear layer of the base model")
    apply_adapter(model, adapter_cfg.config, targets)
    missing, unexpected = model.load_state_dict(adapter_sd, strict=False)
    missing = [k for k in missing if kind.is_key(k)]
    if missing or unexpected:
        raise ValueError(
            f"the {adapter_cfg.method} adapter does not fit the model built from its targets: "
            f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model


def _submodule(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _plain_model(directory: Path, config: Dict, head: Optional[torch.Tensor] = None) -> nn.Module:
    """The plain model of ``config``'s family with the weights of ``directory``, fp32, eval.

    ``head``: a classifier weight that will replace the checkpoint's (an adapter's trained
    ViT head, whose class count may differ from the base's).
    """
    family = get_family(config)
    if family.plain_model is not None:  # a family that loads its own checkpoints (ViT)
        model = family.plain_model(directory, config, head)
    else:
        model = family.build(config)
        model.load_state_dict(_load_tune_state_dict(directory), strict=True)
    return model.float().eval()


@torch.no_grad()
def verify_merge(
    *,
    base_dir: PathLike,
    adapter_dir: PathLike,
    merged_dir: PathLike,
    prompt: str = "The quick brown fox",
) -> float:
    """Max ``|logits(base + adapter) - logits(merged)|``, in fp32.

    Args:
        base_dir (PathLike): the base Hugging Face checkpoint of a family in
            :data:`genft_tune.models._families.FAMILIES` (decoders and ViT).
        adapter_dir (PathLike): the GenFT or WeGeFT adapter.
        merged_dir (PathLike): the merged checkpoint.
        prompt (str): text for decoders, tokenized with the base's tokenizer when it has
            one; ViT classifiers get a seeded random image batch instead.

    Returns:
        float: the largest absolute logit difference.

    Raises:
        ValueError: for unsupported model families, or an adapter that does not fit.
    """
    base_dir, merged_dir = Path(base_dir), Path(merged_dir)
    config = json.loads((base_dir / "config.json").read_text())
    adapter_sd, adapter_cfg = read_adapter(adapter_dir, base_dir=base_dir)
    if adapter_cfg.weight_layout != "torchtune":
        raise ValueError(
            f"the adapter in {adapter_dir} is in the {adapter_cfg.weight_layout!r} weight layout "
            "(imported from the authors' code or trained by PEFT), which the torchtune model that --verify builds "
            "cannot run; the merge itself applied it to the Hugging Face tensors as trained"
        )
    family = get_family(config)
    inputs = family.example_input(base_dir, config, prompt)

    # a classifier the adapter trained replaces the base's (its class count may differ)
    key = family.classifier_key
    head = adapter_sd.get(key) if key is not None and key in (adapter_cfg.get("modules_to_save") or []) else None
    adapted = _add_adapter(_plain_model(base_dir, config, head=head), adapter_cfg, adapter_sd)
    reference = adapted.float().eval()(inputs)
    del adapted
    merged_config = json.loads((merged_dir / "config.json").read_text())  # the trained head's classes
    diff = (_plain_model(merged_dir, merged_config)(inputs) - reference).abs().max().item()
    log.info(f"verify: max |logit diff| = {diff:.3e} ({adapter_cfg.method}, {config.get('model_type')})")
    return diff


__all__ = ["verify_merge"]
