"""zero_init for every activation pair, and the authors' two conventions.

The references are float64 transcriptions of the equations as the issue and
GENFT_SPEC.md state them (no code from the authors):

- ours:         dW = scaling * F_col.T
- authors_peft: dW = scaling * F_col                  (square weights only)
- authors_vit:  every stage matrix D1, E1, D2, E2 is multiplied by ratio, W0 is not;
                dW = scaling * F_col.T
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from genft_tune.modules import GenFTConfig, GenFTGenerators, genft_linear
from genft_tune.modules.genft import ACTIVATIONS

ACTS = ["identity", "relu", "leaky_relu", "gelu", "tanh"]

REF_ACT = {
    "identity": lambda t: t,
    "relu": lambda t: torch.where(t > 0, t, torch.zeros_like(t)),
    "leaky_relu": lambda t: torch.where(t > 0, t, 0.01 * t),
    "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2.0))),
    "tanh": torch.tanh,
}


def _layer(in_dim, out_dim, **cfg):
    gens = GenFTGenerators(GenFTConfig(**cfg))
    layer = genft_linear(in_dim, out_dim, generators=gens)
    gens.to(torch.float64)
    layer.to(torch.float64)
    with torch.no_grad():
        layer.weight.normal_()
    return layer, gens


def _trainable(layer, gens):
    return {f"gen.{n}": p for n, p in gens.named_parameters()} | {n: p for n, p in layer.named_parameters() if p.requires_grad}


# ---- zero_init: dW = 0 at step 0, and every pair trains -----------------------------


@pytest.mark.parametrize("act_in,act_out", list(itertools.product(ACTS, ACTS)))
@pytest.mark.parametrize("in_dim,out_dim", [(6, 6), (5, 7)])
def test_zero_init_trains_for_every_activation_pair(act_in, act_out, in_dim, out_dim):
    torch.manual_seed(0)
    layer, gens = _layer(in_dim, out_dim, shared_dim=3, specific_dim=2, act_in=act_in, act_out=act_out, zero_init=True)
    params = _trainable(layer, gens)
    x = torch.randn(4, in_dim, dtype=torch.float64)
    target = torch.randn(4, out_dim, dtype=torch.float64)

    # step 0 is the base model exactly
    assert torch.equal(layer(x), x @ layer.weight.T)
    assert torch.count_nonzero(layer.delta_weight()) == 0

    # step 1: the zeroed last stage gets a gradient (act_out'(0) != 0 for every act_out)
    F.mse_loss(layer(x), target).backward()
    last = ["gen.7x5.Q2" if in_dim != out_dim else "gen.6x6.Q2", "B2" if in_dim != out_dim else "B1"]
    for name in last:
        assert params[name].grad is not None and params[name].grad.abs().max() > 1e-6, (name, act_in, act_out)

    # after one optimizer step, every trainable tensor gets a gradient
    opt = torch.optim.AdamW(params.values(), lr=1e-2)
    opt.step()
    opt.zero_grad()
    assert torch.count_nonzero(layer.delta_weight()) > 0
    F.mse_loss(layer(x), target).backward()
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().max() > 0, (name, act_in, act_out)


def test_relu_values_unchanged_only_the_derivative_at_zero():
    t = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0], dtype=torch.float64, requires_grad=True)
    for name, ref in (("relu", F.relu), ("leaky_relu", F.leaky_relu)):
        assert torch.equal(ACTIVATIONS[name](t), ref(t))
        (g,) = torch.autograd.grad(ACTIVATIONS[name](t).sum(), t)
        slope = 0.0 if name == "relu" else 0.01
        assert g.tolist() == [slope, 1.0, 1.0, 1.0, 1.0]


# ---- conventions ---------------------------------------------------------------------


def reference_f_col(W0, t, cfg, *, matrix_ratio=1.0, weight_ratio=None):
    """F_col (shape (in, out)) from the two-stage equations; ratio placed as asked."""
    act_in, act_out = REF_ACT[cfg.act_in], REF_ACT[cfg.act_out]
    weight_ratio = cfg.ratio if weight_ratio is None else weight_ratio

    def bias(name):
        return t[name] if t.get(name) is not None else 0.0

    def cat(parts, dim):
        return torch.cat([p for p in parts if p is not None], dim=dim)

    D1 = matrix_ratio * cat([t["P1"], t["A1"]], 0)
    E1 = matrix_ratio * cat([t["Q1"], t["B1"]], 1)
    D2 = matrix_ratio * cat([t["P2"], t["A2"]], 0)
    E2 = matrix_ratio * cat([t["Q2"], t["B2"]], 1)
    H1 = act_in(weight_ratio * W0 @ D1.T + bias("c1"))
    F_row = act_out(H1 @ E1.T + bias("d1"))
    H2 = act_in(F_row.T @ D2.T + bias("c2"))
    return act_out(H2 @ E2.T + bias("d2"))


def _tensors(layer):
    g = layer.generator
    t = {n: getattr(g, n) for n in ("P1", "Q1", "P2", "Q2", "c1", "d1", "c2", "d2")}
    A1, B1, A2, B2 = layer.specific_factors()
    return {**t, "A1": A1, "B1": B1, "A2": A2, "B2": B2}


def _all_paths(layer, x):
    """Outputs of the training forward (recompute and not), eval (cached) and merged."""
    outs = {"train": layer(x)}
    layer.eval()
    with torch.no_grad():
        outs["eval"] = layer(x)
        layer.merge()
        outs["merged"] = layer(x)
        layer.unmerge()
    layer.train()
    return outs


@pytest.mark.parametrize("act_out", ["gelu", "identity"])  # dense path, low-rank path
@pytest.mark.parametrize("bias", [False, True])
def test_authors_peft_convention_is_f_col_untransposed(act_out, bias):
    torch.manual_seed(1)
    cfg = dict(shared_dim=3, specific_dim=2, act_in="tanh", act_out=act_out, ratio=0.7, scaling=1.3,
               generator_bias=bias, zero_init=False, convention="authors_peft")
    layer, _ = _layer(6, 6, **cfg)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    F_col = reference_f_col(layer.weight, _tensors(layer), layer.config)
    expected = F.linear(x, layer.weight + 1.3 * F_col)
    for path, out in _all_paths(layer, x).items():
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=path)
    # and it is our dW transposed
    ours, _ = _layer(6, 6, **{**cfg, "convention": "ours"})
    ours.load_state_dict(layer.state_dict())
    ours.generator.load_state_dict(layer.generator.state_dict())
    torch.testing.assert_close(ours.delta_weight(), layer.delta_weight().T, rtol=0, atol=0)


def test_authors_peft_gradients_match_reference():
    torch.manual_seed(2)
    layer, gens = _layer(6, 6, shared_dim=2, specific_dim=2, act_in="gelu", act_out="gelu", ratio=1.0, scaling=1.0,
                         zero_init=False, convention="authors_peft")
    x = torch.randn(5, 6, dtype=torch.float64)
    params = _trainable(layer, gens)
    grads = torch.autograd.grad(layer(x).square().sum(), list(params.values()))
    ref = F.linear(x, layer.weight + reference_f_col(layer.weight, _tensors(layer), layer.config)).square().sum()
    for g, r in zip(grads, torch.autograd.grad(ref, list(params.values()))):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_authors_peft_refuses_non_square_weights():
    gens = GenFTGenerators(GenFTConfig(convention="authors_peft"))
    with pytest.raises(ValueError, match=r"authors_peft.*square.*\(7, 5\).*convention='ours'"):
        genft_linear(5, 7, generators=gens)


@pytest.mark.parametrize("act_in,act_out", [("identity", "leaky_relu"), ("gelu", "identity"), ("tanh", "tanh")])
@pytest.mark.parametrize("in_dim,out_dim", [(6, 6), (5, 7)])
def test_authors_vit_convention_puts_ratio_on_the_generator_matrices(act_in, act_out, in_dim, out_dim):
    torch.manual_seed(3)
    layer, _ = _layer(in_dim, out_dim, shared_dim=3, specific_dim=2, act_in=act_in, act_out=act_out, ratio=1.4,
                      scaling=0.9, generator_bias=True, zero_init=False, convention="authors_vit")
    x = torch.randn(4, in_dim, dtype=torch.float64)
    F_col = reference_f_col(layer.weight, _tensors(layer), layer.config, matrix_ratio=1.4, weight_ratio=1.0)
    expected = F.linear(x, layer.weight + 0.9 * F_col.T)
    for path, out in _all_paths(layer, x).items():
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=path)


def test_authors_vit_with_identity_activations_is_ratio_cubed_times_ours():
    torch.manual_seed(4)
    cfg = dict(shared_dim=3, specific_dim=2, act_in="identity", act_out="identity", ratio=1.4, zero_init=False)
    vit, _ = _layer(6, 6, **cfg, convention="authors_vit")
    ours, _ = _layer(6, 6, **cfg)
    ours.load_state_dict(vit.state_dict())
    ours.generator.load_state_dict(vit.generator.state_dict())
    torch.testing.assert_close(vit.delta_weight(), 1.4**3 * ours.delta_weight(), rtol=1e-12, atol=1e-12)


def test_unknown_convention_is_a_clear_error():
    with pytest.raises(ValueError, match=r"convention must be one of \['ours', 'authors_peft', 'authors_vit'\]"):
        GenFTConfig(convention="theirs")
