"""``GenFTLinear``: a frozen linear adapted by GenFT's generator, and its builder."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from genft_tune.modules._base import AdapterLinear, dequantized
from genft_tune.modules.genft import _fused
from genft_tune.modules.genft.generator import (
    _init_factor,
    GenFTGenerator,
    GenFTGenerators,
    merged_weight_fp32,
    tie_specific_factors,
)


SPECIFIC = ("A1", "B1", "A2", "B2")


def specific_factor_shapes(config, in_dim: int, out_dim: int) -> Dict[str, Tuple[int, int]]:
    """The shapes of a layer's specific factors (``A1 (b, in)``, ``B1 (in, b)``, and for
    non-square weights ``A2 (b, out)``, ``B2 (out, b)``; none with ``b = 0``). Square
    weights tie the stages' factors (A2 is A1, B2 is B1), as the authors do; the pair is
    then named A1/B1 whichever stages run."""
    b, tied = config.specific_dim, in_dim == out_dim
    first, second = config.use_row or tied, config.use_column and not tied
    shapes: Dict[str, Tuple[int, int]] = {}
    if b and first:
        shapes.update(A1=(b, in_dim), B1=(in_dim, b))
    if b and second:
        shapes.update(A2=(b, out_dim), B2=(out_dim, b))
    return shapes


@torch.no_grad()
def initialize_specific_factors(factors: Dict[str, Optional[torch.Tensor]], config, *, tied: bool) -> None:
    """``A`` per ``init_a``, ``B`` per ``init_b``; the last stage's ``B`` zero under
    ``zero_init`` (like the generator's ``Q`` and ``d``), in place."""
    for name in ("A1", "A2"):
        if factors.get(name) is not None:
            _init_factor(factors[name], config.init_a)
    for name in ("B1", "B2"):
        if factors.get(name) is not None:
            _init_factor(factors[name], config.init_b)
    if config.zero_init:
        last = factors.get("B2") if config.use_column and not tied else factors.get("B1")
        if last is not None:
            _init_factor(last, "zeros")


class GenFTLinear(AdapterLinear):
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
    - otherwise the merged forward ``F.linear(x, W0 + dW)``, one matmul: through the
      fused Triton kernels when ``config.fused`` allows (``"auto"``: CUDA tensors and
      triton installed; see ``_fused.py``), else the eager generator, recomputed in
      backward when ``config.recompute``.

    Args:
        in_dim (int): input dimension.
        out_dim (int): output dimension.
        generator (GenFTGenerator): shared generator for ``(out_dim, in_dim)``.
        use_bias (bool): whether the frozen base layer has a bias. Default: False
        quantize_base (bool): store ``W0`` as a torchao NF4 tensor. Default: False
        base (Optional[nn.Linear]): take over this linear's weight and bias as the frozen
            base (see :class:`~genft_tune.modules.AdapterLinear`). Default: None
        **quantization_kwargs: passed to ``to_nf4`` (``block_size``, ``scaler_block_size``).

    Raises:
        ValueError: if the generator's shape does not match, or quantization
            kwargs are given without ``quantize_base``.
    """

    state_dict_merge_function = "merge_genft_state_dict"

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        generator: GenFTGenerator,
        use_bias: bool = False,
        quantize_base: bool = False,
        base: Optional[nn.Linear] = None,
        **quantization_kwargs,
    ):
        if (generator.out_dim, generator.in_dim) != (out_dim, in_dim):
            raise ValueError(
                f"generator is for weights of shape ({generator.out_dim}, {generator.in_dim}), "
                f"layer has ({out_dim}, {in_dim})"
            )
        super().__init__(
            in_dim, out_dim, use_bias=use_bias, quantize_base=quantize_base, base=base, **quantization_kwargs
        )
        self.config = generator.config
        # A plain attribute (not a submodule): the generator is registered once on the
        # model, and fetched from there at every call so FSDP's parameter swaps are seen.
        self._generator = (generator,)

        self.tied = in_dim == out_dim
        shapes = specific_factor_shapes(self.config, in_dim, out_dim)
        for name in SPECIFIC:
            setattr(self, name, nn.Parameter(torch.empty(*shapes[name])) if name in shapes else None)
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
        initialize_specific_factors({n: getattr(self, n) for n in SPECIFIC}, self.config, tied=self.tied)
        self._cache.clear()

    def adapter_params(self) -> List[str]:
        """Names of this layer's trainable parameters (the shared ones are the
        generator's, see :meth:`GenFTGenerator.adapter_params`)."""
        return [n for n in ("A1", "B1", "A2", "B2") if getattr(self, n) is not None]

    def specific_factors(self) -> Tuple[Optional[torch.Tensor], ...]:
        """``(A1, B1, A2, B2)`` with the square-weight tie applied."""
        return tie_specific_factors(self.A1, self.B1, self.A2, self.B2, tied=self.tied)

    def _adapter_dtype(self) -> torch.dtype:
        return self._tracked_tensors()[1].dtype

    def delta_weight(self, *, training: bool = False) -> torch.Tensor:
        """``dW = G(W0)`` in the adapter's dtype, from the original (unmerged) ``W0``."""
        W0 = self._original_weight().to(self._adapter_dtype())
        return self.generator.delta_weight(W0, *self.specific_factors(), training=training)

    # ---- forward paths -------------------------------------------------------

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
        tensors = self._tracked_tensors() if tensors is None else tensors
        W0, shared, specific = self._generator_inputs(tensors)
        return W0, self.generator.generate(W0.to(tensors[1].dtype), *specific, training=training, shared=shared)

    def _generator_inputs(self, tensors: Optional[Sequence[torch.Tensor]] = None):
        """``(W0, shared tensors by name, (A1, B1, A2, B2) tie applied)`` from ``tensors``
        (ordered as :meth:`_tracked_tensors`), else from the layer's."""
        weight, *rest = self._tracked_tensors() if tensors is None else tensors
        names = self.generator.shared_names()
        shared = dict(zip(names, rest[: len(names)]))
        own = dict(zip(self.adapter_params(), rest[len(names) :]))
        specific = tie_specific_factors(
            own.get("A1"), own.get("B1"), own.get("A2"), own.get("B2"), tied=self.tied
        )
        return dequantized(weight), shared, specific

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

    def _merged_weight_from(self, weight: torch.Tensor) -> torch.Tensor:
        return merged_weight_fp32(weight, self.generator, self.specific_factors())

    def _adapted_forward(self, x: torch.Tensor, tensors: List[torch.Tensor], needs_graph: bool) -> torch.Tensor:
        dropout_active = self._dropout_active()
        if self.config.lowrank and not dropout_active:
            return self._lowrank_forward(x)
        if needs_graph and self._use_fused(x, tensors):
            return _fused.fused_merged_linear(self, x, self.bias, *tensors)
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

    def _use_fused(self, x: torch.Tensor, tensors: List[torch.Tensor]) -> bool:
        """Whether this training forward runs the fused kernels (``config.fused``)."""
        mode = self.config.fused
        if mode == "never" or (mode == "auto" and torch.compiler.is_compiling()):
            return False  # auto under torch.compile: inductor fuses the eager generator itself
        reason = _fused.unsupported_reason(self.config, x, tensors)
        if reason is not None and mode == "always":
            raise RuntimeError(f"GenFTConfig.fused='always', but the fused generator cannot run: {reason}")
        return reason is None


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


def genft_linear(
    in_dim: int,
    out_dim: int,
    *,
    generators: GenFTGenerators,
    use_bias: bool = False,
    quantize_base: bool = False,
    base: Optional[nn.Linear] = None,
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
        base (Optional[nn.Linear]): a linear whose weight and bias become the frozen
            base (see :class:`~genft_tune.modules.AdapterLinear`). Default: None
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
        base=base,
        **quantization_kwargs,
    )
