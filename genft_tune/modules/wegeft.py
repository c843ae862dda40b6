"""WeGeFT layers: weight-generative fine-tuning as a torchtune adapter.

WeGeFT (Savadikar, Song, Wu; arXiv 2312.00700, ICML 2025) generates the weight
residual of a frozen linear layer from its own pretrained weight ``W0 (out, in)``
with two linear maps ``phi, psi`` of shape ``(r, in)``::

    dW = (alpha / r) * drop(W0) @ phi.T @ psi                         (out, in)
    y  = x @ W0.T + (alpha / r) * (x @ psi.T) @ (drop(W0) @ phi.T).T  (+ bias)

What the authors' code does (github savadikarc/gift,
``peft/src/peft/tuners/wegeft/{layer,model,config}.py``), and so what this module does:

- ``phi`` and ``psi`` are ``nn.Linear(in, r, bias=False)``: weights of shape
  ``(r, in)``, the *input* dimension (``transform_dim="input"``, the default and
  the one all their scripts use). Only ``in`` enters the factors, so non-square
  weights need nothing special: ``W0 @ phi.T`` is ``(out, r)``, times ``psi``
  gives ``(out, in)``; layers with the same ``in`` but different ``out`` (``q``
  and ``k`` under GQA) can share one pair.
- Init: ``psi`` kaiming-uniform (``a = sqrt(5)``, ``nn.Linear``'s default),
  ``phi`` zeros, so ``dW = 0`` at step 0.
- Scaling ``alpha / r``; their training script's defaults are ``r = 64``,
  ``alpha = 128``, ``dropout = 0`` (0.1 in the commonsense runs), which are ours.
- Dropout (``nn.Dropout``) acts on the frozen weight ``W0``, not on the input:
  one ``(out, in)`` mask per forward, drawn after casting ``W0`` to the factors'
  dtype and before ``phi``; the base term ``x @ W0.T`` uses the undropped weight.
  So the efficient forward stays exact: the dropped ``W0`` is projected once per
  forward to ``(out, r)``, never per token, and every token sees the same mask
  (that is what the dense ``W0 + dW`` with a dropped ``W0`` means). Under
  ``config.recompute`` that projection runs under activation checkpointing
  whenever it materialises an ``(out, in)`` tensor (dropout mask, NF4 dequant,
  dtype cast), so no ``(out, in)`` copy is kept for backward; the RNG state is
  restored on recomputation, so the mask is identical.
- Sharing (``tied_modules``): their scripts tie each module type across all
  layers (``model.layers.\\d+.self_attn.q_proj`` ...), one ``(phi, psi)`` per
  type; the first layer of a group owns the tensors and the others get them via
  a forward pre-hook. Here shared factors live in one :class:`WeGeFTSharedFactors`
  registered on the model root as ``wegeft_factors`` (keys
  ``wegeft_factors.<type>.phi``), like ``genft_generators``; per-layer factors
  are a submodule of the layer (keys ``<layer>.wegeft.phi``).

Where we differ from the authors' code, deliberately: their merge applies the
dropout module (a random mask when the model is in training mode) and their
unmerge restores a ``base_weight_copy`` that ``merge`` never saves; here merge
never uses dropout and :meth:`WeGeFTLinear.unmerge` restores the ``W0`` saved by
:meth:`WeGeFTLinear.merge`, bit for bit. Their ``transform_dim="output"`` branch
does not type-check for ``r != out`` and is not implemented here.
"""

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from torchao.dtypes.nf4tensor import linear_nf4, NF4Tensor, to_nf4
from torchtune.modules.peft import AdapterModule

from genft_tune.modules._cache import MergedWeightCache
from genft_tune.modules.genft import _check_nf4_shape, _linear_default_init

FACTORS_ATTR = "wegeft_factors"  # the shared factors on the model root
LAYER_FACTORS_ATTR = "wegeft"  # per-layer factors, a submodule of each layer
FACTOR_NAMES = ("phi", "psi")


@dataclass(frozen=True)
class WeGeFTConfig:
    """Hyperparameters of a WeGeFT adapter, shared by every adapted layer of a model.

    Defaults follow the authors' training script (``r = 64``, ``alpha = 128``,
    no dropout, factors tied per module type across layers).

    Args:
        rank (int): ``r``, the number of rows of ``phi`` and ``psi``.
        alpha (float): ``dW`` is scaled by ``alpha / rank``.
        dropout (float): dropout probability on ``W0`` before ``phi`` (training only).
        shared (bool): one ``(phi, psi)`` per module type, shared across layers
            (the authors' ``tied_modules``), instead of one per layer.
        recompute (bool): recompute ``drop(W0) @ phi.T`` in backward when it
            materialises an ``(out, in)`` tensor (dropout, NF4 or a dtype cast of
            ``W0``) instead of keeping that tensor alive until backward.

    Raises:
        ValueError: if any field is out of its allowed range.
    """

    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.0
    shared: bool = True
    recompute: bool = True

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
        ):
            raise ValueError(f"alpha must be a finite number, got {self.alpha!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for field in ("shared", "recompute"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field} must be True or False, got {getattr(self, field)!r}")

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class WeGeFTFactors(nn.Module):
    """The generator ``(phi, psi)``, both ``(rank, in_dim)``, for weights with ``in_dim`` inputs.

    Either shared by every layer of one module type (created by
    :meth:`WeGeFTSharedFactors.get`, which sets ``key``) or owned by a single
    :class:`WeGeFTLinear` (``key`` is None).

    Args:
        in_dim (int): input dimension of the adapted weights.
        config (WeGeFTConfig): hyperparameters.
        key (Optional[str]): the module type these factors are shared by, or None
            for per-layer factors.
    """

    def __init__(self, in_dim: int, *, config: WeGeFTConfig, key: Optional[str] = None):
        super().__init__()
        self.in_dim = in_dim
        self.config = config
        self.key = key
        self.phi = nn.Parameter(torch.empty(config.rank, in_dim))
        self.psi = nn.Parameter(torch.empty(config.rank, in_dim))
        self._owned = False  # per-layer factors: set by the layer that registers them
        self.initialize_parameters()

    def to_empty(
        self, *, device: Optional[Union[str, torch.device, int]], recurse: bool = True
    ):
        return super().to_empty(device=device, recurse=recurse)

    def initialize_parameters(self) -> None:
        """``psi``: ``nn.Linear``'s default (kaiming-uniform); ``phi``: zeros, so ``dW = 0``."""
        with torch.no_grad():
            _linear_default_init(self.psi, None)
            nn.init.zeros_(self.phi)

    def adapter_params(self) -> List[str]:
        return list(FACTOR_NAMES)

    def delta_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``dW = (alpha / r) * W0 @ phi.T @ psi`` (no dropout), ``(out, in)``, in the
        dtype of ``weight``.

        Args:
            weight (torch.Tensor): ``W0``, ``(out, in_dim)``, plain dtype.

        Returns:
            torch.Tensor: ``dW``, ``(out, in_dim)``.
        """
        return (self.config.scaling * (weight @ self.phi.to(weight.dtype).T)) @ self.psi.to(
            weight.dtype
        )


class WeGeFTSharedFactors(nn.ModuleDict):
    """All shared :class:`WeGeFTFactors` of a model, one per module type.

    Register it once on the model (``model.wegeft_factors``) so the shared
    parameters appear once in the state dict and in the optimizer. Keys are
    module types (``"q_proj"``), or any name for a group of types tied together
    (the authors' ``tied_modules`` may tie e.g. ``q`` and ``k``); all layers of a
    key must have the same input dimension.

    Args:
        config (WeGeFTConfig): hyperparameters shared by every factor pair.
    """

    def __init__(self, config: WeGeFTConfig):
        super().__init__()
        self.config = config

    def get(self, module_type: str, in_dim: int) -> WeGeFTFactors:
        """The shared factors of ``module_type``, created on first use.

        Raises:
            ValueError: if ``config.shared`` is False, or ``module_type`` already has
                factors for another input dimension.
        """
        if not self.config.shared:
            raise ValueError(
                "config.shared is False: give each layer its own WeGeFTFactors "
                "(or use factors_for), not shared ones"
            )
        if module_type not in self:
            self[module_type] = WeGeFTFactors(in_dim, config=self.config, key=module_type)
        factors = self[module_type]
        if factors.in_dim != in_dim:
            raise ValueError(
                f"shared factors {module_type!r} are for in_dim={factors.in_dim}, got in_dim={in_dim}; "
                "layers sharing factors must have the same input dimension"
            )
        return factors

    def factors_for(self, module_type: str, in_dim: int) -> WeGeFTFactors:
        """What a model builder passes to :func:`wegeft_linear`: the shared factors of
        ``module_type`` when ``config.shared``, else a fresh per-layer pair."""
        if self.config.shared:
            return self.get(module_type, in_dim)
        return WeGeFTFactors(in_dim, config=self.config)


class WeGeFTLinear(nn.Module, AdapterModule):
    """WeGeFT linear layer: ``y = x @ (W0 + dW).T + bias``, ``dW = (alpha/r) W0 phi^T psi``,
    with a frozen ``W0``.

    The forward picks the cheapest exact path:

    - no gradient needed and no active dropout (eval, generation,
      ``torch.no_grad``): the merged weight ``W0 + dW`` is cached and reused until
      ``W0``, ``phi`` or ``psi`` change (tracked by tensor identity and version
      counter, so an optimizer step or ``load_state_dict`` invalidates it);
    - otherwise ``x @ W0.T + (alpha/r) * (x @ psi.T) @ (drop(W0) @ phi.T).T``:
      ``O(r (in + out))`` per token on top of the base layer, and one
      ``(out, in) x (in, r)`` product per forward; no ``(out, in)`` product is
      formed per token.

    Args:
        in_dim (int): input dimension.
        out_dim (int): output dimension.
        factors (WeGeFTFactors): ``(phi, psi)`` for ``in_dim``: shared ones (from
            :meth:`WeGeFTSharedFactors.get`, registered on the model root) when
            ``config.shared``, else a fresh pair that this layer registers as its
            submodule ``wegeft``.
        use_bias (bool): whether the frozen base layer has a bias. Default: False
        quantize_base (bool): store ``W0`` as a torchao NF4 tensor. Default: False
        **quantization_kwargs: passed to ``to_nf4`` (``block_size``, ``scaler_block_size``).

    Raises:
        ValueError: if ``factors`` has another ``in_dim``, does not match
            ``config.shared``, is per-layer but already used by another layer, or
            quantization kwargs are given without ``quantize_base``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        factors: WeGeFTFactors,
        use_bias: bool = False,
        quantize_base: bool = False,
        **quantization_kwargs,
    ):
        super().__init__()
        if factors.in_dim != in_dim:
            raise ValueError(f"factors are for in_dim={factors.in_dim}, layer has in_dim={in_dim}")
        shared = factors.config.shared
        if shared and factors.key is None:
            raise ValueError(
                "config.shared is True but factors are per-layer: take them from "
                "WeGeFTSharedFactors.get(module_type, in_dim) registered on the model"
            )
        if not shared and factors.key is not None:
            raise ValueError(
                f"config.shared is False but factors are the shared pair {factors.key!r}: "
                "give each layer its own WeGeFTFactors"
            )
        if not shared and factors._owned:
            raise ValueError(
                "these per-layer factors already belong to another WeGeFTLinear; "
                "with config.shared=False every layer needs its own WeGeFTFactors"
            )
        if not quantize_base and any(v for v in quantization_kwargs.values()):
            raise ValueError(
                f"quantize_base is False, but received quantization arguments: {quantization_kwargs}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.use_bias = use_bias
        self._quantize_base = quantize_base
        self.config = factors.config

        if quantize_base:
            _check_nf4_shape(out_dim, in_dim, **quantization_kwargs)
        linear = nn.Linear(in_dim, out_dim, bias=use_bias)
        weight = to_nf4(linear.weight, **quantization_kwargs) if quantize_base else linear.weight
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(linear.bias, requires_grad=False) if use_bias else None

        if shared:
            # A plain attribute, not a submodule: the pair is registered once on the model.
            self._shared_factors: Optional[Tuple[WeGeFTFactors]] = (factors,)
        else:
            self._shared_factors = None
            setattr(self, LAYER_FACTORS_ATTR, factors)
            factors._owned = True

        self.disabled = False
        self.merged = False
        self._unmerged_weight: Optional[torch.Tensor] = None
        self._cache = MergedWeightCache()

    @property
    def factors(self) -> WeGeFTFactors:
        """This layer's ``(phi, psi)``: the shared pair, or its own submodule."""
        if self._shared_factors is not None:
            return self._shared_factors[0]
        return self._modules[LAYER_FACTORS_ATTR]

    @property
    def owns_factors(self) -> bool:
        return self._shared_factors is None

    def to_empty(
        self, *, device: Optional[Union[str, torch.device, int]], recurse: bool = True
    ):
        # Like LoRALinear: only the adapter's own parameters; W0 comes from a checkpoint,
        # shared factors are handled by their own module.
        if self.owns_factors:
            self.factors.to_empty(device=device)
        self._cache.clear()
        return self

    def initialize_parameters(self) -> None:
        """Initialise this layer's own factors (shared factors are initialised by
        :meth:`WeGeFTFactors.initialize_parameters` on the shared module)."""
        if self.owns_factors:
            self.factors.initialize_parameters()
        self._cache.clear()

    def adapter_params(self) -> List[str]:
        """Names of this layer's trainable parameters: ``wegeft.phi``/``wegeft.psi``
        when the factors are per layer, none when they are shared (those are reported
        by the shared :class:`WeGeFTFactors`)."""
        if self.owns_factors:
            return [f"{LAYER_FACTORS_ATTR}.{n}" for n in FACTOR_NAMES]
        return []

    def base_weight(self) -> torch.Tensor:
        """``W0`` as a plain tensor (NF4 is dequantised)."""
        if isinstance(self.weight, NF4Tensor):
            return self.weight.get_original_weight()
        return self.weight

    def _original_weight(self) -> torch.Tensor:
        return self._unmerged_weight if self.merged else self.base_weight()

    def delta_weight(self) -> torch.Tensor:
        """``dW`` in the factors' dtype, from the original (unmerged) ``W0``, no dropout."""
        return self.factors.delta_weight(self._original_weight().to(self.factors.phi.dtype))

    # ---- forward paths -------------------------------------------------------

    def _base_forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if weight is None and self._quantize_base and not self.merged:
            out = linear_nf4(input=x, weight=self.weight)
            return out + self.bias if self.bias is not None else out
        return F.linear(x, self.weight if weight is None else weight, self.bias)

    def _project(self, phi: torch.Tensor, p: float) -> torch.Tensor:
        """``drop(W0) @ phi.T``, ``(out, r)``: ``W0`` cast to ``phi``'s dtype, then
        dropout with probability ``p`` (one mask on the whole weight)."""
        W0 = self.base_weight().to(phi.dtype)
        if p > 0:
            W0 = F.dropout(W0, p, training=True)
        return W0 @ phi.T

    def _efficient_forward(self, x: torch.Tensor, p: float, needs_graph: bool) -> torch.Tensor:
        factors = self.factors
        phi, psi = factors.phi, factors.psi
        materialises = p > 0 or self._quantize_base or self.weight.dtype != phi.dtype
        if self.config.recompute and needs_graph and materialises:
            # the RNG state (a host copy of the CUDA generator) matters only for dropout
            proj = checkpoint(self._project, phi, p, use_reentrant=False, preserve_rng_state=p > 0)
        else:
            proj = self._project(phi, p)
        # (alpha/r) on the small (out, r) factor, then x -> r -> out
        delta = F.linear(F.linear(x.to(phi.dtype), psi), self.config.scaling * proj)
        return self._base_forward(x) + delta.to(x.dtype)

    def _tracked_tensors(self) -> List[torch.Tensor]:
        return [self.weight, self.factors.phi, self.factors.psi]

    def _merged_weight(self) -> torch.Tensor:
        # exactly what merge() and the merged checkpoint hold (fp32 math, cast once),
        # so eval and generation match the published model
        return wegeft_merged_weight(self.base_weight(), self.factors.phi, self.factors.psi, self.config)

    def clear_cache(self) -> None:
        """Drop the cached merged weight (it is rebuilt on the next no-grad call)."""
        self._cache.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): input tensor with shape ``(..., in_dim)``

        Returns:
            torch.Tensor: output tensor with shape ``(..., out_dim)``
        """
        if self.disabled:
            return self._base_forward(x, self._unmerged_weight if self.merged else None)
        if self.merged:
            return self._base_forward(x)
        p = self.config.dropout if self.training else 0.0
        needs_graph = torch.is_grad_enabled() and (
            self.factors.phi.requires_grad or self.factors.psi.requires_grad
        )
        if not needs_graph and p == 0:
            weight = self._cache.get(self._tracked_tensors(), self._merged_weight)
            if weight.dtype != x.dtype:
                weight = weight.to(x.dtype)
            return F.linear(x, weight, self.bias)
        self._cache.clear()  # training: free the eval copy
        return self._efficient_forward(x, p, needs_graph)

    # ---- merge ---------------------------------------------------------------

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``dW`` into ``weight`` (fp32 math from the original ``W0``, no dropout).

        The original ``W0`` is kept so that :meth:`unmerge` restores it bit for bit.

        Raises:
            RuntimeError: if the base weight is NF4 (there is no NF4 ``W0 + dW``).
        """
        if self.merged:
            return
        if self._quantize_base:
            raise RuntimeError(
                "cannot merge into an NF4 base weight; merge the state dict into a "
                "bf16/fp32 checkpoint with genft_tune.modules.merge_wegeft_state_dict"
            )
        W0 = self.weight.detach().clone()
        self.weight.copy_(wegeft_merged_weight(W0, self.factors.phi, self.factors.psi, self.config))
        self._unmerged_weight = W0
        self.merged = True
        self._cache.clear()

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original ``W0`` saved by :meth:`merge` (no subtraction)."""
        if not self.merged:
            return
        self.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False
        self._cache.clear()


@torch.no_grad()
def wegeft_merged_weight(
    weight: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor, config: WeGeFTConfig
) -> torch.Tensor:
    """``W0 + (alpha/r) W0 phi^T psi`` computed in fp32 (fp64 for fp64 weights) and
    cast back to ``weight``'s dtype; no dropout.

    Args:
        weight (torch.Tensor): the original ``W0``, ``(out, in)``.
        phi (torch.Tensor): ``(r, in)``.
        psi (torch.Tensor): ``(r, in)``.
        config (WeGeFTConfig): for the scaling.

    Returns:
        torch.Tensor: the merged weight, same dtype and device as ``weight``.
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w = weight.to(dtype)
    delta = (config.scaling * (w @ phi.to(dtype).T)) @ psi.to(dtype)
    return (w + delta).to(weight.dtype)


def wegeft_linear(
    in_dim: int,
    out_dim: int,
    *,
    factors: WeGeFTFactors,
    use_bias: bool = False,
    quantize_base: bool = False,
    **quantization_kwargs,
) -> WeGeFTLinear:
    """Builder for a :class:`WeGeFTLinear`.

    Example (in a model builder, with ``model.wegeft_factors = shared``)::

        shared = WeGeFTSharedFactors(config)
        q_proj = wegeft_linear(dim, dim, factors=shared.factors_for("q_proj", dim))

    Args:
        in_dim (int): input dimension.
        out_dim (int): output dimension.
        factors (WeGeFTFactors): shared factors of the layer's module type, or a
            fresh per-layer pair (see :meth:`WeGeFTSharedFactors.factors_for`).
        use_bias (bool): base layer bias. Default: False
        quantize_base (bool): NF4 base weight. Default: False
        **quantization_kwargs: passed to ``to_nf4``.

    Returns:
        WeGeFTLinear: the layer.
    """
    return WeGeFTLinear(
        in_dim,
        out_dim,
        factors=factors,
        use_bias=use_bias,
        quantize_base=quantize_base,
        **quantization_kwargs,
    )


# ---- model-level helpers -----------------------------------------------------------


def get_wegeft_modules(model: nn.Module) -> Dict[str, WeGeFTLinear]:
    """All :class:`WeGeFTLinear` layers of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WeGeFTLinear)}


def get_wegeft_target_modules(model: nn.Module) -> Dict[str, Optional[str]]:
    """``{layer name: shared factors key or None}``: the ``target_modules`` that
    :func:`merge_wegeft_state_dict` needs for this model."""
    return {n: m.factors.key for n, m in get_wegeft_modules(model).items()}


def get_wegeft_config(model: nn.Module) -> WeGeFTConfig:
    """The :class:`WeGeFTConfig` of a model built with WeGeFT layers.

    Raises:
        ValueError: if the model has no WeGeFT layers.
    """
    for module in model.modules():
        if isinstance(module, (WeGeFTLinear, WeGeFTFactors, WeGeFTSharedFactors)):
            return module.config
    raise ValueError("model has no WeGeFT layers")


def is_wegeft_key(key: str) -> bool:
    """Whether a state-dict key belongs to the WeGeFT adapter (shared or per layer)."""
    if key.startswith(FACTORS_ATTR + "."):
        return True
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2] == LAYER_FACTORS_ATTR and parts[-1] in FACTOR_NAMES


def get_wegeft_adapter_state_dict(
    state_dict: Dict[str, Any], device: Optional[str] = "cpu"
) -> Dict[str, Any]:
    """The adapter's entries of a full state dict: each shared pair once, plus every
    per-layer pair."""
    return {
        k: (v.to(device) if device is not None else v)
        for k, v in state_dict.items()
        if is_wegeft_key(k)
    }


@torch.no_grad()
def merge_wegeft_state_dict(
    state_dict: Dict[str, torch.Tensor],
    *,
    config: WeGeFTConfig,
    target_modules: Union[Sequence[str], Mapping[str, Optional[str]]],
) -> Dict[str, torch.Tensor]:
    """Turn a WeGeFT model's state dict into a plain one: ``W = W0 + dW`` for every
    target, computed in fp32 from the original ``W0`` (no dropout) and cast to its
    dtype; all WeGeFT keys are dropped.

    Args:
        state_dict (Dict[str, torch.Tensor]): full state dict (base + adapter keys).
        config (WeGeFTConfig): the adapter's hyperparameters.
        target_modules (Union[Sequence[str], Mapping[str, Optional[str]]]): qualified
            names of the adapted linears (``layers.0.attn.q_proj``...). With
            ``config.shared`` a layer's factors are ``wegeft_factors.<key>``, where
            ``key`` is the mapping's value (see :func:`get_wegeft_target_modules`) or,
            for a plain sequence, the name's last component (``q_proj``); per-layer
            factors are ``<name>.wegeft``.

    Returns:
        Dict[str, torch.Tensor]: a new state dict with merged weights.

    Raises:
        ValueError: if a target's weight or factor is missing, or shapes disagree.
    """
    if isinstance(target_modules, Mapping):
        targets = dict(target_modules)
    else:
        targets = {name: None for name in target_modules}
    merged = {k: v for k, v in state_dict.items() if not is_wegeft_key(k)}
    for prefix, key in targets.items():
        weight_key = f"{prefix}.weight"
        if weight_key not in state_dict:
            raise ValueError(f"target module {prefix!r} has no weight {weight_key!r} in the state dict")
        W0 = state_dict[weight_key]
        if config.shared:
            fprefix = f"{FACTORS_ATTR}.{key if key is not None else prefix.rsplit('.', 1)[-1]}"
        else:
            fprefix = f"{prefix}.{LAYER_FACTORS_ATTR}"
        factors = []
        for name in FACTOR_NAMES:
            fkey = f"{fprefix}.{name}"
            if fkey not in state_dict:
                raise ValueError(f"missing WeGeFT tensor {fkey} for {prefix!r} in the state dict")
            expected = (config.rank, W0.shape[1])
            if tuple(state_dict[fkey].shape) != expected:
                raise ValueError(
                    f"{fkey} has shape {tuple(state_dict[fkey].shape)}, expected {expected} "
                    f"(rank, in_dim of {weight_key})"
                )
            factors.append(state_dict[fkey])
        merged[weight_key] = wegeft_merged_weight(W0, *factors, config)
    return merged
