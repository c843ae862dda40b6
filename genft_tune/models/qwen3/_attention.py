"""Qwen3's attention: torchtune's ``MultiHeadAttention`` with the norms in Qwen3's place."""

from typing import Optional

import torch
from torchtune.modules import MultiHeadAttention
from torchtune.modules.attention_utils import _MaskType


class Qwen3Attention(MultiHeadAttention):
    """Grouped-query attention whose ``q_norm``/``k_norm`` (an RMSNorm over each head)
    run *before* RoPE, as in Qwen3 (torchtune's ``MultiHeadAttention`` applies them after
    RoPE; the two differ, since the norm's per-channel scale does not commute with the
    rotation). Everything else, KV cache included, is torchtune's.
    """

    def forward(
        self,
        x: torch.Tensor,
        y: Optional[torch.Tensor] = None,
        *,
        mask: Optional[_MaskType] = None,
        input_pos: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Same arguments and result as :meth:`torchtune.modules.MultiHeadAttention.forward`."""
        b, s_x, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s_x, self.num_heads, self.head_dim))
        if self.pos_embeddings is not None:
            q = self.pos_embeddings(q, input_pos=input_pos)
        q = q.transpose(1, 2)  # [b, n_h, s_x, h_d]
        if y is None:
            if self.kv_cache is None or not self.cache_enabled:
                raise ValueError("Must provide y input or use kv_cache to enable streaming decoding")
            k, v = self.kv_cache.k_cache, self.kv_cache.v_cache
        else:
            s_y = y.shape[1]
            k = self.k_norm(self.k_proj(y).view(b, s_y, -1, self.head_dim))
            v = self.v_proj(y).view(b, s_y, -1, self.head_dim)
            if self.pos_embeddings is not None:
                k = self.pos_embeddings(k, input_pos=input_pos)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [b, n_kv, s_y, h_d]
            if self.kv_cache is not None and self.cache_enabled:
                k, v = self.kv_cache.update(k, v)
        if self.num_heads != self.num_kv_heads:
            q_per_kv = self.num_heads // self.num_kv_heads
            expand = (b, self.num_kv_heads, q_per_kv, -1, self.head_dim)
            k = k.unsqueeze(2).expand(expand).flatten(1, 2)
            v = v.unsqueeze(2).expand(expand).flatten(1, 2)
        output = self._attention_call(
            q,
            k,
            v,
            mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=self.kv_cache is None and mask is None and self.is_causal,
        )
        return self.output_proj(output.transpose(1, 2).contiguous().view(b, s_x, -1))
