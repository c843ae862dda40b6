"""The eval cache of the merged weight (``genft_tune.modules._cache``) shared by
GenFTLinear, WeGeFTLinear and the PEFT layers: it must never serve a weight computed
for other tensors, other dtypes or devices, or under ``torch.inference_mode``.

The checks on GenFTLinear and WeGeFTLinear run once per method (conftest's
``make_adapter_layer`` fixture)."""

import torch

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
