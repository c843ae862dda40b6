"""What the methods' PEFT tuners (each method's ``peft`` module) share: the ``PeftType``
member each needs, a tuner layer on PEFT's ``BaseTunerLayer`` (merge from the saved
``W0``, exact unmerge, forward ``base(x) + update``, mixed-adapter batches, the eval
cache of the ``W0``-dependent part of the update) and a tuner model that keeps a
method's shared tensors once per adapter. Needs the ``peft`` extra: nothing in :mod:`genft_tune.modules` imports
this module but the methods' ``peft`` modules, which :mod:`genft_tune.peft` imports.

Where the shared tensors live: on the adapted model itself, as ``model.<root_attr>``
(a :class:`SharedAdapterTensors`, keyed by adapter), so that every way of adding an
adapter sees them: ``get_peft_model``/``PeftModel`` (model keys
``base_model.model.<root_attr>.<adapter>.<...>``) and PEFT's ``inject_adapter_in_model``,
which transformers' ``load_adapter`` uses and which returns the model without the tuner
(keys ``<root_attr>.<adapter>.<...>``). The saved file keeps one name for them,
``base_model.<root_attr>.<...>`` (the format since the first release); the tuner maps
it both ways. Two PEFT helpers are taught about the stores when this module is
imported: transformers' key mapping for adapters
(:func:`_install_transformers_key_mapping`) and the base model's state dict
(:func:`_install_base_model_state_dict_filter`). The stores are no tuner layers on
purpose: PEFT's tools (LoRA conversion, layer status) take every tuner layer for an
adapted layer.
"""

import contextlib
import functools
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils import PeftType, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import AuxiliaryTrainingWrapper
from transformers.pytorch_utils import Conv1D

from genft_tune.modules._cache import MergedWeightCache

HALF_DTYPES = (torch.float16, torch.bfloat16)
BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names=
SHARED_ROOT_ATTRS = set()  # the stores' names on an adapted model (every AdapterPeftModel's root_attr)


def peft_type(name: str) -> PeftType:
    """``PeftType[name]``, added to PEFT's enum when it is not a member yet (PEFT's
    ``register_peft_method`` accepts only members)."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_, member._value_ = name, name
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


class SharedAdapterTensors(nn.ModuleDict):
    """A method's shared tensors, one module per adapter (``store[adapter]``),
    registered on the adapted model as ``model.<root_attr>``."""

    def __init__(self, root_attr: str):
        super().__init__()
        self.root_attr = root_attr


def _is_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def move_like(module: nn.Module, weight: torch.Tensor) -> None:
    """``module`` to ``weight``'s device and float dtype; left alone while it is still
    on the meta device (``low_cpu_mem_usage``: the loaded tensors are assigned later)."""
    if not _is_meta(module) and not weight.is_meta:
        module.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else None)


class AdapterPeftLayer(nn.Module, BaseTunerLayer):
    """A PEFT tuner layer around an ``nn.Linear`` (or a GPT-2 ``Conv1D``, whose weight is
    stored transposed) whose update is computed from its frozen ``W0``. Subclasses set
    ``adapter_layer_names`` and implement :meth:`update_layer`, :meth:`_shared_modules`,
    :meth:`_merged_weight` (fp32 maths, from the original ``W0``), :meth:`_exact_delta`
    (``dW`` alone, fp32), :meth:`_update` (``x @
    dW.T`` for the forward) and the eval-cache trio :meth:`_cached_inputs`,
    :meth:`_eval_state`, :meth:`_eval_update`.

    In eval, when no gradient is needed, the part of the update that depends on ``W0``
    (GenFT: ``dW``; WeGeFT: ``W0 phi^T``) is computed once and kept until a tensor it was
    computed from changes (identity and version counter, as :class:`~genft_tune.modules.
    GenFTLinear` does); ``cache_updates = False`` turns this off.
    """

    other_param_names = ()
    cache_updates: bool = True

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, root: nn.Module, module_name: str):
        super().__init__()
        self.base_layer = base_layer
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ModuleDict() if name in self._module_stores else nn.ParameterDict())
        self._original: Optional[torch.Tensor] = None  # base weight before the first merge, restored by unmerge
        self._disable_adapters = False
        self.merged_adapters: List[str] = []
        base = self.get_base_layer()
        # GPT-2's Conv1D holds W0^T, (in, out): PEFT's fan_in_fan_out, set from the layer itself
        self.fan_in_fan_out = isinstance(base, Conv1D)
        if self.fan_in_fan_out:
            self.in_features, self.out_features = base.weight.shape
        else:
            self.in_features, self.out_features = base.in_features, base.out_features
        self.module_name = module_name
        self._active_adapter = adapter_name
        self._caches: Dict[str, MergedWeightCache] = {}
        self.update_layer(adapter_name, config, root)

    _module_stores: tuple = ()  # adapter_layer_names that hold modules rather than parameters

    # ---- per method ------------------------------------------------------------------

    def update_layer(self, adapter_name: str, config: Any, root: nn.Module) -> None:
        raise NotImplementedError

    def _shared_modules(self) -> Dict[str, nn.Module]:
        """adapter -> the module of shared tensors this layer reads (held by the model)."""
        raise NotImplementedError

    def _forget(self, adapter: str) -> None:
        """Drop this layer's references to ``adapter``'s shared tensors."""
        raise NotImplementedError

    def _merged_weight(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        """``W0 + dW`` (fp32 maths, no dropout), in ``weight``'s dtype; ``weight`` is ``(out, in)``."""
        raise NotImplementedError

    def _exact_delta(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        """``dW`` (no dropout) computed and returned in fp32 (fp64 for fp64 weights) from
        upcast copies, never rounded through ``weight``'s dtype; ``weight`` is ``(out, in)``."""
        raise NotImplementedError

    def _update(self, adapter: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T`` in the adapter's dtype (dropout when training); ``weight`` is ``W0``."""
        raise NotImplementedError

    def _cached_inputs(self, adapter: str) -> List[torch.Tensor]:
        """The adapter's tensors :meth:`_eval_state` reads (besides ``W0``)."""
        raise NotImplementedError

    def _eval_state(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        """The ``W0``-dependent part of the update, kept by the eval cache."""
        raise NotImplementedError

    def _eval_update(self, adapter: str, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """:meth:`_update` without dropout, from :meth:`_eval_state`'s result."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------

    def _has_adapter(self, adapter: str) -> bool:
        return adapter in self._shared_modules()

    def _finish_update(self, adapter_name: str) -> None:
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _transposed(self, weight: torch.Tensor) -> torch.Tensor:
        """``(out, in)`` <-> the base layer's layout (a transpose for ``Conv1D``)."""
        return weight.T if self.fan_in_fan_out else weight

    def _original_weight(self) -> torch.Tensor:
        """``W0`` ``(out, in)``: the base weight before any merge (every adapter's ``dW`` is made from it)."""
        weight = self._original if self._original is not None else self.get_base_layer().weight
        return self._transposed(weight.detach())

    def _delta(self, adapter: str) -> torch.Tensor:
        return self._exact_delta(adapter, self._original_weight())

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``dW`` (no dropout) from the original ``W0``, in fp32 (fp64 for an fp64 base;
        as LoRA's, not in a half base's dtype) and in the base layer's layout (as LoRA's:
        transposed for a ``Conv1D``)."""
        return self._transposed(self._delta(adapter))

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """PEFT's ``convert_to_lora``/``save_as_lora`` may factor this layer: it is additive
        (``W0 + dW``) and :meth:`get_delta_weight` gives ``dW`` in the base's row order."""
        return True

    def merge(self, safe_merge: bool = False, adapter_names: Optional[List[str]] = None) -> None:
        for adapter in check_adapters_to_merge(self, adapter_names):
            if not self._has_adapter(adapter):
                continue
            base = self.get_base_layer()
            current = self._transposed(base.weight.data)
            if self._original is None:  # the first merge: W0 + dW in one fp32 computation
                merged = self._merged_weight(adapter, current)
            else:  # more: add this adapter's dW, also generated from the original W0
                delta = self._delta(adapter)
                merged = (current.to(delta.dtype) + delta).to(current.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
            if self._original is None:
                self._original = base.weight.data.clone()
            base.weight.data = self._transposed(merged).contiguous()
            self.merged_adapters.append(adapter)
        self._caches.clear()

    def unmerge(self) -> None:
        if self._original is not None:  # restores W0 bit for bit, no subtraction
            self.get_base_layer().weight.data = self._original
        self._original = None
        self.merged_adapters.clear()
        self._caches.clear()

    # ---- adapters' state: the shared tensors follow this layer's adapters -------------

    def set_adapter(self, adapter_names: Union[str, List[str]], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        active = [adapter_names] if isinstance(adapter_names, str) else adapter_names
        for adapter, module in self._shared_modules().items():
            module.requires_grad_(adapter in active and not inference_mode)
        # each cache checks its own tensors: keep the active adapters', free the others' memory
        for adapter in [a for a in self._caches if a not in active]:
            del self._caches[adapter]

    def enable_adapters(self, enabled: bool) -> None:
        super().enable_adapters(enabled)
        if not enabled:
            for module in self._shared_modules().values():
                module.requires_grad_(False)

    def set_requires_grad(self, adapter_names, requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        for adapter, module in self._shared_modules().items():
            if adapter in names:
                module.requires_grad_(requires_grad)

    def requires_grad_(self, requires_grad: bool = True) -> "AdapterPeftLayer":
        # (transformers' load_adapter freezes an inference load with layer.requires_grad_(False))
        super().requires_grad_(requires_grad)
        for module in self._shared_modules().values():
            module.requires_grad_(requires_grad)
        return self

    def _all_available_adapter_names(self) -> List[str]:
        return sorted(set(super()._all_available_adapter_names()) | set(self._shared_modules()))

    def _get_available_adapters(self) -> set:
        # (a shared WeGeFT layer holds no per-layer tensors: its adapters are its references)
        return super()._get_available_adapters() | set(self._shared_modules())

    def delete_adapter(self, adapter_name: str) -> None:
        # forget the adapter first: PEFT picks the fallback among the adapters still here
        self._forget(adapter_name)
        self._caches.pop(adapter_name, None)
        store = self.__dict__.get("_shared_store")
        if store is not None and adapter_name in store:  # (the model keeps it: transformers' delete_adapter)
            del store[adapter_name]
        super().delete_adapter(adapter_name)

    def train(self, mode: bool = True) -> "AdapterPeftLayer":
        if mode:
            self._caches.clear()  # training: the eval copies would be stale memory
        return super().train(mode)

    # ---- forward ----------------------------------------------------------------------

    def _adapter_output(self, adapter: str, x: torch.Tensor, W0: torch.Tensor) -> torch.Tensor:
        if self.cache_updates and not self.training:
            tensors = self._cached_inputs(adapter)
            if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
                cache = self._caches.setdefault(adapter, MergedWeightCache())
                state = cache.get([self.get_base_layer().weight, *tensors], lambda: self._eval_state(adapter, W0))
                return self._eval_update(adapter, x, state)
        return self._update(adapter, x, W0)

    def _check_adapter_names(self, x: torch.Tensor, adapter_names: List[str]) -> None:
        if len(x) != len(adapter_names):
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(adapter_names)} and {len(x)} respectively."
            )
        if self.merged:
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
            )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            self._check_adapter_names(x, adapter_names)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        W0 = self._transposed(self.get_base_layer().weight)
        if adapter_names is None:
            for adapter in self.active_adapters:
                if self._has_adapter(adapter):
                    result = result + self._adapter_output(adapter, x, W0).to(result.dtype)
            return result
        # a mixed batch: each sample gets the update of the adapter named for it (as LoRA's)
        for adapter in sorted(set(adapter_names)):
            if adapter == BASE or not self._has_adapter(adapter):
                continue
            rows = [i for i, name in enumerate(adapter_names) if name == adapter]
            result[rows] += self._adapter_output(adapter, x[rows], W0).to(result.dtype)
        return result


class AdapterPeftModel(BaseTuner):
    """A PEFT tuner whose layers share tensors: one ``root`` module per adapter (built by
    :meth:`make_root`) in the model's :class:`SharedAdapterTensors` (``model.<root_attr>``),
    saved once as ``base_model.<root_attr>.<...>``, and a ``tuner_layer_cls`` on every
    target ``nn.Linear`` or ``Conv1D``."""

    root_attr: str
    # target_modules=None: PEFT's per-architecture defaults, LoRA's (q_proj/v_proj, c_attn, ...)
    target_module_mapping: Dict[str, List[str]] = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if getattr(cls, "root_attr", None):
            SHARED_ROOT_ATTRS.add(cls.root_attr)

    def make_root(self, peft_config: Any) -> nn.Module:
        raise NotImplementedError

    # ---- the store of shared tensors ----------------------------------------------------

    @classmethod
    def _store_of(cls, model: nn.Module) -> Optional[tuple]:
        """``(its key prefix, the store)`` of this method in ``model`` (a ``PeftModel``,
        a tuner or the adapted model), or None."""
        for name, module in model.named_modules():
            if isinstance(module, SharedAdapterTensors) and module.root_attr == cls.root_attr:
                return name.replace("_fsdp_wrapped_module.", ""), module  # (FSDP's state dict drops it)
        return None

    def _store(self) -> SharedAdapterTensors:
        store = self.model._modules.get(self.root_attr)
        if store is None:
            if hasattr(self.model, self.root_attr):
                raise ValueError(
                    f"the model already has a {self.root_attr!r} attribute (a torchtune-style "
                    f"{self.prefix.rstrip('_')} model?); PEFT adapters need a plain base model"
                )
            store = SharedAdapterTensors(self.root_attr)
            setattr(self.model, self.root_attr, store)
        return store

    # ---- saved keys: base_model.<root_attr>.<...> <-> [base_model.model.]<root_attr>.<adapter>.<...>

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        match = re.match(rf"(?:base_model\.model\.)?{cls.root_attr}\.{re.escape(adapter_name)}\.(.+)", key)
        if match:  # the file does not depend on the adapter's name
            return f"base_model.{cls.root_attr}.{match.group(1)}"
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        out = super()._get_adapter_state_dict(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict,
            unwanted_adapter_names=unwanted_adapter_names,
        )
        found = cls._store_of(model)
        if found is not None:
            prefix = f"{found[0]}.{adapter_name}."
            out.update({k: v for k, v in state_dict.items() if k.startswith(prefix)})
        return out

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        out = super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )
        found = cls._store_of(model)
        if found is None:
            return out
        # base_model.<root_attr>.<...>; transformers' save_pretrained of an adapter on a plain
        # model puts base_model.model. before every key, ours too
        saved = re.compile(rf"(?:base_model\.model\.)?base_model\.{cls.root_attr}\.")
        target = f"{found[0]}.{adapter_name}."
        return {saved.sub(target, k, count=1) if saved.match(k) else k: v for k, v in out.items()}

    # ---- adapters --------------------------------------------------------------------

    @classmethod
    def _check_target_module_exists(cls, peft_config, key: str):
        # the stores' modules are named after module types (wegeft_factors.<adapter>.q_proj): never targets
        if key.split(".", 1)[0] in SHARED_ROOT_ATTRS:
            return False
        return BaseTuner._check_target_module_exists(peft_config, key)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs):
        store = self._store()
        if adapter_name not in store:
            store[adapter_name] = self.make_root(peft_config)
        root = store[adapter_name]
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, peft_config, root)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise TypeError(
                f"{self.prefix.rstrip('_')} adapts torch.nn.Linear and transformers' Conv1D layers; "
                f"{current_key} is {type(base).__name__}"
            )
        new = self.tuner_layer_cls(target, adapter_name, peft_config, root, target_name)
        new.__dict__["_shared_store"] = store  # a reference, not a submodule: the model holds it
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        # PEFT finds adapter tensors on tuner layers and the tuner; ours also live on the
        # model (the store), whose trainability the layers' set_adapter has set
        found = self._store_of(model)
        kept = [(p, p.requires_grad) for p in found[1].parameters()] if found else []
        super()._mark_only_adapters_as_trainable(model)
        for p, requires_grad in kept:
            p.requires_grad = requires_grad

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        store = self.model._modules.get(self.root_attr)
        if not autocast_adapter_dtype or store is None or adapter_name not in store:
            return
        for owner in store[adapter_name].modules():  # as PEFT upcasts the per-layer ones
            for name, param in list(owner.named_parameters(recurse=False)):
                if param.dtype in HALF_DTYPES:
                    setattr(owner, name, nn.Parameter(param.data.float(), requires_grad=param.requires_grad))

    def set_adapter(self, adapter_name: Union[str, List[str]], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        store = self.model._modules.get(self.root_attr)
        active = [adapter_name] if isinstance(adapter_name, str) else adapter_name
        for name, root in (store or {}).items():
            root.requires_grad_(name in active and not inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        store = self.model._modules.get(self.root_attr)
        if store is not None and adapter_name in store:
            del store[adapter_name]

    def _unload_and_optionally_merge(self, *args, **kwargs):
        model = super()._unload_and_optionally_merge(*args, **kwargs)
        if isinstance(model._modules.get(self.root_attr), SharedAdapterTensors):
            delattr(model, self.root_attr)  # no adapter layer reads them any more
        return model

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """``adapter_names=``: a mixed-adapter batch, as PEFT's LoRA takes it."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        known = set()
        for module in self.modules():
            if isinstance(module, self.tuner_layer_cls):
                known |= set(module._shared_modules())
        unknown = {name for name in adapter_names if name != BASE} - known
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        num_beams = kwargs.get("num_beams")
        if isinstance(num_beams, int) and num_beams > 1:  # generate repeats every sample per beam
            adapter_names = [name for name in adapter_names for _ in range(num_beams)]
        handles = []
        for module in self.modules():  # (the wrappers: modules_to_save heads, trainable tokens, as LoRA's)
            if isinstance(module, (self.tuner_layer_cls, AuxiliaryTrainingWrapper)):
                hook = functools.partial(_inject_adapter_names, adapter_names=adapter_names)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


def _install_transformers_key_mapping() -> None:
    """transformers' ``load_adapter`` renames the saved keys with PEFT's
    ``build_peft_weight_mapping`` (``base_model.model.`` dropped, the adapter name added
    after the method's prefix): ``base_model.<root_attr>.<...>`` then reads
    ``base_model.<root_attr>.<adapter>.<...>``, which no model has. One more renaming,
    for our methods only, drops the ``base_model.`` too (the store's key on a plain model)."""
    from peft.utils import transformers_weight_conversion as conversion

    if getattr(conversion.build_peft_weight_mapping, "_genft_tune", False):
        return
    build = conversion.build_peft_weight_mapping

    @functools.wraps(build)
    def build_peft_weight_mapping(weight_conversions, adapter_name, peft_config=None):
        mapping = build(weight_conversions, adapter_name, peft_config=peft_config)
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
        from transformers.core_model_loading import WeightRenaming

        tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(getattr(peft_config, "peft_type", None))
        if mapping and isinstance(tuner, type) and issubclass(tuner, AdapterPeftModel):
            mapping.append(WeightRenaming(rf"^base_model\.{tuner.root_attr}\.", f"{tuner.root_attr}."))
        return mapping

    build_peft_weight_mapping._genft_tune = True
    conversion.build_peft_weight_mapping = build_peft_weight_mapping


def _install_base_model_state_dict_filter() -> None:
    """PEFT's ``get_base_model_state_dict``/``set_base_model_state_dict`` tell adapter keys
    from the base model's by walking tuner layers; our stores are not tuner layers (PEFT's
    LoRA conversion and other tools take every tuner layer for an adapted layer), so name
    them as adapter keys too."""
    from peft.utils import save_and_load

    if getattr(save_and_load._get_adapter_state_dict_key_prefixes, "_genft_tune", False):
        return
    prefixes_of = save_and_load._get_adapter_state_dict_key_prefixes

    @functools.wraps(prefixes_of)
    def _get_adapter_state_dict_key_prefixes(model):
        prefixes = prefixes_of(model)
        for name, module in model.base_model.model.named_modules():
            if isinstance(module, SharedAdapterTensors):
                prefixes.add(name)
        return prefixes

    _get_adapter_state_dict_key_prefixes._genft_tune = True
    save_and_load._get_adapter_state_dict_key_prefixes = _get_adapter_state_dict_key_prefixes


_install_transformers_key_mapping()
_install_base_model_state_dict_filter()


@dataclass
class AdapterPeftConfig(PeftConfig):
    """What our PEFT configs share: PEFT's targeting fields (``target_modules=None``:
    PEFT's default targets for the architecture, as LoRA's), ``init_weights`` (False: an
    adapter that changes the output at initialisation) and the validation of their
    method's own config, whose fields each subclass repeats (``method_config_cls``;
    ``tests/test_peft_plugin.py`` checks that none is missing)."""

    target_modules: Optional[Union[List[str], str]] = field(default=None)
    exclude_modules: Optional[Union[List[str], str]] = field(default=None)
    modules_to_save: Optional[List[str]] = field(default=None)
    layers_to_transform: Optional[Union[List[int], int]] = field(default=None)
    layers_pattern: Optional[Union[List[str], str]] = field(default=None)
    init_weights: bool = field(default=True)

    method_config_cls: ClassVar[type]
    method_peft_type: ClassVar[PeftType]

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = self.method_peft_type
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if not isinstance(self.init_weights, bool):
            raise ValueError(f"init_weights must be True or False, got {self.init_weights!r}")
        self.method_config()  # the same validation, the same messages as our config

    def method_config(self) -> Any:
        """Our config (``GenFTConfig``, ``WeGeFTConfig``) that these fields describe."""
        return self.method_config_cls(**{f.name: getattr(self, f.name) for f in fields(self.method_config_cls)})
