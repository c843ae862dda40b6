# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Model construction shared by the benchmark scripts.

Every variant is a torchtune ``TransformerDecoder`` of one Llama shape, built by
torchtune's ``llama3`` / ``llama3_2`` / ``llama2`` component builder, whose target
linears :func:`apply_method` then swaps for adapter layers: torchtune's ``LoRALinear`` /
``DoRALinear`` (what ``lora_llama3(use_dora=...)`` puts there), or GenFT / WeGeFT layers
put in by :func:`genft_tune.apply_adapter` (the same call the model builders make).
Building every variant from the same plain model keeps the comparison about the
adapted layers only.

Targets use short names: ``q, k, v, o`` (attention projections) and ``mlp`` (``w1``,
``w2``, ``w3`` together, as torchtune's ``apply_lora_to_mlp``); ``all`` is all five.
"""

import ctypes
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from torchtune.models.llama2._component_builders import llama2, lora_llama2
from torchtune.models.llama3._component_builders import llama3, lora_llama3
from torchtune.models.llama3_2._component_builders import llama3_2, lora_llama3_2
from torchtune.modules import RotaryPositionalEmbeddings, TransformerDecoder
from torchtune.modules.peft import DoRALinear, LoRALinear, get_adapter_params, set_trainable_params

from genft_tune.modules import apply_adapter, GenFTConfig, WeGeFTConfig

ATTN_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "output_proj"}
MLP_LINEARS = ("w1", "w2", "w3")
TARGET_CHOICES = ("q", "k", "v", "o", "mlp")


@dataclass(frozen=True)
class Shape:
    """Dimensions of a Llama-style decoder and the torchtune builder family to use.

    ``family`` is ``llama3`` (untied, Llama-3 RoPE), ``llama3_2`` (tied embeddings,
    scaled RoPE), ``llama2`` (untied, plain RoPE) or ``smollm2`` (``llama3_2``'s
    builder, tied, with plain RoPE swapped in: SmolLM2 uses no RoPE scaling).
    """

    family: str
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int
    rope_base: int
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


SHAPES: Dict[str, Shape] = {
    # CPU default: small enough for a < 1 minute benchmark on two cores.
    "tiny": Shape("llama3", 1024, 2, 8, 4, 256, 768, 1024, 500_000),
    # HuggingFaceTB/SmolLM2-135M(-Instruct) config.json.
    "smollm2_135m": Shape("smollm2", 49152, 30, 9, 3, 576, 1536, 8192, 100_000),
    # torchtune.models.llama3_2.llama3_2_1b.
    "llama3_2_1b": Shape("llama3_2", 128_256, 16, 32, 8, 2048, 8192, 131_072, 500_000),
    # torchtune.models.llama2.llama2_7b.
    "llama2_7b": Shape("llama2", 32_000, 32, 32, 32, 4096, 11008, 4096, 10_000),
}


def get_shape(name: str, *, layers: Optional[int] = None, max_seq_len: Optional[int] = None) -> Shape:
    """A preset from :data:`SHAPES`, optionally truncated to ``layers`` layers.

    Raises:
        ValueError: if ``name`` is unknown or ``layers`` is not positive.
    """
    if name not in SHAPES:
        raise ValueError(f"shape must be one of {list(SHAPES)}, got {name!r}")
    shape = SHAPES[name]
    if layers is not None:
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        shape = replace(shape, num_layers=layers)
    if max_seq_len is not None:
        shape = replace(shape, max_seq_len=max_seq_len)
    return shape


def parse_targets(spec: str) -> Tuple[List[str], bool]:
    """``"q,v"`` / ``"all"`` -> (torchtune attention module names, apply_to_mlp).

    Raises:
        ValueError: on an unknown or empty target.
    """
    names = list(TARGET_CHOICES) if spec.strip() == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise ValueError(f"targets must name at least one of {list(TARGET_CHOICES)} or 'all', got {spec!r}")
    for name in names:
        if name not in TARGET_CHOICES:
            raise ValueError(f"targets must be a comma list of {list(TARGET_CHOICES)} or 'all', got {name!r}")
    return [ATTN_TARGETS[n] for n in ATTN_TARGETS if n in names], "mlp" in names


def _base_kwargs(shape: Shape) -> Dict:
    kwargs = dict(
        vocab_size=shape.vocab_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        num_kv_heads=shape.num_kv_heads,
        embed_dim=shape.embed_dim,
        max_seq_len=shape.max_seq_len,
        intermediate_dim=shape.intermediate_dim,
        norm_eps=shape.norm_eps,
        rope_base=shape.rope_base,
    )
    if shape.family in ("llama3_2", "smollm2"):
        kwargs["tie_word_embeddings"] = True
    return kwargs


def _plain_rope(model: TransformerDecoder, shape: Shape) -> TransformerDecoder:
    """Replace the builder's (scaled) RoPE with plain RoPE in every layer."""
    rope = RotaryPositionalEmbeddings(dim=shape.head_dim, max_seq_len=shape.max_seq_len, base=shape.rope_base)
    for layer in model.layers:
        layer.attn.pos_embeddings = rope
    return model


def build_base(shape: Shape) -> TransformerDecoder:
    """The plain model (torchtune component builder)."""
    builder = {"llama3": llama3, "llama3_2": llama3_2, "smollm2": llama3_2, "llama2": llama2}[shape.family]
    model = builder(**_base_kwargs(shape))
    return _plain_rope(model, shape) if shape.family == "smollm2" else model


def build_lora(
    shape: Shape,
    *,
    attn_modules: Sequence[str],
    apply_to_mlp: bool,
    rank: int,
    alpha: float,
    use_dora: bool = False,
) -> TransformerDecoder:
    """torchtune's LoRA (or DoRA) model from the ``lora_*`` component builder."""
    builder = {
        "llama3": lora_llama3,
        "llama3_2": lora_llama3_2,
        "smollm2": lora_llama3_2,
        "llama2": lora_llama2,
    }[shape.family]
    kwargs = _base_kwargs(shape)
    if shape.family == "llama2":
        kwargs.pop("rope_base")  # lora_llama2 has no rope_base (fixed 10_000, as the preset)
    model = builder(
        lora_attn_modules=list(attn_modules),
        apply_lora_to_mlp=apply_to_mlp,
        apply_lora_to_output=False,
        lora_rank=rank,
        lora_alpha=alpha,
        use_dora=use_dora,
        **kwargs,
    )
    return _plain_rope(model, shape) if shape.family == "smollm2" else model


METHOD_KINDS = ("base", "lora", "dora", "genft", "wegeft")
# the Method fields that hold a method of this package's config, by kind
_ADAPTER_FIELDS = {"genft": "GenFTConfig", "wegeft": "WeGeFTConfig"}


@dataclass(frozen=True)
class Method:
    """One adapter variant to build.

    ``kind`` is ``base`` (no adapter: every weight frozen), ``lora`` / ``dora``
    (torchtune's ``LoRALinear`` / ``DoRALinear`` with ``rank``/``alpha``), ``genft``
    (``genft`` holds its GenFTConfig) or ``wegeft`` (``wegeft`` holds its WeGeFTConfig).
    """

    name: str
    kind: str
    rank: int = 16
    alpha: float = 32.0
    genft: Optional[GenFTConfig] = None
    wegeft: Optional[WeGeFTConfig] = None

    def __post_init__(self):
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"kind must be one of {list(METHOD_KINDS)}, got {self.kind!r}")
        config = getattr(self, self.kind, None) if self.kind in _ADAPTER_FIELDS else None
        if self.kind in _ADAPTER_FIELDS and config is None:
            label = _ADAPTER_FIELDS[self.kind]
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} needs a {label} in {self.kind}")

    @property
    def adapter_config(self):
        """The config of a method of this package (GenFT, WeGeFT), else None."""
        return self.genft if self.genft is not None else self.wegeft

    def describe(self) -> Dict:
        out: Dict = {"name": self.name, "kind": self.kind}
        if self.kind in ("lora", "dora"):
            out.update(rank=self.rank, alpha=self.alpha)
        if self.genft is not None:
            out["genft"] = self.genft.to_dict()
        if self.wegeft is not None:
            out["wegeft"] = self.wegeft.to_dict()
        return out


def _target_names(model: TransformerDecoder, attn_modules: Sequence[str], apply_to_mlp: bool):
    for i, _ in enumerate(model.layers):
        for name in attn_modules:
            yield i, "attn", name
        if apply_to_mlp:
            for name in MLP_LINEARS:
                yield i, "mlp", name


def apply_method(
    model: TransformerDecoder,
    method: Method,
    *,
    attn_modules: Sequence[str],
    apply_to_mlp: bool,
) -> int:
    """Swap the target linears of a plain torchtune decoder for ``method``'s adapter
    layers (copying the base weights), freeze everything else, and return the number
    of trainable parameters.

    Every method is built the same way from the same plain model, so all variants
    share their base weights and differ only in the adapted layers. LoRA/DoRA layers
    are torchtune's own ``LoRALinear``/``DoRALinear`` (what ``lora_llama3`` puts
    there); GenFT and WeGeFT go in through :func:`genft_tune.apply_adapter`.

    Raises:
        ValueError: if a target is not a plain bias-free ``nn.Linear``.
    """
    if method.kind == "base":
        for p in model.parameters():
            p.requires_grad_(False)
        return 0
    targets = [f"layers.{i}.{owner}.{name}" for i, owner, name in _target_names(model, attn_modules, apply_to_mlp)]
    for name in targets:
        old = model.get_submodule(name)
        if type(old) is not nn.Linear or old.bias is not None:
            raise ValueError(f"{name} is {type(old).__name__}, expected a bias-free nn.Linear")
    if method.adapter_config is not None:  # GenFT, WeGeFT: the package's own apply_adapter
        apply_adapter(model, method.adapter_config, targets)
        return freeze_all_but_adapters(model)
    ref = next(model.parameters())
    for name in targets:
        old = model.get_submodule(name)
        cls = LoRALinear if method.kind == "lora" else DoRALinear
        new = cls(old.in_features, old.out_features, rank=method.rank, alpha=method.alpha).to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight)
        if method.kind == "dora":
            new.initialize_dora_magnitude()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return freeze_all_but_adapters(model)


def release_freed_memory() -> None:
    """Give memory freed by Python/torch back to the OS (glibc ``malloc_trim``), so that
    RSS measurements of the next variant start from a clean floor; no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def freeze_all_but_adapters(model: nn.Module) -> int:
    """Make only adapter parameters trainable (torchtune's helpers); returns their count."""
    params = get_adapter_params(model)
    set_trainable_params(model, params)
    return sum(p.numel() for p in params.values())


def target_shapes(shape: Shape, attn_modules: Sequence[str], apply_to_mlp: bool) -> List[Tuple[int, int]]:
    """``(out, in)`` of every adapted linear of one layer."""
    d, hd = shape.embed_dim, shape.head_dim
    dims = {
        "q_proj": (shape.num_heads * hd, d),
        "k_proj": (shape.num_kv_heads * hd, d),
        "v_proj": (shape.num_kv_heads * hd, d),
        "output_proj": (d, shape.num_heads * hd),
    }
    out = [dims[name] for name in attn_modules]
    if apply_to_mlp:
        h = shape.intermediate_dim
        out += [(h, d), (d, h), (h, d)]  # w1, w2, w3
    return out


def lora_param_count(shape: Shape, attn_modules, apply_to_mlp, rank: int, *, dora: bool = False) -> int:
    """Trainable parameters of torchtune's LoRA/DoRA (``r(in+out)`` (+ ``out`` for DoRA) per layer)."""
    per_layer = sum(rank * (o + i) + (o if dora else 0) for o, i in target_shapes(shape, attn_modules, apply_to_mlp))
    return per_layer * shape.num_layers


def genft_param_count(shape: Shape, attn_modules, apply_to_mlp, config: GenFTConfig) -> int:
    """Trainable parameters of GenFT per ``GENFT_SPEC.md`` (biases off; full generator)."""
    a, b = config.shared_dim, config.specific_dim
    shapes = target_shapes(shape, attn_modules, apply_to_mlp)
    shared = sum(2 * a * (i + o) for o, i in set(shapes))
    specific = sum(2 * b * i if o == i else 2 * b * (i + o) for o, i in shapes)
    bias = sum(2 * (a + b) + i + o for o, i in set(shapes)) if config.generator_bias else 0
    return shared + bias + specific * shape.num_layers


def wegeft_param_count(shape: Shape, attn_modules, apply_to_mlp, config: WeGeFTConfig) -> int:
    """Trainable parameters of WeGeFT: ``phi, psi`` of ``(r, in)`` per module type when
    shared, per layer otherwise."""
    names = list(attn_modules) + (list(MLP_LINEARS) if apply_to_mlp else [])
    dims = dict(zip(names, target_shapes(shape, attn_modules, apply_to_mlp)))
    per_set = sum(2 * config.rank * i for o, i in dims.values())
    return per_set if config.shared else per_set * shape.num_layers


def matched_lora_rank(target: int, shape: Shape, attn_modules, apply_to_mlp, *, dora: bool = False) -> int:
    """The LoRA/DoRA rank whose trainable-parameter count is closest to ``target``."""
    best = min(
        range(1, 4097),
        key=lambda r: abs(lora_param_count(shape, attn_modules, apply_to_mlp, r, dora=dora) - target),
    )
    return best
