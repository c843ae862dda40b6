"""Check a merged checkpoint: the unmerged GenFT model (base + adapter) and the merged
plain model must give the same logits on a prompt.

Both models are built with torchtune's own Llama component builders from the base's
``config.json`` (Llama-family Hugging Face checkpoints); the GenFT model replaces
every adapter target with :func:`genft_linear` layers drawing on one
:class:`GenFTGenerators` registered as ``model.genft_generators``. Everything runs
in fp32 on CPU and loads whole models: meant for checks on small models.
"""

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from genft_tune.checkpointing._adapter import GenFTAdapterConfig, load_genft_adapter
from genft_tune.checkpointing._merge import _hf_converter, find_base_checkpoint
from genft_tune.modules import genft_linear, GenFTGenerators, validate_missing_and_unexpected_for_genft

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _load_tune_state_dict(directory: Path) -> Dict[str, torch.Tensor]:
    source = find_base_checkpoint(directory)
    if source.format != "hf" or source.config is None:
        raise ValueError(f"verify needs a Hugging Face checkpoint with config.json, got {directory}")
    converter = _hf_converter(source.config)
    sd = {}
    for path in source.files:
        for key, tensor in source.iter_file(path):
            sd[key] = tensor.float()
    return converter.to_tune(sd)


def _build_llama(config: Dict) -> nn.Module:
    from torchtune.models.llama3 import llama3
    from torchtune.models.llama3_2 import llama3_2
    from torchtune.modules import TiedLinear

    if config.get("model_type") not in ("llama", "mistral"):
        raise ValueError(
            f"verify supports Llama-family checkpoints (model_type llama or mistral), got {config.get('model_type')!r}"
        )
    kwargs = dict(
        vocab_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        embed_dim=config["hidden_size"],
        max_seq_len=config.get("max_position_embeddings", 2048),
        rope_base=int(config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000))),
        intermediate_dim=config["intermediate_size"],
        norm_eps=config.get("rms_norm_eps", 1e-5),
    )
    tied = bool(config.get("tie_word_embeddings", False))
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        return llama3_2(**kwargs, scale_factor=int(scaling["factor"]), tie_word_embeddings=tied)
    model = llama3(**kwargs)
    if tied:
        model.output = TiedLinear(model.tok_embeddings)
    return model


def _add_genft(model: nn.Module, adapter_cfg: GenFTAdapterConfig) -> nn.Module:
    """Replace the adapter's targets with GenFT layers sharing one generator set."""
    if adapter_cfg.method != "genft":
        raise ValueError(f"verify supports GenFT adapters, got method {adapter_cfg.method!r}")
    generators = GenFTGenerators(adapter_cfg.config)
    for name in adapter_cfg["target_modules"]:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        setattr(
            parent,
            child,
            genft_linear(old.in_features, old.out_features, generators=generators, use_bias=old.bias is not None),
        )
    model.genft_generators = generators
    return model


def _prompt_tokens(directory: Path, prompt: str, vocab_size: int) -> List[int]:
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer.model").is_file():
        try:
            from transformers import AutoTokenizer

            ids = AutoTokenizer.from_pretrained(str(directory)).encode(prompt)
            if ids:
                return [int(i) for i in ids]
        except Exception as e:  # a broken tokenizer must not hide the logits check
            log.warning(f"Could not tokenize the prompt with {directory}'s tokenizer ({e}); using bytes")
    return [b % vocab_size for b in prompt.encode("utf-8")] or [1]


@torch.no_grad()
def verify_merge(
    *,
    base_dir: PathLike,
    adapter_dir: PathLike,
    merged_dir: PathLike,
    prompt: str = "The quick brown fox",
) -> float:
    """Max ``|logits(base + adapter) - logits(merged)|`` on ``prompt``, in fp32.

    Args:
        base_dir (PathLike): the base Hugging Face checkpoint (Llama family).
        adapter_dir (PathLike): the GenFT adapter.
        merged_dir (PathLike): the merged checkpoint.
        prompt (str): text, tokenized with the base's tokenizer when it has one.

    Returns:
        float: the largest absolute logit difference.

    Raises:
        ValueError: for unsupported model families or adapter methods.
    """
    base_dir, merged_dir = Path(base_dir), Path(merged_dir)
    config = json.loads((base_dir / "config.json").read_text())
    adapter_sd, adapter_cfg = load_genft_adapter(adapter_dir)
    tokens = torch.tensor([_prompt_tokens(base_dir, prompt, config["vocab_size"])])

    genft_model = _add_genft(_build_llama(config), adapter_cfg)
    base_result = genft_model.load_state_dict(_load_tune_state_dict(base_dir), strict=False)
    adapter_result = genft_model.load_state_dict(adapter_sd, strict=False)
    validate_missing_and_unexpected_for_genft(
        missing_keys=set(base_result.missing_keys) & set(adapter_result.missing_keys),
        unexpected_keys=list(base_result.unexpected_keys) + list(adapter_result.unexpected_keys),
        adapter_loaded=True,
    )
    genft_model.float().eval()
    reference = genft_model(tokens)
    del genft_model

    plain = _build_llama(config)
    plain.load_state_dict(_load_tune_state_dict(merged_dir), strict=True)
    plain.float().eval()
    diff = (plain(tokens) - reference).abs().max().item()
    log.info(f"verify: max |logit diff| = {diff:.3e} over {tokens.shape[1]} prompt tokens")
    return diff


__all__ = ["verify_merge"]
