"""Qwen3 model builders with the published architectures (Hugging Face ``config.json``
of Qwen/Qwen3-0.6B, -1.7B, -4B, -8B)."""

from torchtune.modules import TransformerDecoder

from genft_tune.models.qwen3._component_builders import qwen3

_COMMON = dict(vocab_size=151_936, num_kv_heads=8, head_dim=128, max_seq_len=40_960, norm_eps=1e-6, rope_base=1_000_000.0)


def qwen3_0_6b() -> TransformerDecoder:
    """Qwen3 0.6B (28 layers, hidden 1024, 16 query heads, tied embeddings)."""
    return qwen3(**_COMMON, num_layers=28, num_heads=16, embed_dim=1024, intermediate_dim=3072, tie_word_embeddings=True)


def qwen3_1_7b() -> TransformerDecoder:
    """Qwen3 1.7B (28 layers, hidden 2048, 16 query heads, tied embeddings)."""
    return qwen3(**_COMMON, num_layers=28, num_heads=16, embed_dim=2048, intermediate_dim=6144, tie_word_embeddings=True)


def qwen3_4b() -> TransformerDecoder:
    """Qwen3 4B (36 layers, hidden 2560, 32 query heads, tied embeddings)."""
    return qwen3(**_COMMON, num_layers=36, num_heads=32, embed_dim=2560, intermediate_dim=9728, tie_word_embeddings=True)


def qwen3_8b() -> TransformerDecoder:
    """Qwen3 8B (36 layers, hidden 4096, 32 query heads, untied)."""
    return qwen3(**_COMMON, num_layers=36, num_heads=32, embed_dim=4096, intermediate_dim=12_288, tie_word_embeddings=False)
