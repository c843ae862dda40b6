"""GenFT layers: the layer-shared generator and the ``GenFTLinear`` adapter.

The maths follows ``GENFT_SPEC.md`` (arXiv 2506.11042 and its authors' code).
A frozen weight ``W0`` of shape ``(out, in)`` is adapted by ``W = W0 + dW`` with
``dW = G(W0)`` produced in two stages::

    H1    = act_in(ratio * W0 @ D1.T + c1)      D1 = [P1; A1]  (a+b, in)
    F_row = drop(act_out(H1 @ E1.T + d1))       E1 = [Q1 | B1] (in, a+b)
    H2    = act_in(F_row.T @ D2.T + c2)         D2 = [P2; A2]  (a+b, out)
    F_col = drop(act_out(H2 @ E2.T + d2))       E2 = [Q2 | B2] (out, a+b)
    dW    = scaling * F_col.T

``P*``/``Q*`` (and the biases) live in a :class:`GenFTGenerator` shared by every
layer with the same ``(out, in)``; ``A*``/``B*`` belong to each :class:`GenFTLinear`.
"""

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from torchao.dtypes.nf4tensor import linear_nf4, NF4Tensor, to_nf4
from torchtune.modules.low_precision import _register_nf4_dispatch_ops  # noqa: F401
from torchtune.modules.peft import AdapterModule

from genft_tune.modules._cache import MergedWeightCache

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

FACTOR_INITS = ("zeros", "kaiming_uniform", "xavier_uniform", "normal")

# The paper's ablations (Table 4): "without column" = row only, "without row" = column only.
STAGES = ("both", "row", "column")

# How dW is read off the generator (GENFT_SPEC.md, "Conventions"): ours (dW = F_col.T, any
# shape), the authors' PEFT path (dW = F_col: square weights only) and their ViT path
# (ratio multiplies the four generator matrices [P1; A1], [Q1 | B1], [P2; A2], [Q2 | B2]
# instead of W0).
CONVENTIONS = ("ours", "authors_peft", "authors_vit")


def _check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class GenFTConfig:
    """Hyperparameters of a GenFT adapter, shared by every adapted layer of a model.

    Defaults follow the authors' LLaMA setup (``a=4, b=4``, gelu/gelu) with the
    ``ratio``/``scaling`` of their GLUE runs. ``zero_init=True`` is our default, not
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

    Raises:
        ValueError: if any field is out of its allowed range.
    """

    shared_dim: int = 4
    specific_dim: int = 4
    ratio: float = 0.5
    scaling: float = 0.05
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


def _init_factor(tensor: torch.Tensor, method: str) -> None:
    """Initialise a specific factor (``A`` or ``B``) in place."""
    if method == "zeros":
        nn.init.zeros_(tensor)
    elif method == "kaiming_uniform":
        nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
    elif method == "xavier_uniform":
        nn.init.xavier_uniform_(tensor)
    elif method == "normal":
        nn.init.normal_(tensor, std=0.01)
    else:  # GenFTConfig validates names, so this is a programming error
        raise ValueError(f"unknown factor init {method!r}; allowed: {list(FACTOR_INITS)}")


def _linear_default_init(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """``nn.Linear``'s default init for a ``(fan_out, fan_in)`` weight and its bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight.shape[1]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


def _cat(parts: Sequence[Optional[torch.Tensor]], dim: int) -> torch.Tensor:
    present = [p for p in parts if p is not None]
    return present[0] if len(present) == 1 else torch.cat(present, dim=dim)


def generator_key(out_dim: int, in_dim: int) -> str:
    """Name of the generator for weights of shape ``(out_dim, in_dim)``."""
    return f"{out_dim}x{in_dim}"


class GenFTGenerator(nn.Module):
    """The layer-shared half of a GenFT generator for one weight shape ``(out, in)``.

    Holds ``P1 (a, in)``, ``Q1 (in, a)``, ``P2 (a, out)``, ``Q2 (out, a)`` and, with
    ``generator_bias``, ``c1 (a+b)``, ``d1 (in)``, ``c2 (a+b)``, ``d2 (out)``. The
    layer-specific factors are passed in by each :class:`GenFTLinear`.

    Args:
        in_dim (int): input dimension of the adapted weights.
        out_dim (int): output dimension of the adapted weights.
        config (GenFTConfig): hyperparameters.
    """

    def __init__(self, in_dim: int, out_dim: int, *, config: GenFTConfig):
        super().__init__()
        if config.convention == "authors_peft" and in_dim != out_dim:
            raise ValueError(
                f"convention='authors_peft' applies F_col itself as dW (the authors' PEFT code), "
                f"which needs square weights; got a ({out_dim}, {in_dim}) weight. Use "
                f"convention='ours' (dW = F_col.T) for non-square targets"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.config = config
        a, r = config.shared_dim, config.latent_dim

        def param(*shape):
            return nn.Parameter(torch.empty(*shape)) if 0 not in shape else None

        row, col = config.use_row, config.use_column
        self.P1 = param(a, in_dim) if row else None
        self.Q1 = param(in_dim, a) if row else None
        self.P2 = param(a, out_dim) if col else None
        self.Q2 = param(out_dim, a) if col else None
        bias = config.generator_bias
        self.c1 = param(r) if bias and row else None
        self.d1 = param(in_dim) if bias and row else None
        self.c2 = param(r) if bias and col else None
        self.d2 = param(out_dim) if bias and col else None
        self.initialize_parameters()

    def to_empty(
        self, *, device: Optional[Union[str, torch.device, int]], recurse: bool = True
    ):
        return super().to_empty(device=device, recurse=recurse)

    def initialize_parameters(self) -> None:
        """(Re)initialise the shared parameters: ``nn.Linear`` defaults, ``Q2 = d2 = 0``
        under ``zero_init``."""
        r = self.config.latent_dim
        with torch.no_grad():
            # P like nn.Linear(in, a) / nn.Linear(out, a), Q like nn.Linear(a, in) / (a, out).
            for weight in (self.P1, self.Q1, self.P2, self.Q2):
                if weight is not None:
                    _linear_default_init(weight, None)
            for bias, fan_in in (
                (self.c1, self.in_dim),
                (self.d1, r),
                (self.c2, self.out_dim),
                (self.d2, r),
            ):
                if bias is not None:
                    bound = 1 / math.sqrt(fan_in)
                    nn.init.uniform_(bias, -bound, bound)
            if self.config.zero_init:  # zero the last stage's output projection
                last = (self.Q2, self.d2) if self.config.use_column else (self.Q1, self.d1)
                for t in last:
                    if t is not None:
                        nn.init.zeros_(t)

    def adapter_params(self) -> List[str]:
        return [n for n, _ in self.named_parameters(recurse=False)]

    def shared_tensors(self) -> List[torch.Tensor]:
        # read _parameters directly: this runs on every eval forward (cache check)
        return [p for p in self._parameters.values() if p is not None]

    def shared_names(self) -> List[str]:
        """Names of :meth:`shared_tensors`, in the same order."""
        return [n for n, p in self._parameters.items() if p is not None]

    def generate(
        self,
        weight: torch.Tensor,
        A1: Optional[torch.Tensor],
        B1: Optional[torch.Tensor],
        A2: Optional[torch.Tensor],
        B2: Optional[torch.Tensor],
        *,
        training: bool = False,
        shared: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """``dW / scaling``, shape ``(out, in)``: the spec's formula, evaluated in
        ``(out, in)`` layout throughout (``F_col.T = act_out(E2 @ H2.T + d2)``) so no
        ``(out, in)``-sized tensor is ever transposed or made contiguous.

        Args:
            weight (torch.Tensor): the frozen ``W0``, ``(out, in)``, plain dtype.
            A1 (Optional[torch.Tensor]): ``(b, in)`` or None (``b = 0`` or no row stage).
            B1 (Optional[torch.Tensor]): ``(in, b)`` or None.
            A2 (Optional[torch.Tensor]): ``(b, out)`` or None (``b = 0`` or no column stage).
            B2 (Optional[torch.Tensor]): ``(out, b)`` or None.
            training (bool): apply the ``F_row``/``F_col`` dropout.
            shared (Optional[Mapping[str, torch.Tensor]]): the shared tensors by name
                (``P1``, ``Q1``, ...) to use instead of this module's parameters.

        Returns:
            torch.Tensor: ``dW / scaling``, ``(out, in)``.
        """
        t = self._parameters if shared is None else shared
        cfg = self.config
        act_in, act_out = ACTIVATIONS[cfg.act_in], ACTIVATIONS[cfg.act_out]
        p = cfg.dropout if training else 0.0

        def drop(t):
            return F.dropout(t, p, training=True) if p > 0 else t

        D1, E1, D2, E2 = self._stage_matrices(t, A1, B1, A2, B2)
        if cfg.use_row:
            H1 = self._row_hidden(weight, D1, t)  # (out, a+b)
            F_row = H1 @ E1.T  # (out, in)
            if t.get("d1") is not None:
                F_row = F_row + t["d1"]
            F_row = drop(act_out(F_row))
            if not cfg.use_column:
                return self._oriented(F_row)
            H2t = D2 @ F_row  # (F_row.T @ D2.T).T: (a+b, in)
        else:
            H2t = cfg.weight_ratio * (D2 @ weight)
        if t.get("c2") is not None:
            H2t = H2t + t["c2"][:, None]
        H2t = act_in(H2t)
        F_colT = E2 @ H2t  # F_col.T: (out, in)
        if t.get("d2") is not None:
            F_colT = F_colT + t["d2"][:, None]
        return self._oriented(drop(act_out(F_colT)))

    def _oriented(self, generated: torch.Tensor) -> torch.Tensor:
        # the authors' PEFT path uses F_col itself: our dW transposed (square weights only)
        return generated.T if self.config.convention == "authors_peft" else generated

    def _stage_matrices(self, shared: Mapping[str, torch.Tensor], A1, B1, A2, B2):
        """``D1 = [P1; A1]``, ``E1 = [Q1 | B1]``, ``D2 = [P2; A2]``, ``E2 = [Q2 | B2]``
        (None for a stage that does not run), times ``ratio`` under ``authors_vit``."""
        cfg = self.config
        k = cfg.matrix_ratio

        def matrix(name, specific, dim):
            m = _cat([shared.get(name), specific], dim=dim)
            return m if k is None else k * m

        row, col = cfg.use_row, cfg.use_column
        return (
            matrix("P1", A1, 0) if row else None,
            matrix("Q1", B1, 1) if row else None,
            matrix("P2", A2, 0) if col else None,
            matrix("Q2", B2, 1) if col else None,
        )

    def _row_hidden(self, weight, D1, shared: Mapping[str, torch.Tensor]):
        """``H1 = act_in(ratio * W0 @ D1.T + c1)``: ``(out, a+b)``."""
        pre = self.config.weight_ratio * (weight @ D1.T)
        if shared.get("c1") is not None:
            pre = pre + shared["c1"]
        return ACTIVATIONS[self.config.act_in](pre)

    def delta_weight(
        self,
        weight: torch.Tensor,
        A1: Optional[torch.Tensor],
        B1: Optional[torch.Tensor],
        A2: Optional[torch.Tensor],
        B2: Optional[torch.Tensor],
        *,
        training: bool = False,
    ) -> torch.Tensor:
        """Dense ``dW = scaling * F_col.T``, ``(out, in)``; arguments as :meth:`generate`."""
        return self.config.scaling * self.generate(weight, A1, B1, A2, B2, training=training)

    def forward(self, weight, A1, B1, A2, B2, *, training: bool = False) -> torch.Tensor:
        """Same as :meth:`delta_weight`."""
        return self.delta_weight(weight, A1, B1, A2, B2, training=training)

    def lowrank_factors(
        self,
        weight: torch.Tensor,
        A1: Optional[torch.Tensor],
        B1: Optional[torch.Tensor],
        A2: Optional[torch.Tensor],
        B2: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Factors of ``dW`` when ``act_out`` is identity and dropout is inactive.

        Then every stage output is low rank: ``F_row = H1 @ E1.T + 1 d1^T``, so the
        column stage's ``F_row.T @ D2.T`` is ``E1 @ (H1.T @ D2.T) + outer(d1, D2.sum(1))``
        and ``dW = scaling * (E2 @ H2.T + d2 1^T)``: nothing ``(out, in)`` is formed.

        Returns:
            Tuple: ``(L, R, u, v)`` with ``dW = scaling * (L @ R.T + outer(u, v))``;
            ``L (out, a+b)``, ``R (in, a+b)``; ``u (out)``/``v (in)`` are None when
            there is no bias term.
        """
        cfg = self.config
        if not cfg.lowrank:
            raise ValueError("lowrank_factors needs act_out='identity'")
        act_in = ACTIVATIONS[cfg.act_in]
        D1, E1, D2, E2 = self._stage_matrices(self._parameters, A1, B1, A2, B2)
        if cfg.use_row:
            H1 = self._row_hidden(weight, D1, self._parameters)
            if not cfg.use_column:
                ones = None if self.d1 is None else self.d1.new_ones(self.out_dim)
                return self._oriented_factors(H1, E1, ones, self.d1)
            pre = (D2 @ H1) @ E1.T  # D2 @ F_row without forming F_row: (a+b, in)
            if self.d1 is not None:
                pre = pre + torch.outer(D2.sum(dim=1), self.d1)
        else:
            pre = cfg.weight_ratio * (D2 @ weight)
        if self.c2 is not None:
            pre = pre + self.c2[:, None]
        H2 = act_in(pre).T  # (in, a+b)
        ones = None if self.d2 is None else self.d2.new_ones(self.in_dim)
        return self._oriented_factors(E2, H2, self.d2, ones)

    def _oriented_factors(self, L, R, u, v):
        # (L R^T + u v^T)^T = R L^T + v u^T: the authors' PEFT orientation swaps the sides
        return (R, L, v, u) if self.config.convention == "authors_peft" else (L, R, u, v)


class GenFTGenerators(nn.ModuleDict):
    """All shared generators of a model, one per adapted weight shape.

    Register it once on the model (``model.genft_generators``) so the shared
    parameters appear once in the state dict and in the optimizer.

    Args:
        config (GenFTConfig): hyperparameters shared by every generator.
    """

    def __init__(self, config: GenFTConfig):
        super().__init__()
        self.config = config

    def get(self, out_dim: int, in_dim: int) -> GenFTGenerator:
        """The generator for ``(out_dim, in_dim)`` weights, created on first use."""
        key = generator_key(out_dim, in_dim)
        if key not in self:
            self[key] = GenFTGenerator(in_dim, out_dim, config=self.config)
        return self[key]


class GenFTLinear(nn.Module, AdapterModule):
    """GenFT linear layer: ``y = x @ (W0 + G(W0)).T + bias`` with a frozen ``W0``.

    Only the layer-specific factors ``A1 (b, in)``, ``B1 (in, b)`` and, for
    non-square weights, ``A2 (b, out)``, ``B2 (out, b)`` are parameters of this
    module; square weights tie ``A2 = A1``, ``B2 = B1`` as the authors' code does.
    The shared half lives in ``generator``, registered elsewhere (see
    :class:`GenFTGenerators`).

    The forward picks the cheapest exact path:

    - no gradient needed (eval, generation, ``torch.no_grad``): the merged weight
      ``W0 + dW`` is cached and reused until any input tensor changes (tracked by
      tensor identity and version counter, so an optimizer step or
      ``load_state_dict`` invalidates it);
    - ``act_out == "identity"`` and no active dropout: low-rank path
      ``x @ W0.T + scaling * ((x @ H2) @ E2.T + sum(x) d2)``;
    - otherwise the merged forward ``F.linear(x, W0 + dW)``, one matmul, with the
      generator recomputed in backward when ``config.recompute``.

    Args:
        in_dim (int): input dimension.
        out_dim (int): output dimension.
        generator (GenFTGenerator): shared generator for ``(out_dim, in_dim)``.
        use_bias (bool): whether the frozen base layer has a bias. Default: False
        quantize_base (bool): store ``W0`` as a torchao NF4 tensor. Default: False
        **quantization_kwargs: passed to ``to_nf4`` (``block_size``, ``scaler_block_size``).

    Raises:
        ValueError: if the generator's shape does not match, or quantization
            kwargs are given without ``quantize_base``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        generator: GenFTGenerator,
        use_bias: bool = False,
        quantize_base: bool = False,
        **quantization_kwargs,
    ):
        super().__init__()
        if (generator.out_dim, generator.in_dim) != (out_dim, in_dim):
            raise ValueError(
                f"generator is for weights of shape ({generator.out_dim}, {generator.in_dim}), "
                f"layer has ({out_dim}, {in_dim})"
            )
        if not quantize_base and any(v for v in quantization_kwargs.values()):
            raise ValueError(
                f"quantize_base is False, but received quantization arguments: {quantization_kwargs}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.use_bias = use_bias
        self._quantize_base = quantize_base
        self.config = generator.config
        # A plain attribute (not a submodule): the generator is registered once on the
        # model, and fetched from there at every call so FSDP's parameter swaps are seen.
        self._generator = (generator,)

        if quantize_base:
            _check_nf4_shape(out_dim, in_dim, **quantization_kwargs)
        linear = nn.Linear(in_dim, out_dim, bias=use_bias)
        weight = to_nf4(linear.weight, **quantization_kwargs) if quantize_base else linear.weight
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(linear.bias, requires_grad=False) if use_bias else None

        cfg, b = self.config, self.config.specific_dim
        # Square weights tie the stages' factors (A2 is A1, B2 is B1), as the authors do;
        # the pair is then named A1/B1 whichever stages run.
        self.tied = in_dim == out_dim
        first = cfg.use_row or self.tied
        second = cfg.use_column and not self.tied
        self.A1 = nn.Parameter(torch.empty(b, in_dim)) if b and first else None
        self.B1 = nn.Parameter(torch.empty(in_dim, b)) if b and first else None
        self.A2 = nn.Parameter(torch.empty(b, out_dim)) if b and second else None
        self.B2 = nn.Parameter(torch.empty(out_dim, b)) if b and second else None

        self.disabled = False
        self.merged = False
        self._unmerged_weight: Optional[torch.Tensor] = None
        self._cache = MergedWeightCache()
        self.initialize_parameters()

    @property
    def generator(self) -> GenFTGenerator:
        return self._generator[0]

    def to_empty(
        self, *, device: Optional[Union[str, torch.device, int]], recurse: bool = True
    ):
        # Like LoRALinear: only the adapter's own parameters; W0 comes from a checkpoint.
        for name in self.adapter_params():
            param = getattr(self, name)
            setattr(self, name, nn.Parameter(torch.empty_like(param, device=device)))
        self._cache.clear()
        return self

    def initialize_parameters(self) -> None:
        """Initialise ``A``/``B`` per ``init_a``/``init_b``; ``B2 = 0`` under ``zero_init``."""
        cfg = self.config
        with torch.no_grad():
            for name in ("A1", "A2"):
                if getattr(self, name) is not None:
                    _init_factor(getattr(self, name), cfg.init_a)
            for name in ("B1", "B2"):
                if getattr(self, name) is not None:
                    _init_factor(getattr(self, name), cfg.init_b)
            if cfg.zero_init:  # the last stage's B, like the generator's Q and d
                last = self.B2 if cfg.use_column and not self.tied else self.B1
                if last is not None:
                    _init_factor(last, "zeros")
        self._cache.clear()

    def adapter_params(self) -> List[str]:
        """Names of this layer's trainable parameters (the shared ones are the
        generator's, see :meth:`GenFTGenerator.adapter_params`)."""
        return [n for n in ("A1", "B1", "A2", "B2") if getattr(self, n) is not None]

    def specific_factors(self) -> Tuple[Optional[torch.Tensor], ...]:
        """``(A1, B1, A2, B2)`` with the square-weight tie applied."""
        return tie_specific_factors(self.A1, self.B1, self.A2, self.B2, tied=self.tied)

    def base_weight(self) -> torch.Tensor:
        """``W0`` as a plain tensor (NF4 is dequantised)."""
        return _dequantized(self.weight)

    def _adapter_dtype(self) -> torch.dtype:
        return self._tracked_tensors()[1].dtype

    def delta_weight(self, *, training: bool = False) -> torch.Tensor:
        """``dW = G(W0)`` in the adapter's dtype, from the original (unmerged) ``W0``."""
        W0 = self._unmerged_weight if self.merged else self.base_weight()
        W0 = W0.to(self._adapter_dtype())
        return self.generator.delta_weight(W0, *self.specific_factors(), training=training)

    # ---- forward paths -------------------------------------------------------

    def _base_forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if weight is None and self._quantize_base and not self.merged:
            out = linear_nf4(input=x, weight=self.weight)
            return out + self.bias if self.bias is not None else out
        return F.linear(x, self.weight if weight is None else weight, self.bias)

    def _merged_weight(
        self, training: bool, tensors: Optional[Sequence[torch.Tensor]] = None
    ) -> torch.Tensor:
        """``W0 + dW`` in ``W0``'s dtype, from ``tensors`` (ordered as
        :meth:`_tracked_tensors`: ``W0``, shared, own) when given, else from the layer's."""
        W0, gen = self._generated(training, tensors)
        # W0 + scaling * F in one elementwise pass
        return torch.add(W0, gen.to(W0.dtype), alpha=self.config.scaling)

    def _generated(
        self, training: bool, tensors: Optional[Sequence[torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(W0, dW / scaling)``; arguments as :meth:`_merged_weight`."""
        weight, *rest = self._tracked_tensors() if tensors is None else tensors
        names = self.generator.shared_names()
        shared = dict(zip(names, rest[: len(names)]))
        own = dict(zip(self.adapter_params(), rest[len(names) :]))
        W0 = _dequantized(weight)
        specific = tie_specific_factors(
            own.get("A1"), own.get("B1"), own.get("A2"), own.get("B2"), tied=self.tied
        )
        return W0, self.generator.generate(
            W0.to(rest[0].dtype), *specific, training=training, shared=shared
        )

    def _merged_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._merged_weight(self.training).to(x.dtype), self.bias)

    def _lowrank_forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._adapter_dtype()
        W0 = self.base_weight().to(dtype)
        L, R, u, v = self.generator.lowrank_factors(W0, *self.specific_factors())
        xa = x.to(dtype)
        delta = (xa @ R) @ L.T  # x @ dW.T without forming dW
        if u is not None:
            delta = delta + (xa @ v).unsqueeze(-1) * u
        return self._base_forward(x) + (self.config.scaling * delta).to(x.dtype)

    def _tracked_tensors(self) -> List[torch.Tensor]:
        """``W0``, the shared generator's tensors and this layer's factors: the merged
        weight depends on exactly these (kept cheap: it runs on every eval forward)."""
        params = self._parameters
        own = [params[n] for n in ("A1", "B1", "A2", "B2") if params.get(n) is not None]
        return [self.weight] + self.generator.shared_tensors() + own

    def _cached_merged_weight(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        # exactly what merge() and the merged checkpoint hold (fp32 W0 + dW, cast once),
        # so eval and generation match the published model
        return self._cache.get(
            tensors,
            lambda: merged_weight_fp32(self.base_weight(), self.generator, self.specific_factors()),
        )

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
        dropout_active = self.training and self.config.dropout > 0
        tensors = self._tracked_tensors()
        needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in tensors[1:])
        if not needs_graph and not dropout_active:
            weight = self._cached_merged_weight(tensors)
            if weight.dtype != x.dtype:
                weight = weight.to(x.dtype)
            return F.linear(x, weight, self.bias)
        self._cache.clear()  # training: free the eval copy
        if self.config.lowrank and not dropout_active:
            return self._lowrank_forward(x)
        if self.config.recompute and needs_graph:
            if dropout_active or torch.compiler.is_compiling():
                # checkpoint replays the dropout mask and is what torch.compile traces.
                # Stashing the RNG state copies the CUDA generator to the host (a
                # device sync per layer): only for dropout.
                return checkpoint(
                    self._merged_forward, x, use_reentrant=False, preserve_rng_state=dropout_active
                )
            return _RecomputedMergedLinear.apply(self, x, self.bias, *tensors)
        return self._merged_forward(x)

    # ---- merge ---------------------------------------------------------------

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
                "cannot merge into an NF4 base weight; merge the state dict into a "
                "bf16/fp32 checkpoint with genft_tune.modules.merge_genft_state_dict"
            )
        W0 = self.weight.detach().clone()
        merged = merged_weight_fp32(W0, self.generator, self.specific_factors())
        self.weight.copy_(merged)
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


class _RecomputedMergedLinear(torch.autograd.Function):
    """``F.linear(x, W0 + dW, bias)`` that keeps no new ``(out, in)`` tensor for backward.

    It saves ``x`` and its input tensors (references, no copies); backward rebuilds the
    merged weight from those and backpropagates ``dL/dW = g.T @ x`` through the
    generator, without redoing ``x @ W.T``. Unlike ``checkpoint``, which reruns the
    layer's forward and so reads the layer's attributes again, the weight is rebuilt
    from the very tensors of the forward: parameters swapped in by
    ``torch.func.functional_call`` get their own gradients, and an in-place change
    between forward and backward is an autograd error, not a silently different
    gradient. Dropout is not supported here (its mask would have to be replayed): the
    layer uses ``checkpoint`` then.

    Inputs: ``(layer, x, bias, *layer._tracked_tensors())``.
    """

    @staticmethod
    def forward(ctx, layer, x, bias, *tensors):
        ctx.layer = layer
        ctx.save_for_backward(x, *tensors)  # inputs: saved by reference, no copies
        return F.linear(x, layer._merged_weight(False, tensors).to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, *saved = ctx.saved_tensors
        needs_x, needs_bias = ctx.needs_input_grad[1:3]
        needs_tensors = ctx.needs_input_grad[3:]
        layer = ctx.layer
        with torch.enable_grad():
            tensors = [t.detach().requires_grad_() if need else t for t, need in zip(saved, needs_tensors)]
            W0, gen = layer._generated(False, tensors)
        g2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = None
        if needs_x:
            weight = torch.add(W0, gen.detach().to(W0.dtype), alpha=layer.config.scaling)
            grad_x = grad_out @ weight.to(grad_out.dtype)
            del weight
        grad_bias = g2d.sum(0) if needs_bias else None
        wanted = [t for t, need in zip(tensors, needs_tensors) if need]
        grads = iter(())
        if wanted:
            # dL/dF = scaling * g.T @ x: the scaling rides on the matmul, not an (out, in) pass
            x2d = x.reshape(-1, x.shape[-1]).to(g2d.dtype)
            grad_gen = torch.addmm(g2d.new_zeros(()), g2d.T, x2d, beta=0, alpha=layer.config.scaling)
            grads = iter(torch.autograd.grad(gen, wanted, grad_gen.to(gen.dtype)))
        return (None, grad_x, grad_bias, *[next(grads) if need else None for need in needs_tensors])


def _dequantized(weight: torch.Tensor) -> torch.Tensor:
    return weight.get_original_weight() if isinstance(weight, NF4Tensor) else weight


def _check_nf4_shape(out_dim: int, in_dim: int, block_size: int = 64, scaler_block_size: int = 256):
    """torchao's NF4 needs ``out*in`` divisible by ``block_size * scaler_block_size``."""
    if (out_dim * in_dim) % (block_size * scaler_block_size) != 0:
        raise ValueError(
            f"quantize_base=True cannot store a ({out_dim}, {in_dim}) weight in NF4: its size "
            f"{out_dim * in_dim} must be divisible by block_size * scaler_block_size = "
            f"{block_size} * {scaler_block_size}"
        )


def tie_specific_factors(A1, B1, A2, B2, *, tied: bool) -> Tuple[Optional[torch.Tensor], ...]:
    """The ``(A1, B1, A2, B2)`` a generator reads: for square (tied) weights the one
    stored pair serves both stages."""
    return (A1, B1, A1, B1) if tied else (A1, B1, A2, B2)


@torch.no_grad()
def merged_weight_fp32(
    weight: torch.Tensor,
    generator: GenFTGenerator,
    specific: Sequence[Optional[torch.Tensor]],
) -> torch.Tensor:
    """``W0 + dW`` computed in fp32 (evaluation mode, no dropout) and cast back to
    ``weight``'s dtype.

    Args:
        weight (torch.Tensor): the original ``W0``.
        generator (GenFTGenerator): its shared generator.
        specific (Sequence[Optional[torch.Tensor]]): ``(A1, B1, A2, B2)``, tie applied.

    Returns:
        torch.Tensor: the merged weight, same dtype and device as ``weight``.
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)  # fp32, or fp64 for fp64 models
    shared = {n: p.to(dtype) for n, p in generator.named_parameters(recurse=False)}
    args = [t.to(dtype) if t is not None else None for t in specific]
    w = weight.to(dtype)
    # functional_call evaluates the generator with upcast copies, leaving it untouched.
    delta = torch.func.functional_call(generator, shared, (w, *args))
    return (w + delta).to(weight.dtype)


def genft_linear(
    in_dim: int,
    out_dim: int,
    *,
    generators: GenFTGenerators,
    use_bias: bool = False,
    quantize_base: bool = False,
    **quantization_kwargs,
) -> GenFTLinear:
    """Builder for a :class:`GenFTLinear` sharing the generator of its shape.

    Args:
        in_dim (int): input dimension.
        out_dim (int): output dimension.
        generators (GenFTGenerators): the model's shared generators (created per
            shape on first use).
        use_bias (bool): base layer bias. Default: False
        quantize_base (bool): NF4 base weight. Default: False
        **quantization_kwargs: passed to ``to_nf4``.

    Returns:
        GenFTLinear: the layer.
    """
    return GenFTLinear(
        in_dim,
        out_dim,
        generator=generators.get(out_dim, in_dim),
        use_bias=use_bias,
        quantize_base=quantize_base,
        **quantization_kwargs,
    )
