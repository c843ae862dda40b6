"""What every adapted linear of this package does alike, whatever generates its ``dW``.

:class:`AdapterLinear` holds the frozen base (``W0``, plain or torchao NF4, and an
optional frozen bias), the ``disabled`` / ``merged`` flags of torchtune's adapter
protocol, the cached merged weight used whenever no gradient is needed, and an exact
``merge`` / ``unmerge`` (``unmerge`` restores the saved ``W0`` bit for bit). A method
(GenFT, WeGeFT) subclasses it and says only what is its own: which tensors the merged
weight depends on, how ``W0 + dW`` is computed in fp32, and the training forward.
"""

import math
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from torchao.dtypes.nf4tensor import linear_nf4, NF4Tensor, to_nf4
from torchtune.modules.low_precision import _register_nf4_dispatch_ops  # noqa: F401
from torchtune.modules.peft import AdapterModule

from genft_tune.modules._cache import MergedWeightCache


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a plain tensor (an NF4 tensor is dequantised)."""
    return weight.get_original_weight() if isinstance(weight, NF4Tensor) else weight


def dequantize_state_dict(
    state_dict: Mapping[str, Any], dtype: Optional[torch.dtype] = None
) -> Dict[str, Any]:
    """Replace NF4 tensors by plain ones (their original dtype, or ``dtype``); every
    other value is kept as it is."""
    return {
        key: (dequantized(value) if dtype is None else dequantized(value).to(dtype))
        if isinstance(value, NF4Tensor) else value
        for key, value in state_dict.items()
    }


def merge_dtype(weight: torch.Tensor) -> torch.dtype:
    """What ``W0 + dW`` is computed in: fp32, or fp64 for fp64 weights."""
    return torch.promote_types(weight.dtype, torch.float32)


@torch.no_grad()
def add_delta_fp32(weight: torch.Tensor, delta: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``W0 + dW`` computed in :func:`merge_dtype` and cast back to ``weight``'s dtype: the
    one merge every method's layer, state-dict merge and PEFT tuner uses.

    Args:
        weight (torch.Tensor): the original ``W0``.
        delta (Callable[[torch.Tensor], torch.Tensor]): ``dW`` from the upcast ``W0``
            (the method's maths, no dropout).

    Returns:
        torch.Tensor: the merged weight, same dtype and device as ``weight``.
    """
    w = weight.to(merge_dtype(weight))
    return (w + delta(w)).to(weight.dtype)


def check_nf4_shape(out_dim: int, in_dim: int, block_size: int = 64, scaler_block_size: int = 256):
    """torchao's NF4 needs ``out*in`` divisible by ``block_size * scaler_block_size``."""
    if (out_dim * in_dim) % (block_size * scaler_block_size) != 0:
        raise ValueError(
            f"quantize_base=True cannot store a ({out_dim}, {in_dim}) weight in NF4: its size "
            f"{out_dim * in_dim} must be divisible by block_size * scaler_block_size = "
            f"{block_size} * {scaler_block_size}"
        )


def linear_default_init(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """``nn.Linear``'s default init for a ``(fan_out, fan_in)`` weight and its bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight.shape[1]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


class AdapterLinear(nn.Module, AdapterModule):
    """Base of the adapted linears: ``y = x @ (W0 + dW).T + bias`` with a frozen ``W0``.

    Subclasses call ``super().__init__(in_dim, out_dim, use_bias=..., quantize_base=...,
    **quantization_kwargs)`` and implement :meth:`_tracked_tensors` (``W0`` first, then
    every tensor ``dW`` depends on), :meth:`_merged_weight_from` (``W0 + dW`` in fp32,
    cast to ``W0``'s dtype) and :meth:`_adapted_forward` (the training forward).

    Args:
        in_dim (int): input dimension.
        out_dim (int): output dimension.
        use_bias (bool): whether the frozen base layer has a bias. Default: False
        quantize_base (bool): store ``W0`` as a torchao NF4 tensor. Default: False
        base (Optional[nn.Linear]): an existing linear (``nn.Linear`` or torchtune's
            ``FrozenNF4Linear``) whose weight and bias this layer takes over as its frozen
            base, instead of allocating new ones; ``use_bias`` and ``quantize_base``
            then follow it. Default: None
        **quantization_kwargs: passed to ``to_nf4`` (``block_size``, ``scaler_block_size``).

    Raises:
        ValueError: if quantization kwargs are given without ``quantize_base``, the
            weight's size does not fit NF4's blocks, or ``base`` has another shape.
    """

    # the method's state-dict merge, named in the NF4 merge error (each method sets its own)
    state_dict_merge_function = ""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        use_bias: bool = False,
        quantize_base: bool = False,
        base: Optional[nn.Linear] = None,
        **quantization_kwargs,
    ):
        super().__init__()
        if not quantize_base and any(v for v in quantization_kwargs.values()):
            raise ValueError(
                f"quantize_base is False, but received quantization arguments: {quantization_kwargs}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        if base is not None:
            if tuple(base.weight.shape) != (out_dim, in_dim):
                raise ValueError(f"base weight has shape {tuple(base.weight.shape)}, expected {(out_dim, in_dim)}")
            weight, bias = base.weight, base.bias
            use_bias, quantize_base = bias is not None, isinstance(weight, NF4Tensor)
        else:
            if quantize_base:
                check_nf4_shape(out_dim, in_dim, **quantization_kwargs)
            linear = nn.Linear(in_dim, out_dim, bias=use_bias)
            weight = to_nf4(linear.weight, **quantization_kwargs) if quantize_base else linear.weight
            bias = linear.bias
        self.use_bias = use_bias
        self._quantize_base = quantize_base
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if use_bias else None
        self.disabled = False
        self.merged = False
        self._unmerged_weight: Optional[torch.Tensor] = None
        self._cache = MergedWeightCache()

    # ---- what a method provides ----------------------------------------------

    def _tracked_tensors(self) -> List[torch.Tensor]:
        """``W0``, then every tensor ``dW`` depends on (kept cheap: it runs on every
        evaluation forward, for the cache check)."""
        raise NotImplementedError

    def _merged_weight_from(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight + dW`` computed in fp32 (no dropout), in ``weight``'s dtype."""
        raise NotImplementedError

    def _adapted_forward(self, x: torch.Tensor, tensors: List[torch.Tensor], needs_graph: bool) -> torch.Tensor:
        """The forward while training (or whenever a gradient or dropout is needed)."""
        raise NotImplementedError

    def _dropout_active(self) -> bool:
        return self.training and self.config.dropout > 0

    # ---- shared behaviour ----------------------------------------------------

    def base_weight(self) -> torch.Tensor:
        """``W0`` as a plain tensor (NF4 is dequantised)."""
        return dequantized(self.weight)

    def _original_weight(self) -> torch.Tensor:
        return self._unmerged_weight if self.merged else self.base_weight()

    def _base_forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if weight is None and self._quantize_base and not self.merged:
            out = linear_nf4(input=x, weight=self.weight)
            return out + self.bias if self.bias is not None else out
        return F.linear(x, self.weight if weight is None else weight, self.bias)

    def _cached_merged_weight(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        # exactly what merge() and the merged checkpoint hold (fp32 W0 + dW, cast once),
        # so eval and generation match the published model
        return self._cache.get(tensors, lambda: self._merged_weight_from(self.base_weight()))

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
        tensors = self._tracked_tensors()
        needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in tensors[1:])
        if not needs_graph and not self._dropout_active():
            weight = self._cached_merged_weight(tensors)
            if weight.dtype != x.dtype:
                weight = weight.to(x.dtype)
            return F.linear(x, weight, self.bias)
        self._cache.clear()  # training: free the eval copy
        return self._adapted_forward(x, tensors, needs_graph)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``dW`` into ``weight`` (computed in fp32 from the original ``W0``).

        The original ``W0`` is kept so that :meth:`unmerge` restores it bit for bit.

        Raises:
            RuntimeError: if the base weight is NF4 (there is no NF4 ``W0 + dW``).
        """
        if self.merged:
            return
        if self._quantize_base:
            raise RuntimeError(
                "cannot merge into an NF4 base weight; merge the state dict into a bf16/fp32 "
                f"checkpoint with genft_tune.modules.{self.state_dict_merge_function or 'merge_*_state_dict'} "
                "or `genft-tune merge`"
            )
        W0 = self.weight.detach().clone()
        self.weight.copy_(self._merged_weight_from(W0))
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


__all__ = [
    "AdapterLinear",
    "add_delta_fp32",
    "check_nf4_shape",
    "dequantize_state_dict",
    "dequantized",
    "linear_default_init",
    "merge_dtype",
]
