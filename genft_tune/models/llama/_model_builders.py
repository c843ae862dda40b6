"""Model builders for Llama models with GenFT, with torchtune's architecture numbers.

Each ``genft_*`` builder has exactly the dimensions of torchtune's base builder of the
same name (``torchtune.models.llama3_2.llama3_2_1b`` etc.), so torchtune's Hugging Face
checkpoints load into it; ``qgenft_*`` is the same with NF4 base weights (QGenFT).
"""

from functools import partial
from typing import Callable, Sequence

from torchtune.modules import TransformerDecoder

from genft_tune.models.llama._component_builders import llama_genft, llama_wegeft
from genft_tune.modules import GenFTConfig

# The authors' LLaMA runs adapt q and v.
DEFAULT_ATTN_MODULES = ("q_proj", "v_proj")


def _quantized(builder: Callable[..., TransformerDecoder], title: str) -> Callable[..., TransformerDecoder]:
    """``builder`` with ``quantize_base=True``, documented like torchtune's ``qlora_*``."""
    quantized = partial(builder, quantize_base=True)
    quantized.__doc__ = f"""
Builder for {title} with GenFT on an NF4-quantized base (QGenFT): the frozen weights of
the attention and MLP linears are torchao NF4 tensors, the GenFT adapter trains in the
model's dtype. Please see `{builder.__name__}` for full API arguments.
"""
    return quantized


def genft_llama3_2_1b(
    *,
    genft_attn_modules: Sequence[str] = DEFAULT_ATTN_MODULES,
    apply_genft_to_mlp: bool = False,
    apply_genft_to_output: bool = False,
    tie_word_embeddings: bool = True,
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
    """Llama 3.2 1B with GenFT: the architecture of torchtune's ``llama3_2_1b``.

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``. Default: q_proj, v_proj
            (the authors' LLaMA setup)
        apply_genft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_genft_to_output (bool): adapt the lm head. Default: False
        tie_word_embeddings (bool): tie the lm head to the embeddings, as the released
            model does. Default: True
        shared_dim (int): GenFT ``a``, width of the layer-shared factors. Default: ``GenFTConfig.shared_dim``
        specific_dim (int): GenFT ``b``, width of the per-layer factors. Default: ``GenFTConfig.specific_dim``
        ratio (float): scale of ``W0`` inside the generator. Default: ``GenFTConfig.ratio``
        scaling (float): scale of ``dW``. Default: ``GenFTConfig.scaling``
        act_in (str): generator activation after ``D``. Default: ``GenFTConfig.act_in``
        act_out (str): generator activation after ``E``. Default: ``GenFTConfig.act_out``
        dropout (float): dropout on ``F_row``/``F_col`` (training only). Default: 0.0
        init_a (str): init of the ``A`` factors. Default: "kaiming_uniform"
        init_b (str): init of the ``B`` factors. Default: "kaiming_uniform"
        generator_bias (bool): learn the generator's biases. Default: False
        zero_init (bool): ``dW = 0`` at step 0 (training starts from the base model). Default: True
        recompute (bool): recompute the generator in backward. Default: True
        stages (str): "both", "row" or "column" (the paper's ablations). Default: "both"
        convention (str): "ours", "authors_peft" or "authors_vit" (see ``GenFTConfig``). Default: "ours"
        fused (str): "never", "auto" or "always": the fused Triton kernels for the dense training forward (see ``GenFTConfig``). Default: "never"
        quantize_base (bool): NF4 base weights for attention and MLP linears (QGenFT). Default: False

    Returns:
        TransformerDecoder: the model with GenFT applied.
    """
    return llama_genft(
        genft_attn_modules=genft_attn_modules,
        apply_genft_to_mlp=apply_genft_to_mlp,
        apply_genft_to_output=apply_genft_to_output,
        vocab_size=128_256,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        embed_dim=2048,
        max_seq_len=131072,
        intermediate_dim=8192,
        norm_eps=1e-5,
        rope_base=500_000,
        scale_factor=32,
        attn_dropout=0.0,
        tie_word_embeddings=tie_word_embeddings,
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


qgenft_llama3_2_1b = _quantized(genft_llama3_2_1b, "Llama 3.2 1B")

def genft_llama3_2_3b(
    *,
    genft_attn_modules: Sequence[str] = DEFAULT_ATTN_MODULES,
    apply_genft_to_mlp: bool = False,
    apply_genft_to_output: bool = False,
    tie_word_embeddings: bool = True,
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
    """Llama 3.2 3B with GenFT: the architecture of torchtune's ``llama3_2_3b``.

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``. Default: q_proj, v_proj
            (the authors' LLaMA setup)
        apply_genft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_genft_to_output (bool): adapt the lm head. Default: False
        tie_word_embeddings (bool): tie the lm head to the embeddings, as the released
            model does. Default: True
        shared_dim (int): GenFT ``a``, width of the layer-shared factors. Default: ``GenFTConfig.shared_dim``
        specific_dim (int): GenFT ``b``, width of the per-layer factors. Default: ``GenFTConfig.specific_dim``
        ratio (float): scale of ``W0`` inside the generator. Default: ``GenFTConfig.ratio``
        scaling (float): scale of ``dW``. Default: ``GenFTConfig.scaling``
        act_in (str): generator activation after ``D``. Default: ``GenFTConfig.act_in``
        act_out (str): generator activation after ``E``. Default: ``GenFTConfig.act_out``
        dropout (float): dropout on ``F_row``/``F_col`` (training only). Default: 0.0
        init_a (str): init of the ``A`` factors. Default: "kaiming_uniform"
        init_b (str): init of the ``B`` factors. Default: "kaiming_uniform"
        generator_bias (bool): learn the generator's biases. Default: False
        zero_init (bool): ``dW = 0`` at step 0 (training starts from the base model). Default: True
        recompute (bool): recompute the generator in backward. Default: True
        stages (str): "both", "row" or "column" (the paper's ablations). Default: "both"
        convention (str): "ours", "authors_peft" or "authors_vit" (see ``GenFTConfig``). Default: "ours"
        fused (str): "never", "auto" or "always": the fused Triton kernels for the dense training forward (see ``GenFTConfig``). Default: "never"
        quantize_base (bool): NF4 base weights for attention and MLP linears (QGenFT). Default: False

    Returns:
        TransformerDecoder: the model with GenFT applied.
    """
    return llama_genft(
        genft_attn_modules=genft_attn_modules,
        apply_genft_to_mlp=apply_genft_to_mlp,
        apply_genft_to_output=apply_genft_to_output,
        vocab_size=128_256,
        num_layers=28,
        num_heads=24,
        num_kv_heads=8,
        embed_dim=3072,
        max_seq_len=131072,
        intermediate_dim=8192,
        norm_eps=1e-5,
        rope_base=500_000,
        scale_factor=32,
        attn_dropout=0.0,
        tie_word_embeddings=tie_word_embeddings,
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


qgenft_llama3_2_3b = _quantized(genft_llama3_2_3b, "Llama 3.2 3B")

def genft_llama3_1_8b(
    *,
    genft_attn_modules: Sequence[str] = DEFAULT_ATTN_MODULES,
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
    """Llama 3.1 8B with GenFT: the architecture of torchtune's ``llama3_1_8b``.

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``. Default: q_proj, v_proj
            (the authors' LLaMA setup)
        apply_genft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_genft_to_output (bool): adapt the lm head. Default: False
        shared_dim (int): GenFT ``a``, width of the layer-shared factors. Default: ``GenFTConfig.shared_dim``
        specific_dim (int): GenFT ``b``, width of the per-layer factors. Default: ``GenFTConfig.specific_dim``
        ratio (float): scale of ``W0`` inside the generator. Default: ``GenFTConfig.ratio``
        scaling (float): scale of ``dW``. Default: ``GenFTConfig.scaling``
        act_in (str): generator activation after ``D``. Default: ``GenFTConfig.act_in``
        act_out (str): generator activation after ``E``. Default: ``GenFTConfig.act_out``
        dropout (float): dropout on ``F_row``/``F_col`` (training only). Default: 0.0
        init_a (str): init of the ``A`` factors. Default: "kaiming_uniform"
        init_b (str): init of the ``B`` factors. Default: "kaiming_uniform"
        generator_bias (bool): learn the generator's biases. Default: False
        zero_init (bool): ``dW = 0`` at step 0 (training starts from the base model). Default: True
        recompute (bool): recompute the generator in backward. Default: True
        stages (str): "both", "row" or "column" (the paper's ablations). Default: "both"
        convention (str): "ours", "authors_peft" or "authors_vit" (see ``GenFTConfig``). Default: "ours"
        fused (str): "never", "auto" or "always": the fused Triton kernels for the dense training forward (see ``GenFTConfig``). Default: "never"
        quantize_base (bool): NF4 base weights for attention and MLP linears (QGenFT). Default: False

    Returns:
        TransformerDecoder: the model with GenFT applied.
    """
    return llama_genft(
        genft_attn_modules=genft_attn_modules,
        apply_genft_to_mlp=apply_genft_to_mlp,
        apply_genft_to_output=apply_genft_to_output,
        vocab_size=128_256,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        embed_dim=4096,
        max_seq_len=131072,
        intermediate_dim=14336,
        norm_eps=1e-5,
        rope_base=500_000,
        scale_factor=8,
        attn_dropout=0.0,
        tie_word_embeddings=False,
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


qgenft_llama3_1_8b = _quantized(genft_llama3_1_8b, "Llama 3.1 8B")

def genft_llama3_1_70b(
    *,
    genft_attn_modules: Sequence[str] = DEFAULT_ATTN_MODULES,
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
    """Llama 3.1 70B with GenFT: the architecture of torchtune's ``llama3_1_70b``.

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``. Default: q_proj, v_proj
            (the authors' LLaMA setup)
        apply_genft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_genft_to_output (bool): adapt the lm head. Default: False
        shared_dim (int): GenFT ``a``, width of the layer-shared factors. Default: ``GenFTConfig.shared_dim``
        specific_dim (int): GenFT ``b``, width of the per-layer factors. Default: ``GenFTConfig.specific_dim``
        ratio (float): scale of ``W0`` inside the generator. Default: ``GenFTConfig.ratio``
        scaling (float): scale of ``dW``. Default: ``GenFTConfig.scaling``
        act_in (str): generator activation after ``D``. Default: ``GenFTConfig.act_in``
        act_out (str): generator activation after ``E``. Default: ``GenFTConfig.act_out``
        dropout (float): dropout on ``F_row``/``F_col`` (training only). Default: 0.0
        init_a (str): init of the ``A`` factors. Default: "kaiming_uniform"
        init_b (str): init of the ``B`` factors. Default: "kaiming_uniform"
        generator_bias (bool): learn the generator's biases. Default: False
        zero_init (bool): ``dW = 0`` at step 0 (training starts from the base model). Default: True
        recompute (bool): recompute the generator in backward. Default: True
        stages (str): "both", "row" or "column" (the paper's ablations). Default: "both"
        convention (str): "ours", "authors_peft" or "authors_vit" (see ``GenFTConfig``). Default: "ours"
        fused (str): "never", "auto" or "always": the fused Triton kernels for the dense training forward (see ``GenFTConfig``). Default: "never"
        quantize_base (bool): NF4 base weights for attention and MLP linears (QGenFT). Default: False

    Returns:
        TransformerDecoder: the model with GenFT applied.
    """
    return llama_genft(
        genft_attn_modules=genft_attn_modules,
        apply_genft_to_mlp=apply_genft_to_mlp,
        apply_genft_to_output=apply_genft_to_output,
        vocab_size=128_256,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        embed_dim=8192,
        max_seq_len=131072,
        intermediate_dim=28672,
        norm_eps=1e-5,
        rope_base=500_000,
        scale_factor=8,
        attn_dropout=0.0,
        tie_word_embeddings=False,
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


qgenft_llama3_1_70b = _quantized(genft_llama3_1_70b, "Llama 3.1 70B")

def genft_llama3_1_405b(
    *,
    genft_attn_modules: Sequence[str] = DEFAULT_ATTN_MODULES,
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
    """Llama 3.1 405B with GenFT: the architecture of torchtune's ``llama3_1_405b``.

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``. Default: q_proj, v_proj
            (the authors' LLaMA setup)
        apply_genft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_genft_to_output (bool): adapt the lm head. Default: False
        shared_dim (int): GenFT ``a``, width of the layer-shared factors. Default: ``GenFTConfig.shared_dim``
        specific_dim (int): GenFT ``b``, width of the per-layer factors. Default: ``GenFTConfig.specific_dim``
        ratio (float): scale of ``W0`` inside the generator. Default: ``GenFTConfig.ratio``
        scaling (float): scale of ``dW``. Default: ``GenFTConfig.scaling``
        act_in (str): generator activation after ``D``. Default: ``GenFTConfig.act_in``
        act_out (str): generator activation after ``E``. Default: ``GenFTConfig.act_out``
        dropout (float): dropout on ``F_row``/``F_col`` (training only). Default: 0.0
        init_a (str): init of the ``A`` factors. Default: "kaiming_uniform"
        init_b (str): init of the ``B`` factors. Default: "kaiming_uniform"
        generator_bias (bool): learn the generator's biases. Default: False
        zero_init (bool): ``dW = 0`` at step 0 (training starts from the base model). Default: True
        recompute (bool): recompute the generator in backward. Default: True
        stages (str): "both", "row" or "column" (the paper's ablations). Default: "both"
        convention (str): "ours", "authors_peft" or "authors_vit" (see ``GenFTConfig``). Default: "ours"
        fused (str): "never", "auto" or "always": the fused Triton kernels for the dense training forward (see ``GenFTConfig``). Default: "never"
        quantize_base (bool): NF4 base weights for attention and MLP linears (QGenFT). Default: False

    Returns:
        TransformerDecoder: the model with GenFT applied.
    """
    return llama_genft(
        genft_attn_modules=genft_attn_modules,
        apply_genft_to_mlp=apply_genft_to_mlp,
        apply_genft_to_output=apply_genft_to_output,
        vocab_size=128_256,
        num_layers=126,
        num_heads=128,
        num_kv_heads=8,
        embed_dim=16384,
        max_seq_len=131072,
        intermediate_dim=53248,
        norm_eps=1e-5,
        rope_base=500_000,
        scale_factor=8,
        attn_dropout=0.0,
        tie_word_embeddings=False,
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


qgenft_llama3_1_405b = _quantized(genft_llama3_1_405b, "Llama 3.1 405B")

def genft_llama2_7b(
    *,
    genft_attn_modules: Sequence[str] = DEFAULT_ATTN_MODULES,
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
    """Llama 2 7B with GenFT: the architecture of torchtune's ``llama2_7b``.

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``. Default: q_proj, v_proj
            (the authors' LLaMA setup)
        apply_genft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_genft_to_output (bool): adapt the lm head. Default: False
        shared_dim (int): GenFT ``a``, width of the layer-shared factors. Default: ``GenFTConfig.shared_dim``
        specific_dim (int): GenFT ``b``, width of the per-layer factors. Default: ``GenFTConfig.specific_dim``
        ratio (float): scale of ``W0`` inside the generator. Default: ``GenFTConfig.ratio``
        scaling (float): scale of ``dW``. Default: ``GenFTConfig.scaling``
        act_in (str): generator activation after ``D``. Default: ``GenFTConfig.act_in``
        act_out (str): generator activation after ``E``. Default: ``GenFTConfig.act_out``
        dropout (float): dropout on ``F_row``/``F_col`` (training only). Default: 0.0
        init_a (str): init of the ``A`` factors. Default: "kaiming_uniform"
        init_b (str): init of the ``B`` factors. Default: "kaiming_uniform"
        generator_bias (bool): learn the generator's biases. Default: False
        zero_init (bool): ``dW = 0`` at step 0 (training starts from the base model). Default: True
        recompute (bool): recompute the generator in backward. Default: True
        stages (str): "both", "row" or "column" (the paper's ablations). Default: "both"
        convention (str): "ours", "authors_peft" or "authors_vit" (see ``GenFTConfig``). Default: "ours"
        fused (str): "never", "auto" or "always": the fused Triton kernels for the dense training forward (see ``GenFTConfig``). Default: "never"
        quantize_base (bool): NF4 base weights for attention and MLP linears (QGenFT). Default: False

    Returns:
        TransformerDecoder: the model with GenFT applied.
    """
    return llama_genft(
        genft_attn_modules=genft_attn_modules,
        apply_genft_to_mlp=apply_genft_to_mlp,
        apply_genft_to_output=apply_genft_to_output,
        vocab_size=32_000,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        embed_dim=4096,
        max_seq_len=4096,
        intermediate_dim=None,
        norm_eps=1e-5,
        rope_base=10_000,
        scale_factor=None,
        attn_dropout=0.0,
        tie_word_embeddings=False,
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


qgenft_llama2_7b = _quantized(genft_llama2_7b, "Llama 2 7B")


# ---- WeGeFT (the weight-generative baseline) ---------------------------------------


def wegeft_llama3_2_1b(
    *,
    wegeft_attn_modules: Sequence[str] = DEFAULT_ATTN_MODULES,
    apply_wegeft_to_mlp: bool = False,
    apply_wegeft_to_output: bool = False,
    tie_word_embeddings: bool = True,
    wegeft_rank: int = 64,
    wegeft_alpha: float = 128.0,
    wegeft_dropout: float = 0.0,
    wegeft_shared: bool = True,
    recompute: bool = True,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """Llama 3.2 1B with WeGeFT: the architecture of torchtune's ``llama3_2_1b``.

    Args:
        wegeft_attn_modules (Sequence[str]): attention projections to adapt. Default: q_proj, v_proj
        apply_wegeft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_wegeft_to_output (bool): adapt the lm head (needs untied embeddings). Default: False
        tie_word_embeddings (bool): tie the lm head to the embeddings. Default: True
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
        apply_wegeft_to_output=apply_wegeft_to_output,
        vocab_size=128_256,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        embed_dim=2048,
        max_seq_len=131072,
        intermediate_dim=8192,
        norm_eps=1e-5,
        rope_base=500_000,
        scale_factor=32,
        attn_dropout=0.0,
        tie_word_embeddings=tie_word_embeddings,
        wegeft_rank=wegeft_rank,
        wegeft_alpha=wegeft_alpha,
        wegeft_dropout=wegeft_dropout,
        wegeft_shared=wegeft_shared,
        recompute=recompute,
        quantize_base=quantize_base,
    )


def wegeft_llama3_1_8b(
    *,
    wegeft_attn_modules: Sequence[str] = DEFAULT_ATTN_MODULES,
    apply_wegeft_to_mlp: bool = False,
    apply_wegeft_to_output: bool = False,
    wegeft_rank: int = 64,
    wegeft_alpha: float = 128.0,
    wegeft_dropout: float = 0.0,
    wegeft_shared: bool = True,
    recompute: bool = True,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """Llama 3.1 8B with WeGeFT: the architecture of torchtune's ``llama3_1_8b``.

    Args:
        wegeft_attn_modules (Sequence[str]): attention projections to adapt. Default: q_proj, v_proj
        apply_wegeft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3``. Default: False
        apply_wegeft_to_output (bool): adapt the lm head. Default: False
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
        apply_wegeft_to_output=apply_wegeft_to_output,
        vocab_size=128_256,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        embed_dim=4096,
        max_seq_len=131072,
        intermediate_dim=14336,
        norm_eps=1e-5,
        rope_base=500_000,
        scale_factor=8,
        attn_dropout=0.0,
        tie_word_embeddings=False,
        wegeft_rank=wegeft_rank,
        wegeft_alpha=wegeft_alpha,
        wegeft_dropout=wegeft_dropout,
        wegeft_shared=wegeft_shared,
        recompute=recompute,
        quantize_base=quantize_base,
    )
