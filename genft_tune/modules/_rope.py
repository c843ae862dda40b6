"""The two row orders of a RoPE projection's weight: torchtune's and Hugging Face's.

A pure tensor fact, kept below the methods and the families: GenFT's PEFT layer
generates ``dW`` in the row order an adapter was trained on, and the PEFT file format
recognises the permutation a family's converter applies.
"""

import torch


def tune_rows_in_hf_order(out_dim: int, num_heads: int) -> torch.Tensor:
    """Row indices ``idx`` with ``W_hf = W_tune[idx]`` for a q/k projection of
    ``num_heads`` heads: torchtune's ``tune_to_hf`` RoPE permutation (per head, the two
    interleaved halves of the rotary pairs become contiguous). The Llama-style families'
    converters reorder q/k rows so; which targets a family reorders is found by probing
    its converter (``genft_tune.checkpointing._peft_format``)."""
    if out_dim % num_heads or (out_dim // num_heads) % 2:
        raise ValueError(f"a RoPE projection of {out_dim} rows cannot have {num_heads} heads")
    head_dim = out_dim // num_heads
    return torch.arange(out_dim).view(num_heads, head_dim // 2, 2).transpose(1, 2).reshape(-1)
