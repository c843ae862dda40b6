"""The cached merged weight shared by the GenFT and WeGeFT layers."""

from typing import Callable, List, Optional, Tuple

import torch


class MergedWeightCache:
    """``W0 + dW`` of one adapted layer, kept until a tensor it was computed from changes.

    Freshness is tracked by tensor identity and version counter, so an optimizer step,
    ``load_state_dict`` or any other in-place write invalidates it without hooks.
    """

    def __init__(self) -> None:
        self._key: Optional[List[Tuple[torch.Tensor, int]]] = None
        self._weight: Optional[torch.Tensor] = None

    @property
    def weight(self) -> Optional[torch.Tensor]:
        """The cached weight, or None when there is none."""
        return self._weight

    def get(self, tensors: List[torch.Tensor], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached weight if ``tensors`` are the ones it was computed from, unchanged;
        otherwise ``compute()`` (run without autograd), cached for next time."""
        key = self._key
        if key is not None and len(key) == len(tensors) and all(
            t is kt and t._version == v for (kt, v), t in zip(key, tensors)
        ):
            return self._weight
        with torch.no_grad():
            weight = compute()
        self._key = [(t, t._version) for t in tensors]
        self._weight = weight
        return weight

    def clear(self) -> None:
        """Drop the cached weight (e.g. in training, where it would be stale memory)."""
        self._key = None
        self._weight = None
