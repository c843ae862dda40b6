"""GenFT at the model level: its layers, its state-dict keys, merging ``dW`` into plain
weights, a fresh adapter for a model, and :data:`GENFT`, its :class:`AdapterKind`.

torchtune's ``get_merged_lora_ckpt`` hard-codes LoRA's key names and merge formula;
:func:`merge_genft_state_dict` is GenFT's counterpart (loading checks serve every method:
:func:`genft_tune.modules.validate_missing_and_unexpected`).
"""

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from genft_tune.modules._method import (
    AdapterKind,
    clean_module_name,
    PeftNames,
    register_adapter_kind,
    renamed_prefix,
)
from genft_tune.modules.genft.config import GenFTConfig
from genft_tune.modules.genft.generator import (
    GenFTGenerator,
    GenFTGenerators,
    generator_key,
    merged_weight_fp32,
    tie_specific_factors,
)
from genft_tune.modules.genft.layer import genft_linear, GenFTLinear, SPECIFIC

Shape = Tuple[int, ...]

GENERATORS_ATTR = "genft_generators"
PEFT_PREFIX = "genft_"  # PEFT's names of the specific factors on its tuner layer: genft_A1 ...


def get_genft_modules(model: nn.Module) -> Dict[str, GenFTLinear]:
    """All :class:`GenFTLinear` layers of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, GenFTLinear)}


def get_genft_config(model: nn.Module) -> GenFTConfig:
    """The :class:`GenFTConfig` of a model built with GenFT layers.

    Raises:
        ValueError: if the model has no GenFT layers.
    """
    for module in model.modules():
        if isinstance(module, GenFTGenerators):
            return module.config
    raise ValueError(f"model has no '{GENERATORS_ATTR}': it was not built with GenFT layers")


def is_genft_key(key: str) -> bool:
    """Whether a state-dict key belongs to the GenFT adapter (shared or specific)."""
    return key.startswith(GENERATORS_ATTR + ".") or key.rsplit(".", 1)[-1] in SPECIFIC


def get_genft_adapter_state_dict(
    state_dict: Dict[str, Any], device: Optional[str] = "cpu"
) -> Dict[str, Any]:
    """The adapter's entries of a full state dict: each shared generator once, plus
    every layer's specific factors."""
    return {
        k: (v.to(device) if device is not None else v)
        for k, v in state_dict.items()
        if is_genft_key(k)
    }


def _check_tensors(found, expected, prefix: str, what: str) -> None:
    """Every expected (meta) parameter is present in ``found`` with its shape."""
    for name, param in expected.items():
        if name not in found or found[name] is None:
            raise ValueError(f"missing {what} tensor {prefix}.{name} in the state dict")
        if found[name].shape != param.shape:
            raise ValueError(
                f"{prefix}.{name} has shape {tuple(found[name].shape)}, expected {tuple(param.shape)}"
            )


@torch.no_grad()
def merge_genft_state_dict(
    state_dict: Dict[str, torch.Tensor],
    *,
    config: GenFTConfig,
    target_modules: Sequence[str],
) -> Dict[str, torch.Tensor]:
    """Turn a GenFT model's state dict into a plain one: ``W = W0 + dW`` for every
    target, computed in fp32 from the original ``W0`` and cast to its dtype; all
    GenFT keys are dropped.

    Args:
        state_dict (Dict[str, torch.Tensor]): full state dict (base + adapter keys).
        config (GenFTConfig): the adapter's hyperparameters.
        target_modules (Sequence[str]): qualified names of the adapted linears
            (``layers.0.attn.q_proj``...), e.g. ``list(get_genft_modules(model))``.

    Returns:
        Dict[str, torch.Tensor]: a new state dict with merged weights.

    Raises:
        ValueError: if a target's weight or a needed adapter tensor is missing, or
            shapes disagree with the generator.
    """
    merged = {k: v for k, v in state_dict.items() if not is_genft_key(k)}
    for prefix in target_modules:
        weight_key = f"{prefix}.weight"
        if weight_key not in state_dict:
            raise ValueError(f"target module {prefix!r} has no weight {weight_key!r} in the state dict")
        W0 = state_dict[weight_key]
        out_dim, in_dim = W0.shape
        gkey = f"{GENERATORS_ATTR}.{generator_key(out_dim, in_dim)}"
        shared = {
            k[len(gkey) + 1 :]: v
            for k, v in state_dict.items()
            if k.startswith(gkey + ".")
        }
        with torch.device("meta"):
            generator = GenFTGenerator(in_dim, out_dim, config=config)
            layer = GenFTLinear(in_dim, out_dim, generator=generator)
        _check_tensors(shared, dict(generator.named_parameters()), gkey, f"generator for {prefix!r}")
        specific = {n: state_dict.get(f"{prefix}.{n}") for n in layer.adapter_params()}
        _check_tensors(specific, {n: getattr(layer, n) for n in layer.adapter_params()}, prefix, "specific factors")
        args = tie_specific_factors(
            specific.get("A1"), specific.get("B1"), specific.get("A2"), specific.get("B2"), tied=layer.tied
        )
        merged[weight_key] = merged_weight_fp32(W0, generator, args, shared)
    return merged


def named_genft_generators(model: nn.Module) -> Dict[str, GenFTGenerator]:
    """Every shared :class:`GenFTGenerator` by state-dict prefix
    (``genft_generators.<OUT>x<IN>``)."""
    return {
        clean_module_name(n): m for n, m in model.named_modules() if isinstance(m, GenFTGenerator)
    }


def genft_adapter_init_state_dict(model: nn.Module, *, seed: int) -> Dict[str, torch.Tensor]:
    """A freshly initialised GenFT adapter for ``model``, as an fp32 CPU state dict.

    The values depend only on ``seed`` and the model's GenFT layout (never on the
    device, the dtype, the world size or how much random state model construction
    consumed), so a single-device run and an FSDP run, whose model is built on the
    meta device, start from the same adapter. The global RNG is left untouched.

    Args:
        model (nn.Module): a model built with GenFT layers (may live on meta).
        seed (int): seed of the adapter's initialisation.

    Returns:
        Dict[str, torch.Tensor]: adapter keys (shared generators, then every layer's
        specific factors) to tensors.
    """
    config = get_genft_config(model)
    state: Dict[str, torch.Tensor] = {}
    twins: Dict[tuple, GenFTGenerator] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            for prefix, gen in sorted(named_genft_generators(model).items()):
                twin = GenFTGenerator(gen.in_dim, gen.out_dim, config=config)
                twins[(gen.out_dim, gen.in_dim)] = twin
                for name, param in twin.named_parameters():
                    state[f"{prefix}.{name}"] = param.detach().float()
            for prefix, layer in get_genft_modules(model).items():
                prefix = clean_module_name(prefix)
                gen = twins.get((layer.out_dim, layer.in_dim))
                if gen is None:  # a layer whose generator is not registered on the model
                    gen = GenFTGenerator(layer.in_dim, layer.out_dim, config=config)
                with torch.device("meta"):  # no (out, in) base weight is allocated
                    twin = GenFTLinear(layer.in_dim, layer.out_dim, generator=gen, use_bias=layer.use_bias)
                twin.to_empty(device="cpu")
                twin.initialize_parameters()
                for name in twin.adapter_params():
                    state[f"{prefix}.{name}"] = getattr(twin, name).detach().float()
    return state


def _generator_shapes(keys: Iterable[str]) -> set:
    """``{(out, in)}`` of the shared generators among state-dict ``keys``."""
    shapes = set()
    for key in keys:
        if key.startswith(GENERATORS_ATTR + "."):
            out_s, in_s = key.split(".")[1].split("x")
            shapes.add((int(out_s), int(in_s)))
    return shapes


class GenFTKind(AdapterKind):
    """GenFT as an adapter method (see :class:`~genft_tune.modules.AdapterKind`)."""

    name = "genft"
    label = "GenFT"
    description = "GenFT (generative parameter-efficient fine-tuning, arXiv:2506.11042)"
    config_cls = GenFTConfig
    layer_cls = GenFTLinear
    root_attr = GENERATORS_ATTR
    # A1 -> genft_A1 on PEFT's layer; dW is generated in the row order it was trained in
    peft_names = PeftNames(
        "GENFT", GENERATORS_ATTR, lambda rest: PEFT_PREFIX + rest, renamed_prefix(PEFT_PREFIX),
        row_order_matters=True, prefix=PEFT_PREFIX,
    )

    def make_root(self, config: GenFTConfig) -> GenFTGenerators:
        return GenFTGenerators(config)

    def make_linear(self, root, name, in_dim, out_dim, *, use_bias=False, quantize_base=False, base=None, **quantization_kwargs):
        return genft_linear(
            in_dim, out_dim, generators=root, use_bias=use_bias, quantize_base=quantize_base, base=base,
            **quantization_kwargs,
        )

    is_key = staticmethod(is_genft_key)

    def merge_state_dict(self, state_dict, *, config, target_modules):
        return merge_genft_state_dict(state_dict, config=config, target_modules=target_modules)

    def init_state_dict(self, model, *, seed):
        return genft_adapter_init_state_dict(model, seed=seed)

    def target_shapes(self, adapter_sd, targets, config) -> Dict[str, Optional[Shape]]:
        """From each target's specific factors and the generators' keys (``OUTxIN``);
        ``None`` where that is ambiguous."""
        gen_shapes = _generator_shapes(adapter_sd)
        shapes: Dict[str, Optional[Shape]] = {}
        for name in targets:
            a1, a2 = adapter_sd.get(f"{name}.A1"), adapter_sd.get(f"{name}.A2")
            in_dim = int(a1.shape[1]) if a1 is not None else None
            out_dim = int(a2.shape[1]) if a2 is not None else None
            if a1 is not None and a2 is None and config.use_column:
                out_dim = in_dim  # A1 alone with a column stage: a tied (square) layer
            candidates = [
                s for s in gen_shapes
                if (in_dim is None or s[1] == in_dim) and (out_dim is None or s[0] == out_dim)
            ]
            if in_dim is not None and out_dim is not None:
                shapes[name] = (out_dim, in_dim)
            else:
                shapes[name] = candidates[0] if len(candidates) == 1 else None
        return shapes

    def shape_problem(self, adapter_keys, weight_shape) -> Optional[str]:
        gen_shapes = _generator_shapes(adapter_keys)
        if gen_shapes and tuple(weight_shape) not in gen_shapes:
            return f"adapter has generators only for {sorted(list(s) for s in gen_shapes)} (OUTxIN)"
        return None


GENFT = register_adapter_kind(GenFTKind())
