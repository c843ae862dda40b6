"""The eval cache of the merged weight (``genft_tune.modules._cache``) shared by
GenFTLinear, WeGeFTLinear and the PEFT layers: it must never serve a weight computed
for other tensors, other dtypes or devices, or under ``torch.inference_mode``."""

import pytest
import torch

import test_genft_linear as genft_tests
import test_wegeft as wegeft_tests
from genft_tune.modules._cache import MergedWeightCache


def _genft():
    layer, gens = genft_tests.make_layer(6, 5, dtype=torch.float32, shared_dim=2, specific_dim=2)
    return layer, torch.nn.ModuleList([layer, gens]), genft_tests.reference_output


def _wegeft():
    layer, model = wegeft_tests.make_layer(6, 5, dtype=torch.float32)
    return layer, model, wegeft_tests.reference_output


@pytest.mark.parametrize("make", [_genft, _wegeft], ids=["genft", "wegeft"])
def test_cache_follows_module_to_dtype(make):
    # Module.to keeps each Parameter object and its version counter: only the data changes
    torch.manual_seed(0)
    layer, model, reference = make()
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


@pytest.mark.parametrize("make", [_genft, _wegeft], ids=["genft", "wegeft"])
def test_layer_cached_in_inference_mode_gives_input_gradients_later(make):
    torch.manual_seed(0)
    layer, model, reference = make()
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
