"""Component builders for Llama-family decoders (Llama 2, 3, 3.1, 3.2, SmolLM2) with GenFT
(and WeGeFT, the weight-generative baseline).

The decoder is torchtune's :class:`~torchtune.modules.TransformerDecoder` with the
module names torchtune's own ``llama3`` builders use (``layers.N.attn.q_proj``,
``layers.N.mlp.w1``, ``output``...), so torchtune's Hugging Face checkpointer
(``convert_weights.hf_to_tune``) loads it unchanged and a merged GenFT model is a
plain torchtune Llama.

Selected linears become :class:`~genft_tune.modules.GenFTLinear` layers built from
one :class:`~genft_tune.modules.GenFTGenerators` per model, registered as
``model.genft_generators``: every adapted layer with the same ``(out, in)`` shares
that shape's generator (GQA's non-square ``k_proj``/``v_proj`` get their own).
:func:`llama_wegeft` does the same with WeGeFT layers and one
:class:`~genft_tune.modules.WeGeFTSharedFactors` registered as ``model.wegeft_factors``.
With ``quantize_base`` the frozen attention/MLP weights are torchao NF4 tensors (the lm
head is not quantized, as in torchtune's QLoRA builders).
"""

from typing import Callable, Dict, List, Optional, Sequence

from torch import nn
from torchtune.models.llama3._model_utils import scale_hidden_dim_for_mlp
from torchtune.models.llama3_1._position_embeddings import Llama3ScaledRoPE
from torchtune.modules import (
    FeedForward,
    FrozenNF4Linear,
    MultiHeadAttention,
    RMSNorm,
    RotaryPositionalEmbeddings,
    TiedLinear,
    TransformerDecoder,
    TransformerSelfAttentionLayer,
)
from torchtune.modules.common_utils import _register_reparametrize_state_dict_hooks

from genft_tune.modules import apply_adapter, GenFTConfig, WeGeFTConfig
from genft_tune.modules._apply import ATTN_MODULES, check_attn_modules
from genft_tune.modules._builder_args import shared_args_doc, takes_config_fields
from genft_tune.modules.wegeft.config import BUILDER_KEYWORDS

MLP_MODULES = ("w1", "w2", "w3")

# (name, in_dim, out_dim) -> the module for one projection. ``name`` is one of
# ATTN_MODULES, MLP_MODULES or "output" (the lm head).
LinearFactory = Callable[[str, int, int], nn.Module]


def _check_dims(
    *, vocab_size: int, num_layers: int, num_heads: int, num_kv_heads: int, embed_dim: int,
    max_seq_len: int,
) -> None:
    for field, value in (
        ("vocab_size", vocab_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("num_kv_heads", num_kv_heads),
        ("embed_dim", embed_dim),
        ("max_seq_len", max_seq_len),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{field} must be a positive integer, got {value!r}")
    if embed_dim % num_heads != 0:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})"
        )


def _rope(
    *, head_dim: int, max_seq_len: int, rope_base: float, scale_factor: Optional[float]
) -> nn.Module:
    """Plain RoPE (Llama 2/3, SmolLM2) or Llama 3.1's scaled RoPE when ``scale_factor`` is set."""
    if scale_factor is None:
        return RotaryPositionalEmbeddings(dim=head_dim, max_seq_len=max_seq_len, base=rope_base)
    return Llama3ScaledRoPE(
        dim=head_dim, max_seq_len=max_seq_len, base=rope_base, scale_factor=scale_factor
    )


def plain_linear(quantize_base: bool = False) -> LinearFactory:
    """A factory for base linears: ``nn.Linear``, or torchtune's ``FrozenNF4Linear``
    with ``quantize_base`` (never for the lm head, as in torchtune's QLoRA builders)."""

    def make(name: str, in_dim: int, out_dim: int) -> nn.Module:
        if quantize_base and name != "output":
            return FrozenNF4Linear(in_dim, out_dim, bias=False, **nf4_kwargs(name, out_dim, in_dim))
        return nn.Linear(in_dim, out_dim, bias=False)

    return make


NF4_BLOCK_SIZE = 64
NF4_SCALER_BLOCK_SIZE = 256


def nf4_kwargs(name: str, out_dim: int, in_dim: int) -> Dict[str, int]:
    """``to_nf4`` block sizes for a ``(out_dim, in_dim)`` weight.

    torchao's defaults (``block_size=64``, ``scaler_block_size=256``, what torchtune
    uses) need ``out * in`` divisible by ``64 * 256``; shapes such as SmolLM2's
    ``(192, 576)`` are not, so the scaler block shrinks to the largest power of two
    that divides the number of 64-element blocks (the weights are quantized the same
    way, only the per-block scales are grouped more finely).

    Args:
        name (str): the projection's name, for the error message.
        out_dim (int): output dimension.
        in_dim (int): input dimension.

    Returns:
        Dict[str, int]: ``block_size`` and ``scaler_block_size``.

    Raises:
        ValueError: if ``out * in`` is not a multiple of 64.
    """
    numel = out_dim * in_dim
    if numel % NF4_BLOCK_SIZE != 0:
        raise ValueError(
            f"quantize_base=True cannot store {name} ({out_dim}, {in_dim}) in NF4: "
            f"out * in = {numel} must be divisible by the NF4 block size {NF4_BLOCK_SIZE}"
        )
    n_blocks = numel // NF4_BLOCK_SIZE
    scaler = NF4_SCALER_BLOCK_SIZE
    while n_blocks % scaler:
        scaler //= 2
    return {"block_size": NF4_BLOCK_SIZE, "scaler_block_size": scaler}


def llama_decoder(
    *,
    linear: LinearFactory,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: Optional[int] = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 500_000,
    scale_factor: Optional[float] = None,
    tie_word_embeddings: bool = False,
) -> TransformerDecoder:
    """A Llama decoder whose every linear comes from ``linear(name, in_dim, out_dim)``.

    The architecture is torchtune's ``llama3``/``llama3_1``/``llama3_2`` (which differ
    only in RoPE scaling and tied embeddings): RMSNorm pre-norm blocks, GQA attention
    with RoPE, a SwiGLU ``FeedForward`` and an lm head (``TiedLinear`` when tied).

    Args:
        linear (LinearFactory): builds each projection; names are ``q_proj``, ``k_proj``,
            ``v_proj``, ``output_proj``, ``w1``, ``w2``, ``w3`` and ``output`` (lm head,
            not called when ``tie_word_embeddings``).
        vocab_size (int): number of tokens in the vocabulary.
        num_layers (int): number of transformer layers.
        num_heads (int): number of query heads.
        num_kv_heads (int): number of key/value heads (``num_heads`` must be a multiple).
        embed_dim (int): embedding dimension.
        max_seq_len (int): maximum sequence length (RoPE cache and KV cache).
        intermediate_dim (Optional[int]): MLP hidden size; None computes torchtune's
            ``scale_hidden_dim_for_mlp(embed_dim)``.
        attn_dropout (float): attention dropout. Default: 0.0
        norm_eps (float): RMSNorm epsilon. Default: 1e-5
        rope_base (float): RoPE base (theta). Default: 500_000
        scale_factor (Optional[float]): Llama 3.1 RoPE scaling factor; None for plain RoPE.
        tie_word_embeddings (bool): share the embedding matrix with the lm head.

    Returns:
        TransformerDecoder: the model.

    Raises:
        ValueError: if a dimension is not a positive integer or heads do not divide.
    """
    _check_dims(
        vocab_size=vocab_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, embed_dim=embed_dim, max_seq_len=max_seq_len,
    )
    head_dim = embed_dim // num_heads
    hidden_dim = intermediate_dim if intermediate_dim else scale_hidden_dim_for_mlp(embed_dim)
    rope = _rope(
        head_dim=head_dim, max_seq_len=max_seq_len, rope_base=rope_base, scale_factor=scale_factor
    )
    layers = nn.ModuleList()
    for _ in range(num_layers):
        attn = MultiHeadAttention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            q_proj=linear("q_proj", embed_dim, num_heads * head_dim),
            k_proj=linear("k_proj", embed_dim, num_kv_heads * head_dim),
            v_proj=linear("v_proj", embed_dim, num_kv_heads * head_dim),
            output_proj=linear("output_proj", num_heads * head_dim, embed_dim),
            pos_embeddings=rope,
            max_seq_len=max_seq_len,
            attn_dropout=attn_dropout,
        )
        mlp = FeedForward(
            gate_proj=linear("w1", embed_dim, hidden_dim),
            down_proj=linear("w2", hidden_dim, embed_dim),
            up_proj=linear("w3", embed_dim, hidden_dim),
        )
        layers.append(
            TransformerSelfAttentionLayer(
                attn=attn,
                mlp=mlp,
                sa_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
                mlp_norm=RMSNorm(dim=embed_dim, eps=norm_eps),
            )
        )
    tok_embeddings = nn.Embedding(vocab_size, embed_dim)
    if tie_word_embeddings:
        output = TiedLinear(tok_embeddings)
    else:
        output = linear("output", embed_dim, vocab_size)
    return TransformerDecoder(
        tok_embeddings=tok_embeddings,
        layers=layers,
        max_seq_len=max_seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
        norm=RMSNorm(embed_dim, eps=norm_eps),
        output=output,
    )


def llama(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: Optional[int] = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 500_000,
    scale_factor: Optional[float] = None,
    tie_word_embeddings: bool = False,
) -> TransformerDecoder:
    """A plain (adapter-free) Llama decoder: torchtune's ``llama3`` with optional Llama 3.1
    RoPE scaling and tied embeddings (what SmolLM2 needs: plain RoPE, tied).

    Args:
        vocab_size (int): number of tokens in the vocabulary.
        num_layers (int): number of transformer layers.
        num_heads (int): number of query heads.
        num_kv_heads (int): number of key/value heads.
        embed_dim (int): embedding dimension.
        max_seq_len (int): maximum sequence length.
        intermediate_dim (Optional[int]): MLP hidden size (None: torchtune's default).
        attn_dropout (float): attention dropout. Default: 0.0
        norm_eps (float): RMSNorm epsilon. Default: 1e-5
        rope_base (float): RoPE base. Default: 500_000
        scale_factor (Optional[float]): Llama 3.1 RoPE scaling; None for plain RoPE.
        tie_word_embeddings (bool): tie the lm head to the embeddings. Default: False

    Returns:
        TransformerDecoder: the model.
    """
    return llama_decoder(
        linear=plain_linear(False),
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        max_seq_len=max_seq_len,
        intermediate_dim=intermediate_dim,
        attn_dropout=attn_dropout,
        norm_eps=norm_eps,
        rope_base=rope_base,
        scale_factor=scale_factor,
        tie_word_embeddings=tie_word_embeddings,
    )


_LLAMA_ARGS_DOC = """
        vocab_size (int): number of tokens in the vocabulary.
        num_layers (int): number of transformer layers.
        num_heads (int): number of query heads.
        num_kv_heads (int): number of key/value heads.
        embed_dim (int): embedding dimension.
        max_seq_len (int): maximum sequence length.
        intermediate_dim (Optional[int]): MLP hidden size (None: torchtune's default).
        attn_dropout (float): attention dropout. Default: 0.0
        norm_eps (float): RMSNorm epsilon. Default: 1e-5
        rope_base (float): RoPE base. Default: 500_000
        scale_factor (Optional[float]): Llama 3.1-style RoPE scaling (8 for Llama 3.1,
            32 for Llama 3.2); None for plain RoPE (Llama 2/3, SmolLM2). Default: None
        tie_word_embeddings (bool): tie the lm head to the embeddings. Default: False
        quantize_base (bool): store the frozen base weights of the attention and MLP
            linears in NF4 (the lm head stays unquantized, as in torchtune's QLoRA).
            Default: False"""


_document_llama_args = shared_args_doc("llama_args", _LLAMA_ARGS_DOC)


def _targets(method: str, attn_field: str, attn_modules, mlp: bool, output: bool, tied: bool) -> List[str]:
    """The module names a Llama builder adapts, checked."""
    targets = set(check_attn_modules(attn_field, attn_modules))
    if mlp:
        targets.update(MLP_MODULES)
    if output:
        if tied:
            raise ValueError(
                f"apply_{method.lower()}_to_output=True is not supported with tie_word_embeddings=True: "
                "the lm head is the embedding matrix"
            )
        targets.add("output")
    if not targets:
        raise ValueError(
            f"{method} is applied to no layer: give {attn_field} (from "
            f"{list(ATTN_MODULES)}) or set apply_{method.lower()}_to_mlp / apply_{method.lower()}_to_output"
        )
    return sorted(targets)


@takes_config_fields(GenFTConfig)
@_document_llama_args
def llama_genft(
    *,
    genft_attn_modules: Sequence[str],
    apply_genft_to_mlp: bool = False,
    apply_genft_to_output: bool = False,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: Optional[int] = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 500_000,
    scale_factor: Optional[float] = None,
    tie_word_embeddings: bool = False,
    quantize_base: bool = False,
    config: GenFTConfig,
) -> TransformerDecoder:
    """A Llama decoder with GenFT applied to the selected linears.

    All GenFT layers share one :class:`~genft_tune.modules.GenFTGenerators`
    (registered as ``model.genft_generators``), so each weight shape has one shared
    generator, saved once; layer-specific factors live in each layer. The GenFT
    hyperparameters are :class:`~genft_tune.modules.GenFTConfig`'s fields.

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``.
        apply_genft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3`` too. Default: False
        apply_genft_to_output (bool): adapt the lm head (``output``); not allowed with
            tied embeddings. Default: False{llama_args}

    Returns:
        TransformerDecoder: the model, with ``genft_generators`` registered on it.

    Raises:
        ValueError: on an invalid GenFT hyperparameter (before anything is allocated),
            an unknown name in ``genft_attn_modules``, no adapted layer at all, or
            ``apply_genft_to_output`` with ``tie_word_embeddings``.
    """
    targets = _targets(
        "GenFT", "genft_attn_modules", genft_attn_modules, apply_genft_to_mlp, apply_genft_to_output, tie_word_embeddings
    )
    return _adapted_llama(
        config,
        targets,
        quantize_base=quantize_base,
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        max_seq_len=max_seq_len,
        intermediate_dim=intermediate_dim,
        attn_dropout=attn_dropout,
        norm_eps=norm_eps,
        rope_base=rope_base,
        scale_factor=scale_factor,
        tie_word_embeddings=tie_word_embeddings,
    )


def _adapted_llama(config, targets, *, quantize_base: bool, **dims) -> TransformerDecoder:
    """A Llama decoder of plain (or NF4) linears with ``config``'s adapter on ``targets``."""
    model = llama_decoder(linear=plain_linear(quantize_base), **dims)
    apply_adapter(model, config, sorted(targets))
    if quantize_base:
        # As torchtune's QLoRA builders: NF4 weights leave state_dict() as bf16.
        _register_reparametrize_state_dict_hooks(model)
    return model


@takes_config_fields(WeGeFTConfig, keywords=BUILDER_KEYWORDS)
@_document_llama_args
def llama_wegeft(
    *,
    wegeft_attn_modules: Sequence[str],
    apply_wegeft_to_mlp: bool = False,
    apply_wegeft_to_output: bool = False,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    max_seq_len: int,
    intermediate_dim: Optional[int] = None,
    attn_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    rope_base: float = 500_000,
    scale_factor: Optional[float] = None,
    tie_word_embeddings: bool = False,
    quantize_base: bool = False,
    config: WeGeFTConfig,
) -> TransformerDecoder:
    """A Llama decoder with WeGeFT (arXiv 2312.00700, ``dW = (alpha/r) W0 phi^T psi``)
    applied to the selected linears: the weight-generative baseline for GenFT.

    One :class:`~genft_tune.modules.WeGeFTSharedFactors` is registered as
    ``model.wegeft_factors``. With ``wegeft_shared`` (the authors' ``tied_modules``, the
    default) each module type (``q_proj``, ``v_proj``, ``w1``...) has one ``(phi, psi)``
    pair shared by all layers (keys ``wegeft_factors.<type>.phi``); otherwise every
    adapted layer owns its pair (keys ``<layer>.wegeft.phi``). ``phi`` starts at zero,
    so step 0 is the base model. The WeGeFT hyperparameters are
    :class:`~genft_tune.modules.WeGeFTConfig`'s fields (``wegeft_rank`` for ``rank``...).

    Args:
        wegeft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``{"q_proj", "k_proj", "v_proj", "output_proj"}``.
        apply_wegeft_to_mlp (bool): adapt ``w1``, ``w2``, ``w3`` too. Default: False
        apply_wegeft_to_output (bool): adapt the lm head; not allowed with tied
            embeddings. Default: False{llama_args}

    Returns:
        TransformerDecoder: the model, with ``wegeft_factors`` registered on it.

    Raises:
        ValueError: on an invalid WeGeFT hyperparameter (before anything is allocated),
            an unknown name in ``wegeft_attn_modules``, no adapted layer, or
            ``apply_wegeft_to_output`` with ``tie_word_embeddings``.
    """
    targets = _targets(
        "WeGeFT", "wegeft_attn_modules", wegeft_attn_modules, apply_wegeft_to_mlp, apply_wegeft_to_output,
        tie_word_embeddings,
    )
    return _adapted_llama(
        config,
        targets,
        quantize_base=quantize_base,
        vocab_size=vocab_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        embed_dim=embed_dim,
        max_seq_len=max_seq_len,
        intermediate_dim=intermediate_dim,
        attn_dropout=attn_dropout,
        norm_eps=norm_eps,
        rope_base=rope_base,
        scale_factor=scale_factor,
        tie_word_embeddings=tie_word_embeddings,
    )
