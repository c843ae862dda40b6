"""The cached merged weight shared by the GenFT and WeGeFT layers."""

import operator
from typing import Callable, List, Optional

import torch


class MergedWeightCache:
    """``W0 + dW`` of one adapted layer, kept until a tensor it was computed from changes.

    Freshness is tracked by tensor identity, version counter, data pointer, dtype and
    device, so an optimizer step, ``load_state_dict`` or any other in-place write
    invalidates it without hooks, and so does ``module.to(dtype/device)``/``.half()``
    (``Module._apply`` keeps each Parameter object and its version, swapping its data).
    """

    def __init__(self) -> None:
        self._tensors: Optional[List[torch.Tensor]] = None
        self._versions: Optional[List[tuple]] = None
        self._weight: Optional[torch.Tensor] = None

    @property
    def weight(self) -> Optional[torch.Tensor]:
        """The cached weight, or None when there is none."""
        return self._weight

    def get(self, tensors: List[torch.Tensor], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached weight if ``tensors`` are the ones it was computed from, unchanged;
        otherwise ``compute()`` (run without autograd), cached for next time."""
        # (map/list comprehensions: this runs on every eval forward, e.g. per decoded token)
        versions = [(t._version, t.data_ptr(), t.dtype, t.device) for t in tensors]
        if (
            versions == self._versions
            and len(tensors) == len(self._tensors)
            and all(map(operator.is_, tensors, self._tensors))
        ):
            return self._weight
        # never an inference tensor (one made under torch.inference_mode): a later forward
        # outside it that needs gradients could not save it for backward
        with torch.inference_mode(False), torch.no_grad():
            weight = compute()
        self._tensors, self._versions, self._weight = list(tensors), versions, weight
        return weight

    def clear(self) -> None:
        """Drop the cached weight (e.g. in training, where it would be stale memory)."""
        self._tensors = self._versions = self._weight = None
