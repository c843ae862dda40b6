"""WeGeFT's factors (per layer, or shared per module type) and ``WeGeFTLinear``."""

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from genft_tune.modules._base import add_delta_fp32, AdapterLinear, linear_default_init, merge_dtype
from genft_tune.modules.wegeft.config import FACTOR_NAMES, LAYER_FACTORS_ATTR, WeGeFTConfig


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
            linear_default_init(self.psi, None)
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


class WeGeFTLinear(AdapterLinear):
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
        base (Optional[nn.Linear]): take over this linear's weight and bias as the frozen
            base (see :class:`~genft_tune.modules.AdapterLinear`). Default: None
        **quantization_kwargs: passed to ``to_nf4`` (``block_size``, ``scaler_block_size``).

    Raises:
        ValueError: if ``factors`` has another ``in_dim``, does not match
            ``config.shared``, is per-layer but already used by another layer, or
            quantization kwargs are given without ``quantize_base``.
    """

    state_dict_merge_function = "merge_wegeft_state_dict"

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        factors: WeGeFTFactors,
        use_bias: bool = False,
        quantize_base: bool = False,
        base: Optional[nn.Linear] = None,
        **quantization_kwargs,
    ):
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
        super().__init__(
            in_dim, out_dim, use_bias=use_bias, quantize_base=quantize_base, base=base, **quantization_kwargs
        )
        self.config = factors.config

        if shared:
            # A plain attribute, not a submodule: the pair is registered once on the model.
            self._shared_factors: Optional[Tuple[WeGeFTFactors]] = (factors,)
        else:
            self._shared_factors = None
            setattr(self, LAYER_FACTORS_ATTR, factors)
            factors._owned = True

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

    def delta_weight(self) -> torch.Tensor:
        """``dW`` in the factors' dtype, from the original (unmerged) ``W0``, no dropout."""
        return self.factors.delta_weight(self._original_weight().to(self.factors.phi.dtype))

    # ---- forward paths -------------------------------------------------------

    def _project(self, phi: torch.Tensor, p: float) -> torch.Tensor:
        """``drop(W0) @ phi.T``, ``(out, r)``: ``W0`` cast to ``phi``'s dtype, then
        dropout with probability ``p`` (one mask on the whole weight)."""
        return wegeft_projection(self.base_weight().to(phi.dtype), phi, p)

    def _efficient_forward(self, x: torch.Tensor, p: float, needs_graph: bool) -> torch.Tensor:
        factors = self.factors
        phi, psi = factors.phi, factors.psi
        materialises = p > 0 or self._quantize_base or self.weight.dtype != phi.dtype
        if self.config.recompute and needs_graph and materialises:
            # the RNG state (a host copy of the CUDA generator) matters only for dropout
            proj = checkpoint(self._project, phi, p, use_reentrant=False, preserve_rng_state=p > 0)
        else:
            proj = self._project(phi, p)
        delta = wegeft_update(x.to(phi.dtype), proj, psi, self.config.scaling)
        return self._base_forward(x) + delta.to(x.dtype)

    def _tracked_tensors(self) -> List[torch.Tensor]:
        return [self.weight, self.factors.phi, self.factors.psi]

    def _merged_weight_from(self, weight: torch.Tensor) -> torch.Tensor:
        return wegeft_merged_weight(weight, self.factors.phi, self.factors.psi, self.config)

    def _adapted_forward(self, x: torch.Tensor, tensors: List[torch.Tensor], needs_graph: bool) -> torch.Tensor:
        return self._efficient_forward(x, self.config.dropout if self.training else 0.0, needs_graph)


def wegeft_projection(weight: torch.Tensor, phi: torch.Tensor, p: float = 0.0) -> torch.Tensor:
    """``drop(W0) @ phi.T``, ``(out, r)``: one mask on the whole weight when ``p > 0``.

    Args:
        weight (torch.Tensor): ``W0``, ``(out, in)``, in ``phi``'s dtype.
        phi (torch.Tensor): ``(r, in)``.
        p (float): dropout probability (0 outside training).
    """
    if p > 0:
        weight = F.dropout(weight, p, training=True)
    return weight @ phi.T


def wegeft_update(x: torch.Tensor, projection: torch.Tensor, psi: torch.Tensor, scaling: float) -> torch.Tensor:
    """``x @ dW.T`` without forming ``dW = scaling * projection @ psi``: ``x -> r -> out``,
    the scaling on the small ``(out, r)`` factor.

    Args:
        x (torch.Tensor): ``(..., in)``.
        projection (torch.Tensor): :func:`wegeft_projection`, ``(out, r)``.
        psi (torch.Tensor): ``(r, in)``.
        scaling (float): ``alpha / r``.
    """
    return F.linear(F.linear(x, psi), scaling * projection)


@torch.no_grad()
def wegeft_delta_weight(
    weight: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor, config: WeGeFTConfig
) -> torch.Tensor:
    """``dW = (alpha/r) W0 phi^T psi`` computed in fp32 (fp64 for fp64 weights); no dropout.

    Args:
        weight (torch.Tensor): the original ``W0``, ``(out, in)``.
        phi (torch.Tensor): ``(r, in)``.
        psi (torch.Tensor): ``(r, in)``.
        config (WeGeFTConfig): for the scaling.

    Returns:
        torch.Tensor: ``dW`` in :func:`~genft_tune.modules._base.merge_dtype`.
    """
    dtype = merge_dtype(weight)
    w = weight.to(dtype)
    return (config.scaling * (w @ phi.to(dtype).T)) @ psi.to(dtype)


def wegeft_merged_weight(
    weight: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor, config: WeGeFTConfig
) -> torch.Tensor:
    """``W0 + dW`` (:func:`wegeft_delta_weight`) cast back to ``weight``'s dtype."""
    return add_delta_fp32(weight, lambda w: wegeft_delta_weight(w, phi, psi, config))


def wegeft_linear(
    in_dim: int,
    out_dim: int,
    *,
    factors: WeGeFTFactors,
    use_bias: bool = False,
    quantize_base: bool = False,
    base: Optional[nn.Linear] = None,
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
        base (Optional[nn.Linear]): a linear whose weight and bias become the frozen
            base (see :class:`~genft_tune.modules.AdapterLinear`). Default: None
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
        base=base,
        **quantization_kwargs,
    )
