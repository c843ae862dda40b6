"""The checks that are the same for GenFT and WeGeFT, one body run once per method
(conftest's ``adapter_method`` / ``make_adapter_layer`` fixtures): merge / unmerge and
``disable_adapter`` (the base class, ``genft_tune.modules._base``), shared tensors in the
state dict and optimizer, the state-dict merge's errors, an NF4 base, meta-device
construction and config validation. Each method's own checks stay in
``test_genft_linear.py`` / ``test_wegeft.py``."""

import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from _layer_references import REFERENCE_OUTPUT, trainable

from torchtune.modules.peft import disable_adapter, get_adapter_params, set_trainable_params

from genft_tune.modules import GenFTConfig, get_adapter_kind, WeGeFTConfig
from genft_tune.modules.wegeft import WeGeFTFactors


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


# ---- the methods' shared tensors, state-dict merge, NF4, meta device, configs --------------
# Each check below is one body for both methods, built through the method's registry entry
# (``AdapterKind``: make_root / make_linear / is_key / merge_state_dict / config_cls); what
# differs between the methods is data in the tables next to each test.

# a layer's module of shared tensors: GenFT's generator (one per weight shape), WeGeFT's
# factors (one pair per module type when shared, else the layer's own)
SHARED_MODULE = {"genft": lambda layer: layer.generator, "wegeft": lambda layer: layer.factors}


def _adapted_model(kind, config, shapes):
    """A model root holding ``kind``'s shared tensors and an adapted linear per
    ``{"<block>.<module type>": (in_dim, out_dim)}``, at ``layers.<block>.<module type>``."""
    model = nn.Module()
    root = kind.make_root(config)
    setattr(model, kind.root_attr, root)
    blocks = {}
    for name, (in_dim, out_dim) in shapes.items():
        block, module_type = name.split(".")
        layer = kind.make_linear(root, f"layers.{name}", in_dim, out_dim)
        blocks.setdefault(block, nn.ModuleDict())[module_type] = layer
    model.layers = nn.ModuleDict(blocks)
    return model


def _random_phi(model):
    # WeGeFT's phi starts at zero (dW = 0): a non-zero dW for the checks
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WeGeFTFactors):
                m.phi.normal_()


SHARING_SHAPES = {"0.q_proj": (8, 8), "0.v_proj": (8, 4), "0.output_proj": (8, 8), "1.q_proj": (8, 8)}
SHARING = {  # method: (config, its random dW, the root's keys, groups of layers sharing one module)
    "genft": (
        GenFTConfig(shared_dim=3, specific_dim=2, zero_init=False), lambda model: None,
        [f"genft_generators.{s}.{n}" for s in ("8x8", "4x8") for n in ("P1", "Q1", "P2", "Q2")],
        [{"0.q_proj", "1.q_proj", "0.output_proj"}, {"0.v_proj"}],  # by weight shape
    ),
    "wegeft": (
        WeGeFTConfig(rank=2, alpha=4.0, shared=True), _random_phi,
        [f"wegeft_factors.{t}.{n}" for t in ("q_proj", "v_proj", "output_proj") for n in ("phi", "psi")],
        [{"0.q_proj", "1.q_proj"}, {"0.v_proj"}, {"0.output_proj"}],  # by module type
    ),
}


def test_shared_tensors_once_in_state_dict_and_optimizer(adapter_method):
    torch.manual_seed(6)
    kind, shared_of = get_adapter_kind(adapter_method), SHARED_MODULE[adapter_method]
    config, randomize, root_keys, groups = SHARING[adapter_method]
    model = _adapted_model(kind, config, SHARING_SHAPES)
    randomize(model)
    layers = {n: model.get_submodule(f"layers.{n}") for n in SHARING_SHAPES}
    for a, b in itertools.combinations(layers, 2):
        together = any({a, b} <= group for group in groups)
        assert (shared_of(layers[a]) is shared_of(layers[b])) == together, (a, b)
    keys = list(model.state_dict())
    assert len(keys) == len(set(keys))
    assert sorted(k for k in keys if k.startswith(f"{kind.root_attr}.")) == sorted(root_keys)
    adapter = get_adapter_params(model)
    own = {f"layers.{n}.{p}" for n, layer in layers.items() for p in layer.adapter_params()}
    assert set(adapter) == {k for k in keys if kind.is_key(k)} == set(root_keys) | own
    assert len({id(p) for p in adapter.values()}) == len(adapter)
    set_trainable_params(model, adapter)
    q0, q1 = layers["0.q_proj"], layers["1.q_proj"]
    assert not q0.weight.requires_grad and all(p.requires_grad for p in adapter.values())
    opt = torch.optim.AdamW(trainable(model), lr=1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(adapter)
    # both layers sharing a module feed gradient into each of its tensors
    x = torch.randn(2, 8)
    shared = list(shared_of(q0).parameters())
    g0 = torch.autograd.grad(q0(x).sum(), shared)
    g1 = torch.autograd.grad(q1(x).sum(), shared)
    g01 = torch.autograd.grad((q0(x) + q1(x)).sum(), shared)
    for a, b, both in zip(g0, g1, g01):
        torch.testing.assert_close(both, a + b)
    # the state-dict merge equals the layer merge
    sd = model.state_dict()
    targets = kind.target_modules({f"layers.{n}": layer for n, layer in layers.items()})
    merged = kind.merge_state_dict(sd, config=config, target_modules=targets)
    assert set(merged) == {k for k in sd if not kind.is_key(k)}
    for name, layer in layers.items():
        layer.merge()
        torch.testing.assert_close(merged[f"layers.{name}.weight"], layer.weight.detach())


MERGE_ERRORS = {  # method: (config, the key dropped, a key with a wrong shape, its message)
    "genft": (GenFTConfig(shared_dim=2, specific_dim=2), "layers.0.q_proj.A2",
              "genft_generators.6x4.P1", "P1 has shape"),
    "wegeft": (WeGeFTConfig(rank=2, shared=True), "wegeft_factors.q_proj.psi",
               "wegeft_factors.q_proj.phi", "phi has shape \\(3, 4\\), expected \\(2, 4\\)"),
}


def test_merge_state_dict_errors_name_the_key(adapter_method):
    kind = get_adapter_kind(adapter_method)
    config, missing, wrong, message = MERGE_ERRORS[adapter_method]
    model = _adapted_model(kind, config, {"0.q_proj": (4, 6)})
    sd = model.state_dict()
    targets = kind.target_modules({"layers.0.q_proj": model.layers["0"]["q_proj"]})
    assert missing in sd and wrong in sd
    with pytest.raises(ValueError, match=re.escape(missing)):
        kind.merge_state_dict({k: v for k, v in sd.items() if k != missing}, config=config,
                              target_modules=targets)
    with pytest.raises(ValueError, match="nope"):
        kind.merge_state_dict(sd, config=config, target_modules=["nope"])
    with pytest.raises(ValueError, match=message):
        kind.merge_state_dict(dict(sd, **{wrong: torch.zeros(3, 4)}), config=config,
                              target_modules=targets)


NF4 = {  # method: (seed, config, its random dW)
    "genft": (6, GenFTConfig(shared_dim=4, specific_dim=2, zero_init=False), lambda layer: None),
    "wegeft": (8, WeGeFTConfig(rank=4, alpha=8.0, shared=True),
               lambda layer: layer.factors.phi.normal_(std=0.05)),
}


def test_nf4_base_forward_backward(adapter_method):
    from torchao.dtypes.nf4tensor import NF4Tensor

    seed, config, randomize = NF4[adapter_method]
    kind, shared_of = get_adapter_kind(adapter_method), SHARED_MODULE[adapter_method]
    torch.manual_seed(seed)
    root = kind.make_root(config)
    with pytest.raises(ValueError, match="cannot store a \\(64, 128\\) weight in NF4"):
        kind.make_linear(root, "q_proj", 128, 64, quantize_base=True)
    layer = kind.make_linear(root, "o_proj", 256, 128, quantize_base=True)
    layer.to(torch.bfloat16)
    root.to(torch.bfloat16)
    with torch.no_grad():
        randomize(layer)
    assert isinstance(layer.weight, NF4Tensor)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    out = layer(x)
    out.float().pow(2).sum().backward()
    params = trainable(nn.ModuleList([layer, shared_of(layer)]))
    assert params and all(p.grad is not None for p in params)
    expected = REFERENCE_OUTPUT[adapter_method](layer, x)  # from the dequantised W0, in fp64
    torch.testing.assert_close(out.double(), expected, rtol=0.05, atol=0.05)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), expected, rtol=0.05, atol=0.05)
    with pytest.raises(RuntimeError, match="NF4"):
        layer.merge()


@pytest.mark.parametrize(
    "method,config",
    [
        ("genft", GenFTConfig(shared_dim=2, specific_dim=2)),
        ("wegeft", WeGeFTConfig(rank=2, shared=True)),
        ("wegeft", WeGeFTConfig(rank=2, shared=False)),
    ],
    ids=["genft", "wegeft-shared", "wegeft-per-layer"],
)
def test_meta_device_construction_then_initialize(method, config):
    kind = get_adapter_kind(method)
    with torch.device("meta"):
        root = kind.make_root(config)
        layer = kind.make_linear(root, "q_proj", 6, 4)
    layer.weight = nn.Parameter(torch.randn(4, 6), requires_grad=False)  # "loaded from checkpoint"
    model = nn.ModuleList([root, layer])
    initialized = [m for m in model.modules() if hasattr(m, "initialize_parameters")]
    assert layer in initialized and len(initialized) == 2  # the layer and its shared module
    for m in initialized:
        m.to_empty(device="cpu")
        m.initialize_parameters()
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    x = torch.randn(2, 6)
    assert torch.equal(layer(x), F.linear(x, layer.weight))  # dW = 0 at initialisation


BAD_CONFIGS = [  # (method, config kwargs, the field the error names)
    ("genft", {"act_in": "swish"}, "act_in"),
    ("genft", {"act_out": "Gelu"}, "act_out"),
    ("genft", {"shared_dim": 0, "specific_dim": 0}, "shared_dim \\+ specific_dim"),
    ("genft", {"shared_dim": -1}, "shared_dim"),
    ("genft", {"specific_dim": 1.5}, "specific_dim"),
    ("genft", {"dropout": 1.0}, "dropout"),
    ("genft", {"dropout": -0.1}, "dropout"),
    ("genft", {"ratio": float("nan")}, "ratio"),
    ("genft", {"scaling": float("inf")}, "scaling"),
    ("genft", {"init_a": "orthogonal"}, "init_a"),
    ("genft", {"stages": "diagonal"}, "stages"),
    ("wegeft", {"rank": 0}, "rank"),
    ("wegeft", {"rank": 2.0}, "rank"),
    ("wegeft", {"rank": True}, "rank"),
    ("wegeft", {"alpha": float("nan")}, "alpha"),
    ("wegeft", {"alpha": "8"}, "alpha"),
    ("wegeft", {"dropout": 1.0}, "dropout"),
    ("wegeft", {"dropout": -0.1}, "dropout"),
    ("wegeft", {"shared": 1}, "shared"),
    ("wegeft", {"recompute": "yes"}, "recompute"),
]


@pytest.mark.parametrize(
    "method,kwargs,field", BAD_CONFIGS,
    ids=[f"{m}-" + ",".join(f"{k}={v!r}" for k, v in kw.items()) for m, kw, _ in BAD_CONFIGS],
)
def test_bad_config_names_the_field(method, kwargs, field):
    with pytest.raises(ValueError, match=field):
        get_adapter_kind(method).config_cls(**kwargs)
