"""The eval cache of the merged weight (``genft_tune.modules._cache``) shared by
GenFTLinear, WeGeFTLinear and the PEFT layers: it must never serve a weight computed
for other tensors, other dtypes or devices, or under ``torch.inference_mode``.

The checks on GenFTLinear and WeGeFTLinear run once per method (conftest's
``make_adapter_layer`` fixture, or WeGeFT shared and per-layer)."""

import pytest
import torch
from _layer_references import build_adapter_layer, trainable

from genft_tune.modules._cache import MergedWeightCache


def test_cache_follows_module_to_dtype(make_adapter_layer):
    # Module.to keeps each Parameter object and its version counter: only the data changes
    torch.manual_seed(0)
    layer, model, reference = make_adapter_layer(6, 5)
    model.eval()
    x = torch.randn(3, 6)
    with torch.no_grad():
        layer(x)  # caches an fp32 merged weight
        model.to(torch.float64)
        out = layer(x.double())
        torch.testing.assert_close(out, reference(layer, x.double()).to(out.dtype), rtol=1e-12, atol=1e-12)
        model.half()
        out = layer(x.half())
        assert out.dtype == torch.float16


@pytest.mark.parametrize("optim_kwargs", [{"foreach": False}, {"foreach": True}, {"fused": True}])
@pytest.mark.parametrize(
    "method,out_dim,cfg",
    [("genft", 6, {}), ("wegeft", 5, {"shared": True}), ("wegeft", 5, {"shared": False})],
    ids=["genft", "wegeft-shared", "wegeft-per-layer"],
)
def test_cache_never_stale(method, out_dim, cfg, optim_kwargs):
    torch.manual_seed(5)
    layer, model, reference = build_adapter_layer(method, 6, out_dim, **cfg)
    opt = torch.optim.AdamW(trainable(model), lr=1e-2, **optim_kwargs)
    x = torch.randn(3, 6)

    def check():
        torch.testing.assert_close(layer(x), reference(layer, x).to(x.dtype))

    for _ in range(3):
        layer.eval()
        with torch.no_grad():
            check()
        layer.train()
        layer(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    layer.eval()
    with torch.no_grad():
        layer(x)
        # load_state_dict copies in place: the cache must see it
        model.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()})
        check()
        # an in-place edit of each tensor the layer uses: W0, its own factors, the
        # (possibly shared) generators / factors
        for p in model.parameters():
            p.mul_(2.0)
            check()
        # a new tensor object with the same version counter as the one it replaces
        for name, p in list(model.named_parameters()):
            fresh = torch.randn_like(p)
            while fresh._version < p._version:
                fresh.add_(0.0)  # each in-place op bumps the version counter
            assert fresh._version == p._version
            model.load_state_dict({**model.state_dict(), name: fresh}, assign=True)
            check()


def test_cache_key_sees_data_dtype_and_device_not_only_identity():
    cache = MergedWeightCache()
    t = torch.nn.Parameter(torch.ones(3))
    assert torch.equal(cache.get([t], lambda: t.detach() * 2), torch.full((3,), 2.0))
    t.data = torch.full((3,), 5.0)  # same object, same version counter, other data
    assert torch.equal(cache.get([t], lambda: t.detach() * 2), torch.full((3,), 10.0))
    t.data = t.data.double()
    assert cache.get([t], lambda: t.detach() * 2).dtype == torch.float64


def test_cache_filled_in_inference_mode_serves_a_later_forward_with_gradients():
    cache = MergedWeightCache()
    t = torch.ones(3, 3)
    with torch.inference_mode():
        cache.get([t], lambda: t * 2)
    x = torch.ones(2, 3, requires_grad=True)
    torch.nn.functional.linear(x, cache.get([t], lambda: t * 2)).sum().backward()
    assert torch.equal(x.grad, torch.full((2, 3), 6.0))


def test_layer_cached_in_inference_mode_gives_input_gradients_later(make_adapter_layer):
    torch.manual_seed(0)
    layer, model, reference = make_adapter_layer(6, 5)
    model.requires_grad_(False)
    model.eval()
    x = torch.randn(3, 6)
    with torch.inference_mode():
        layer(x)
    x.requires_grad_(True)
    layer(x).sum().backward()  # (a gradient w.r.t. the input only: the cached path)
    ref_x = x.detach().clone().requires_grad_(True)
    reference(layer, ref_x).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-5)


def test_bf16_eval_output_equals_the_merged_layer_bit_for_bit(adapter_method, make_adapter_layer):
    """The eval cache holds what merge() writes (fp32 math, one cast): in bf16 the
    cached forward and the merged layer give identical outputs."""
    torch.manual_seed({"genft": 12, "wegeft": 11}[adapter_method])
    # each method's layer as its own test built it (WeGeFT: psi drawn too, a larger dW)
    cfg = {"genft": dict(shared_dim=4, specific_dim=2, scaling=0.5), "wegeft": dict(rank=4, random_psi=True)}
    layer, _, _ = make_adapter_layer(48, 32, dtype=torch.bfloat16, **cfg[adapter_method])
    layer.eval()
    x = torch.randn(5, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        cached = layer(x)
        layer.merge()
        merged = layer(x)
    assert torch.equal(cached, merged)
