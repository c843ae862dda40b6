"""``ViTClassifier``: the ViT image classifier of Dosovitskiy et al. (arXiv 2010.11929)
in the layout of Hugging Face's ``ViTForImageClassification`` and timm's
``vit_base_patch16_224``, built from torchtune's transformer layers.

torchtune's own :class:`~torchtune.modules.VisionTransformer` is CLIP's encoder: a
bias-free patch convolution, an extra LayerNorm before the first layer
(``ln_pre``) and tile embeddings. It cannot hold a classic ViT checkpoint, so this
module composes the same building blocks
(:class:`~torchtune.modules.TransformerSelfAttentionLayer`,
:class:`~torchtune.modules.MultiHeadAttention`, :class:`~torchtune.modules.FeedForward`,
:class:`~torchtune.modules.Fp32LayerNorm`) into the classic layout instead.
"""

from typing import List, Union

import torch
from torch import nn
from torchtune.modules import Fp32LayerNorm


class StochasticDepth(nn.Module):
    """Drop path (stochastic depth, Huang et al. 2016) on a residual branch.

    During training each sample's branch output is zeroed with probability ``p``
    and the survivors are scaled by ``1 / (1 - p)``; at evaluation it is the
    identity. Used as the ``sa_scale`` / ``mlp_scale`` of a
    :class:`~torchtune.modules.TransformerSelfAttentionLayer`, which applies them
    to the branch output before the residual sum, exactly where timm's ``DropPath``
    sits.

    Args:
        p (float): drop probability in ``[0, 1)``.

    Raises:
        ValueError: if ``p`` is outside ``[0, 1)``.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ViTClassifier(nn.Module):
    """ViT image classifier: patch embedding, class token, learned position
    embeddings, pre-norm transformer layers, final LayerNorm and a linear head on
    the class token.

    Parameter names (``patch_embed``, ``cls_token``, ``pos_embed``, ``layers.{i}.*``,
    ``norm``, ``head``) are the ones the converters in
    :mod:`genft_tune.models.vit._convert_weights` map to and from Hugging Face and
    timm. ``head`` is the task-specific classifier: a fine-tuning recipe trains it
    alongside the adapter (see :meth:`reset_head`).

    Args:
        layers (Union[nn.ModuleList, List[nn.Module]]): the transformer layers, each
            mapping ``(batch, tokens, embed_dim)`` to the same shape.
        image_size (int): side of the (square) input images, in pixels.
        patch_size (int): side of a patch; the grid is ``image_size // patch_size``
            patches per side (a remainder is cropped, as in HF and timm).
        num_channels (int): image channels.
        embed_dim (int): token width.
        num_classes (int): classifier outputs.
        norm_eps (float): eps of the final LayerNorm (HF: 1e-12, timm: 1e-6).

    Raises:
        ValueError: if a size is not positive or ``patch_size > image_size``.
    """

    def __init__(
        self,
        *,
        layers: Union[nn.ModuleList, List[nn.Module]],
        image_size: int,
        patch_size: int,
        num_channels: int,
        embed_dim: int,
        num_classes: int,
        norm_eps: float,
    ):
        super().__init__()
        for field, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("num_channels", num_channels),
            ("embed_dim", embed_dim),
            ("num_classes", num_classes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if patch_size > image_size:
            raise ValueError(
                f"patch_size ({patch_size}) must not exceed image_size ({image_size})"
            )
        if image_size % patch_size:
            lower, upper = image_size - image_size % patch_size, image_size + patch_size - image_size % patch_size
            raise ValueError(
                f"image_size ({image_size}) must be a multiple of patch_size ({patch_size}): the last "
                f"{image_size % patch_size} pixels of each side would never be seen; use {lower} or {upper}"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        grid = image_size // patch_size
        self.num_patches = grid * grid

        self.patch_embed = nn.Conv2d(
            num_channels, embed_dim, kernel_size=patch_size, stride=patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        self.norm = Fp32LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes)
        with torch.no_grad():
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @torch.no_grad()
    def reset_head(self) -> None:
        """Zero the classifier head, as the ViT paper does for a new task: every
        class starts with the same logit and the first steps move only the head."""
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The class token after the final LayerNorm.

        Args:
            images (torch.Tensor): ``(batch, num_channels, image_size, image_size)``.

        Returns:
            torch.Tensor: ``(batch, embed_dim)``.

        Raises:
            ValueError: if the images do not have the expected shape.
        """
        expected = (self.num_channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must have shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(images.shape)}"
            )
        images = images.to(self.patch_embed.weight.dtype)
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (b, patches, d)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.norm(x[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images (torch.Tensor): ``(batch, num_channels, image_size, image_size)``.

        Returns:
            torch.Tensor: logits ``(batch, num_classes)``.
        """
        return self.head(self.features(images))
