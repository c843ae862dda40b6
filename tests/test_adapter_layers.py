"""What GenFTLinear and WeGeFTLinear share through their base class
(``genft_tune.modules._base``): merge / unmerge and ``disable_adapter``, run once per
method (conftest's ``make_adapter_layer`` fixture). Each method's own checks stay in
``test_genft_linear.py`` / ``test_wegeft.py``."""

import torch
import torch.nn.functional as F

from torchtune.modules.peft import disable_adapter


def test_merge_unmerge_exact(adapter_method, make_adapter_layer):
    torch.manual_seed(4)
    layer, _, _ = make_adapter_layer(8, 6, **{"genft": {"shared_dim": 3}, "wegeft": {}}[adapter_method])
    W0 = layer.weight.detach().clone()
    x = torch.randn(5, 8)
    before = layer(x).detach()
    layer.merge()
    assert not torch.equal(layer.weight, W0)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)
    with disable_adapter(layer):
        torch.testing.assert_close(layer(x), F.linear(x, W0), rtol=0, atol=0)
    layer.unmerge()
    assert torch.equal(layer.weight, W0)  # bit for bit, not W - recomputed dW
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    with disable_adapter(layer):
        torch.testing.assert_close(layer(x), F.linear(x, W0), rtol=0, atol=0)
