"""Component builders for ViT image classifiers: plain, GenFT, WeGeFT and LoRA.

The transformer layer is torchtune's :class:`~torchtune.modules.TransformerSelfAttentionLayer`
(pre-norm) with a non-causal :class:`~torchtune.modules.MultiHeadAttention`
(``q_proj``, ``k_proj``, ``v_proj``, ``output_proj``, all with biases) and a GELU
:class:`~torchtune.modules.FeedForward` (``w1``: ``embed_dim -> mlp_dim``, ``w2``:
``mlp_dim -> embed_dim``, with biases), so the adaptable linears have the names
torchtune's LoRA builders use.
"""

from typing import Callable, List, Sequence

from torch import nn
from torchtune.modules import (
    FeedForward,
    Fp32LayerNorm,
    MultiHeadAttention,
    TransformerSelfAttentionLayer,
)
from torchtune.modules.low_precision import FrozenNF4Linear
from torchtune.modules.peft import LoRALinear

from genft_tune.modules import apply_adapter, GenFTConfig, WeGeFTConfig
from genft_tune.modules._builder_args import shared_args_doc, takes_config_fields
from genft_tune.modules._apply import check_attn_modules
from genft_tune.modules.wegeft.config import BUILDER_KEYWORDS
from genft_tune.models.vit._model import StochasticDepth, ViTClassifier

# (name, in_dim, out_dim) -> the linear module for one named projection of one layer
LinearFactory = Callable[[str, int, int], nn.Module]


def _check_dims(*, embed_dim: int, num_heads: int, num_layers: int, mlp_dim: int) -> None:
    for field, value in (
        ("embed_dim", embed_dim),
        ("num_heads", num_heads),
        ("num_layers", num_layers),
        ("mlp_dim", mlp_dim),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{field} must be a positive integer, got {value!r}")
    if embed_dim % num_heads != 0:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")


_VIT_ARGS_DOC = """image_size (int): input image side in pixels.
        patch_size (int): patch side in pixels.
        num_channels (int): image channels. Default: 3
        embed_dim (int): token width.
        num_layers (int): transformer layers.
        num_heads (int): attention heads.
        mlp_dim (int): MLP hidden width.
        num_classes (int): classifier outputs.
        norm_eps (float): LayerNorm eps (HF 1e-12, timm 1e-6). Default: 1e-12
        attn_dropout (float): attention dropout. Default: 0.0
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0"""
_document_vit_args = shared_args_doc("vit_args", _VIT_ARGS_DOC)


def _vit_targets(method: str, attn_modules: Sequence[str], mlp: bool) -> List[str]:
    """The linears a ViT builder adapts (``<method>_attn_modules``, the MLP's ``w1``/``w2``
    with ``apply_<method>_to_mlp``), checked."""
    targets = set(check_attn_modules(f"{method}_attn_modules", attn_modules))
    if mlp:
        targets |= {"w1", "w2"}
    if not targets:
        raise ValueError(
            f"{method}_attn_modules is empty and apply_{method}_to_mlp is False: no layer would be "
            "adapted (use genft_tune.models.vit.vit for a plain model)"
        )
    return sorted(targets)


def _plain_linear(quantize_base: bool) -> Callable[[int, int], nn.Module]:
    def make(in_dim: int, out_dim: int) -> nn.Module:
        if quantize_base:
            return FrozenNF4Linear(in_dim, out_dim, bias=True)
        return nn.Linear(in_dim, out_dim, bias=True)

    return make


def _adapted_vit(config, targets, *, quantize_base: bool, **dims) -> ViTClassifier:
    """A ViT of plain (or NF4) biased linears with ``config``'s adapter on ``targets``."""
    plain = _plain_linear(quantize_base)
    model = _vit_from_linears(linear=lambda name, i, o: plain(i, o), **dims)
    return apply_adapter(model, config, sorted(targets))


def _vit_from_linears(
    *,
    linear: LinearFactory,
    image_size: int,
    patch_size: int,
    num_channels: int,
    embed_dim: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    num_classes: int,
    norm_eps: float,
    attn_dropout: float,
    drop_path: float,
) -> ViTClassifier:
    """Assemble a :class:`ViTClassifier`; ``linear(name, in, out)`` makes each projection
    (names ``q_proj``, ``k_proj``, ``v_proj``, ``output_proj``, ``w1``, ``w2``)."""
    _check_dims(embed_dim=embed_dim, num_heads=num_heads, num_layers=num_layers, mlp_dim=mlp_dim)
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {drop_path!r}")
    head_dim = embed_dim // num_heads
    layers = []
    for i in range(num_layers):
        # Linearly increasing stochastic depth, as timm (and the GenFT authors' ViT) do.
        rate = drop_path * i / (num_layers - 1) if num_layers > 1 else drop_path
        attn = MultiHeadAttention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_kv_heads=num_heads,
            head_dim=head_dim,
            q_proj=linear("q_proj", embed_dim, embed_dim),
            k_proj=linear("k_proj", embed_dim, embed_dim),
            v_proj=linear("v_proj", embed_dim, embed_dim),
            output_proj=linear("output_proj", embed_dim, embed_dim),
            pos_embeddings=None,
            attn_dropout=attn_dropout,
            is_causal=False,
        )
        mlp = FeedForward(
            gate_proj=linear("w1", embed_dim, mlp_dim),
            down_proj=linear("w2", mlp_dim, embed_dim),
            up_proj=None,
            activation=nn.GELU(),  # exact (erf) GELU: HF's "gelu", timm's nn.GELU
        )
        layers.append(
            TransformerSelfAttentionLayer(
                attn=attn,
                mlp=mlp,
                sa_norm=Fp32LayerNorm(embed_dim, eps=norm_eps),
                mlp_norm=Fp32LayerNorm(embed_dim, eps=norm_eps),
                sa_scale=StochasticDepth(rate) if rate > 0 else None,
                mlp_scale=StochasticDepth(rate) if rate > 0 else None,
            )
        )
    return ViTClassifier(
        layers=nn.ModuleList(layers),
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        num_classes=num_classes,
        norm_eps=norm_eps,
    )


def vit(
    *,
    image_size: int,
    patch_size: int,
    num_channels: int = 3,
    embed_dim: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    num_classes: int,
    norm_eps: float = 1e-12,
    attn_dropout: float = 0.0,
    drop_path: float = 0.0,
) -> ViTClassifier:
    """Build a plain ViT classifier (HF ``ViTForImageClassification`` layout).

    Args:
        image_size (int): input image side in pixels.
        patch_size (int): patch side in pixels.
        num_channels (int): image channels. Default: 3
        embed_dim (int): token width.
        num_layers (int): transformer layers.
        num_heads (int): attention heads; must divide ``embed_dim``.
        mlp_dim (int): hidden width of the MLP.
        num_classes (int): classifier outputs.
        norm_eps (float): LayerNorm eps; HF checkpoints use 1e-12, timm 1e-6. Default: 1e-12
        attn_dropout (float): dropout on attention probabilities (training only). Default: 0.0
        drop_path (float): stochastic depth of the last layer, linearly increasing from
            0 at the first (timm's ``drop_path_rate``). Default: 0.0

    Returns:
        ViTClassifier: the model.
    """
    make = _plain_linear(False)
    return _vit_from_linears(
        linear=lambda name, i, o: make(i, o),
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
        norm_eps=norm_eps,
        attn_dropout=attn_dropout,
        drop_path=drop_path,
    )


# The GenFT authors' VTAB/FGVC settings, except the init (see vit_genft).
VIT_GENFT_DEFAULTS = dict(shared_dim=32, specific_dim=5, ratio=1.4, scaling=1.0, act_in="identity",
                          act_out="leaky_relu", init_a="kaiming_uniform", init_b="zeros")


@takes_config_fields(GenFTConfig, defaults=VIT_GENFT_DEFAULTS)
@_document_vit_args
def vit_genft(
    *,
    genft_attn_modules: Sequence[str] = ("q_proj", "v_proj"),
    apply_genft_to_mlp: bool = False,
    image_size: int,
    patch_size: int,
    num_channels: int = 3,
    embed_dim: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    num_classes: int,
    norm_eps: float = 1e-12,
    attn_dropout: float = 0.0,
    drop_path: float = 0.0,
    share_qv_specific: bool = False,
    quantize_base: bool = False,
    config: GenFTConfig,
) -> ViTClassifier:
    """Build a ViT classifier whose chosen linears are :class:`~genft_tune.modules.GenFTLinear`.

    One :class:`~genft_tune.modules.GenFTGenerators` is registered as
    ``model.genft_generators``: every adapted ``embed_dim x embed_dim`` projection
    shares one generator, ``w1`` and ``w2`` (when ``apply_genft_to_mlp``) one each.
    Base linears keep their (frozen) biases, as ViT checkpoints have them.

    The GenFT defaults are the authors' VTAB/FGVC settings (``a=32, b=5``,
    ``ratio=1.4``, ``scaling=1.0``, identity/leaky-ReLU, q and v), except the
    init: their ``A = B = 0`` (with the generator biases off, their default) keeps
    the specific factors at a saddle where both gradients vanish (``A`` zero makes
    ``dL/dB`` zero and ``B`` zero makes ``dL/dA`` zero), so they never train; we use kaiming ``A`` and zero ``B``, and
    ``zero_init`` so that step 0 is the pretrained model. Their generator dropout
    (0.1, tied to the drop-path rate) is ``dropout`` here, off by default.

    The classifier ``head`` is a plain ``nn.Linear`` and is not an adapter
    parameter: the recipe trains it by naming it in ``trainable_modules``.

    Args:
        genft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``q_proj``, ``k_proj``, ``v_proj``, ``output_proj``. Default: q_proj, v_proj
        apply_genft_to_mlp (bool): also adapt the MLP's ``w1``/``w2``. Default: False
        {vit_args}
        share_qv_specific (bool): ``q_proj`` and ``v_proj`` of a block use one pair of
            specific factors ``A, B`` (the same parameters), as the authors' ViT code
            does; needs both in ``genft_attn_modules`` and ``specific_dim > 0``.
            Default: False
        quantize_base (bool): store frozen base linears in NF4. Default: False

    Returns:
        ViTClassifier: the model, with ``genft_generators`` registered on it.

    Raises:
        ValueError: if a target name is unknown, nothing is adapted, or a GenFT
            hyperparameter is invalid (see :class:`~genft_tune.modules.GenFTConfig`).
    """
    specific_dim = config.specific_dim
    targets = set(_vit_targets("genft", genft_attn_modules, apply_genft_to_mlp))
    if share_qv_specific and not ({"q_proj", "v_proj"} <= targets and specific_dim > 0):
        raise ValueError(
            "share_qv_specific=True needs 'q_proj' and 'v_proj' in genft_attn_modules and specific_dim > 0, "
            f"got genft_attn_modules={list(genft_attn_modules)}, specific_dim={specific_dim}"
        )
    model = _adapted_vit(
        config,
        targets,
        quantize_base=quantize_base,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
        norm_eps=norm_eps,
        attn_dropout=attn_dropout,
        drop_path=drop_path,
    )
    if share_qv_specific:
        for layer in model.layers:
            # one Parameter under two names: the optimizer sees it once, the state dict twice
            layer.attn.v_proj.A1 = layer.attn.q_proj.A1
            layer.attn.v_proj.B1 = layer.attn.q_proj.B1
    return model


@_document_vit_args
def vit_lora(
    *,
    lora_attn_modules: Sequence[str] = ("q_proj", "v_proj"),
    apply_lora_to_mlp: bool = False,
    image_size: int,
    patch_size: int,
    num_channels: int = 3,
    embed_dim: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    num_classes: int,
    norm_eps: float = 1e-12,
    attn_dropout: float = 0.0,
    drop_path: float = 0.0,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    quantize_base: bool = False,
) -> ViTClassifier:
    """Build a ViT classifier with torchtune's :class:`~torchtune.modules.peft.LoRALinear`
    on the chosen linears: the LoRA baseline for GenFT comparisons.

    Args:
        lora_attn_modules (Sequence[str]): attention projections to adapt. Default: q_proj, v_proj
        apply_lora_to_mlp (bool): also adapt ``w1``/``w2``. Default: False
        {vit_args}
        lora_rank (int): LoRA rank. Default: 8
        lora_alpha (float): LoRA alpha. Default: 16.0
        lora_dropout (float): LoRA input dropout. Default: 0.0
        quantize_base (bool): NF4 base weights. Default: False

    Returns:
        ViTClassifier: the model.

    Raises:
        ValueError: if a target name is unknown or nothing is adapted.
    """
    targets = _vit_targets("lora", lora_attn_modules, apply_lora_to_mlp)
    plain = _plain_linear(quantize_base)

    def linear(name: str, in_dim: int, out_dim: int) -> nn.Module:
        if name in targets:
            return LoRALinear(
                in_dim,
                out_dim,
                rank=lora_rank,
                alpha=lora_alpha,
                dropout=lora_dropout,
                use_bias=True,
                quantize_base=quantize_base,
            )
        return plain(in_dim, out_dim)

    return _vit_from_linears(
        linear=linear,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
        norm_eps=norm_eps,
        attn_dropout=attn_dropout,
        drop_path=drop_path,
    )


@takes_config_fields(WeGeFTConfig, keywords=BUILDER_KEYWORDS)
@_document_vit_args
def vit_wegeft(
    *,
    wegeft_attn_modules: Sequence[str] = ("q_proj", "v_proj"),
    apply_wegeft_to_mlp: bool = False,
    image_size: int,
    patch_size: int,
    num_channels: int = 3,
    embed_dim: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    num_classes: int,
    norm_eps: float = 1e-12,
    attn_dropout: float = 0.0,
    drop_path: float = 0.0,
    quantize_base: bool = False,
    config: WeGeFTConfig,
) -> ViTClassifier:
    """Build a ViT classifier whose chosen linears are :class:`~genft_tune.modules.WeGeFTLinear`
    (WeGeFT, arXiv 2312.00700: ``dW = (alpha/r) W0 phi^T psi``), the other
    weight-generative baseline for GenFT comparisons.

    One :class:`~genft_tune.modules.WeGeFTSharedFactors` is registered as
    ``model.wegeft_factors``. With ``wegeft_shared`` (the authors' ``tied_modules``,
    the default) each module type (``q_proj``, ``v_proj``, ``w1``...) has one
    ``(phi, psi)`` pair shared by all layers (keys ``wegeft_factors.<type>.phi``);
    otherwise every adapted layer owns its pair (keys ``<layer>.wegeft.phi``).
    ``phi`` starts at zero, so step 0 is the base model. Base linears keep their
    (frozen) biases. The classifier ``head`` is not an adapter parameter (name it in
    the recipe's ``trainable_modules``).

    Args:
        wegeft_attn_modules (Sequence[str]): attention projections to adapt, from
            ``q_proj``, ``k_proj``, ``v_proj``, ``output_proj``. Default: q_proj, v_proj
        apply_wegeft_to_mlp (bool): also adapt the MLP's ``w1``/``w2``. Default: False
        {vit_args}
        quantize_base (bool): store frozen base linears in NF4. Default: False

    Returns:
        ViTClassifier: the model, with ``wegeft_factors`` registered on it.

    Raises:
        ValueError: if a target name is unknown, nothing is adapted, or a WeGeFT
            hyperparameter is invalid (see :class:`~genft_tune.modules.WeGeFTConfig`).
    """
    targets = _vit_targets("wegeft", wegeft_attn_modules, apply_wegeft_to_mlp)
    model = _adapted_vit(
        config,
        targets,
        quantize_base=quantize_base,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
        norm_eps=norm_eps,
        attn_dropout=attn_dropout,
        drop_path=drop_path,
    )
    return model
