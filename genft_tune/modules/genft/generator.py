"""The layer-shared half of GenFT's generator (:class:`GenFTGenerator`, one per weight
shape, all of a model's in one :class:`GenFTGenerators`) and the fp32 merged weight."""

import math
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from genft_tune.modules._base import add_delta_fp32, linear_default_init, merge_dtype
from genft_tune.modules.genft.config import ACTIVATION_GAINS, ACTIVATIONS, FACTOR_INITS, GenFTConfig


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


@torch.no_grad()
def init_keeping_scale(tensors: Mapping[str, Optional[torch.Tensor]], config: GenFTConfig) -> None:
    """Draw the generator's matrices (``P*``, ``Q*``, ``A*``, ``B*`` among ``tensors``; the
    biases are left) so that each stage keeps the size of its input, in place: normal
    with std ``gain / sqrt(fan_in)``, ``fan_in`` the dimension the matrix contracts
    (``W0``'s for ``D1 = [P1; A1]``, ``F_row``'s for ``D2``, ``a + b`` for ``E1``/``E2``) and
    ``gain`` the activation's that follows (:data:`ACTIVATION_GAINS`). Then ``dW`` is about
    ``ratio * scaling * W0`` in size, at any scale of ``W0``: a random adapter that clearly
    acts, as PEFT's ``init_weights=False`` asks (with ``nn.Linear``'s init a generator
    shrinks ``W0`` at every stage, and ``dW`` stays ~0.3% of a small ``W0``)."""
    gain_in, gain_out = ACTIVATION_GAINS[config.act_in], ACTIVATION_GAINS[config.act_out]
    for name, tensor in tensors.items():
        if tensor is None or tensor.is_meta:
            continue
        if name[0] in "PA":  # D blocks, (k, dim): they contract W0's (or F_row's) dim
            nn.init.normal_(tensor, std=gain_in / math.sqrt(tensor.shape[1]))
        elif name[0] in "QB":  # E blocks, (dim, k): E = [Q | B] contracts a + b
            nn.init.normal_(tensor, std=gain_out / math.sqrt(config.latent_dim))


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
                    linear_default_init(weight, None)
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


def tie_specific_factors(A1, B1, A2, B2, *, tied: bool) -> Tuple[Optional[torch.Tensor], ...]:
    """The ``(A1, B1, A2, B2)`` a generator reads: for square (tied) weights the one
    stored pair serves both stages."""
    return (A1, B1, A1, B1) if tied else (A1, B1, A2, B2)


@torch.no_grad()
def delta_weight_fp32(
    weight: torch.Tensor,
    generator: GenFTGenerator,
    specific: Sequence[Optional[torch.Tensor]],
    shared: Optional[Mapping[str, torch.Tensor]] = None,
) -> torch.Tensor:
    """``dW`` computed in fp32 (fp64 for fp64 weights; evaluation mode, no dropout).

    Args:
        weight (torch.Tensor): the original ``W0``.
        generator (GenFTGenerator): its shared generator (may live on meta when
            ``shared`` is given).
        specific (Sequence[Optional[torch.Tensor]]): ``(A1, B1, A2, B2)``, tie applied.
        shared (Optional[Mapping[str, torch.Tensor]]): the generator's tensors by
            parameter name; the generator's own when not given.

    Returns:
        torch.Tensor: ``dW`` in :func:`~genft_tune.modules._base.merge_dtype`.
    """
    dtype = merge_dtype(weight)
    if shared is None:
        shared = dict(generator.named_parameters(recurse=False))
    shared = {n: p.to(dtype) for n, p in shared.items()}
    args = [t.to(dtype) if t is not None else None for t in specific]
    # functional_call evaluates the generator with upcast copies, leaving it untouched.
    return torch.func.functional_call(generator, shared, (weight.to(dtype), *args), strict=True)


def merged_weight_fp32(
    weight: torch.Tensor,
    generator: GenFTGenerator,
    specific: Sequence[Optional[torch.Tensor]],
    shared: Optional[Mapping[str, torch.Tensor]] = None,
) -> torch.Tensor:
    """``W0 + dW`` computed in fp32 (:func:`delta_weight_fp32`) and cast back to
    ``weight``'s dtype; arguments as :func:`delta_weight_fp32`."""
    return add_delta_fp32(weight, lambda w: delta_weight_fp32(w, generator, specific, shared))
