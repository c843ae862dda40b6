"""Model builders: ViT-B/16 (the GenFT paper's VTAB-1K / FGVC backbone) and a tiny
ViT for tests and CPU demos, each plain, with GenFT, with WeGeFT and with LoRA."""

from typing import Any

from genft_tune.models.vit._component_builders import vit, vit_genft, vit_lora, vit_wegeft
from genft_tune.models.vit._model import ViTClassifier

# ViT-B/16: google/vit-base-patch16-224(-in21k), timm vit_base_patch16_224.
_B16 = dict(patch_size=16, embed_dim=768, num_layers=12, num_heads=12, mlp_dim=3072)
# Not DeiT-Tiny (192 wide, 12 layers): a 4-layer, 64-wide ViT that trains on two CPU cores.
_TINY = dict(embed_dim=64, num_layers=4, num_heads=4, mlp_dim=128)


def vit_b16(
    num_classes: int,
    *,
    image_size: int = 224,
    norm_eps: float = 1e-12,
    drop_path: float = 0.0,
) -> ViTClassifier:
    """ViT-B/16 classifier (86M parameters in the backbone).

    Args:
        num_classes (int): classifier outputs.
        image_size (int): input side; 224 for the public checkpoints (position
            embeddings are interpolated on load for other sizes). Default: 224
        norm_eps (float): 1e-12 for HF checkpoints, 1e-6 for timm ones. Default: 1e-12
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0

    Returns:
        ViTClassifier: the model.
    """
    return vit(
        image_size=image_size, num_classes=num_classes, norm_eps=norm_eps, drop_path=drop_path, **_B16
    )


def vit_b16_genft(
    num_classes: int,
    *,
    image_size: int = 224,
    norm_eps: float = 1e-12,
    drop_path: float = 0.0,
    **genft_kwargs: Any,
) -> ViTClassifier:
    """ViT-B/16 classifier with GenFT layers.

    Args:
        num_classes (int): classifier outputs.
        image_size (int): input side. Default: 224
        norm_eps (float): 1e-12 for HF checkpoints, 1e-6 for timm ones. Default: 1e-12
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0
        **genft_kwargs (Any): ``genft_attn_modules``, ``apply_genft_to_mlp``,
            ``shared_dim``, ``specific_dim``, ``ratio``, ``scaling``, ``act_in``,
            ``act_out``, ``dropout``, ``init_a``, ``init_b``, ``generator_bias``,
            ``zero_init``, ``recompute``, ``stages``, ``convention``, ``quantize_base``,
            ``attn_dropout``; defaults as in :func:`vit_genft`.

    Returns:
        ViTClassifier: the model, with ``genft_generators``.
    """
    return vit_genft(
        image_size=image_size,
        num_classes=num_classes,
        norm_eps=norm_eps,
        drop_path=drop_path,
        **_B16,
        **genft_kwargs,
    )


def vit_b16_lora(
    num_classes: int,
    *,
    image_size: int = 224,
    norm_eps: float = 1e-12,
    drop_path: float = 0.0,
    **lora_kwargs: Any,
) -> ViTClassifier:
    """ViT-B/16 classifier with torchtune LoRA layers (the baseline).

    Args:
        num_classes (int): classifier outputs.
        image_size (int): input side. Default: 224
        norm_eps (float): 1e-12 for HF checkpoints, 1e-6 for timm ones. Default: 1e-12
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0
        **lora_kwargs (Any): ``lora_attn_modules``, ``apply_lora_to_mlp``, ``lora_rank``,
            ``lora_alpha``, ``lora_dropout``, ``quantize_base``; see :func:`vit_lora`.

    Returns:
        ViTClassifier: the model.
    """
    return vit_lora(
        image_size=image_size,
        num_classes=num_classes,
        norm_eps=norm_eps,
        drop_path=drop_path,
        **_B16,
        **lora_kwargs,
    )


def vit_tiny(
    num_classes: int,
    *,
    image_size: int = 32,
    patch_size: int = 4,
    num_channels: int = 3,
    norm_eps: float = 1e-12,
    drop_path: float = 0.0,
) -> ViTClassifier:
    """A tiny ViT (64 wide, 4 layers, 4 heads, MLP 128; about 0.2M parameters)
    for tests and CPU demos.

    Args:
        num_classes (int): classifier outputs.
        image_size (int): input side. Default: 32
        patch_size (int): patch side. Default: 4
        num_channels (int): image channels. Default: 3
        norm_eps (float): LayerNorm eps. Default: 1e-12
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0

    Returns:
        ViTClassifier: the model.
    """
    return vit(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        num_classes=num_classes,
        norm_eps=norm_eps,
        drop_path=drop_path,
        **_TINY,
    )


def vit_tiny_genft(
    num_classes: int,
    *,
    image_size: int = 32,
    patch_size: int = 4,
    num_channels: int = 3,
    norm_eps: float = 1e-12,
    drop_path: float = 0.0,
    **genft_kwargs: Any,
) -> ViTClassifier:
    """The tiny ViT of :func:`vit_tiny` with GenFT layers.

    Args:
        num_classes (int): classifier outputs.
        image_size (int): input side. Default: 32
        patch_size (int): patch side. Default: 4
        num_channels (int): image channels. Default: 3
        norm_eps (float): LayerNorm eps. Default: 1e-12
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0
        **genft_kwargs (Any): GenFT options, see :func:`vit_b16_genft`.

    Returns:
        ViTClassifier: the model, with ``genft_generators``.
    """
    return vit_genft(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        num_classes=num_classes,
        norm_eps=norm_eps,
        drop_path=drop_path,
        **_TINY,
        **genft_kwargs,
    )


def vit_tiny_lora(
    num_classes: int,
    *,
    image_size: int = 32,
    patch_size: int = 4,
    num_channels: int = 3,
    norm_eps: float = 1e-12,
    drop_path: float = 0.0,
    **lora_kwargs: Any,
) -> ViTClassifier:
    """The tiny ViT of :func:`vit_tiny` with torchtune LoRA layers.

    Args:
        num_classes (int): classifier outputs.
        image_size (int): input side. Default: 32
        patch_size (int): patch side. Default: 4
        num_channels (int): image channels. Default: 3
        norm_eps (float): LayerNorm eps. Default: 1e-12
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0
        **lora_kwargs (Any): LoRA options, see :func:`vit_b16_lora`.

    Returns:
        ViTClassifier: the model.
    """
    return vit_lora(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        num_classes=num_classes,
        norm_eps=norm_eps,
        drop_path=drop_path,
        **_TINY,
        **lora_kwargs,
    )


def vit_b16_wegeft(
    num_classes: int,
    *,
    image_size: int = 224,
    norm_eps: float = 1e-12,
    drop_path: float = 0.0,
    **wegeft_kwargs: Any,
) -> ViTClassifier:
    """ViT-B/16 classifier with WeGeFT layers (the weight-generative baseline).

    Args:
        num_classes (int): classifier outputs.
        image_size (int): input side. Default: 224
        norm_eps (float): 1e-12 for HF checkpoints, 1e-6 for timm ones. Default: 1e-12
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0
        **wegeft_kwargs (Any): ``wegeft_attn_modules``, ``apply_wegeft_to_mlp``,
            ``wegeft_rank``, ``wegeft_alpha``, ``wegeft_dropout``, ``wegeft_shared``,
            ``recompute``, ``quantize_base``, ``attn_dropout``; see :func:`vit_wegeft`.

    Returns:
        ViTClassifier: the model, with ``wegeft_factors``.
    """
    return vit_wegeft(
        image_size=image_size,
        num_classes=num_classes,
        norm_eps=norm_eps,
        drop_path=drop_path,
        **_B16,
        **wegeft_kwargs,
    )


def vit_tiny_wegeft(
    num_classes: int,
    *,
    image_size: int = 32,
    patch_size: int = 4,
    num_channels: int = 3,
    norm_eps: float = 1e-12,
    drop_path: float = 0.0,
    **wegeft_kwargs: Any,
) -> ViTClassifier:
    """The tiny ViT of :func:`vit_tiny` with WeGeFT layers.

    Args:
        num_classes (int): classifier outputs.
        image_size (int): input side. Default: 32
        patch_size (int): patch side. Default: 4
        num_channels (int): image channels. Default: 3
        norm_eps (float): LayerNorm eps. Default: 1e-12
        drop_path (float): stochastic depth rate of the last layer. Default: 0.0
        **wegeft_kwargs (Any): WeGeFT options, see :func:`vit_b16_wegeft`.

    Returns:
        ViTClassifier: the model, with ``wegeft_factors``.
    """
    return vit_wegeft(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        num_classes=num_classes,
        norm_eps=norm_eps,
        drop_path=drop_path,
        **_TINY,
        **wegeft_kwargs,
    )
