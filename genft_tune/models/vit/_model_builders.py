"""Model builders: ViT-B/16 (the GenFT paper's VTAB-1K / FGVC backbone) and a tiny
ViT for tests and CPU demos, each plain, with GenFT, with WeGeFT and with LoRA.

A size is one row of ``VIT_SIZES``: each builder is :func:`vit` / :func:`vit_genft` /
:func:`vit_wegeft` / :func:`vit_lora` with that size's numbers fixed, and takes every
other argument of theirs (``num_classes`` also by position).
"""

from typing import Any, Callable, Dict

from genft_tune.models.vit._component_builders import vit, vit_genft, vit_lora, vit_wegeft
from genft_tune.modules._builder_args import sized_builder

# size -> (title, fixed architecture numbers, settable defaults)
VIT_SIZES: Dict[str, tuple] = {
    # ViT-B/16: google/vit-base-patch16-224(-in21k), timm vit_base_patch16_224 (86M parameters
    # in the backbone); 224 for the public checkpoints (position embeddings are interpolated
    # on load for other sizes); norm_eps 1e-12 for HF checkpoints, 1e-6 for timm ones.
    "b16": ("ViT-B/16", dict(patch_size=16, embed_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
            dict(image_size=224)),
    # Not DeiT-Tiny (192 wide, 12 layers): a 4-layer, 64-wide ViT (about 0.2M parameters)
    # that trains on two CPU cores.
    "tiny": ("A tiny ViT (64 wide, 4 layers, 4 heads, MLP 128) for tests and CPU demos",
             dict(embed_dim=64, num_layers=4, num_heads=4, mlp_dim=128),
             dict(image_size=32, patch_size=4)),
}

_WITH = {vit: "", vit_genft: "with GenFT layers", vit_wegeft: "with WeGeFT layers", vit_lora: "with torchtune LoRA layers (the baseline)"}


def _sized(component: Callable[..., Any], size: str) -> Callable[..., Any]:
    title, fixed, defaults = VIT_SIZES[size]
    suffix = "" if component is vit else "_" + component.__name__.split("_", 1)[1]
    return sized_builder(
        component,
        name=f"vit_{size}{suffix}",
        summary=f"{title} classifier {_WITH[component]}".strip() + ".",
        fixed=fixed,
        defaults=defaults,
        positional=("num_classes",),
    )


vit_b16 = _sized(vit, "b16")
vit_b16_genft = _sized(vit_genft, "b16")
vit_b16_wegeft = _sized(vit_wegeft, "b16")
vit_b16_lora = _sized(vit_lora, "b16")
vit_tiny = _sized(vit, "tiny")
vit_tiny_genft = _sized(vit_genft, "tiny")
vit_tiny_wegeft = _sized(vit_wegeft, "tiny")
vit_tiny_lora = _sized(vit_lora, "tiny")
