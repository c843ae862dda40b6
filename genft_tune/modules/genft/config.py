"""GenFT's hyperparameters (:class:`GenFTConfig`) and the names they choose from."""

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F


def _relu(t: torch.Tensor) -> torch.Tensor:
    """ReLU whose derivative at exactly 0 is 1 (the right derivative; torch's is 0).

    The values are ``F.relu``'s. The choice of subgradient only matters where the
    input is exactly 0, which is where ``zero_init`` puts the last stage: with torch's
    ``relu'(0) = 0`` that adapter would get no gradient, ever.
    """
    return torch.where(t >= 0, t, t.new_zeros(()))


def _leaky_relu(t: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.01) whose derivative at exactly 0 is 1, not 0.01 (see :func:`_relu`)."""
    return torch.where(t >= 0, t, 0.01 * t)


# relu and leaky_relu take the right derivative at 0 so that a zero-initialised last
# stage trains for every activation (GENFT_SPEC.md, "zero_init and the activations").
ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}

# What a small signal's size is multiplied by to come through each activation unchanged
# (gelu'(0) = 1/2; the rectifiers keep half the variance): the random generator of
# init_weights=False (generator.init_keeping_scale) keeps W0's scale with these.
ACTIVATION_GAINS: Dict[str, float] = {
    "identity": 1.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0),
    "gelu": 2.0,
    "tanh": 1.0,
}

FACTOR_INITS = ("zeros", "kaiming_uniform", "xavier_uniform", "normal")

# The paper's ablations (Table 4): "without column" = row only, "without row" = column only.
STAGES = ("both", "row", "column")

# How dW is read off the generator (GENFT_SPEC.md, "Conventions"): ours (dW = F_col.T, any
# shape), the authors' PEFT path (dW = F_col: square weights only) and their ViT path
# (ratio multiplies the four generator matrices [P1; A1], [Q1 | B1], [P2; A2], [Q2 | B2]
# instead of W0).
CONVENTIONS = ("ours", "authors_peft", "authors_vit")

# When the dense training forward uses the fused Triton kernels (modules/genft/_fused.py).
FUSED_MODES = ("auto", "never", "always")


# The learning rate measured for GenFTConfig's default ratio/scaling (AdamW moves each
# parameter by about lr per step, so the useful lr depends on scaling; benchmarks/README.md,
# "Defaults"). Every shipped config that keeps the default ratio/scaling uses it.
RECOMMENDED_LR = 1e-2


def _check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class GenFTConfig:
    """Hyperparameters of a GenFT adapter, shared by every adapted layer of a model.

    Defaults are the ones measured in this repository (``benchmarks/sweep.py``, tables in
    ``benchmarks/README.md``, "Defaults"): ``a=4, b=4``, gelu/gelu (the authors' LLaMA
    setup won the architecture sweep), ``ratio=1.0``, ``scaling=0.25``, trained with
    :data:`RECOMMENDED_LR` (1e-2). ``zero_init=True`` is our default, not
    the authors': it makes step 0 exactly the base model (like LoRA), so a fresh
    adapter never degrades the model before training and merged/unmerged checks
    are meaningful from the start.

    Args:
        shared_dim (int): ``a``, latent width of the layer-shared factors ``P``/``Q``.
        specific_dim (int): ``b``, latent width of the per-layer factors ``A``/``B``.
        ratio (float): scale applied to ``W0`` inside the generator.
        scaling (float): scale applied to ``dW``.
        act_in (str): activation after the ``D`` projections (one of ``ACTIVATIONS``).
        act_out (str): activation after the ``E`` projections (one of ``ACTIVATIONS``).
        dropout (float): dropout probability on ``F_row`` and ``F_col`` (training only).
        init_a (str): init of ``A1``/``A2``: zeros, kaiming_uniform, xavier_uniform, normal.
        init_b (str): init of ``B1``/``B2``, same choices.
        generator_bias (bool): learn the shared biases ``c1, d1, c2, d2``.
        zero_init (bool): zero ``Q2``, ``B2`` and ``d2`` so that ``dW = 0`` at step 0.
        recompute (bool): recompute the generator in backward instead of keeping its
            ``(out, in)`` intermediates alive between forward and backward (memory
            for compute, like activation checkpointing).
        stages (str): which generator stages run: ``"both"`` (GenFT), ``"row"`` (the
            paper's "w/o column" ablation: ``dW = scaling * F_row``) or ``"column"``
            ("w/o row": the column stage reads ``ratio * W0`` directly). The paper's
            "w/o shared" and "w/o specific" ablations are ``shared_dim=0`` and
            ``specific_dim=0``.
        convention (str): ``"ours"`` (``dW = scaling * F_col.T``, any weight shape),
            ``"authors_peft"`` (the authors' PEFT code for GLUE/LLaMA: ``dW = scaling *
            F_col``, our ``dW`` transposed; square weights only) or ``"authors_vit"``
            (their ViT code: ``ratio`` multiplies the four generator matrices
            ``D1, E1, D2, E2`` instead of ``W0``). The last two reproduce the authors'
            published runs and adapters; see ``GENFT_SPEC.md``.
        fused (str): the dense training forward (not the low-rank path) through fused
            Triton kernels that never write the generator's ``(out, in)`` intermediates:
            ``"never"`` (eager, the default until the kernels have been measured on a
            GPU: benchmarks/README.md, "Fused dense generator"), ``"auto"`` (when the
            tensors are on CUDA, triton imports and the call is supported; else eager)
            or ``"always"`` (an error where it cannot run; on CPU only under
            ``TRITON_INTERPRET=1``, Triton's interpreter, which is how the tests run it).
            Same values to fp32 round-off; dropout draws another (equally distributed)
            mask than eager.

    Raises:
        ValueError: if any field is out of its allowed range.
    """

    shared_dim: int = 4
    specific_dim: int = 4
    ratio: float = 1.0
    scaling: float = 0.25
    act_in: str = "gelu"
    act_out: str = "gelu"
    dropout: float = 0.0
    init_a: str = "kaiming_uniform"
    init_b: str = "kaiming_uniform"
    generator_bias: bool = False
    zero_init: bool = True
    recompute: bool = True
    stages: str = "both"
    convention: str = "ours"
    fused: str = "never"

    def __post_init__(self):
        for field in ("shared_dim", "specific_dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{field} must be an integer >= 0, got {value!r}")
        if self.shared_dim + self.specific_dim == 0:
            raise ValueError(
                "shared_dim + specific_dim must be > 0 (a + b = 0 leaves the generator empty)"
            )
        _check_choice("act_in", self.act_in, list(ACTIVATIONS))
        _check_choice("act_out", self.act_out, list(ACTIVATIONS))
        _check_choice("init_a", self.init_a, FACTOR_INITS)
        _check_choice("init_b", self.init_b, FACTOR_INITS)
        _check_choice("stages", self.stages, STAGES)
        _check_choice("convention", self.convention, CONVENTIONS)
        _check_choice("fused", self.fused, FUSED_MODES)
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for field in ("ratio", "scaling"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{field} must be a finite number, got {value!r}")

    @property
    def latent_dim(self) -> int:
        """``a + b``: the generator's latent width."""
        return self.shared_dim + self.specific_dim

    @property
    def use_row(self) -> bool:
        return self.stages in ("both", "row")

    @property
    def use_column(self) -> bool:
        return self.stages in ("both", "column")

    @property
    def weight_ratio(self) -> float:
        """The factor on ``W0`` inside the generator (``ratio``, or 1 for ``authors_vit``)."""
        return 1.0 if self.convention == "authors_vit" else self.ratio

    @property
    def matrix_ratio(self) -> Optional[float]:
        """The factor on ``D1, E1, D2, E2`` (``ratio`` for ``authors_vit``, else None)."""
        return self.ratio if self.convention == "authors_vit" else None

    @property
    def lowrank(self) -> bool:
        """Whether ``dW`` has rank <= a+b+1 and can be applied without forming it.

        True when ``act_out`` is identity; dropout must also be inactive (``p = 0`` or
        evaluation), which :class:`GenFTLinear` checks per call.
        """
        return self.act_out == "identity"

    def to_dict(self) -> Dict:
        return asdict(self)
