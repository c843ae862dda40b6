"""SmolLM2 135M builders: plain and with GenFT.

SmolLM2 (HuggingFaceTB, Apache-2.0) is a Llama architecture with plain RoPE
(base 100 000, no Llama 3.1 scaling) and tied embeddings; the numbers below are those
of ``SmolLM2-135M-Instruct``'s ``config.json`` (also what
``genft_tune.models.smollm2._convert_gguf`` writes). Its Hugging Face checkpoint loads
with torchtune's ``FullModelHFCheckpointer`` and ``model_type: LLAMA3_2``.
"""

from functools import partial
from typing import Any, Dict, Sequence

from torchtune.modules import TransformerDecoder

from genft_tune.models.llama._component_builders import llama, llama_genft, llama_wegeft
from genft_tune.modules import GenFTConfig

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


def genft_smollm2_135m(
    *,
    genft_attn_modules: Sequence[str] = ("q_proj", "v_proj"),
    apply_genft_to_mlp: bool = False,
    apply_genft_to_output: bool = False,
    shared_dim: int = GenFTConfig.shared_dim,
    specific_dim: int = GenFTConfig.specific_dim,
    ratio: float = GenFTConfig.ratio,
    scaling: float = GenFTConfig.scaling,
    act_in: str = GenFTConfig.act_in,
    act_out: str = GenFTConfig.act_out,
    dropout: float = 0.0,
    init_a: str = "kaiming_uniform",
    init_b: str = "kaiming_uniform",
    generator_bias: bool = False,
    zero_init: bool = True,
    recompute: bool = True,
    stages: str = "both",
    convention: str = "ours",
    fused: str = "never",
    quantize_base: bool = False,
) -> TransformerDecoder:
    """SmolLM2 135M with GenFT (architecture of :func:`smollm2_135m`).

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``. Default: q_proj, v_proj
        apply_genft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_genft_to_output (bool): must stay False: SmolLM2's lm head is tied to the
            embeddings. Default: False
        shared_dim (int): GenFT ``a``. Default: ``GenFTConfig.shared_dim``
        specific_dim (int): GenFT ``b``. Default: ``GenFTConfig.specific_dim``
        ratio (float): scale of ``W0`` inside the generator. Default: ``GenFTConfig.ratio``
        scaling (float): scale of ``dW``. Default: ``GenFTConfig.scaling``
        act_in (str): generator activation after ``D``. Default: ``GenFTConfig.act_in``
        act_out (str): generator activation after ``E``. Default: ``GenFTConfig.act_out``
        dropout (float): dropout on ``F_row``/``F_col``. Default: 0.0
        init_a (str): init of the ``A`` factors. Default: "kaiming_uniform"
        init_b (str): init of the ``B`` factors. Default: "kaiming_uniform"
        generator_bias (bool): learn the generator's biases. Default: False
        zero_init (bool): ``dW = 0`` at step 0. Default: True
        recompute (bool): recompute the generator in backward. Default: True
        stages (str): "both", "row" or "column". Default: "both"
        convention (str): "ours", "authors_peft" or "authors_vit" (see ``GenFTConfig``). Default: "ours"
        fused (str): "never", "auto" or "always": the fused Triton kernels for the dense training forward (see ``GenFTConfig``). Default: "never"
        quantize_base (bool): NF4 base weights for the attention and MLP linears. SmolLM2's
            shapes are not multiples of torchao's default NF4 scaler block, so their
            per-block scales are grouped in smaller blocks (see
            :func:`~genft_tune.models.llama._component_builders.nf4_kwargs`). Default: False

    Returns:
        TransformerDecoder: the model with GenFT applied.

    Raises:
        ValueError: see :func:`~genft_tune.models.llama.llama_genft`.
    """
    return llama_genft(
        genft_attn_modules=genft_attn_modules,
        apply_genft_to_mlp=apply_genft_to_mlp,
        apply_genft_to_output=apply_genft_to_output,
        **SMOLLM2_135M,
        attn_dropout=0.0,
        shared_dim=shared_dim,
        specific_dim=specific_dim,
        ratio=ratio,
        scaling=scaling,
        act_in=act_in,
        act_out=act_out,
        dropout=dropout,
        init_a=init_a,
        init_b=init_b,
        generator_bias=generator_bias,
        zero_init=zero_init,
        recompute=recompute,
        stages=stages,
        convention=convention,
        fused=fused,
        quantize_base=quantize_base,
    )


qgenft_smollm2_135m = partial(genft_smollm2_135m, quantize_base=True)
qgenft_smollm2_135m.__doc__ = """
Builder for SmolLM2 135M with GenFT on an NF4-quantized base (QGenFT). Please see
`genft_smollm2_135m` for full API arguments.
"""


def wegeft_smollm2_135m(
    *,
    wegeft_attn_modules: Sequence[str] = ("q_proj", "v_proj"),
    apply_wegeft_to_mlp: bool = False,
    wegeft_rank: int = 64,
    wegeft_alpha: float = 128.0,
    wegeft_dropout: float = 0.0,
    wegeft_shared: bool = True,
    recompute: bool = True,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """SmolLM2 135M with WeGeFT (architecture of :func:`smollm2_135m`; the lm head is
    tied to the embeddings, so it cannot be adapted).

    Args:
        wegeft_attn_modules (Sequence[str]): attention projections to adapt. Default: q_proj, v_proj
        apply_wegeft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        wegeft_rank (int): ``r``. Default: 64
        wegeft_alpha (float): ``dW`` is scaled by ``alpha / r``. Default: 128.0
        wegeft_dropout (float): dropout on ``W0`` before ``phi``. Default: 0.0
        wegeft_shared (bool): one ``(phi, psi)`` per module type across layers. Default: True
        recompute (bool): recompute ``(out, in)`` intermediates in backward. Default: True
        quantize_base (bool): NF4 base weights. Default: False

    Returns:
        TransformerDecoder: the model with WeGeFT applied.
    """
    return llama_wegeft(
        wegeft_attn_modules=wegeft_attn_modules,
        apply_wegeft_to_mlp=apply_wegeft_to_mlp,
        **SMOLLM2_135M,
        attn_dropout=0.0,
        wegeft_rank=wegeft_rank,
        wegeft_alpha=wegeft_alpha,
        wegeft_dropout=wegeft_dropout,
        wegeft_shared=wegeft_shared,
        recompute=recompute,
        quantize_base=quantize_base,
    )
