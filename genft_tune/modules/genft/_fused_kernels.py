"""Triton kernels of the fused dense GenFT generator (see :mod:`._fused`).

Every kernel works on tiles of the ``(out, in)`` "F space" (``F_row`` and ``F_col.T``
are both ``(out, in)``). A tile of a stage output is ``act(L[o] @ R[:, i] + b_row[o] +
b_col[i])`` with ``L (out, r)`` and ``R (r, in)``: its inner dimension is the latent
width ``r <= 64``, so a tile is recomputed in registers wherever it is needed instead
of being stored. Dots accumulate in fp32.

Strip kernels (grid: ``in`` tiles x ``split`` chunks of ``out`` tiles) reduce over
``out`` in registers and over ``in`` with fp32 atomics into zeroed buffers.

Only Triton *builtins* are called from the kernels (no ``tl.sum``, ``tl.zeros``,
``tl.rand``, which are ``@triton.jit`` functions of Triton itself): this module is loaded
twice when needed, once compiled and once for Triton's interpreter (CPU tensors,
``TRITON_INTERPRET=1``), and an interpreted kernel cannot call a library function that
was decorated in the other mode. Hence the small Philox copy below.
"""

import triton
import triton.language as tl

# Activation codes: an activation's index in genft_tune.modules.genft.config.ACTIVATIONS.
IDENTITY = tl.constexpr(0)
RELU = tl.constexpr(1)
LEAKY_RELU = tl.constexpr(2)
GELU = tl.constexpr(3)
TANH = tl.constexpr(4)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _tanh(z):
    # no tanh builtin in Triton's interpreter; a Taylor series near 0 avoids the
    # cancellation of 1 - exp(-2|z|) there
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(z < 0, -t, t)
    z2 = z * z
    small = z * (1.0 + z2 * (-1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0))))
    return tl.where(tl.abs(z) < 0.125, small, t)


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == RELU:
        y = tl.where(z >= 0, z, 0.0)
    elif ACT == LEAKY_RELU:
        y = tl.where(z >= 0, z, 0.01 * z)
    elif ACT == GELU:  # the exact (erf) GELU, F.gelu's default
        y = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == TANH:
        y = _tanh(z)
    else:
        y = z
    return y


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    # relu and leaky_relu take the right derivative at 0, like config.ACTIVATIONS
    if ACT == RELU:
        d = tl.where(z >= 0, 1.0, 0.0)
    elif ACT == LEAKY_RELU:
        d = tl.where(z >= 0, 1.0, 0.01)
    elif ACT == GELU:
        d = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACT == TANH:
        t = _tanh(z)
        d = 1.0 - t * t
    else:
        d = z * 0.0 + 1.0
    return d


@triton.jit
def _uniform(seed, offsets):
    """Uniform [0, 1) floats from 10 rounds of Philox-4x32 keyed by ``seed`` (a copy of
    ``tl.rand``'s, which this module cannot call: see the module docstring)."""
    c0 = offsets.to(tl.uint32)
    c1 = c0 * 0
    c2 = c1
    c3 = c1
    k0 = c1 + seed.to(tl.uint32)
    k1 = c1
    for _ in tl.static_range(10):
        _c0 = c0
        _c2 = c2
        c0 = tl.umulhi(0xCD9E8D57, _c2) ^ c1 ^ k0
        c2 = tl.umulhi(0xD2511F53, _c0) ^ c3 ^ k1
        c1 = tl.mul(0xCD9E8D57, _c2, sanitize_overflow=False)
        c3 = tl.mul(0xD2511F53, _c0, sanitize_overflow=False)
        k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
        k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
    x = c0.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, ~x, x)
    return x * 4.6566127342e-10


@triton.jit
def _keep(seed, offs_o, offs_i, n_in, p):
    """The dropout keep mask of an F-space tile (element ``(o, i)`` draws Philox
    counter ``o * in + i``)."""
    return _uniform(seed, offs_o[:, None] * n_in + offs_i[None, :]) >= p


@triton.jit
def _load_tile(ptr, offs_a, offs_b, stride_a, stride_b, mask_a, mask_b):
    return tl.load(
        ptr + offs_a[:, None] * stride_a + offs_b[None, :] * stride_b,
        mask=mask_a[:, None] & mask_b[None, :],
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _z(l, r, br_ptr, bc_ptr, offs_o, offs_i, mo, mi, HAS_BR: tl.constexpr, HAS_BC: tl.constexpr,
       PREC: tl.constexpr):
    """``L[o] @ R[:, i] + b_row[o] + b_col[i]`` for loaded ``l (BO, RP)``, ``r (RP, BI)``."""
    z = tl.dot(l, r, input_precision=PREC)
    if HAS_BR:
        z += tl.load(br_ptr + offs_o, mask=mo, other=0.0).to(tl.float32)[:, None]
    if HAS_BC:
        z += tl.load(bc_ptr + offs_i, mask=mi, other=0.0).to(tl.float32)[None, :]
    return z


@triton.jit
def merged_weight_kernel(
    W0, s_w0o, s_w0i, W, s_wo, s_wi,
    L, s_lo, s_lr, R, s_rr, s_ri, BR, BC,
    n_out, n_in, r, scaling, seed, p, keep_scale,
    HAS_BR: tl.constexpr, HAS_BC: tl.constexpr, HAS_DROP: tl.constexpr, ACT: tl.constexpr,
    PREC: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, RP: tl.constexpr,
):
    """``W = W0 + scaling * drop(act(L @ R + b_row + b_col))``: one read of ``W0`` and
    one write of ``W`` per element (transposed outputs come in as swapped strides)."""
    offs_o = tl.program_id(0) * BO + tl.arange(0, BO)
    offs_i = tl.program_id(1) * BI + tl.arange(0, BI)
    offs_r = tl.arange(0, RP)
    mo, mi, mr = offs_o < n_out, offs_i < n_in, offs_r < r
    l = _load_tile(L, offs_o, offs_r, s_lo, s_lr, mo, mr)
    rr = _load_tile(R, offs_r, offs_i, s_rr, s_ri, mr, mi)
    f = _act(_z(l, rr, BR, BC, offs_o, offs_i, mo, mi, HAS_BR, HAS_BC, PREC), ACT)
    if HAS_DROP:
        f = tl.where(_keep(seed, offs_o, offs_i, n_in, p), f * keep_scale, 0.0)
    w = _load_tile(W0, offs_o, offs_i, s_w0o, s_w0i, mo, mi) + scaling * f
    mask = mo[:, None] & mi[None, :]
    tl.store(W + offs_o[:, None] * s_wo + offs_i[None, :] * s_wi, w.to(W.dtype.element_ty), mask=mask)


@triton.jit
def merged_weight_dd1_kernel(
    W0, s_w0o, s_w0i, W, s_wo, s_wi,
    L, s_lo, s_lr, R, s_rr, s_ri, BR, BC, DP1, DD1,
    n_out, n_in, r, o_per_prog, scaling, seed, p, keep_scale,
    HAS_BR: tl.constexpr, HAS_BC: tl.constexpr, HAS_DROP: tl.constexpr, ACT: tl.constexpr,
    PREC: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, RP: tl.constexpr,
):
    """:func:`merged_weight_kernel` for the backward's rebuild of ``W``, which also
    accumulates ``DD1 (r, in) += DP1.T @ W0`` (``DP1 = dLoss/dpre1 (out, r)``) from the
    same read of ``W0``: a strip kernel, untransposed ``W`` only."""
    offs_i = tl.program_id(0) * BI + tl.arange(0, BI)
    offs_r = tl.arange(0, RP)
    mi, mr = offs_i < n_in, offs_r < r
    rr = _load_tile(R, offs_r, offs_i, s_rr, s_ri, mr, mi)
    dd1_acc = tl.full((RP, BI), 0.0, tl.float32)
    o_start = tl.program_id(1) * o_per_prog
    o_end = tl.minimum(o_start + o_per_prog, n_out)
    for o0 in range(o_start, o_end, BO):
        offs_o = o0 + tl.arange(0, BO)
        mo = offs_o < n_out
        l = _load_tile(L, offs_o, offs_r, s_lo, s_lr, mo, mr)
        f = _act(_z(l, rr, BR, BC, offs_o, offs_i, mo, mi, HAS_BR, HAS_BC, PREC), ACT)
        if HAS_DROP:
            f = tl.where(_keep(seed, offs_o, offs_i, n_in, p), f * keep_scale, 0.0)
        w0 = _load_tile(W0, offs_o, offs_i, s_w0o, s_w0i, mo, mi)
        mask = mo[:, None] & mi[None, :]
        tl.store(W + offs_o[:, None] * s_wo + offs_i[None, :] * s_wi, (w0 + scaling * f).to(W.dtype.element_ty),
                 mask=mask)
        dp1 = _load_tile(DP1, offs_o, offs_r, r, 1, mo, mr)  # (BO, RP)
        dd1_acc += tl.dot(tl.trans(dp1), w0, input_precision=PREC)
    tl.atomic_add(DD1 + offs_r[:, None] * n_in + offs_i[None, :], dd1_acc, mask=mr[:, None] & mi[None, :])


@triton.jit
def row_to_h2_kernel(
    H1, s_ho, s_hr, E1, s_ei, s_er, D1B, D2, s_dr, s_do, OUT,
    n_out, n_in, r, o_per_prog, seed, p, keep_scale,
    HAS_D1: tl.constexpr, HAS_DROP: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
    BO: tl.constexpr, BI: tl.constexpr, RP: tl.constexpr,
):
    """``OUT (r, in) += D2 @ F_row`` with ``F_row = drop(act(H1 @ E1.T + d1))`` made tile
    by tile in registers: ``F_row`` is never written."""
    offs_i = tl.program_id(0) * BI + tl.arange(0, BI)
    offs_r = tl.arange(0, RP)
    mi, mr = offs_i < n_in, offs_r < r
    e1t = _load_tile(E1, offs_r, offs_i, s_er, s_ei, mr, mi)  # E1.T tile (RP, BI)
    acc = tl.full((RP, BI), 0.0, tl.float32)
    o_start = tl.program_id(1) * o_per_prog
    o_end = tl.minimum(o_start + o_per_prog, n_out)
    for o0 in range(o_start, o_end, BO):
        offs_o = o0 + tl.arange(0, BO)
        mo = offs_o < n_out
        h1 = _load_tile(H1, offs_o, offs_r, s_ho, s_hr, mo, mr)
        f = _act(_z(h1, e1t, D1B, D1B, offs_o, offs_i, mo, mi, False, HAS_D1, PREC), ACT)
        if HAS_DROP:
            f = tl.where(_keep(seed, offs_o, offs_i, n_in, p), f * keep_scale, 0.0)
        f = tl.where(mo[:, None] & mi[None, :], f, 0.0)
        d2 = _load_tile(D2, offs_r, offs_o, s_dr, s_do, mr, mo)  # (RP, BO)
        acc += tl.dot(d2, f, input_precision=PREC)
    tl.atomic_add(OUT + offs_r[:, None] * n_in + offs_i[None, :], acc, mask=mr[:, None] & mi[None, :])


@triton.jit
def stage_backward_kernel(
    G, s_go, s_gi, L, s_lo, s_lr, R, s_rr, s_ri, BR, BC,
    DL, DR, DBR, DBC,
    n_out, n_in, r, o_per_prog, seed, p, keep_scale,
    HAS_BR: tl.constexpr, HAS_BC: tl.constexpr, HAS_DROP: tl.constexpr, ACT: tl.constexpr,
    PREC: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, RP: tl.constexpr,
):
    """Backward of ``F = drop(act(L @ R + b_row + b_col))`` given ``G = dLoss/dF``: one
    read of ``G``. With ``dZ = G * drop' * act'(Z)`` (``Z`` recomputed), accumulates
    ``DL (out, r) += dZ @ R.T``, ``DR (r, in) += L.T @ dZ``, ``DBR += rowsum(dZ)``,
    ``DBC += colsum(dZ)`` (all fp32, zeroed by the caller)."""
    offs_i = tl.program_id(0) * BI + tl.arange(0, BI)
    offs_r = tl.arange(0, RP)
    mi, mr = offs_i < n_in, offs_r < r
    rr = _load_tile(R, offs_r, offs_i, s_rr, s_ri, mr, mi)  # (RP, BI)
    dr_acc = tl.full((RP, BI), 0.0, tl.float32)
    dbc_acc = tl.full((BI,), 0.0, tl.float32)
    o_start = tl.program_id(1) * o_per_prog
    o_end = tl.minimum(o_start + o_per_prog, n_out)
    for o0 in range(o_start, o_end, BO):
        offs_o = o0 + tl.arange(0, BO)
        mo = offs_o < n_out
        mask = mo[:, None] & mi[None, :]
        l = _load_tile(L, offs_o, offs_r, s_lo, s_lr, mo, mr)
        z = _z(l, rr, BR, BC, offs_o, offs_i, mo, mi, HAS_BR, HAS_BC, PREC)
        g = _load_tile(G, offs_o, offs_i, s_go, s_gi, mo, mi)
        if HAS_DROP:
            g = tl.where(_keep(seed, offs_o, offs_i, n_in, p), g * keep_scale, 0.0)
        dz = tl.where(mask, g * _act_grad(z, ACT), 0.0)
        dr_acc += tl.dot(tl.trans(l), dz, input_precision=PREC)
        dbc_acc += tl.reduce(dz, 0, _add)
        dl = tl.dot(dz, tl.trans(rr), input_precision=PREC)  # (BO, RP)
        tl.atomic_add(DL + offs_o[:, None] * r + offs_r[None, :], dl, mask=mo[:, None] & mr[None, :])
        if HAS_BR:
            tl.atomic_add(DBR + offs_o, tl.reduce(dz, 1, _add), mask=mo)
    tl.atomic_add(DR + offs_r[:, None] * n_in + offs_i[None, :], dr_acc, mask=mr[:, None] & mi[None, :])
    if HAS_BC:
        tl.atomic_add(DBC + offs_i, dbc_acc, mask=mi)


@triton.jit
def row_backward_kernel(
    H1, s_ho, s_hr, E1, s_ei, s_er, D1B, D2, s_dr, s_do, DP2,
    DH1, DE1T, DD1, DD2,
    n_out, n_in, r, o_per_prog, seed, p, keep_scale,
    HAS_D1: tl.constexpr, HAS_DROP: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
    BO: tl.constexpr, BI: tl.constexpr, RP: tl.constexpr,
):
    """Backward of the row stage through ``pre2 = D2 @ F_row`` given ``DP2 = dLoss/dpre2
    (r, in)``, without any ``(out, in)`` tensor in memory: ``dF_row = D2.T @ DP2`` and
    ``F_row`` are both rebuilt per tile. Accumulates ``DD2 (r, out) += DP2 @ F_row.T``,
    ``DH1 (out, r) += dZ1 @ E1``, ``DE1T (r, in) += H1.T @ dZ1``, ``DD1 += colsum(dZ1)``."""
    offs_i = tl.program_id(0) * BI + tl.arange(0, BI)
    offs_r = tl.arange(0, RP)
    mi, mr = offs_i < n_in, offs_r < r
    e1t = _load_tile(E1, offs_r, offs_i, s_er, s_ei, mr, mi)  # (RP, BI)
    dp2 = _load_tile(DP2, offs_r, offs_i, n_in, 1, mr, mi)  # (RP, BI)
    de1t_acc = tl.full((RP, BI), 0.0, tl.float32)
    dd1_acc = tl.full((BI,), 0.0, tl.float32)
    o_start = tl.program_id(1) * o_per_prog
    o_end = tl.minimum(o_start + o_per_prog, n_out)
    for o0 in range(o_start, o_end, BO):
        offs_o = o0 + tl.arange(0, BO)
        mo = offs_o < n_out
        mask = mo[:, None] & mi[None, :]
        h1 = _load_tile(H1, offs_o, offs_r, s_ho, s_hr, mo, mr)
        z = _z(h1, e1t, D1B, D1B, offs_o, offs_i, mo, mi, False, HAS_D1, PREC)
        f = _act(z, ACT)
        d2 = _load_tile(D2, offs_r, offs_o, s_dr, s_do, mr, mo)  # (RP, BO)
        df = tl.dot(tl.trans(d2), dp2, input_precision=PREC)  # (BO, BI)
        if HAS_DROP:
            keep = _keep(seed, offs_o, offs_i, n_in, p)
            f = tl.where(keep, f * keep_scale, 0.0)
            df = tl.where(keep, df * keep_scale, 0.0)
        f = tl.where(mask, f, 0.0)
        dz = tl.where(mask, df * _act_grad(z, ACT), 0.0)
        dd2 = tl.dot(dp2, tl.trans(f), input_precision=PREC)  # (RP, BO)
        tl.atomic_add(DD2 + offs_r[:, None] * n_out + offs_o[None, :], dd2, mask=mr[:, None] & mo[None, :])
        dh1 = tl.dot(dz, tl.trans(e1t), input_precision=PREC)  # (BO, RP)
        tl.atomic_add(DH1 + offs_o[:, None] * r + offs_r[None, :], dh1, mask=mo[:, None] & mr[None, :])
        de1t_acc += tl.dot(tl.trans(h1), dz, input_precision=PREC)
        dd1_acc += tl.reduce(dz, 0, _add)
    tl.atomic_add(DE1T + offs_r[:, None] * n_in + offs_i[None, :], de1t_acc, mask=mr[:, None] & mi[None, :])
    if HAS_D1:
        tl.atomic_add(DD1 + offs_i, dd1_acc, mask=mi)


@triton.jit
def keep_mask_kernel(OUT, n_out, n_in, seed, p, BO: tl.constexpr, BI: tl.constexpr):
    """The dropout keep mask (1.0 / 0.0) the other kernels draw for ``seed``, for tests."""
    offs_o = tl.program_id(0) * BO + tl.arange(0, BO)
    offs_i = tl.program_id(1) * BI + tl.arange(0, BI)
    mask = (offs_o < n_out)[:, None] & (offs_i < n_in)[None, :]
    keep = tl.where(_keep(seed, offs_o, offs_i, n_in, p), 1.0, 0.0)
    tl.store(OUT + offs_o[:, None] * n_in + offs_i[None, :], keep, mask=mask)
