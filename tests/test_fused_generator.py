"""The fused Triton generator (``genft_tune/modules/genft/_fused.py``) against an fp64
transcription of the spec's equations (written here, independent of generator.py), and
the layer's dispatch (``GenFTConfig.fused``).

The CPU tests run the kernels in Triton's interpreter (``TRITON_INTERPRET=1``, set per
test with monkeypatch: the kernels module is loaded per mode, so nothing leaks into the
rest of the suite); shapes are small because the interpreter is slow. The ``gpu`` tests
run the compiled kernels on CUDA against the eager path.
"""

import math
import sys

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from genft_tune.modules import GenFTConfig, GenFTGenerators, genft_linear
from genft_tune.modules.genft import _fused
from genft_tune.modules.genft._fused import FusedMergedWeight, FusedSpec

HAS_TRITON = _fused.triton_available()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

# written out again (not config.ACTIVATIONS): relu/leaky_relu with the right derivative at 0
ACTS = {
    "identity": lambda t: t,
    "relu": lambda t: torch.where(t >= 0, t, 0 * t),
    "leaky_relu": lambda t: torch.where(t >= 0, t, 0.01 * t),
    "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2.0))),
    "tanh": torch.tanh,
}
PAIRS = [(a, b) for a in ACTS for b in ACTS]
NAMES = ("D1", "E1", "D2", "E2", "c1", "d1", "c2", "d2")


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def reference(W0, stages, spec, masks=(None, None)):
    """``W0 + scaling * dW`` from the spec's equations, in whatever dtype the inputs have."""
    D1, E1, D2, E2, c1, d1, c2, d2 = stages
    act_in, act_out = ACTS[spec.act_in], ACTS[spec.act_out]

    def drop(t, mask):
        return t if mask is None else t * mask / (1 - spec.p)

    def plus(t, bias, column=False):
        return t if bias is None else t + (bias[:, None] if column else bias)

    if spec.use_row:
        H1 = act_in(plus(spec.weight_ratio * W0 @ D1.T, c1))
        F = drop(act_out(plus(H1 @ E1.T, d1)), masks[0])  # F_row (out, in)
    if spec.use_column:
        source = F if spec.use_row else spec.weight_ratio * W0
        H2t = act_in(plus(D2 @ source, c2, column=True))  # H2.T (r, in)
        F = drop(act_out(plus(E2 @ H2t, d2, column=True)), masks[1])  # F_col.T (out, in)
    return W0 + spec.scaling * (F.T if spec.transpose else F)


def make_stages(out_dim, in_dim, r, *, bias=True, spec=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return (torch.randn(*shape, generator=g) / math.sqrt(shape[-1] if len(shape) > 1 else 4)).to(dtype)

    row = spec is None or spec.use_row
    col = spec is None or spec.use_column
    stages = [
        t(r, in_dim) if row else None, t(in_dim, r) if row else None,
        t(r, out_dim) if col else None, t(out_dim, r) if col else None,
        t(r) if bias and row else None, t(in_dim) if bias and row else None,
        t(r) if bias and col else None, t(out_dim) if bias and col else None,
    ]
    W0 = torch.randn(out_dim, in_dim, generator=g).to(dtype)
    return W0, stages


def fused_and_reference(W0, stages, spec, *, seed=7, masks=(None, None)):
    """``(W, grads)`` of the kernels and of the fp64 reference, for ``loss = sum(W * R)``."""
    R = torch.randn(W0.shape, generator=torch.Generator().manual_seed(1))
    leaves = [s.clone().requires_grad_() if s is not None else None for s in stages]
    W = FusedMergedWeight.apply(W0, spec, seed, *leaves)
    present = [s for s in leaves if s is not None]
    grads = torch.autograd.grad((W.float() * R).sum(), present)
    ref_leaves = [s.double().requires_grad_() if s is not None else None for s in stages]
    W_ref = reference(W0.double(), ref_leaves, spec, [m.double() if m is not None else None for m in masks])
    ref_grads = torch.autograd.grad((W_ref * R.double()).sum(), [s for s in ref_leaves if s is not None])
    return W, grads, W_ref, ref_grads


def assert_close(got, want, rel, what=""):
    scale = want.abs().max().item() + 1e-30
    err = (got.double() - want).abs().max().item()
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} * {scale:.3g}"


def check(W0, stages, spec, rel=2e-6, **kw):
    W, grads, W_ref, ref_grads = fused_and_reference(W0, stages, spec, **kw)
    assert W.dtype == W0.dtype and W.shape == W0.shape
    assert_close(W, W_ref, rel, "W")
    names = [n for n, s in zip(NAMES, stages) if s is not None]
    for name, got, want in zip(names, grads, ref_grads):
        assert got.dtype == W0.dtype
        assert_close(got, want, rel * 10, f"d{name}")


def spec_of(act_in="gelu", act_out="gelu", stages="both", **kw):
    defaults = dict(weight_ratio=0.8, scaling=0.5, p=0.0, transpose=False)
    return FusedSpec(act_in, act_out, stages in ("both", "row"), stages in ("both", "column"), **{**defaults, **kw})


# ---- kernels against the fp64 reference (interpreter) --------------------------------


@needs_triton
@pytest.mark.parametrize("act_in, act_out", PAIRS)
def test_every_activation_pair(interpret, act_in, act_out):
    W0, stages = make_stages(48, 40, 6)
    check(W0, stages, spec_of(act_in, act_out))


@needs_triton
@pytest.mark.parametrize(
    "out_dim, in_dim, stages, bias, transpose",
    [
        (48, 40, "row", True, False),  # untied, only the row stage
        (48, 40, "column", True, False),  # only the column stage
        (40, 40, "both", False, True),  # square, authors_peft orientation, no bias
        (40, 40, "row", False, True),
        (40, 40, "column", True, True),
    ],
)
def test_stage_configs_and_orientation(interpret, out_dim, in_dim, stages, bias, transpose):
    spec = spec_of("tanh", "leaky_relu", stages, transpose=transpose)
    W0, tensors = make_stages(out_dim, in_dim, 12, bias=bias, spec=spec)
    check(W0, tensors, spec)


@needs_triton
def test_right_derivative_at_zero(interpret):
    """``zero_init`` puts the last stage at exactly 0: relu must still pass a gradient."""
    spec = spec_of("relu", "relu")
    W0, stages = make_stages(48, 40, 6)
    stages[3] = torch.zeros_like(stages[3])  # E2
    stages[7] = torch.zeros_like(stages[7])  # d2
    W, grads, _, ref_grads = fused_and_reference(W0, stages, spec)
    assert torch.equal(W, W0)
    assert ref_grads[3].abs().max() > 0
    assert_close(grads[3], ref_grads[3], 2e-5, "dE2")


@needs_triton
@pytest.mark.parametrize("act_in, act_out", [("gelu", "gelu"), ("identity", "tanh")])
def test_bf16_inputs(interpret, act_in, act_out):
    """bf16 inputs, fp32 accumulation: bf16 round-off of the fp64 reference of the same
    (bf16) inputs."""
    spec = spec_of(act_in, act_out)
    W0, stages = make_stages(48, 40, 8, dtype=torch.bfloat16)
    check(W0, stages, spec, rel=2e-2)


@needs_triton
@pytest.mark.parametrize("stages", ["both", "row", "column"])
def test_dropout_mask_replayed_from_the_seed(interpret, stages):
    spec = spec_of("gelu", "tanh", stages, p=0.3)
    W0, tensors = make_stages(48, 40, 6, spec=spec)
    seed = 1234
    masks = [
        _fused.dropout_keep_mask(seed, 48, 40, spec.p, "cpu", stage=s) if used else None
        for s, used in (("row", spec.use_row), ("column", spec.use_column))
    ]
    for mask in (m for m in masks if m is not None):
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        assert abs(mask.mean().item() - 0.7) < 0.06
    if stages == "both":
        assert not torch.equal(masks[0], masks[1])  # two independent masks
        other = _fused.dropout_keep_mask(seed + 2, 48, 40, spec.p, "cpu", stage="row")
        assert not torch.equal(masks[0], other)
    check(W0, tensors, spec, seed=seed, masks=masks)


# ---- the layer: dispatch, against the eager path --------------------------------------


def _layer(out_dim, in_dim, **cfg):
    torch.manual_seed(0)
    config = GenFTConfig(**{"shared_dim": 3, "specific_dim": 2, "zero_init": False, **cfg})
    layer = genft_linear(in_dim, out_dim, generators=GenFTGenerators(config), use_bias=True)
    return layer


def _set_fused(layer, mode):
    config = GenFTConfig(**{**layer.config.to_dict(), "fused": mode})
    object.__setattr__(layer, "config", config)
    object.__setattr__(layer.generator, "config", config)


def _loss_and_grads(layer, x, *, wrap=None):
    params = [p for p in [*layer.generator.parameters(), *layer.parameters()] if p.requires_grad]
    x = x.clone().requires_grad_()
    y = wrap(layer, x) if wrap else layer(x)
    loss = (y * torch.linspace(-1, 1, y.shape[-1])).square().sum()
    return loss.detach(), torch.autograd.grad(loss, [x, *params])


def _compare_fused_to_eager(layer, x, rel=2e-5):
    _set_fused(layer, "never")
    loss_eager, grads_eager = _loss_and_grads(layer, x)
    _set_fused(layer, "always")
    calls = dict(_fused.launch_counts)
    loss_fused, grads_fused = _loss_and_grads(layer, x)
    assert _fused.launch_counts.get("merged_weight", 0) > calls.get("merged_weight", 0)  # it ran
    assert_close(loss_fused, loss_eager.double(), rel, "loss")
    for i, (a, b) in enumerate(zip(grads_fused, grads_eager)):
        assert_close(a, b.double(), rel * 5, f"grad {i}")


@needs_triton
@pytest.mark.parametrize(
    "out_dim, in_dim, cfg",
    [
        (40, 40, {}),  # square: tied specific factors, default gelu/gelu
        (48, 40, {"generator_bias": True, "act_in": "leaky_relu", "act_out": "relu"}),  # untied
        (40, 40, {"convention": "authors_vit", "ratio": 1.3, "act_out": "tanh"}),  # matrix_ratio
        (40, 40, {"convention": "authors_peft", "generator_bias": True, "specific_dim": 0}),
        (48, 40, {"stages": "row", "shared_dim": 0}),
        (48, 40, {"stages": "column", "generator_bias": True}),
    ],
)
def test_layer_fused_equals_eager(interpret, out_dim, in_dim, cfg):
    layer = _layer(out_dim, in_dim, **cfg)
    _compare_fused_to_eager(layer, torch.randn(2, 5, in_dim))


@needs_triton
def test_layer_dropout_and_activation_checkpointing(interpret):
    """With dropout the fused layer draws its seed from torch's RNG: under
    ``torch.utils.checkpoint`` the recomputed forward replays it, so the gradients equal
    those of the plain run and of the reference with the kernel's masks."""
    layer = _layer(48, 40, dropout=0.25, generator_bias=True, fused="always")
    layer.train()
    x = torch.randn(3, 40)

    def checkpointed(module, inp):
        return checkpoint(module, inp, use_reentrant=False)

    torch.manual_seed(5)
    plain = _loss_and_grads(layer, x)
    torch.manual_seed(5)
    ckpt = _loss_and_grads(layer, x, wrap=checkpointed)
    assert torch.equal(plain[0], ckpt[0])
    for a, b in zip(plain[1], ckpt[1]):
        assert torch.equal(a, b)

    # the same masks, from the same seed, through the reference
    torch.manual_seed(5)
    seed = _fused.new_seed()
    masks = [_fused.dropout_keep_mask(seed, 48, 40, 0.25, "cpu", stage=s) for s in ("row", "column")]
    spec = FusedSpec.from_config(layer.config, dropout_active=True)
    W0, shared, specific = layer._generator_inputs()
    stages = [t.detach().double() if t is not None else None for t in _fused.stage_tensors(layer.generator, shared, specific)]
    W_ref = reference(W0.double(), stages, spec, [m.double() for m in masks])
    y_ref = x.double() @ W_ref.T + layer.bias.double()
    loss_ref = (y_ref * torch.linspace(-1, 1, 48).double()).square().sum()
    assert_close(plain[0], loss_ref, 1e-5, "loss")


@needs_triton
def test_no_dropout_under_checkpoint_and_eval(interpret):
    layer = _layer(40, 40, fused="always")
    x = torch.randn(4, 40)
    plain = _loss_and_grads(layer, x)
    ckpt = _loss_and_grads(layer, x, wrap=lambda m, i: checkpoint(m, i, use_reentrant=False))
    for a, b in zip(plain[1], ckpt[1]):
        assert torch.equal(a, b)
    with torch.no_grad():  # evaluation keeps the cached eager merge
        assert torch.allclose(layer(x), x @ layer.generator.delta_weight(layer.weight, *layer.specific_factors()).T
                              + x @ layer.weight.T + layer.bias, atol=1e-5)


@needs_triton
def test_always_under_torch_compile(interpret):
    """"always" under torch.compile: the fused call is a graph break, same gradients."""
    layer = _layer(40, 40, fused="always")
    x = torch.randn(3, 40)
    eager = _loss_and_grads(layer, x)
    before = _fused.launch_counts.get("merged_weight", 0)
    compiled = _loss_and_grads(layer, x, wrap=torch.compile(lambda m, i: m(i), backend="eager"))
    assert _fused.launch_counts["merged_weight"] > before
    for a, b in zip(eager[1], compiled[1]):
        assert torch.equal(a, b)


def test_dispatch_falls_back_and_always_says_why(monkeypatch):
    """Without CUDA (and without the interpreter) or without triton, "auto" is the eager
    path and "always" is a clear error."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer = _layer(40, 40)
    x = torch.randn(2, 40)
    _set_fused(layer, "auto")
    calls = dict(_fused.launch_counts)
    _loss_and_grads(layer, x)
    assert _fused.launch_counts == calls  # eager
    _set_fused(layer, "always")
    with pytest.raises(RuntimeError, match="fused='always'.*need CUDA"):
        layer(x)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now fails
    monkeypatch.setattr(_fused, "_triton_ok", None)  # and is tried again
    assert not _fused.triton_available()
    with pytest.raises(RuntimeError, match="triton is not installed"):
        layer(x)
    _set_fused(layer, "auto")
    _loss_and_grads(layer, x)
    assert _fused.launch_counts == calls


def test_config_field():
    assert GenFTConfig().fused == "never"  # until the kernels are measured on a GPU
    config = GenFTConfig(fused="never")
    assert config.to_dict()["fused"] == "never"
    assert GenFTConfig(**config.to_dict()) == config
    with pytest.raises(ValueError, match=r"fused must be one of \['auto', 'never', 'always'\], got 'yes'"):
        GenFTConfig(fused="yes")


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kernels_compile_for_sm90_without_a_gpu(dtype):
    """The compiled (not interpreted) kernels lower to PTX and cubin for an H100, every
    optional part on (biases, dropout): catches what the interpreter lets through."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    k = _fused._kernels(False)
    floats = {"scaling", "p", "keep_scale"}
    fp32_ptrs = {"R", "H1", "OUT", "DL", "DR", "DBR", "DBC", "DP1", "DP2", "DH1", "DE1T", "DD1", "DD2"}
    consts = dict(ACT=3, PREC="ieee" if dtype == "fp32" else "tf32", BO=64, BI=64, RP=64, HAS_DROP=True,
                  HAS_BR=True, HAS_BC=True, HAS_D1=True)
    kernels = (k.merged_weight_kernel, k.merged_weight_dd1_kernel, k.row_to_h2_kernel, k.stage_backward_kernel,
               k.row_backward_kernel)
    for fn in kernels:
        mine = {n: v for n, v in consts.items() if n in fn.arg_names}
        signature = {
            n: "constexpr" if n in mine else "fp32" if n in floats else
            ("*fp32" if n in fp32_ptrs else f"*{dtype}") if n.isupper() else "i32"
            for n in fn.arg_names
        }
        compiled = triton_compile(ASTSource(fn, signature, mine), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"]


# ---- compiled kernels on CUDA ---------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@needs_triton
# Few cases: each new (dtype, activations, bias) combination compiles four kernels (seconds
# each). The bf16 gelu/gelu case without bias is speed_memory.py's: its kernels are then in
# Triton's cache for gpu_checks.sh's tables.
@pytest.mark.parametrize(
    "dtype, act_in, act_out, bias, out_dim, in_dim",
    [
        (torch.float32, "gelu", "gelu", True, 512, 384),
        (torch.bfloat16, "gelu", "gelu", False, 1024, 512),
        (torch.bfloat16, "tanh", "leaky_relu", True, 384, 384),  # square: authors_peft orientation
    ],
)
def test_gpu_kernels_against_fp64(dtype, act_in, act_out, bias, out_dim, in_dim):
    spec = spec_of(act_in, act_out, transpose=out_dim == in_dim)
    W0, stages = make_stages(out_dim, in_dim, 36, dtype=dtype, bias=bias)
    stages = [s.cuda() if s is not None else None for s in stages]
    W0 = W0.cuda()
    R = torch.randn(W0.shape, device="cuda")
    leaves = [s.clone().requires_grad_() if s is not None else None for s in stages]
    W = FusedMergedWeight.apply(W0, spec, 7, *leaves)
    grads = torch.autograd.grad((W.float() * R).sum(), [s for s in leaves if s is not None])
    ref_leaves = [s.double().requires_grad_() if s is not None else None for s in stages]
    W_ref = reference(W0.double(), ref_leaves, spec)
    ref_grads = torch.autograd.grad((W_ref * R.double()).sum(), [s for s in ref_leaves if s is not None])
    rel = 2e-5 if dtype == torch.float32 else 3e-2
    assert_close(W, W_ref, rel, "W")
    names = [n for n, s in zip(NAMES, stages) if s is not None]
    for name, a, b in zip(names, grads, ref_grads):
        assert_close(a, b, rel * 10, f"d{name}")


@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_layer_auto_is_fused_and_equals_eager(dtype):
    layer = _layer(512, 256, generator_bias=True, shared_dim=32, specific_dim=4).to("cuda", dtype)
    layer.generator.to("cuda", dtype)
    x = torch.randn(4, 64, 256, device="cuda", dtype=dtype)
    _set_fused(layer, "never")
    loss_eager, grads_eager = _loss_and_grads_cuda(layer, x)
    _set_fused(layer, "auto")
    before = _fused.launch_counts.get("merged_weight", 0)
    loss_fused, grads_fused = _loss_and_grads_cuda(layer, x)
    assert _fused.launch_counts["merged_weight"] > before
    rel = 1e-4 if dtype == torch.float32 else 5e-2
    assert_close(loss_fused.float(), loss_eager.double(), rel, "loss")
    for i, (a, b) in enumerate(zip(grads_fused, grads_eager)):
        assert_close(a.float(), b.double(), rel * 5, f"grad {i}")


def _loss_and_grads_cuda(layer, x):
    params = [p for p in [*layer.generator.parameters(), *layer.parameters()] if p.requires_grad]
    x = x.clone().requires_grad_()
    y = layer(x).float()
    loss = (y * torch.linspace(-1, 1, y.shape[-1], device=y.device)).square().mean()
    return loss.detach(), torch.autograd.grad(loss, [x, *params])


class _TwoLayers(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.genft_generators = GenFTGenerators(config)
        self.q = genft_linear(256, 256, generators=self.genft_generators)
        self.v = genft_linear(256, 128, generators=self.genft_generators)

    def forward(self, x):
        return self.v(self.q(x))


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_gpu_fsdp2_single_rank(tmp_path):
    """FSDP2 (``fully_shard``, one rank): the fused layer's gradients equal eager's."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        results = {}
        for mode in ("never", "auto"):
            torch.manual_seed(0)
            config = GenFTConfig(shared_dim=8, specific_dim=4, zero_init=False, generator_bias=True, fused=mode)
            model = _TwoLayers(config).cuda()
            fully_shard(model)
            x = torch.randn(8, 256, device="cuda")
            loss = (model(x) ** 2).mean()
            loss.backward()
            results[mode] = [p.grad.full_tensor() for p in model.parameters() if p.grad is not None]
        for a, b in zip(results["auto"], results["never"]):
            assert_close(a, b.double(), 1e-4, "grad")
    finally:
        dist.destroy_process_group()


@needs_triton
def test_input_without_gradient(interpret):
    """The first adapted layer after frozen embeddings gets an ``x`` that needs no
    gradient: the fused backward then skips ``grad_x`` and still gives every factor's."""
    layer = _layer(48, 40)
    x = torch.randn(3, 40)
    grads = {}
    for mode in ("never", "always"):
        _set_fused(layer, mode)
        params = [p for p in [*layer.generator.parameters(), *layer.parameters()] if p.requires_grad]
        loss = (layer(x) * torch.linspace(-1, 1, 48)).square().sum()
        grads[mode] = torch.autograd.grad(loss, params)
    for a, b in zip(grads["always"], grads["never"]):
        assert_close(a, b.double(), 2e-5, "factor gradient")
