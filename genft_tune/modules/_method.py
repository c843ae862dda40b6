"""The adapter-method protocol and its registry.

An adapter method (GenFT, WeGeFT, ...) is one :class:`AdapterKind` object, defined in
the method's own package and registered once with :func:`register_adapter_kind`.
Everything outside that package (the model builders, recipes, adapter files, merge,
``--verify``, model cards, benchmarks) asks the registry instead of comparing names,
so a new method is one new package and one registry entry.
"""

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

Targets = Union[List[str], Dict[str, Optional[str]]]
Shape = Tuple[int, ...]
# wrapper parts that activation checkpointing, torch.compile and FSDP add to module names
_WRAPPER_PARTS = re.compile(r"(^|\.)(_checkpoint_wrapped_module|_orig_mod|_fsdp_wrapped_module)(?=\.|$)")


def clean_module_name(name: str) -> str:
    """A module name without wrapper parts (``layers.0._checkpoint_wrapped_module.attn``
    -> ``layers.0.attn``): the name its tensors have in the state dict."""
    return _WRAPPER_PARTS.sub("", name).lstrip(".")


def renamed_prefix(prefix: str, new: str = "") -> Callable[[str], Optional[str]]:
    """``rest -> new + rest[len(prefix):]`` for names that start with ``prefix``, else None."""
    return lambda rest: new + rest[len(prefix):] if rest.startswith(prefix) else None


@dataclass(frozen=True)
class PeftNames:
    """How one method's adapter looks in Hugging Face PEFT's files (written and read by
    :mod:`genft_tune.checkpointing._peft_format`) and on its PEFT tuner (the method's
    ``peft`` module, e.g. :mod:`genft_tune.modules.genft.peft`, which asks these names).

    Attributes:
        peft_type (str): PEFT's ``peft_type`` (``GENFT``).
        root (str): the shared tensors' attribute on our model root and on PEFT's tuner.
        to_peft (Callable): a layer's tensor name relative to its module, ours -> PEFT's
            (``A1`` -> ``genft_A1``).
        from_peft (Callable): the inverse (None: not this method's).
        row_order_matters (bool): ``dW`` depends on the row order of ``W0`` (GenFT generates
            it): the files record torchtune's RoPE order (``torchtune_rope_heads``).
        rename_shared_keys (Callable): for a method whose shared tensors are keyed by module
            type (WeGeFT's pairs: PEFT's ``shared_keys``), which the two namings spell
            differently (``output_proj`` is Hugging Face's ``o_proj``): ``(key_of,
            renamed) -> {key: key in the other naming}``, from ``key_of`` (module -> its
            key) and ``renamed`` (module -> its name in the other naming); None: the
            method's shared tensors are not keyed by module type.
        prefix (str): PEFT's prefix of the method's tensor names on a tuner layer
            (``genft_``; ``register_peft_method``'s ``prefix``).
    """

    peft_type: str
    root: str
    to_peft: Callable[[str], str]
    from_peft: Callable[[str], Optional[str]]
    row_order_matters: bool = False
    rename_shared_keys: Optional[Callable[[Mapping[str, str], Mapping[str, str]], Dict[str, str]]] = None
    prefix: str = ""

    @property
    def shares_by_module_type(self) -> bool:
        return self.rename_shared_keys is not None


class AdapterKind:
    """What the package needs to know about one adapter method.

    Attributes:
        name (str): the method's id: the adapter files' ``method`` field and the prefix
            of its model-config keys (``genft_attn_modules``, ``apply_genft_to_mlp``).
        label (str): display name (``GenFT``).
        description (str): one line for model cards.
        config_cls (type): its hyperparameter dataclass (with ``to_dict``).
        layer_cls (type): its adapted linear (an :class:`~genft_tune.modules._base.AdapterLinear`).
        root_attr (str): the model attribute that holds its shared tensors
            (``genft_generators``), registered once per model.
        peft_names (PeftNames): its names in Hugging Face PEFT's files; None: the method
            has no PEFT format.
    """

    name: str = ""
    label: str = ""
    description: str = ""
    config_cls: type = object
    layer_cls: type = nn.Module
    root_attr: str = ""
    peft_names: Optional[PeftNames] = None

    # ---- building ---------------------------------------------------------------

    def make_root(self, config: Any) -> nn.Module:
        """The module of shared tensors for a model, before any layer is made."""
        raise NotImplementedError

    def make_linear(
        self,
        root: nn.Module,
        name: str,
        in_dim: int,
        out_dim: int,
        *,
        use_bias: bool = False,
        quantize_base: bool = False,
        base: Optional[nn.Linear] = None,
        **quantization_kwargs,
    ) -> nn.Module:
        """An adapted linear for target ``name`` (qualified; its last part is the
        module type), sharing what it shares through ``root``; ``base``: a linear whose
        weight and bias it takes over."""
        raise NotImplementedError

    # ---- state dicts --------------------------------------------------------------

    def is_key(self, key: str) -> bool:
        """Whether a state-dict key is one of the adapter's tensors."""
        raise NotImplementedError

    def target_modules(self, layers: Mapping[str, nn.Module]) -> Targets:
        """What adapter files record as targets, from ``{clean name: layer}``."""
        return list(layers)

    def targets_from_file(self, meta: Mapping[str, Any]) -> Targets:
        """The targets as :meth:`merge_state_dict` takes them, from ``genft_config.json``."""
        return list(meta["target_modules"])

    def merge_state_dict(self, state_dict: Dict[str, torch.Tensor], *, config: Any, target_modules: Targets) -> Dict[str, torch.Tensor]:
        """A plain state dict: ``W0 + dW`` for every target (fp32 math), adapter keys dropped."""
        raise NotImplementedError

    def init_state_dict(self, model: nn.Module, *, seed: int) -> Dict[str, torch.Tensor]:
        """A fresh adapter for ``model`` (fp32, CPU) that depends only on ``seed`` and the
        model's layout, leaving the global RNG untouched."""
        raise NotImplementedError

    def target_shapes(self, adapter_sd: Mapping[str, torch.Tensor], targets: Sequence[str], config: Any) -> Dict[str, Optional[Shape]]:
        """``(out, in)`` of each target's ``W0`` as far as the adapter's tensors tell."""
        return {t: None for t in targets}

    def shape_problem(self, adapter_keys: Iterable[str], weight_shape: Shape) -> Optional[str]:
        """Why an adapter with these tensor keys cannot adapt a weight of this shape
        (the end of a sentence: "..., but the <reason>"), or None."""
        return None

    def __repr__(self) -> str:
        return f"<adapter kind {self.name!r}>"


_KINDS: Dict[str, AdapterKind] = {}


def register_adapter_kind(kind: AdapterKind) -> AdapterKind:
    """Register ``kind`` under ``kind.name`` (again: replaced) and return it.

    Raises:
        ValueError: if the name is empty or another class already uses it.
    """
    if not kind.name:
        raise ValueError("an adapter kind needs a name")
    old = _KINDS.get(kind.name)
    if old is not None and type(old) is not type(kind):
        raise ValueError(f"adapter method {kind.name!r} is already registered by {type(old).__name__}")
    _KINDS[kind.name] = kind
    return kind


def adapter_kinds() -> List[AdapterKind]:
    """Every registered adapter method."""
    return list(_KINDS.values())


def get_adapter_kind(name: str) -> AdapterKind:
    """The registered method called ``name``.

    Raises:
        ValueError: naming the registered methods.
    """
    if name not in _KINDS:
        raise ValueError(f"unknown adapter method {name!r}; registered: {sorted(_KINDS)}")
    return _KINDS[name]


def peft_adapter_kinds() -> Dict[str, AdapterKind]:
    """``{peft_type: method}`` of every registered method with a PEFT format (its
    :attr:`AdapterKind.peft_names`)."""
    return {k.peft_names.peft_type: k for k in _KINDS.values() if k.peft_names is not None}


def adapter_kind_for_peft_type(peft_type: Any) -> AdapterKind:
    """The registered method whose PEFT files carry ``peft_type`` (``GENFT``, ``WEGEFT``).

    Raises:
        ValueError: naming the PEFT types of the registered methods.
    """
    kind = peft_adapter_kinds().get(str(peft_type))
    if kind is None:
        raise ValueError(f"peft_type {peft_type!r} is not one of {sorted(peft_adapter_kinds())}")
    return kind


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key is a tensor of any registered method's adapter (each
    method's own :meth:`AdapterKind.is_key` says)."""
    return any(kind.is_key(key) for kind in _KINDS.values())


def validate_missing_and_unexpected(
    *,
    missing_keys: Iterable[str],
    unexpected_keys: Iterable[str],
    base_loaded: bool = True,
    adapter_loaded: bool = False,
    is_key: Callable[[str], bool] = is_adapter_key,
    label: str = "adapter",
) -> None:
    """Check the result of ``model.load_state_dict(..., strict=False)`` (torchtune's
    ``validate_missing_and_unexpected_for_lora``, for any method).

    When only the base model was loaded, the adapter keys must be the only missing
    ones; when an adapter was loaded too, nothing may be missing.

    Args:
        missing_keys (Iterable[str]): ``load_state_dict``'s missing keys.
        unexpected_keys (Iterable[str]): its unexpected keys.
        base_loaded (bool): the base model was loaded. Default: True
        adapter_loaded (bool): the adapter was loaded. Default: False
        is_key (Callable[[str], bool]): which keys are the adapter's. Default: any
            registered method's (:func:`is_adapter_key`)
        label (str): the method's name in error messages. Default: "adapter"

    Raises:
        ValueError: naming the first offending key.
    """
    for key in missing_keys:
        if is_key(key):
            if adapter_loaded:
                raise ValueError(f"Missing {label} adapter key in the adapter checkpoint: {key}")
        elif base_loaded:
            raise ValueError(f"Missing base model key in the checkpoint: {key}")
    unexpected = list(unexpected_keys)
    if unexpected:
        raise ValueError(f"Unexpected keys in the checkpoint: {unexpected[:5]}")


def method_name_in_file(meta: Mapping[str, Any]) -> str:
    """The method an adapter file's metadata (``genft_config.json``'s contents) names;
    files written before a second method existed name none and are GenFT's."""
    return meta.get("method", "genft")


def adapter_kind_for_config(config: Any) -> AdapterKind:
    """The method whose config class ``config`` is.

    Raises:
        TypeError: if no registered method has that config class.
    """
    for kind in _KINDS.values():
        if isinstance(config, kind.config_cls):
            return kind
    names = " or ".join(k.config_cls.__name__ for k in _KINDS.values())
    raise TypeError(f"config must be a {names}, got {type(config).__name__}")


def adapter_layers_by_kind(model: nn.Module) -> Dict[AdapterKind, Dict[str, nn.Module]]:
    """``{kind: {qualified name: layer}}`` for every kind with layers in ``model``."""
    found: Dict[AdapterKind, Dict[str, nn.Module]] = {}
    kinds = adapter_kinds()
    for name, module in model.named_modules():
        for kind in kinds:
            if isinstance(module, kind.layer_cls):
                found.setdefault(kind, {})[name] = module
                break
    return found


__all__ = [
    "AdapterKind",
    "clean_module_name",
    "adapter_kind_for_config",
    "adapter_kind_for_peft_type",
    "adapter_kinds",
    "adapter_layers_by_kind",
    "get_adapter_kind",
    "is_adapter_key",
    "method_name_in_file",
    "PeftNames",
    "peft_adapter_kinds",
    "register_adapter_kind",
    "renamed_prefix",
    "validate_missing_and_unexpected",
]
