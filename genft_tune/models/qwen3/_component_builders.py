"""The Qwen3 decoder from torchtune modules (torchtune 0.6.1 has no Qwen3)."""

from torch import nn
from torchtune.models.qwen2._component_builders import qwen2_mlp
from torchtune.models.qwen2._positional_embeddings import Qwen2RotaryPositionalEmbeddings
from torchtune.modules import RMSNorm, TiedLinear, TransformerDecoder, TransformerSelfAttentionLayer

from genft_tune.models.qwen3._attention import Qwen3Attention


def qwen3(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-6,
    rope_base: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
) -> TransformerDecoder:
    """A Qwen3 decoder: Qwen2's blocks without q/k/v biases, with an RMSNorm over each
    query and key head before RoPE (QK-norm), and a ``head_dim`` of its own (Qwen3's
    ``num_heads * head_dim`` need not equal ``embed_dim``).

    Args:
        vocab_size (int): number of tokens.
        num_layers (int): number of transformer layers.
        num_heads (int): query heads.
        num_kv_heads (int): key/value heads.
        embed_dim (int): hidden size.
        intermediate_dim (int): MLP hidden size.
        max_seq_len (int): maximum sequence length.
        head_dim (int): width of each head.
        attn_dropout (float): attention dropout. Default: 0.0
        norm_eps (float): RMSNorm epsilon. Default: 1e-6
        rope_base (float): RoPE base. Default: 1_000_000.0
        tie_word_embeddings (bool): tie the lm head to the embeddings (0.6B-4B). Default: False

    Returns:
        TransformerDecoder: the model.
    """
    rope = Qwen2RotaryPositionalEmbeddings(dim=head_dim, max_seq_len=max_seq_len, base=rope_base)
    layers = nn.ModuleList()
    for _ in range(num_layers):
        attn = Qwen3Attention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            q_proj=nn.Linear(embed_dim, num_heads * head_dim, bias=False),
            k_proj=nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False),
            v_proj=nn.Linear(embed_dim, num_kv_heads * head_dim, bias=False),
            output_proj=nn.Linear(num_heads * head_dim, embed_dim, bias=False),
            pos_embeddings=rope,
            q_norm=RMSNorm(dim=head_dim, eps=norm_eps),
            k_norm=RMSNorm(dim=head_dim, eps=norm_eps),
            kv_cache=None,
            max_seq_len=max_seq_len,
            attn_dropout=attn_dropout,
        )
        layers.append(
            TransformerSelfAttentionLayer(
                attn=attn,
                mlp=qwen2_mlp(dim=embed_dim, hidden_dim=intermediate_dim),
                sa_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
            )
        )
    tok_embeddings = nn.Embedding(vocab_size, embed_dim)
    output = TiedLinear(tok_embeddings) if tie_word_embeddings else nn.Linear(embed_dim, vocab_size, bias=False)
    return TransformerDecoder(
        tok_embeddings=tok_embeddings,
        layers=layers,
        max_seq_len=max_seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
        norm=RMSNorm(embed_dim, eps=norm_eps),
        output=output,
    )
