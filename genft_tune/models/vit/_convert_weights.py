"""ViT state-dict conversion between this package's :class:`ViTClassifier` layout
and Hugging Face / timm checkpoints.

Our keys::

    patch_embed.{weight,bias}  cls_token  pos_embed  norm.{weight,bias}  head.{weight,bias}
    layers.{i}.sa_norm / attn.{q_proj,k_proj,v_proj,output_proj} / mlp_norm / mlp.{w1,w2}

Hugging Face ``ViTModel`` / ``ViTForImageClassification`` checkpoints come in two
spellings: the one on the Hub (``vit.encoder.layer.{i}.attention.attention.query``...,
what every transformers version reads and ``save_pretrained`` writes) and the
module names of transformers 5 (``vit.layers.{i}.attention.q_proj``...). Both are
read; :func:`vit_tune_to_hf` writes the Hub spelling. timm's ``vit_base_patch16_224``
family stores ``q, k, v`` fused in ``blocks.{i}.attn.qkv``.
"""

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torchtune.modules.peft import get_adapter_params

from genft_tune.models.vit._checkpoint import read_state_dict, save_json, save_safetensors
from genft_tune.modules._method import is_adapter_key

_I, _P = r"(\d+)", r"(weight|bias)"

# (HF Hub name, our name); "{i}" is the layer index, "{p}" weight or bias.
_HF_HUB = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.{p}", "patch_embed.{p}"),
    ("encoder.layer.{i}.layernorm_before.{p}", "layers.{i}.sa_norm.{p}"),
    ("encoder.layer.{i}.attention.attention.query.{p}", "layers.{i}.attn.q_proj.{p}"),
    ("encoder.layer.{i}.attention.attention.key.{p}", "layers.{i}.attn.k_proj.{p}"),
    ("encoder.layer.{i}.attention.attention.value.{p}", "layers.{i}.attn.v_proj.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "layers.{i}.attn.output_proj.{p}"),
    ("encoder.layer.{i}.layernorm_after.{p}", "layers.{i}.mlp_norm.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "layers.{i}.mlp.w1.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "layers.{i}.mlp.w2.{p}"),
    ("layernorm.{p}", "norm.{p}"),
]
# transformers >= 5 module names (what ``ViTForImageClassification().state_dict()`` has).
_HF_V5 = [
    ("layers.{i}.layernorm_before.{p}", "layers.{i}.sa_norm.{p}"),
    ("layers.{i}.attention.q_proj.{p}", "layers.{i}.attn.q_proj.{p}"),
    ("layers.{i}.attention.k_proj.{p}", "layers.{i}.attn.k_proj.{p}"),
    ("layers.{i}.attention.v_proj.{p}", "layers.{i}.attn.v_proj.{p}"),
    ("layers.{i}.attention.o_proj.{p}", "layers.{i}.attn.output_proj.{p}"),
    ("layers.{i}.layernorm_after.{p}", "layers.{i}.mlp_norm.{p}"),
    ("layers.{i}.mlp.fc1.{p}", "layers.{i}.mlp.w1.{p}"),
    ("layers.{i}.mlp.fc2.{p}", "layers.{i}.mlp.w2.{p}"),
]
# ViTModel extras that ViTForImageClassification does not use.
_HF_IGNORED = re.compile(r"^(vit\.)?(pooler\.dense\.(weight|bias)|embeddings\.mask_token)$")

_TIMM = [
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("patch_embed.proj.{p}", "patch_embed.{p}"),
    ("blocks.{i}.norm1.{p}", "layers.{i}.sa_norm.{p}"),
    ("blocks.{i}.attn.proj.{p}", "layers.{i}.attn.output_proj.{p}"),
    ("blocks.{i}.norm2.{p}", "layers.{i}.mlp_norm.{p}"),
    ("blocks.{i}.mlp.fc1.{p}", "layers.{i}.mlp.w1.{p}"),
    ("blocks.{i}.mlp.fc2.{p}", "layers.{i}.mlp.w2.{p}"),
    ("norm.{p}", "norm.{p}"),
    ("head.{p}", "head.{p}"),
]
_TIMM_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def _compile(src: str) -> re.Pattern:
    pattern = re.escape(src).replace(r"\{i\}", _I).replace(r"\{p\}", _P)
    return re.compile(f"^{pattern}$")


def _template(dst: str) -> str:
    """Turn ``a.{i}.b.{p}`` into a ``re.sub``-style template, numbering groups in order."""
    out, n = "", 0
    for part in re.split(r"(\{i\}|\{p\})", dst):
        if part in ("{i}", "{p}"):
            n += 1
            out += f"\\g<{n}>"
        else:
            out += part
    return out


def _rules(table: List[Tuple[str, str]], reverse: bool = False) -> List[Tuple[re.Pattern, str]]:
    return [
        (_compile(b), _template(a)) if reverse else (_compile(a), _template(b)) for a, b in table
    ]


_HF_TO_TUNE = _rules(_HF_HUB) + _rules(_HF_V5)
_TUNE_TO_HF = _rules(_HF_HUB, reverse=True)
_TUNE_TO_HF_V5 = _rules(_HF_V5, reverse=True)
_TIMM_TO_TUNE = _rules(_TIMM)


def _rename(key: str, rules: List[Tuple[re.Pattern, str]]) -> Optional[str]:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return match.expand(template)
    return None


def vit_hf_to_tune(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert a Hugging Face ``ViTModel`` or ``ViTForImageClassification`` state dict.

    Accepts the Hub spelling (``vit.encoder.layer.{i}.attention.attention.query.weight``,
    as in ``google/vit-base-patch16-224-in21k``) and transformers 5's module names
    (``vit.layers.{i}.attention.q_proj.weight``), with or without the ``vit.``
    prefix. ``ViTModel``'s pooler and mask token are dropped (the classifier reads
    the class token after the final LayerNorm, not the pooler); ``classifier`` becomes
    ``head``.

    Args:
        state_dict (Dict[str, torch.Tensor]): the HF state dict.

    Returns:
        Dict[str, torch.Tensor]: the state dict in our layout.

    Raises:
        ValueError: naming the first key that is not part of a ViT.
    """
    converted = {}
    for key, value in state_dict.items():
        if _HF_IGNORED.match(key):
            continue
        if key.startswith("classifier."):
            new = "head." + key[len("classifier.") :]
            if new not in ("head.weight", "head.bias"):
                new = None
        else:
            new = _rename(key[len("vit.") :] if key.startswith("vit.") else key, _HF_TO_TUNE)
        if new is None:
            raise ValueError(f"unexpected key {key!r} in the Hugging Face ViT checkpoint")
        converted[new] = value
    return converted


def vit_tune_to_hf(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert a plain (merged) state dict of ours to ``ViTForImageClassification``
    keys in the Hub spelling, which transformers 4 and 5 both load.

    Args:
        state_dict (Dict[str, torch.Tensor]): our state dict, without adapter keys.

    Returns:
        Dict[str, torch.Tensor]: HF keys (``vit.*`` and ``classifier.*``).

    Raises:
        ValueError: if adapter keys are present (merge the adapter first, e.g. with
            :func:`genft_tune.modules.merge_genft_state_dict` or
            :func:`genft_tune.modules.merge_wegeft_state_dict`) or a key is unknown.
    """
    converted = {}
    for key, value in state_dict.items():
        if is_adapter_key(key) or ".lora_" in key or key.endswith(".magnitude"):
            raise ValueError(
                f"adapter key {key!r} in the state dict: merge the adapter into the base "
                "weights before converting to Hugging Face format"
            )
        if key in ("head.weight", "head.bias"):
            converted["classifier." + key.split(".")[1]] = value
            continue
        new = _rename(key, _TUNE_TO_HF)
        if new is None:
            raise ValueError(f"unexpected key {key!r}: not a parameter of a ViT classifier")
        converted["vit." + new] = value
    return converted


def vit_hf_module_name(module: str) -> Optional[str]:
    """The module of transformers 5's ``ViTForImageClassification`` that is our module
    ``module`` (``layers.0.attn.q_proj`` -> ``vit.layers.0.attention.q_proj``, ``head`` ->
    ``classifier``): the names PEFT's files use, which differ from the checkpoint keys'
    Hub spelling. None for a module that is not a linear of a ViT classifier."""
    if module == "head":
        return "classifier"
    new = _rename(f"{module}.weight", _TUNE_TO_HF_V5)
    return None if new is None else "vit." + new[: -len(".weight")]


def convert_timm_vit_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert a timm ``vit_base_patch16_224``-family state dict (class-token pooling,
    no layer scale, no register tokens): the fused ``attn.qkv`` weight ``(3D, D)`` and
    bias ``(3D,)`` are split into ``q_proj``, ``k_proj``, ``v_proj`` in that order.

    timm builds these models with LayerNorm eps 1e-6: build ours with ``norm_eps=1e-6``.

    Args:
        state_dict (Dict[str, torch.Tensor]): the timm state dict (a leading
            ``module.`` from DDP is stripped).

    Returns:
        Dict[str, torch.Tensor]: the state dict in our layout.

    Raises:
        ValueError: naming the first key that this layout does not have (e.g.
            ``fc_norm`` of global-pool models, ``ls1.gamma`` of layer-scale models).
    """
    converted = {}
    for key, value in state_dict.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        qkv = _TIMM_QKV.match(key)
        if qkv:
            layer, kind = qkv.groups()
            if value.shape[0] % 3 != 0:
                raise ValueError(f"{key} has shape {tuple(value.shape)}: dim 0 is not divisible by 3")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"layers.{layer}.attn.{name}.{kind}"] = part.clone()
            continue
        new = _rename(key, _TIMM_TO_TUNE)
        if new is None:
            raise ValueError(
                f"unexpected key {key!r} in the timm ViT checkpoint (supported: the "
                "class-token vit_*_patch*_* layout without fc_norm, layer scale or registers)"
            )
        converted[new] = value
    return converted


def vit_hf_config(model, *, id2label: Optional[Dict[int, str]] = None) -> Dict:
    """The ``config.json`` of a ``ViTForImageClassification`` with ``model``'s shape.

    Args:
        model (ViTClassifier): the model (plain, GenFT or LoRA: only shapes are read).
        id2label (Optional[Dict[int, str]]): class names; ``LABEL_{i}`` when None.

    Returns:
        Dict: the HF config.
    """
    first = model.layers[0]
    num_classes = model.num_classes
    if id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
    return {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": model.embed_dim,
        "num_hidden_layers": len(model.layers),
        "num_attention_heads": first.attn.num_heads,
        "intermediate_size": int(first.mlp.w1.weight.shape[0]),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": model.norm.eps,
        "image_size": model.image_size,
        "patch_size": model.patch_size,
        "num_channels": model.num_channels,
        "qkv_bias": True,
        "encoder_stride": model.patch_size,
        "id2label": {str(i): str(name) for i, name in id2label.items()},
        "label2id": {str(name): int(i) for i, name in id2label.items()},
    }


def _resize_pos_embed(pos_embed: torch.Tensor, num_tokens: int, key: str) -> torch.Tensor:
    """Bicubic resampling of ``(1, 1 + g*g, D)`` position embeddings to ``num_tokens``
    (class token kept), as timm's ``resample_abs_pos_embed`` does."""
    old_grid = int(round((pos_embed.shape[1] - 1) ** 0.5))
    new_grid = int(round((num_tokens - 1) ** 0.5))
    if old_grid**2 + 1 != pos_embed.shape[1] or new_grid**2 + 1 != num_tokens:
        raise ValueError(
            f"{key}: cannot resize position embeddings of {pos_embed.shape[1]} tokens to "
            f"{num_tokens}: both must be 1 + a square grid"
        )
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(
        grid, size=(new_grid, new_grid), mode="bicubic", antialias=True, align_corners=False
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat([cls, grid], dim=1)


def _adapter_keys(model) -> set:
    keys = set(get_adapter_params(model))
    return keys | {k for k in model.state_dict() if is_adapter_key(k)}


def load_vit_state_dict(
    model,
    state_dict: Dict[str, torch.Tensor],
    *,
    reset_head: bool = False,
    interpolate_pos_embed: bool = True,
) -> Dict[str, bool]:
    """Load a state dict in our layout into a :class:`ViTClassifier` (plain, GenFT or LoRA).

    Adapter parameters may be absent (they keep their init). The head is replaced by
    a fresh zero head (:meth:`ViTClassifier.reset_head`) when the checkpoint has none,
    when its size differs from the model's ``num_classes``, or when ``reset_head``.
    Position embeddings for another image size are resampled when
    ``interpolate_pos_embed``.

    Args:
        model (ViTClassifier): the model.
        state_dict (Dict[str, torch.Tensor]): converted weights.
        reset_head (bool): always start from a fresh head (a new task). Default: False
        interpolate_pos_embed (bool): resample mis-sized position embeddings. Default: True

    Returns:
        Dict[str, bool]: ``{"head_reset": ..., "pos_embed_resized": ...}``.

    Raises:
        ValueError: naming the key, for a weight the model lacks, a base weight the
            checkpoint lacks, or a mis-shaped weight.
    """
    expected = model.state_dict()
    adapter = _adapter_keys(model)
    head_keys = {"head.weight", "head.bias"}
    head_reset = reset_head
    resized = False
    to_load = {}
    for key, value in state_dict.items():
        if key not in expected:
            raise ValueError(f"checkpoint key {key!r} is not a parameter of the model")
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            if key in head_keys:
                head_reset = True
                continue
            if key == "pos_embed" and interpolate_pos_embed:
                value = _resize_pos_embed(value, want[1], key)
                resized = True
            else:
                raise ValueError(
                    f"checkpoint weight {key!r} has shape {tuple(value.shape)}, the model "
                    f"expects {want}"
                )
        to_load[key] = value
    for key in expected:
        if key in to_load or key in adapter:
            continue
        if key in head_keys:
            head_reset = True
            continue
        raise ValueError(f"checkpoint has no weight {key!r}, which the model needs")
    if head_reset:
        to_load = {k: v for k, v in to_load.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(to_load, strict=False)
    assert not unexpected, unexpected  # checked above
    if head_reset:
        model.reset_head()
    return {"head_reset": head_reset, "pos_embed_resized": resized}


def _load(model, checkpoint, convert: Callable, **kwargs) -> Dict[str, bool]:

    state_dict = read_state_dict(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    return load_vit_state_dict(model, convert(state_dict), **kwargs)


def load_hf_vit_state_dict(
    model,
    checkpoint,
    *,
    reset_head: bool = False,
    interpolate_pos_embed: bool = True,
) -> Dict[str, bool]:
    """Load Hugging Face ViT weights (``ViTModel`` or ``ViTForImageClassification``)
    into a :class:`ViTClassifier`. Build the model with ``norm_eps=1e-12``.

    Args:
        model (ViTClassifier): the model.
        checkpoint: a state dict, or a path to a checkpoint file or directory
            (``model.safetensors``, sharded safetensors, ``pytorch_model.bin``).
        reset_head (bool): start from a fresh head. Default: False
        interpolate_pos_embed (bool): resample position embeddings for another
            ``image_size``. Default: True

    Returns:
        Dict[str, bool]: see :func:`load_vit_state_dict`.
    """
    return _load(
        model, checkpoint, vit_hf_to_tune, reset_head=reset_head, interpolate_pos_embed=interpolate_pos_embed
    )


def load_timm_vit_state_dict(
    model,
    checkpoint,
    *,
    reset_head: bool = False,
    interpolate_pos_embed: bool = True,
) -> Dict[str, bool]:
    """Load timm ViT weights into a :class:`ViTClassifier`. Build the model with
    ``norm_eps=1e-6`` (timm's LayerNorm eps).

    Args:
        model (ViTClassifier): the model.
        checkpoint: a state dict, or a path (``.safetensors``, ``.pth``, ``.bin``, or a
            directory holding one, e.g. a ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``
            snapshot).
        reset_head (bool): start from a fresh head. Default: False
        interpolate_pos_embed (bool): resample position embeddings. Default: True

    Returns:
        Dict[str, bool]: see :func:`load_vit_state_dict`.
    """
    return _load(
        model,
        checkpoint,
        convert_timm_vit_state_dict,
        reset_head=reset_head,
        interpolate_pos_embed=interpolate_pos_embed,
    )


def save_hf_vit(
    state_dict: Dict[str, torch.Tensor],
    *,
    config: Dict[str, Any],
    output_dir: Union[str, Path],
) -> Path:
    """Save a plain (merged) state dict of ours as a Hugging Face
    ``ViTForImageClassification`` directory: ``model.safetensors`` + ``config.json``.

    Args:
        state_dict (Dict[str, torch.Tensor]): our layout, no adapter keys.
        config (Dict[str, Any]): from :func:`vit_hf_config`.
        output_dir (PathLike): target directory (created).

    Returns:
        Path: ``output_dir``.
    """
    output_dir = Path(output_dir)
    hf = vit_tune_to_hf(state_dict)
    dtypes = {v.dtype for v in hf.values() if v.is_floating_point()}
    config = dict(config)
    if len(dtypes) == 1:
        config["torch_dtype"] = str(dtypes.pop()).replace("torch.", "")
    save_safetensors(hf, output_dir / "model.safetensors")
    save_json(config, output_dir / "config.json")
    return output_dir
