"""Qwen3 weights between Hugging Face's names and ours (no permutation: Qwen's RoPE is
Hugging Face's)."""

from typing import Dict, Optional

import torch
from torchtune.models.convert_weights import get_mapped_key
from torchtune.models.qwen2._convert_weights import _FROM_HF as _QWEN2_FROM_HF

_FROM_HF = {
    **{k: v for k, v in _QWEN2_FROM_HF.items() if not k.endswith(".bias")},
    "model.layers.{}.self_attn.q_norm.weight": "layers.{}.attn.q_norm.scale",
    "model.layers.{}.self_attn.k_norm.weight": "layers.{}.attn.k_norm.scale",
}
_TIED_KEY = "lm_head.weight"


def qwen3_hf_to_tune(
    state_dict: Dict[str, torch.Tensor],
    num_heads: int = 32,
    num_kv_heads: int = 32,
    dim: int = 4096,
    head_dim: Optional[int] = None,
    tie_word_embeddings: bool = False,
) -> Dict[str, torch.Tensor]:
    """HF Qwen3 state dict -> torchtune names (the head arguments are accepted for the
    signature of torchtune's converters; Qwen3 needs no permutation)."""
    out = {}
    for key, value in state_dict.items():
        if (tie_word_embeddings and key == _TIED_KEY) or "rotary_emb.inv_freq" in key:
            continue
        out[get_mapped_key(key, _FROM_HF)] = value
    return out


def qwen3_tune_to_hf(
    state_dict: Dict[str, torch.Tensor],
    num_heads: int = 32,
    num_kv_heads: int = 32,
    dim: int = 4096,
    head_dim: Optional[int] = None,
    tie_word_embeddings: bool = False,
) -> Dict[str, torch.Tensor]:
    """torchtune names -> HF Qwen3 state dict (no ``lm_head`` when tied)."""
    inverse = {v: k for k, v in _FROM_HF.items() if v is not None}
    return {get_mapped_key(key, inverse): value for key, value in state_dict.items()}
