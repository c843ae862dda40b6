"""Gemma 2 as Hugging Face's checkpoints define it, from torchtune's Gemma 2 components.

torchtune 0.6.1's Gemma 2 differs from the released models in three ways, all fixed here
(checked against transformers' ``Gemma2ForCausalLM`` in the tests):

- its model builders pass the two soft-capping values swapped (attention 30 / final 50;
  the checkpoints' ``config.json`` say attention 50 / final 30);
- it soft-caps the hidden state after the final norm instead of the logits after the lm
  head;
- its weight converter loads ``post_feedforward_layernorm`` into the norm *before* the MLP
  and ``pre_feedforward_layernorm`` into the one after it.

Use these builders with ``genft_tune.checkpointing.HFCheckpointer`` (``model_type: GEMMA2``),
which converts the weights with :func:`gemma2_hf_to_tune` below.
"""

from typing import Optional

import re
from typing import Dict

import torch
from torch import nn
from torchtune.models.gemma2 import _convert_weights as _tt_convert
from torchtune.models.gemma2._component_builders import gemma2 as _tt_gemma2
from torchtune.modules import TransformerDecoder

# torchtune's converters, kept before HFCheckpointer swaps ours in for GEMMA2
_TT_HF_TO_TUNE, _TT_TUNE_TO_HF = _tt_convert.gemma2_hf_to_tune, _tt_convert.gemma2_tune_to_hf
_MLP_NORMS = re.compile(r"\.(pre|post)_feedforward_layernorm\.")


def _swap_mlp_norm_names(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    swap = {"pre": "post", "post": "pre"}
    return {_MLP_NORMS.sub(lambda m: f".{swap[m.group(1)]}_feedforward_layernorm.", k): v for k, v in state_dict.items()}


def gemma2_hf_to_tune(state_dict: Dict[str, torch.Tensor], **kwargs) -> Dict[str, torch.Tensor]:
    """torchtune's ``gemma2_hf_to_tune`` with the MLP norms where the model uses them
    (``pre_feedforward_layernorm`` -> ``mlp_norm``, ``post_...`` -> ``mlp_scale``)."""
    return _TT_HF_TO_TUNE(_swap_mlp_norm_names(state_dict), **kwargs)


def gemma2_tune_to_hf(state_dict: Dict[str, torch.Tensor], **kwargs) -> Dict[str, torch.Tensor]:
    """The inverse of :func:`gemma2_hf_to_tune`."""
    return _swap_mlp_norm_names(_TT_TUNE_TO_HF(state_dict, **kwargs))


class SoftCappedOutput:
    """The tied lm head followed by Gemma 2's logit soft-capping ``cap * tanh(x / cap)``.

    A plain callable (like torchtune's ``TiedLinear``): it holds no parameters.
    """

    def __init__(self, output, cap: float):
        self.output = output
        self.cap = cap

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.output(x)
        return self.cap * torch.tanh(logits / self.cap)


def gemma2(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    head_dim: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-6,
    rope_base: float = 10_000,
    attn_logit_softcapping: Optional[float] = 50.0,
    final_logit_softcapping: Optional[float] = 30.0,
    sliding_window_size: int = 4096,
    query_pre_attn_scalar: Optional[int] = None,
) -> TransformerDecoder:
    """A Gemma 2 decoder (tied embeddings) with the soft-capping of the checkpoints:
    ``attn_logit_softcapping`` on the attention scores, ``final_logit_softcapping`` on the
    logits; argument names as in Hugging Face's ``Gemma2Config``, the rest as torchtune's
    ``gemma2`` component builder.

    Returns:
        TransformerDecoder: the model.
    """
    model = _tt_gemma2(
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len,
        attn_dropout=attn_dropout,
        norm_eps=norm_eps,
        rope_base=rope_base,
        hidden_capping_value=attn_logit_softcapping,
        final_capping_value=final_logit_softcapping or 1.0,
        sliding_window_size=sliding_window_size,
        query_pre_attn_scalar=query_pre_attn_scalar,
    )
    model.norm.logit_capping = nn.Identity()  # no capping of the hidden state (keys unchanged) ...
    if final_logit_softcapping:  # ... but of the logits
        model.output = SoftCappedOutput(model.output, final_logit_softcapping)
    return model


def gemma2_2b() -> TransformerDecoder:
    """Gemma 2 2B (google/gemma-2-2b ``config.json``)."""
    return gemma2(vocab_size=256_000, num_layers=26, num_heads=8, head_dim=256, num_kv_heads=4, embed_dim=2304,
                  intermediate_dim=9216, max_seq_len=8192, query_pre_attn_scalar=256)


def gemma2_9b() -> TransformerDecoder:
    """Gemma 2 9B (google/gemma-2-9b ``config.json``)."""
    return gemma2(vocab_size=256_000, num_layers=42, num_heads=16, head_dim=256, num_kv_heads=8, embed_dim=3584,
                  intermediate_dim=14_336, max_seq_len=8192, query_pre_attn_scalar=256)


def gemma2_27b() -> TransformerDecoder:
    """Gemma 2 27B (google/gemma-2-27b ``config.json``)."""
    return gemma2(vocab_size=256_000, num_layers=46, num_heads=32, head_dim=128, num_kv_heads=16, embed_dim=4608,
                  intermediate_dim=36_864, max_seq_len=8192, query_pre_attn_scalar=144)


__all__ = ["gemma2", "gemma2_2b", "gemma2_9b", "gemma2_27b", "gemma2_hf_to_tune", "gemma2_tune_to_hf"]
