"""SmolLM2 135M builders: plain and with GenFT.

SmolLM2 (HuggingFaceTB, Apache-2.0) is a Llama architecture with plain RoPE
(base 100 000, no Llama 3.1 scaling) and tied embeddings; the numbers below are those
of ``SmolLM2-135M-Instruct``'s ``config.json`` (also what
``genft_tune.models.smollm2._convert_gguf`` writes). Its Hugging Face checkpoint loads
with torchtune's ``FullModelHFCheckpointer`` and ``model_type: LLAMA3_2``.
"""

from functools import partial
from typing import Any, Dict

from torchtune.modules import TransformerDecoder

from genft_tune.models.llama._component_builders import llama, llama_genft, llama_wegeft
from genft_tune.modules._builder_args import sized_builder

# config.json of HuggingFaceTB/SmolLM2-135M-Instruct in torchtune's terms.
SMOLLM2_135M: Dict[str, Any] = dict(
    vocab_size=49152,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    embed_dim=576,
    intermediate_dim=1536,
    max_seq_len=8192,
    norm_eps=1e-5,
    rope_base=100_000,
    scale_factor=None,
    tie_word_embeddings=True,
)


def smollm2_135m() -> TransformerDecoder:
    """SmolLM2 135M (plain, no adapter): 30 layers, embed 576, 9 heads, 3 KV heads,
    intermediate 1536, vocab 49152, RoPE base 100 000, tied embeddings.

    Returns:
        TransformerDecoder: the model.
    """
    return llama(**SMOLLM2_135M, attn_dropout=0.0)


genft_smollm2_135m = sized_builder(
    llama_genft,
    name="genft_smollm2_135m",
    summary="SmolLM2 135M with GenFT (architecture of :func:`smollm2_135m`; its lm head is tied to the "
    "embeddings, so it cannot be adapted). NF4 (``quantize_base``): SmolLM2's shapes are not "
    "multiples of torchao's default NF4 scaler block, so their per-block scales are grouped in "
    "smaller blocks (see :func:`~genft_tune.models.llama._component_builders.nf4_kwargs`).",
    fixed=dict(SMOLLM2_135M, attn_dropout=0.0),
    defaults={"genft_attn_modules": ("q_proj", "v_proj")},
)

qgenft_smollm2_135m = partial(genft_smollm2_135m, quantize_base=True)
qgenft_smollm2_135m.__doc__ = """
Builder for SmolLM2 135M with GenFT on an NF4-quantized base (QGenFT). Please see
`genft_smollm2_135m` for full API arguments.
"""

wegeft_smollm2_135m = sized_builder(
    llama_wegeft,
    name="wegeft_smollm2_135m",
    summary="SmolLM2 135M with WeGeFT (architecture of :func:`smollm2_135m`; its lm head is tied to the "
    "embeddings, so it cannot be adapted).",
    fixed=dict(SMOLLM2_135M, attn_dropout=0.0),
    defaults={"wegeft_attn_modules": ("q_proj", "v_proj")},
)
