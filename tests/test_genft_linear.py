"""GenFTLinear against a plain fp64 reference of GENFT_SPEC.md's formula."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from _layer_references import (
    genft_reference_delta,
    genft_reference_output,
    genft_tensors,
    make_genft_layer,
    REF_ACT,
)

from torchtune.modules.peft import get_adapter_params

from genft_tune.modules import (
    GenFTConfig,
    GenFTGenerators,
    GenFTLinear,
    genft_linear,
    merge_genft_state_dict,
)

SHAPES = [(6, 6), (5, 7), (7, 5)]  # (in, out): square (tied) and both non-square
DIMS = [(3, 2), (0, 2), (3, 0)]


@pytest.mark.parametrize("in_dim,out_dim", SHAPES)
@pytest.mark.parametrize("a,b", DIMS)
@pytest.mark.parametrize("generator_bias", [False, True])
@pytest.mark.parametrize("stages", ["both", "row", "column"])
def test_all_paths_equal_reference(in_dim, out_dim, a, b, generator_bias, stages):
    torch.manual_seed(0)
    for act_out in ("gelu", "identity"):  # dense path, then low-rank path
        layer, _ = make_genft_layer(
            in_dim, out_dim, shared_dim=a, specific_dim=b, generator_bias=generator_bias,
            act_in="tanh", act_out=act_out, ratio=0.7, scaling=1.3, stages=stages, use_bias=True,
        )
        x = torch.randn(3, 4, in_dim, dtype=torch.float64)
        expected = genft_reference_output(layer, x)
        # training forward (merged, or low-rank for identity act_out), with and without recompute
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
        object.__setattr__(layer, "config", GenFTConfig(**{**layer.config.to_dict(), "recompute": False}))
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
        # eval / no-grad: cached merged weight
        layer.eval()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
        # merged
        layer.merge()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act_in,act_out", list(itertools.product(REF_ACT, REF_ACT)))
def test_every_activation_pair(act_in, act_out):
    torch.manual_seed(1)
    layer, _ = make_genft_layer(5, 7, shared_dim=2, specific_dim=2, act_in=act_in, act_out=act_out,
                          generator_bias=True)
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), genft_reference_output(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act_out", ["gelu", "identity"])
@pytest.mark.parametrize("in_dim,out_dim", SHAPES)
def test_gradients_equal_reference(act_out, in_dim, out_dim):
    torch.manual_seed(2)
    layer, gens = make_genft_layer(in_dim, out_dim, shared_dim=2, specific_dim=2, act_out=act_out,
                             generator_bias=True)
    params = [p for p in list(layer.parameters()) + list(gens.parameters()) if p.requires_grad]
    x = torch.randn(3, in_dim, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, out_dim, dtype=torch.float64)

    ours = torch.autograd.grad(((layer(x) - target) ** 2).sum(), [x] + params)
    ref = torch.autograd.grad(((genft_reference_output(layer, x) - target) ** 2).sum(), [x] + params)
    for g_ours, g_ref in zip(ours, ref):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-10)
    # and the analytic gradients agree with finite differences
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,))
    assert torch.autograd.gradcheck(lambda A1: torch.func.functional_call(layer, {"A1": A1}, (x,)),
                                    (layer.A1.detach().clone().requires_grad_(),))


def _saved_tensors_of_forward(layer, x):
    """Tensors autograd keeps from ``layer(x)`` for backward (with the output)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    return saved, out


@pytest.mark.parametrize("out_dim,in_dim", [(12, 12), (10, 14)])
def test_recompute_keeps_no_new_weight_sized_tensor(out_dim, in_dim):
    """With recompute the only (out, in) tensor kept for backward is W0 itself (a
    reference, no new memory); without it the generator's intermediates are kept."""
    torch.manual_seed(4)
    layer, _ = make_genft_layer(in_dim, out_dim, shared_dim=3, specific_dim=2)
    x = torch.randn(2, 5, in_dim, dtype=torch.float64, requires_grad=True)

    def fresh_weight_sized(saved):
        return [t for t in saved if set(t.shape) == {out_dim, in_dim}
                and t.data_ptr() != layer.weight.data_ptr()]

    saved, _ = _saved_tensors_of_forward(layer, x)
    assert fresh_weight_sized(saved) == []
    object.__setattr__(layer, "config", GenFTConfig(**{**layer.config.to_dict(), "recompute": False}))
    saved, _ = _saved_tensors_of_forward(layer, x)
    assert len(fresh_weight_sized(saved)) >= 3  # F_row pre/post activation, F_col pre, W


class _OutputShapes(TorchDispatchMode):
    """Records the output shape of every op run under it."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.shapes.append((func, tuple(out.shape)))
        return out


def test_recompute_backward_does_not_redo_the_input_matmul():
    """Backward rebuilds W but never recomputes x @ W.T (the (tokens, out) product)."""
    torch.manual_seed(6)
    tokens, in_dim, out_dim = 9, 7, 5
    layer, _ = make_genft_layer(in_dim, out_dim, shared_dim=2, specific_dim=2)
    x = torch.randn(tokens, in_dim, dtype=torch.float64, requires_grad=True)

    matmuls = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def backward_output_shapes(layer):
        """Output shapes of the matrix products run in backward."""
        out = layer(x)
        with _OutputShapes() as mode:
            out.sum().backward()
        return [shape for func, shape in mode.shapes if func in matmuls]

    assert (tokens, out_dim) not in backward_output_shapes(layer)
    assert (tokens, in_dim) in backward_output_shapes(layer)  # grad_x is computed
    # checkpoint without early stop (the dropout path, forced) does redo it: the check can fail
    object.__setattr__(layer, "config", GenFTConfig(**{**layer.config.to_dict(), "dropout": 0.1}))
    with torch.utils.checkpoint.set_checkpoint_early_stop(False):
        assert (tokens, out_dim) in backward_output_shapes(layer)


def test_recompute_gradients_for_input_bias_and_functional_parameters():
    """The recompute path's backward equals the reference's for a 3-D input, a
    trainable base bias, and parameters swapped in by ``functional_call`` (it rebuilds
    W from the tensors of the forward, not from the layer's attributes)."""
    torch.manual_seed(5)
    layer, gens = make_genft_layer(7, 5, shared_dim=2, specific_dim=2, generator_bias=True, use_bias=True)
    assert layer.config.recompute
    layer.bias.requires_grad_(True)
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    A1 = (layer.A1.detach() + 0.5 * torch.randn_like(layer.A1)).requires_grad_()
    params = [p for p in list(layer.parameters()) + list(gens.parameters()) if p.requires_grad]
    params = [p for p in params if p is not layer.A1]

    out = torch.func.functional_call(layer, {"A1": A1}, (x,))
    ours = torch.autograd.grad(out.sin().sum(), [x, A1] + params)
    t = {**genft_tensors(layer), "A1": A1}
    expected = F.linear(x, layer.weight + genft_reference_delta(layer.weight, t, layer.config), layer.bias)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    ref = torch.autograd.grad(expected.sin().sum(), [x, A1] + params)
    for g_ours, g_ref in zip(ours, ref):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-10)


def test_dropout_is_on_generator_stages_not_input():
    torch.manual_seed(3)
    layer, _ = make_genft_layer(6, 4, shared_dim=2, specific_dim=2, dropout=0.4)
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.manual_seed(123)
    ours = layer(x)
    torch.manual_seed(123)
    # Same RNG order as the layer: F_row's mask, then F_col's, both drawn in (out, in)
    # layout (F_col is (in, out), so its mask is drawn on the transpose).
    def masks(t):
        if t.shape == (layer.out_dim, layer.in_dim):
            return F.dropout(t, 0.4, training=True)
        return F.dropout(t.T.contiguous(), 0.4, training=True).T
    W0 = layer.weight.detach()
    expected = F.linear(x, W0 + genft_reference_delta(W0, genft_tensors(layer), layer.config, drop=masks))
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    # evaluation: no dropout at all
    layer.eval()
    torch.testing.assert_close(layer(x), genft_reference_output(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("in_dim,out_dim", SHAPES)
@pytest.mark.parametrize("stages", ["both", "row", "column"])
@pytest.mark.parametrize("act_out", ["gelu", "identity", "tanh"])
def test_zero_init_is_base_model_at_step_zero(in_dim, out_dim, stages, act_out):
    layer, _ = make_genft_layer(in_dim, out_dim, dtype=torch.float32, zero_init=True, stages=stages,
                          act_out=act_out, generator_bias=True, use_bias=True)
    x = torch.randn(4, in_dim)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    # ... and it still learns: some trainable tensor gets a non-zero gradient
    layer(x).sum().backward()
    grads = [p.grad for p in list(layer.parameters()) + list(layer.generator.parameters())
             if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


# (merge / unmerge / disable_adapter, the generators once in the state dict and optimizer,
# the state-dict merge's errors, an NF4 base, meta-device construction, bad configs and the
# eval cache's freshness, the same for both methods: test_adapter_layers.py and
# test_eval_cache.py)


def test_square_layers_tie_their_second_factors():
    """A square layer's A2, B2 are its A1, B1 (not adapter tensors of their own); the
    shared generators in the state dict and optimizer: test_adapter_layers.py."""
    gens = GenFTGenerators(GenFTConfig(shared_dim=3, specific_dim=2))
    model = nn.ModuleDict({"q": genft_linear(8, 8, generators=gens),
                           "v": genft_linear(8, 4, generators=gens)})
    adapter = get_adapter_params(model)
    assert "q.A1" in adapter and "v.B2" in adapter
    assert "q.A2" not in adapter and "q.A2" not in model.state_dict()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_state_dict_merge_is_the_layer_merge_bit_for_bit(dtype):
    # one fp32 merge (fp64 for fp64 weights): the state-dict merge computed fp64 bases in fp32 before
    torch.manual_seed(3)
    layer, gens = make_genft_layer(7, 5, dtype=dtype)
    sd = {"l.weight": layer.weight.detach(), **{f"l.{n}": getattr(layer, n).detach() for n in layer.adapter_params()},
          **{f"genft_generators.{k}": v for k, v in gens.state_dict().items()}}
    merged = merge_genft_state_dict(sd, config=layer.config, target_modules=["l"])["l.weight"]
    assert merged.dtype == dtype
    assert torch.equal(merged, layer._merged_weight_from(layer.weight.detach()))


def test_unknown_activation_lists_allowed_values():
    with pytest.raises(ValueError, match="identity.*relu.*leaky_relu.*gelu.*tanh"):
        GenFTConfig(act_in="silu")


def test_generator_shape_mismatch_is_an_error():
    gens = GenFTGenerators(GenFTConfig())
    with pytest.raises(ValueError, match="generator is for weights of shape"):
        GenFTLinear(4, 6, generator=gens.get(4, 6))


@pytest.mark.parametrize("out_dim,in_dim", [(12, 12), (8, 12)])
def test_recompute_with_dropout_redraws_the_same_mask(out_dim, in_dim):
    """With dropout, recomputation in backward must redraw the forward's mask even if
    the RNG moved in between: gradients equal those of the saved-activation path."""
    torch.manual_seed(0)
    cfg = dict(shared_dim=3, specific_dim=2, dropout=0.3, zero_init=False, scaling=0.5)
    grads = {}
    for recompute in (True, False):
        torch.manual_seed(1)
        gens = GenFTGenerators(GenFTConfig(**cfg, recompute=recompute))
        layer = genft_linear(in_dim, out_dim, generators=gens).train()
        x = torch.randn(4, in_dim)
        torch.manual_seed(2)
        out = layer(x)
        torch.rand(1000)  # move the RNG between forward and backward
        out.square().sum().backward()
        grads[recompute] = [p.grad.clone() for p in gens.parameters()] + [
            getattr(layer, n).grad.clone() for n in layer.adapter_params()
        ]
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b)

