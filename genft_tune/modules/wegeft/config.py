"""WeGeFT's hyperparameters (:class:`WeGeFTConfig`) and its state-dict names."""

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict


FACTORS_ATTR = "wegeft_factors"  # the shared factors on the model root
LAYER_FACTORS_ATTR = "wegeft"  # per-layer factors, a submodule of each layer
PEFT_PREFIX = "wegeft_"  # PEFT's prefix of WeGeFT's tensors on its tuner layer
PEFT_LAYER_FACTORS_ATTR = "wegeft_layer_factors"  # per-layer factors on PEFT's tuner layer, per adapter
FACTOR_NAMES = ("phi", "psi")
# The keyword names WeGeFT's model builders (and so their configs) give its fields.
BUILDER_KEYWORDS = {"rank": "wegeft_rank", "alpha": "wegeft_alpha", "dropout": "wegeft_dropout", "shared": "wegeft_shared"}


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
            or self.alpha <= 0
        ):
            # alpha = 0 would leave dW = 0 for ever (a dead adapter); a sign is phi's to learn
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")
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
