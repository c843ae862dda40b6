"""WeGeFTLinear against a plain fp64 reference of WeGeFT's formula
(``_layer_references.wegeft_reference_delta``: ``dW = (alpha / r) * drop(W0) @ phi.T @ psi``
with ``phi, psi`` of shape ``(r, in)``, from arXiv 2312.00700 and the authors' PEFT tuner).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from _layer_references import (
    make_wegeft_layer,
    TinyWeGeFT,
    trainable,
    wegeft_reference_delta,
    wegeft_reference_output,
)

from torchtune.modules.peft import get_adapter_params

from genft_tune.modules import GenFTConfig, GenFTGenerators, genft_linear
from genft_tune.modules.wegeft import (
    get_wegeft_adapter_state_dict,
    get_wegeft_config,
    get_wegeft_modules,
    get_wegeft_target_modules,
    is_wegeft_key,
    merge_wegeft_state_dict,
    WeGeFTConfig,
    WeGeFTFactors,
    WeGeFTLinear,
    wegeft_linear,
    WeGeFTSharedFactors,
)

SHAPES = [(6, 6), (5, 7), (7, 5)]  # (in, out): square and both non-square


# ---- every path equals the reference ----------------------------------------------------


@pytest.mark.parametrize("in_dim,out_dim", SHAPES)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("use_bias", [False, True])
def test_all_paths_equal_reference(in_dim, out_dim, shared, use_bias):
    torch.manual_seed(0)
    layer, _ = make_wegeft_layer(in_dim, out_dim, shared=shared, use_bias=use_bias)
    x = torch.randn(3, 4, in_dim, dtype=torch.float64)
    expected = wegeft_reference_output(layer, x)
    # training forward (efficient path), with and without recompute
    for recompute in (True, False):
        object.__setattr__(layer, "config", WeGeFTConfig(**{**layer.config.to_dict(), "recompute": recompute}))
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    # eval / no-grad: cached merged weight (second call hits the cache)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
        assert layer._cache.weight is not None
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    # merged
    layer.merge()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        layer.delta_weight(), wegeft_reference_delta(layer._unmerged_weight, layer.factors.phi,
                                              layer.factors.psi, 5.0, 3), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("in_dim,out_dim", SHAPES)
@pytest.mark.parametrize("shared", [True, False])
def test_gradients_equal_reference_and_gradcheck(in_dim, out_dim, shared):
    torch.manual_seed(1)
    layer, model = make_wegeft_layer(in_dim, out_dim, shared=shared, rank=2, alpha=3.0, use_bias=True)
    params = trainable(model)
    assert {id(p) for p in params} == {id(layer.factors.phi), id(layer.factors.psi)}
    x = torch.randn(3, in_dim, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, out_dim, dtype=torch.float64)
    ours = torch.autograd.grad(((layer(x) - target) ** 2).sum(), [x] + params)
    ref = torch.autograd.grad(((wegeft_reference_output(layer, x) - target) ** 2).sum(), [x] + params)
    for g_ours, g_ref in zip(ours, ref):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-10)
    # the analytic gradients agree with finite differences, for x, phi and psi
    names = [n for n, _ in model.named_parameters() if n.endswith(("phi", "psi"))]
    assert len(names) == 2
    model.forward = layer.forward  # TinyWeGeFT is only a container: run the layer through it

    def run(inp, phi, psi):
        return torch.func.functional_call(model, dict(zip(names, (phi, psi))), (inp,))

    f = layer.factors
    assert not torch.allclose(run(x, 2 * f.phi, f.psi), layer(x))  # the swap takes effect
    assert torch.autograd.gradcheck(
        run, (x, f.phi.detach().clone().requires_grad_(), f.psi.detach().clone().requires_grad_())
    )


def test_training_forward_never_forms_out_by_in_product():
    """The efficient path's matmuls are all (tokens or out) x r sized, never (out, in)."""

    class MatmulShapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm,
                                       torch.ops.aten.matmul, torch.ops.aten.linear):
                self.shapes.append(tuple(out.shape))
            return out

    in_dim, out_dim = 32, 24
    for dropout in (0.0, 0.3):
        layer, _ = make_wegeft_layer(in_dim, out_dim, rank=2, dtype=torch.float32, dropout=dropout)
        x = torch.randn(5, in_dim)
        with MatmulShapes() as mode:
            layer(x).sum().backward()
        assert mode.shapes, "no matmul recorded"
        assert max(torch.Size(s).numel() for s in mode.shapes) < in_dim * out_dim, mode.shapes


# ---- dropout on W0 -------------------------------------------------------------------


@pytest.mark.parametrize("in_dim,out_dim", [(6, 4), (4, 6)])
def test_dropout_is_one_mask_on_w0_per_forward(in_dim, out_dim):
    p = 0.4
    torch.manual_seed(3)
    layer, model = make_wegeft_layer(in_dim, out_dim, dropout=p, use_bias=True)
    x = torch.randn(5, in_dim, dtype=torch.float64)
    x = torch.cat([x, x[:1]])  # a repeated token sees the same mask
    target = torch.randn(6, out_dim, dtype=torch.float64)
    params = trainable(model)

    torch.manual_seed(123)
    ours = layer(x)
    g_ours = torch.autograd.grad(((ours - target) ** 2).sum(), params)
    # the same draw as the layer's: one inverted-dropout mask of W0's shape and dtype
    torch.manual_seed(123)
    mask = F.dropout(torch.ones(out_dim, in_dim, dtype=torch.float64), p, training=True)
    assert (mask == 0).any() and (mask != 0).any()
    expected = wegeft_reference_output(layer, x, mask=mask)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours[0], ours[-1], rtol=0, atol=0)
    g_ref = torch.autograd.grad(((expected - target) ** 2).sum(), params)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # recompute re-draws the identical mask in backward: same gradients without it
    object.__setattr__(layer, "config", WeGeFTConfig(**{**layer.config.to_dict(), "recompute": False}))
    torch.manual_seed(123)
    g_plain = torch.autograd.grad(((layer(x) - target) ** 2).sum(), params)
    for a, b in zip(g_plain, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # two training forwards draw different masks; evaluation has none
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    torch.testing.assert_close(layer(x), wegeft_reference_output(layer, x), rtol=1e-10, atol=1e-10)


# ---- init, merge, cache ------------------------------------------------------------------


@pytest.mark.parametrize("in_dim,out_dim", SHAPES)
@pytest.mark.parametrize("shared", [True, False])
def test_dw_is_zero_at_step_zero(in_dim, out_dim, shared):
    layer, model = make_wegeft_layer(in_dim, out_dim, shared=shared, dtype=torch.float32,
                              random_phi=False, use_bias=True)
    assert torch.equal(layer.factors.phi, torch.zeros_like(layer.factors.phi))
    assert layer.factors.psi.abs().sum() > 0  # kaiming-uniform, not zero
    bound = 1 / in_dim ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in = in
    assert layer.factors.psi.abs().max() <= bound
    x = torch.randn(4, in_dim)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert torch.equal(layer.delta_weight(), torch.zeros(out_dim, in_dim))
    # ... and it still learns: phi gets a non-zero gradient
    layer(x).pow(2).sum().backward()
    assert layer.factors.phi.grad.abs().sum() > 0


# (merge / unmerge / disable_adapter, the factors once in the state dict and optimizer,
# the state-dict merge's errors, an NF4 base, meta-device construction, bad configs and the
# eval cache's freshness, the same for both methods: test_adapter_layers.py and
# test_eval_cache.py)


def test_merge_writes_w0_plus_the_reference_delta():
    torch.manual_seed(4)
    layer, _ = make_wegeft_layer(8, 6, dtype=torch.float32)
    W0 = layer.weight.detach().clone()
    layer.merge()
    expected = (W0.double() + wegeft_reference_delta(W0, layer.factors.phi, layer.factors.psi, 5.0, 3)).float()
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=1e-6, atol=1e-6)


# ---- sharing, state dict, optimizer -------------------------------------------------------


SHAPES_MODEL = {
    "q0": ("q_proj", 8, 8), "k0": ("k_proj", 8, 4), "v0": ("v_proj", 8, 4),
    "q1": ("q_proj", 8, 8), "k1": ("k_proj", 8, 4), "v1": ("v_proj", 8, 4),
}


def test_shared_factors_adapter_state_dict_and_config():
    """The adapter's state dict and config of a model with shared factors (the factors
    once in the state dict and optimizer: test_adapter_layers.py)."""
    cfg = WeGeFTConfig(rank=2, alpha=4.0, shared=True)
    model = TinyWeGeFT(cfg, SHAPES_MODEL)
    adapter = get_adapter_params(model)
    assert len(adapter) == 6  # phi, psi of q_proj, k_proj, v_proj
    assert set(get_wegeft_adapter_state_dict(model.state_dict())) == set(adapter)
    assert get_wegeft_config(model) is cfg


def test_per_layer_factors_state_dict_and_adapter_params():
    cfg = WeGeFTConfig(rank=2, shared=False)
    model = TinyWeGeFT(cfg, SHAPES_MODEL)
    assert len(model.wegeft_factors) == 0
    keys = [k for k in model.state_dict() if is_wegeft_key(k)]
    assert sorted(keys) == sorted(f"layers.{n}.wegeft.{p}" for n in SHAPES_MODEL for p in ("phi", "psi"))
    adapter = get_adapter_params(model)
    assert set(adapter) == set(keys)
    assert not is_wegeft_key("layers.q0.weight") and not is_wegeft_key("phi")
    assert model.layers["q0"].factors is not model.layers["q1"].factors


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_state_dict_equals_layer_merge(shared, dtype):
    torch.manual_seed(7)
    cfg = WeGeFTConfig(rank=2, alpha=4.0, shared=shared)
    model = TinyWeGeFT(cfg, SHAPES_MODEL, use_bias=True)
    for m in model.modules():
        if isinstance(m, WeGeFTFactors):
            with torch.no_grad():
                m.phi.normal_()
    model.to(dtype)
    sd = model.state_dict()
    merged = merge_wegeft_state_dict(sd, config=cfg, target_modules=get_wegeft_target_modules(model))
    assert set(merged) == {k for k in sd if not is_wegeft_key(k)}
    for name, layer in get_wegeft_modules(model).items():
        W0 = sd[f"{name}.weight"]
        f = layer.factors
        ref = (W0.double() + wegeft_reference_delta(W0, f.phi, f.psi, 4.0, 2)).to(dtype)
        torch.testing.assert_close(merged[f"{name}.weight"], ref)
        layer.merge()
        assert torch.equal(merged[f"{name}.weight"], layer.weight.detach())
        assert merged[f"{name}.weight"].dtype == dtype
    # a merged checkpoint loads into the plain (non-adapter) model
    plain = nn.ModuleDict({n: nn.Linear(i, o) for n, (_, i, o) in SHAPES_MODEL.items()})
    plain.load_state_dict({k[len("layers."):]: v for k, v in merged.items()})


@pytest.mark.parametrize("shared", [True, False])
def test_merge_state_dict_plain_target_list(shared):
    # a plain list of names: shared factors are found by the name's last component
    cfg = WeGeFTConfig(rank=2, shared=shared)
    model = TinyWeGeFT(cfg, {"q_proj": ("q_proj", 8, 8), "v_proj": ("v_proj", 8, 4)})
    for m in model.modules():
        if isinstance(m, WeGeFTFactors):
            with torch.no_grad():
                m.phi.normal_()
    sd = model.state_dict()
    by_map = merge_wegeft_state_dict(sd, config=cfg, target_modules=get_wegeft_target_modules(model))
    by_list = merge_wegeft_state_dict(sd, config=cfg, target_modules=list(get_wegeft_modules(model)))
    assert by_map.keys() == by_list.keys() == {"layers.q_proj.weight", "layers.v_proj.weight"}
    for k in by_map:
        assert torch.equal(by_map[k], by_list[k])
        assert not torch.equal(by_map[k], sd[k])


# ---- NF4 ---------------------------------------------------------------------------------


def test_nf4_recompute_gives_same_gradients():
    torch.manual_seed(9)
    grads = []
    for recompute in (True, False):
        torch.manual_seed(9)
        cfg = WeGeFTConfig(rank=2, alpha=2.0, dropout=0.2, recompute=recompute)
        shared = WeGeFTSharedFactors(cfg)
        layer = wegeft_linear(128, 128, factors=shared.get("q_proj", 128), quantize_base=True)
        with torch.no_grad():
            layer.factors.phi.normal_(std=0.05)
        x = torch.randn(4, 128)
        torch.manual_seed(1)
        layer(x).pow(2).sum().backward()
        grads.append((layer.factors.phi.grad, layer.factors.psi.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# ---- configuration and misuse ----------------------------------------------------------


def test_config_scaling_and_defaults():
    cfg = WeGeFTConfig()
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.shared) == (64, 128.0, 0.0, True)
    assert WeGeFTConfig(rank=4, alpha=2).scaling == 0.5
    assert WeGeFTConfig(**cfg.to_dict()) == cfg


def test_factor_misuse_is_an_error():
    shared_cfg, own_cfg = WeGeFTConfig(rank=2), WeGeFTConfig(rank=2, shared=False)
    shared = WeGeFTSharedFactors(shared_cfg)
    with pytest.raises(ValueError, match="in_dim=8"):
        WeGeFTLinear(6, 4, factors=shared.get("q_proj", 8))
    with pytest.raises(ValueError, match="same input dimension"):
        shared.get("q_proj", 6)
    with pytest.raises(ValueError, match="config.shared is True"):
        WeGeFTLinear(6, 4, factors=WeGeFTFactors(6, config=shared_cfg))
    with pytest.raises(ValueError, match="config.shared is False"):
        WeGeFTSharedFactors(own_cfg).get("q_proj", 6)
    own = WeGeFTFactors(6, config=own_cfg)
    WeGeFTLinear(6, 4, factors=own)
    with pytest.raises(ValueError, match="already belong to another"):
        WeGeFTLinear(6, 5, factors=own)
    with pytest.raises(ValueError, match="quantize_base is False"):
        WeGeFTLinear(6, 4, factors=WeGeFTFactors(6, config=own_cfg), block_size=32)


# ---- same function class as GenFT's row-only stage ------------------------------------


@pytest.mark.parametrize("in_dim,out_dim", [(6, 6), (5, 7), (7, 5)])
def test_genft_row_only_is_the_wegeft_function_class(in_dim, out_dim):
    """GenFT, row stage only, identity activations, b = 0, no biases:
    ``dW = scaling * W0 @ (ratio * P1.T @ Q1.T)``, W0 times an (in, in) matrix of rank
    <= a, the same class as WeGeFT's ``(alpha/r) W0 @ phi.T @ psi`` with r = a.
    Shown by building each one from the other and comparing the layers' outputs."""
    torch.manual_seed(10)
    a, scaling, ratio, alpha = 3, 0.7, 1.0, 5.0
    gcfg = GenFTConfig(stages="row", act_in="identity", act_out="identity", shared_dim=a,
                       specific_dim=0, ratio=ratio, scaling=scaling, generator_bias=False,
                       zero_init=False)
    gens = GenFTGenerators(gcfg)
    g = genft_linear(in_dim, out_dim, generators=gens).double()
    gens.double()
    gen = g.generator
    assert g.adapter_params() == [] and sorted(gen.adapter_params()) == ["P1", "Q1"]
    w, _ = make_wegeft_layer(in_dim, out_dim, rank=a, alpha=alpha)
    with torch.no_grad():
        w.weight.copy_(g.weight)
    W0 = g.weight.detach()
    x = torch.randn(4, in_dim, dtype=torch.float64)

    # GenFT's row-only dW has the claimed form: W0 @ M, M = scaling * ratio * P1.T @ Q1.T
    M = scaling * ratio * gen.P1.detach().T @ gen.Q1.detach().T
    assert torch.linalg.matrix_rank(M) <= a
    torch.testing.assert_close(g.delta_weight().detach(), W0 @ M, rtol=1e-10, atol=1e-12)

    # GenFT -> WeGeFT: phi = P1, psi = (scaling * ratio * r / alpha) * Q1.T
    with torch.no_grad():
        w.factors.phi.copy_(gen.P1)
        w.factors.psi.copy_(scaling * ratio * a / alpha * gen.Q1.T)
    torch.testing.assert_close(w(x), g(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.delta_weight(), g.delta_weight(), rtol=1e-10, atol=1e-12)

    # WeGeFT -> GenFT: P1 = phi, Q1 = (alpha / (r * scaling * ratio)) * psi.T
    with torch.no_grad():
        w.factors.phi.normal_()
        w.factors.psi.normal_()
        gen.P1.copy_(w.factors.phi)
        gen.Q1.copy_(alpha / (a * scaling * ratio) * w.factors.psi.T)
    g.clear_cache()
    torch.testing.assert_close(g(x), w(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g.delta_weight(), w.delta_weight(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha", [0, 0.0, -1.0])
def test_alpha_must_be_positive(alpha):
    """alpha = 0 keeps dW = 0 for ever (a dead adapter); a negative alpha only flips phi's sign."""
    with pytest.raises(ValueError, match=r"alpha must be a finite number > 0, got"):
        WeGeFTConfig(alpha=alpha)
