"""The fused dense generator: GenFT's merged weight and its gradients in Triton kernels.

The eager generator (:meth:`GenFTGenerator.generate`) writes and reads every ``(out, in)``
intermediate (``F_row``, ``Z2``, ``F_col.T``, their masks and gradients): on a GPU each
is a pass over memory, while its matmuls have inner dimension ``r = a + b <= 64`` and
cost next to nothing. Here (``GENFT_SPEC.md``, "Cost, and the fast paths"):

forward
    ``pre1 = ratio * W0 @ D1.T + c1`` (torch, one read of ``W0``); ``pre2 = D2 @ F_row
    + c2`` with ``F_row`` made tile by tile in registers and never written
    (:func:`row_to_h2_kernel`); ``W = W0 + scaling * drop(act_out(E2 @ act_in(pre2) +
    d2))`` in one pass (read ``W0``, write ``W``).
backward, given ``G = dLoss/dF`` (``scaling * g.T @ x``, the one full GEMM)
    one read of ``G`` for the column stage (:func:`stage_backward_kernel`); the row stage
    needs no ``(out, in)`` tensor at all (:func:`row_backward_kernel`: ``dF_row = D2.T @
    dpre2`` has rank ``r`` and ``F_row`` is recomputed); ``dD1 = ratio * dpre1.T @ W0``
    from the same read of ``W0`` as the rebuild of ``W`` for the input's gradient
    (:func:`merged_weight_dd1_kernel`; a torch matmul when ``W`` is not rebuilt or is
    transposed).

Dropout on ``F_row`` / ``F_col`` draws in-kernel Philox numbers from a seed, so the
backward replays the forward's mask from the seed alone (:func:`dropout_keep_mask`
shows it). Triton is imported lazily: without it (or off CUDA, unless Triton's
interpreter is on) :func:`unsupported_reason` says why and the layer stays eager.
"""

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from genft_tune.modules.genft.config import ACTIVATIONS

# tl.dot needs a power-of-two inner size >= 16; beyond 64 a tile no longer fits registers
MAX_LATENT_DIM = 64
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ACT_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
STAGE_NAMES = ("D1", "E1", "D2", "E2", "c1", "d1", "c2", "d2")

# Number of kernel launches by kernel name, for benchmarks/generator_passes.py.
launch_counts: Dict[str, int] = {}


_triton_ok: Optional[bool] = None  # a plain global, not lru_cache: torch.compile reads it


def triton_available() -> bool:
    """Whether ``import triton`` works (the import itself is done once, on first use)."""
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton  # noqa: F401

            _triton_ok = True
        except Exception:  # ImportError, or a broken install: the eager path then
            _triton_ok = False
    return _triton_ok


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET=1``: the only way the kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool):
    """:mod:`._fused_kernels` decorated for Triton's interpreter or compiled.

    ``@triton.jit`` picks the mode from ``TRITON_INTERPRET`` when it runs, so each mode
    gets its own copy of the module, executed with the variable set for it; a process
    can then run the kernels on CPU tensors (tests) and on CUDA ones (GPU) alike.
    """
    origin = importlib.util.find_spec("genft_tune.modules.genft._fused_kernels").origin
    name = f"genft_tune.modules.genft._fused_kernels_{'interpreted' if interpret else 'compiled'}"
    spec = importlib.util.spec_from_file_location(name, origin)
    module = importlib.util.module_from_spec(spec)
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        spec.loader.exec_module(module)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    return module


def _kernels_for(device: torch.device):
    return _kernels(device.type != "cuda")


@dataclass(frozen=True)
class FusedSpec:
    """What the kernels need to know of a :class:`GenFTConfig` for one call.

    Args:
        act_in (str): activation after the ``D`` projections.
        act_out (str): activation after the ``E`` projections.
        use_row (bool): the row stage runs.
        use_column (bool): the column stage runs.
        weight_ratio (float): the factor on ``W0`` inside the generator.
        scaling (float): ``W = W0 + scaling * F``.
        p (float): dropout probability on ``F_row`` / ``F_col`` (0: off).
        transpose (bool): ``dW`` is the generated matrix transposed (``authors_peft``).
    """

    act_in: str
    act_out: str
    use_row: bool
    use_column: bool
    weight_ratio: float
    scaling: float
    p: float = 0.0
    transpose: bool = False

    @classmethod
    def from_config(cls, config, *, dropout_active: bool) -> "FusedSpec":
        return cls(
            act_in=config.act_in,
            act_out=config.act_out,
            use_row=config.use_row,
            use_column=config.use_column,
            weight_ratio=float(config.weight_ratio),
            scaling=float(config.scaling),
            p=float(config.dropout) if dropout_active else 0.0,
            transpose=config.convention == "authors_peft",
        )


def unsupported_reason(config, x: torch.Tensor, tensors: Sequence[torch.Tensor]) -> Optional[str]:
    """Why the fused path cannot run this call (None: it can).

    Args:
        config (GenFTConfig): the layer's config.
        x (torch.Tensor): the layer's input.
        tensors (Sequence[torch.Tensor]): ``W0``, then the generator's and the layer's
            tensors (as ``GenFTLinear._tracked_tensors``).
    """
    if config.latent_dim > MAX_LATENT_DIM:
        return f"shared_dim + specific_dim = {config.latent_dim} > {MAX_LATENT_DIM}"
    device = tensors[0].device
    if any(t.device != device for t in (x, *tensors)):
        return "tensors on several devices"
    if device.type != "cuda" and not (device.type == "cpu" and interpreter_enabled()):
        return f"tensors on {device.type}: the kernels need CUDA (or TRITON_INTERPRET=1 on CPU)"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return "a GPU older than compute capability 8.0 (the kernels' tf32 dot products need Ampere or newer)"
    if tensors[0].requires_grad:
        return "the frozen weight requires a gradient"
    dtypes = {t.dtype for t in tensors[1:]}
    if len(dtypes) != 1 or not dtypes <= set(SUPPORTED_DTYPES):
        return f"adapter dtypes {sorted(map(str, dtypes))}; supported: one of {list(map(str, SUPPORTED_DTYPES))}"
    if not triton_available():
        return "triton is not installed"
    return None


def stage_tensors(generator, shared: Mapping[str, torch.Tensor], specific: Sequence) -> Tuple:
    """``(D1, E1, D2, E2, c1, d1, c2, d2)`` of a generator call (None where absent), from the
    shared tensors by name and ``(A1, B1, A2, B2)`` (tie applied)."""
    D1, E1, D2, E2 = generator._stage_matrices(shared, *specific)
    return (D1, E1, D2, E2, *(shared.get(n) for n in ("c1", "d1", "c2", "d2")))


# ---- launches ------------------------------------------------------------------------


def _latent_pad(r: int) -> int:
    return max(16, triton_next_pow2(r))


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _blocks(device: torch.device) -> Tuple[int, int, int]:
    """``(BLOCK_OUT, BLOCK_IN, num_warps)``: small tiles under the interpreter (CPU tests
    then also cover several tiles, the masked edges and the atomics)."""
    return (64, 64, 4) if device.type == "cuda" else (32, 32, 1)


def _split(n_out: int, n_in_tiles: int, block_out: int, device: torch.device) -> Tuple[int, int]:
    """``(programs along out, out rows per program)`` for the strip kernels: enough
    programs to fill the GPU; two on CPU, so the tests exercise the atomic reduction."""
    n_out_tiles = -(-n_out // block_out)
    if device.type == "cuda":
        want = max(1, -(-4 * _sm_count(device.index) // n_in_tiles))
    else:
        want = 2
    per_prog = -(-n_out_tiles // min(want, n_out_tiles)) * block_out
    return -(-n_out // per_prog), per_prog


@functools.lru_cache(maxsize=None)
def _sm_count(index: Optional[int]) -> int:
    return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()).multi_processor_count


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 dots (the tests compare to fp32 round-off); bf16/fp16:
    # tf32 tensor cores, whose rounding is below the inputs' own
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch(name: str, kernel, grid, *args, **kwargs) -> None:
    launch_counts[name] = launch_counts.get(name, 0) + 1
    kernel[grid](*args, **kwargs)


def _strides(t: torch.Tensor, transpose: bool = False) -> Tuple[int, int]:
    return (t.stride(1), t.stride(0)) if transpose else (t.stride(0), t.stride(1))


def _act_vjp(name: str, pre: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad * act'(pre)`` for a small tensor, by autograd through ``ACTIVATIONS`` itself."""
    with torch.enable_grad():
        leaf = pre.detach().requires_grad_()
        return torch.autograd.grad(ACTIVATIONS[name](leaf), leaf, grad)[0]


def _seeds(seed: int) -> Tuple[int, int]:
    # row and column stages draw from two Philox keys
    return seed, seed + 1


def new_seed() -> int:
    """A dropout seed from torch's CPU generator (no device sync; ``torch.manual_seed`` and
    activation checkpointing's RNG replay cover it). Never 1: Triton would specialise it."""
    return int(torch.randint(2, 2**31 - 2, (), device="cpu"))


def dropout_keep_mask(seed: int, n_out: int, n_in: int, p: float, device, *, stage: str) -> torch.Tensor:
    """The ``(out, in)`` keep mask (1.0 kept, 0.0 dropped) the kernels use for ``seed``.

    Args:
        seed (int): the call's seed.
        n_out (int): rows of the F-space (``out``).
        n_in (int): columns (``in``).
        p (float): dropout probability.
        device: where to run the kernel.
        stage (str): ``"row"`` (``F_row``) or ``"column"`` (``F_col.T``).
    """
    device = torch.device(device)
    k = _kernels_for(device)
    out = torch.empty(n_out, n_in, device=device, dtype=torch.float32)
    s = _seeds(seed)[0 if stage == "row" else 1]
    bo, bi, warps = _blocks(device)
    grid = (-(-n_out // bo), -(-n_in // bi))
    _launch("keep_mask", k.keep_mask_kernel, grid, out, n_out, n_in, s, float(p), BO=bo, BI=bi, num_warps=warps)
    return out


def _merge(W0, L, R, br, bc, spec: FusedSpec, act: str, seed: int) -> torch.Tensor:
    """``W0 + scaling * drop(act(L @ R + br + bc))`` (transposed under ``spec.transpose``)."""
    device = W0.device
    k = _kernels_for(device)
    n_out, n_in = L.shape[0], R.shape[1]  # F space
    W = torch.empty_like(W0)
    bo, bi, warps = _blocks(device)
    grid = (-(-n_out // bo), -(-n_in // bi))
    p = spec.p
    _launch(
        "merged_weight", k.merged_weight_kernel, grid,
        W0, *_strides(W0, spec.transpose), W, *_strides(W, spec.transpose),
        L, *_strides(L), R, *_strides(R), br if br is not None else L, bc if bc is not None else L,
        n_out, n_in, L.shape[1], spec.scaling, seed, p, 1.0 / (1.0 - p),
        HAS_BR=br is not None, HAS_BC=bc is not None, HAS_DROP=p > 0, ACT=_ACT_CODES[act],
        PREC=_precision(L.dtype if L.dtype != torch.float32 else R.dtype),
        BO=bo, BI=bi, RP=_latent_pad(L.shape[1]), num_warps=warps,
    )
    return W


def _hidden(W0g, stages, spec: FusedSpec, seed: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(pre1 (out, r), pre2 (r, in))`` in fp32, None for a stage that does not run."""
    D1, E1, D2, E2, c1, d1, c2, d2 = stages
    act_in = ACTIVATIONS[spec.act_in]
    pre1 = pre2 = None
    if spec.use_row:
        pre1 = spec.weight_ratio * (W0g @ D1.T).float()
        if c1 is not None:
            pre1 = pre1 + c1.float()
    if spec.use_column and spec.use_row:
        H1 = act_in(pre1)
        device = W0g.device
        k = _kernels_for(device)
        n_out, n_in, r = H1.shape[0], E1.shape[0], H1.shape[1]
        pre2 = torch.zeros(r, n_in, device=device, dtype=torch.float32)
        bo, bi, warps = _blocks(device)
        n_i = -(-n_in // bi)
        n_split, per_prog = _split(n_out, n_i, bo, device)
        p = spec.p
        _launch(
            "row_to_h2", k.row_to_h2_kernel, (n_i, n_split),
            H1, *_strides(H1), E1, *_strides(E1), d1 if d1 is not None else H1, D2, *_strides(D2), pre2,
            n_out, n_in, r, per_prog, _seeds(seed)[0], p, 1.0 / (1.0 - p),
            HAS_D1=d1 is not None, HAS_DROP=p > 0, ACT=_ACT_CODES[spec.act_out], PREC=_precision(D2.dtype),
            BO=bo, BI=bi, RP=_latent_pad(r), num_warps=warps,
        )
    elif spec.use_column:
        pre2 = spec.weight_ratio * (D2 @ W0g).float()
    if pre2 is not None and c2 is not None:
        pre2 = pre2 + c2.float()[:, None]
    return pre1, pre2


def _last_stage(stages, spec: FusedSpec, pre1, pre2, seed: int):
    """``(L, R, b_row, b_col, act, seed)`` of the last stage: ``F = act(L @ R + ...)``."""
    D1, E1, D2, E2, c1, d1, c2, d2 = stages
    act_in = ACTIVATIONS[spec.act_in]
    if spec.use_column:
        return E2, act_in(pre2), d2, None, spec.act_out, _seeds(seed)[1]
    return act_in(pre1), E1.T, None, d1, spec.act_out, _seeds(seed)[0]


def generator_dtype(stages) -> torch.dtype:
    return next(t for t in stages if t is not None).dtype


def fused_forward(W0: torch.Tensor, stages: Sequence, spec: FusedSpec, seed: int = 2):
    """The merged weight ``W0 + scaling * dW/scaling`` and the small saved state.

    Args:
        W0 (torch.Tensor): the frozen weight, ``(out, in)``; ``W`` gets its dtype.
        stages (Sequence): ``(D1, E1, D2, E2, c1, d1, c2, d2)`` (see :func:`stage_tensors`).
        spec (FusedSpec): the static flags.
        seed (int): the dropout seed (unused without dropout).

    Returns:
        Tuple: ``(W, pre1, pre2)``; ``pre1 (out, r)`` / ``pre2 (r, in)`` fp32 or None.
    """
    with torch.no_grad():
        W0g = W0.to(generator_dtype(stages))
        pre1, pre2 = _hidden(W0g, stages, spec, seed)
        L, R, br, bc, act, s = _last_stage(stages, spec, pre1, pre2, seed)
        return _merge(W0, L, R, br, bc, spec, act, s), pre1, pre2


def merged_from_saved(W0, stages, spec: FusedSpec, seed: int, pre1, pre2) -> torch.Tensor:
    """:func:`fused_forward`'s ``W`` again from its saved ``pre1``/``pre2`` (one pass)."""
    with torch.no_grad():
        L, R, br, bc, act, s = _last_stage(stages, spec, pre1, pre2, seed)
        return _merge(W0, L, R, br, bc, spec, act, s)


def _stage_backward(G, L, R, br, bc, spec: FusedSpec, act: str, seed: int):
    """``(dL, dR, dbr, dbc)`` of ``F = drop(act(L @ R + br + bc))`` given ``G = dLoss/dF``."""
    device = G.device
    k = _kernels_for(device)
    n_out, n_in, r = L.shape[0], R.shape[1], L.shape[1]
    dL = torch.zeros(n_out, r, device=device, dtype=torch.float32)
    dR = torch.zeros(r, n_in, device=device, dtype=torch.float32)
    dbr = torch.zeros(n_out, device=device, dtype=torch.float32) if br is not None else None
    dbc = torch.zeros(n_in, device=device, dtype=torch.float32) if bc is not None else None
    bo, bi, warps = _blocks(device)
    n_i = -(-n_in // bi)
    n_split, per_prog = _split(n_out, n_i, bo, device)
    p = spec.p
    _launch(
        "stage_backward", k.stage_backward_kernel, (n_i, n_split),
        G, *_strides(G, spec.transpose), L, *_strides(L), R, *_strides(R),
        br if br is not None else L, bc if bc is not None else L,
        dL, dR, dbr if dbr is not None else dL, dbc if dbc is not None else dL,
        n_out, n_in, r, per_prog, seed, p, 1.0 / (1.0 - p),
        HAS_BR=br is not None, HAS_BC=bc is not None, HAS_DROP=p > 0, ACT=_ACT_CODES[act],
        PREC=_precision(L.dtype if L.dtype != torch.float32 else R.dtype),
        BO=bo, BI=bi, RP=_latent_pad(r), num_warps=warps,
    )
    return dL, dR, dbr, dbc


def _row_backward(H1, E1, d1, D2, dpre2, spec: FusedSpec, seed: int):
    """``(dH1, dE1, dd1, dD2)`` of ``pre2 = D2 @ F_row`` given ``dpre2``."""
    device = H1.device
    k = _kernels_for(device)
    n_out, n_in, r = H1.shape[0], E1.shape[0], H1.shape[1]
    dH1 = torch.zeros(n_out, r, device=device, dtype=torch.float32)
    dE1T = torch.zeros(r, n_in, device=device, dtype=torch.float32)
    dd1 = torch.zeros(n_in, device=device, dtype=torch.float32) if d1 is not None else None
    dD2 = torch.zeros(r, n_out, device=device, dtype=torch.float32)
    bo, bi, warps = _blocks(device)
    n_i = -(-n_in // bi)
    n_split, per_prog = _split(n_out, n_i, bo, device)
    p = spec.p
    _launch(
        "row_backward", k.row_backward_kernel, (n_i, n_split),
        H1, *_strides(H1), E1, *_strides(E1), d1 if d1 is not None else H1, D2, *_strides(D2),
        dpre2.contiguous(), dH1, dE1T, dd1 if dd1 is not None else dH1, dD2,
        n_out, n_in, r, per_prog, seed, p, 1.0 / (1.0 - p),
        HAS_D1=d1 is not None, HAS_DROP=p > 0, ACT=_ACT_CODES[spec.act_out], PREC=_precision(D2.dtype),
        BO=bo, BI=bi, RP=_latent_pad(r), num_warps=warps,
    )
    return dH1, dE1T.T, dd1, dD2


def fused_backward(grad: torch.Tensor, W0: torch.Tensor, stages: Sequence, spec: FusedSpec, seed: int,
                   pre1: Optional[torch.Tensor], pre2: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """Gradients of the stage tensors given ``grad = dLoss/d(dW / scaling)``, ``(out, in)``.

    Args:
        grad (torch.Tensor): gradient w.r.t. the generated matrix, in ``W``'s layout.
        W0 (torch.Tensor): the frozen weight.
        stages (Sequence): as :func:`fused_forward`.
        spec (FusedSpec): as :func:`fused_forward`.
        seed (int): the forward's seed.
        pre1 (Optional[torch.Tensor]): saved by :func:`fused_forward`.
        pre2 (Optional[torch.Tensor]): saved by :func:`fused_forward`.

    Returns:
        List[Optional[torch.Tensor]]: fp32 gradients ordered as ``stages`` (None where
        a stage tensor is absent).
    """
    g = backward_through_stages(grad, stages, spec, seed, pre1, pre2)
    finish_backward(g, W0, stages, spec, seed, pre1, pre2, rebuild=False)
    return gradient_list(g, stages)


def gradient_list(g: Dict[str, torch.Tensor], stages: Sequence) -> List[Optional[torch.Tensor]]:
    return [g.get(name) if t is not None else None for name, t in zip(STAGE_NAMES, stages)]


def backward_through_stages(grad, stages, spec: FusedSpec, seed: int, pre1, pre2) -> Dict[str, torch.Tensor]:
    """Everything :func:`fused_backward` needs ``grad`` for: the gradients by stage name,
    ``D1``'s excepted (``"dpre1"`` instead; :func:`finish_backward` adds it)."""
    D1, E1, D2, E2, c1, d1, c2, d2 = stages
    act_in = ACTIVATIONS[spec.act_in]
    g = {}
    with torch.no_grad():
        row_seed, col_seed = _seeds(seed)
        if spec.use_column:
            g["E2"], dH2t, g["d2"], _ = _stage_backward(grad, E2, act_in(pre2), d2, None, spec, spec.act_out, col_seed)
            g["dpre2"] = _act_vjp(spec.act_in, pre2, dH2t)
            g["c2"] = g["dpre2"].sum(1)
            if spec.use_row:
                dH1, g["E1"], g["d1"], g["D2"] = _row_backward(act_in(pre1), E1, d1, D2, g["dpre2"], spec, row_seed)
        else:
            dH1, dE1T, _, g["d1"] = _stage_backward(grad, act_in(pre1), E1.T, None, d1, spec, spec.act_out, row_seed)
            g["E1"] = dE1T.T
        if spec.use_row:
            g["dpre1"] = _act_vjp(spec.act_in, pre1, dH1)
            g["c1"] = g["dpre1"].sum(0)
    return g


def finish_backward(g: Dict[str, torch.Tensor], W0, stages, spec: FusedSpec, seed: int, pre1, pre2,
                    *, rebuild: bool) -> Optional[torch.Tensor]:
    """The gradients that read ``W0`` (``D1``'s; ``D2``'s without a row stage) into ``g``,
    and with ``rebuild`` the merged weight again (for the input's gradient), from the same
    read of ``W0`` where it can (row stage, untransposed ``W``).

    Returns:
        Optional[torch.Tensor]: the merged weight when ``rebuild``, else None.
    """
    with torch.no_grad():
        if spec.use_row and rebuild and not spec.transpose:
            W, dD1 = _merge_and_d1(W0, stages, spec, seed, pre1, pre2, g["dpre1"])
            g["D1"] = spec.weight_ratio * dD1
            return W
        W0g = W0.to(generator_dtype(stages))
        if spec.use_column and not spec.use_row:
            g["D2"] = spec.weight_ratio * (g["dpre2"].to(W0g.dtype) @ W0g.T).float()
        if spec.use_row:
            g["D1"] = spec.weight_ratio * (g["dpre1"].T.to(W0g.dtype) @ W0g).float()
        return merged_from_saved(W0, stages, spec, seed, pre1, pre2) if rebuild else None


def _merge_and_d1(W0, stages, spec: FusedSpec, seed: int, pre1, pre2, dpre1):
    """``(W, dpre1.T @ W0)`` with one read of ``W0`` (:func:`merged_weight_dd1_kernel`)."""
    L, R, br, bc, act, s = _last_stage(stages, spec, pre1, pre2, seed)
    device = W0.device
    k = _kernels_for(device)
    n_out, n_in, r = L.shape[0], R.shape[1], L.shape[1]
    W = torch.empty_like(W0)
    dD1 = torch.zeros(r, n_in, device=device, dtype=torch.float32)
    bo, bi, warps = _blocks(device)
    n_i = -(-n_in // bi)
    n_split, per_prog = _split(n_out, n_i, bo, device)
    p = spec.p
    _launch(
        "merged_weight_dd1", k.merged_weight_dd1_kernel, (n_i, n_split),
        W0, *_strides(W0), W, *_strides(W), L, *_strides(L), R, *_strides(R),
        br if br is not None else L, bc if bc is not None else L, dpre1.contiguous(), dD1,
        n_out, n_in, r, per_prog, spec.scaling, s, p, 1.0 / (1.0 - p),
        HAS_BR=br is not None, HAS_BC=bc is not None, HAS_DROP=p > 0, ACT=_ACT_CODES[act],
        PREC=_precision(L.dtype if L.dtype != torch.float32 else R.dtype),
        BO=bo, BI=bi, RP=_latent_pad(r), num_warps=warps,
    )
    return W, dD1


class FusedMergedWeight(torch.autograd.Function):
    """``W = W0 + scaling * G(W0)`` from the stage tensors, with the fused kernels.

    Inputs: ``(W0, spec, seed, D1, E1, D2, E2, c1, d1, c2, d2)`` (None for absent ones).
    ``W0`` gets no gradient. Keeps only its inputs and two ``r``-wide tensors for
    backward. Mostly for tests; the layer uses :class:`FusedMergedLinear`.
    """

    @staticmethod
    def forward(ctx, W0, spec, seed, *stages):
        W, pre1, pre2 = fused_forward(W0, stages, spec, seed)
        ctx.spec, ctx.seed = spec, seed
        ctx.save_for_backward(W0, pre1, pre2, *stages)
        return W

    @staticmethod
    def backward(ctx, grad_W):
        W0, pre1, pre2, *stages = ctx.saved_tensors
        spec = ctx.spec
        grads = fused_backward(spec.scaling * grad_W, W0, stages, spec, ctx.seed, pre1, pre2)
        grads = [g.to(t.dtype) if g is not None else None for g, t in zip(grads, stages)]
        return (None, None, None, *grads)


class FusedMergedLinear(torch.autograd.Function):
    """``F.linear(x, W0 + dW, bias)`` with the fused generator, like
    ``layer._RecomputedMergedLinear`` (same inputs, same saved tensors: ``x`` and the
    inputs, by reference, plus ``pre1 (out, r)``/``pre2 (r, in)``; the merged weight is
    rebuilt in backward, so peak memory is LoRA's plus one ``(out, in)`` buffer at a time).

    Dropout is supported: the seed is drawn in forward and replayed in backward.

    Inputs: ``(layer, x, bias, *layer._tracked_tensors())``.
    """

    @staticmethod
    def forward(ctx, layer, x, bias, *tensors):
        spec = FusedSpec.from_config(layer.config, dropout_active=layer._dropout_active())
        seed = new_seed() if spec.p > 0 else 2
        W0, shared, specific = layer._generator_inputs(tensors)
        stages = stage_tensors(layer.generator, shared, specific)
        W, pre1, pre2 = fused_forward(W0, stages, spec, seed)
        out = F.linear(x, W.to(x.dtype), bias)
        del W
        ctx.layer, ctx.spec, ctx.seed = layer, spec, seed
        ctx.save_for_backward(x, pre1, pre2, *tensors)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, pre1, pre2, *saved = ctx.saved_tensors
        needs_x, needs_bias = ctx.needs_input_grad[1:3]
        needs_tensors = ctx.needs_input_grad[3:]
        layer, spec, seed = ctx.layer, ctx.spec, ctx.seed
        with torch.enable_grad():  # the small graph from P, Q, A, B to D, E, c, d
            tensors = [t.detach().requires_grad_() if need else t for t, need in zip(saved, needs_tensors)]
            W0, shared, specific = layer._generator_inputs(tensors)
            stages = stage_tensors(layer.generator, shared, specific)
        g2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_bias = g2d.sum(0) if needs_bias else None
        wanted = [t for t, need in zip(tensors, needs_tensors) if need]
        detached = [t.detach() if t is not None else None for t in stages]
        grads, W = iter(()), None
        if wanted:
            # dLoss/dF = scaling * g.T @ x: the one (out, in) GEMM, freed before W is rebuilt
            x2d = x.reshape(-1, x.shape[-1]).to(g2d.dtype)
            grad_gen = torch.addmm(g2d.new_zeros(()), g2d.T, x2d, beta=0, alpha=spec.scaling)
            g = backward_through_stages(grad_gen, detached, spec, seed, pre1, pre2)
            del grad_gen
            W = finish_backward(g, W0, detached, spec, seed, pre1, pre2, rebuild=needs_x)
            pairs = [(t, d.to(t.dtype)) for t, d in zip(stages, gradient_list(g, stages))
                     if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad([t for t, _ in pairs], wanted, [d for _, d in pairs], allow_unused=True))
        grads = [next(grads) if need else None for need in needs_tensors]
        grad_x = None
        if needs_x:
            if W is None:
                W = merged_from_saved(W0, detached, spec, seed, pre1, pre2)
            grad_x = grad_out @ W.to(grad_out.dtype)
        return (None, grad_x, grad_bias, *grads)


@torch.compiler.disable
def fused_merged_linear(layer, x, bias, *tensors):
    """:class:`FusedMergedLinear` as an opaque call for ``torch.compile`` (a graph break:
    dynamo does not trace the launches' Python)."""
    return FusedMergedLinear.apply(layer, x, bias, *tensors)
