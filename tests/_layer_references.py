"""Builders of a small GenFTLinear / WeGeFTLinear and plain references of their
outputs, written from each method's equations alone (not from the layers' code).

Used by the method tests (``test_genft_linear.py``, ``test_wegeft.py``) and by the tests
that run the same check on both methods (``test_adapter_layers.py``, ``test_eval_cache.py``:
``build_adapter_layer`` or conftest's ``make_adapter_layer`` fixture, ``REFERENCE_OUTPUT``).
The references of a layer's output are in fp64.
"""

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from genft_tune.modules import GenFTConfig, GenFTGenerators, genft_linear
from genft_tune.modules.wegeft import WeGeFTConfig, wegeft_linear, WeGeFTSharedFactors

METHODS = ("genft", "wegeft")

# ---- GenFT: the reference of GENFT_SPEC.md's equations -------------------------------

REF_ACT = {
    "identity": lambda t: t,
    "relu": lambda t: torch.where(t > 0, t, torch.zeros_like(t)),
    "leaky_relu": lambda t: torch.where(t > 0, t, 0.01 * t),
    "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2.0))),
    "tanh": lambda t: (torch.exp(t) - torch.exp(-t)) / (torch.exp(t) + torch.exp(-t)),
}


def _stack(*parts, dim):
    return torch.cat([p for p in parts if p is not None], dim=dim)


def genft_reference_delta(W0, t, cfg, drop=None):
    """GenFT's dW from the spec. ``t`` maps names (P1, Q1, A1, ..., d2) to tensors or
    None; ``drop`` applies the F_row / F_col dropout (identity by default)."""
    drop = drop or (lambda x: x)
    act_in, act_out = REF_ACT[cfg.act_in], REF_ACT[cfg.act_out]

    def bias(name):
        return t.get(name) if t.get(name) is not None else 0.0

    if cfg.stages in ("both", "row"):
        D1 = _stack(t["P1"], t["A1"], dim=0)
        E1 = _stack(t["Q1"], t["B1"], dim=1)
        H1 = act_in(cfg.ratio * W0 @ D1.T + bias("c1"))
        F_row = drop(act_out(H1 @ E1.T + bias("d1")))
        if cfg.stages == "row":
            return cfg.scaling * F_row
        col_in = F_row.T
    else:
        col_in = cfg.ratio * W0.T
    D2 = _stack(t["P2"], t["A2"], dim=0)
    E2 = _stack(t["Q2"], t["B2"], dim=1)
    H2 = act_in(col_in @ D2.T + bias("c2"))
    F_col = drop(act_out(H2 @ E2.T + bias("d2")))
    return cfg.scaling * F_col.T


def genft_tensors(layer):
    """Name -> tensor of a GenFTLinear for the reference, with the square tie applied by hand."""
    g = layer.generator
    t = {n: getattr(g, n) for n in ("P1", "Q1", "P2", "Q2", "c1", "d1", "c2", "d2")}
    t.update(A1=layer.A1, B1=layer.B1, A2=layer.A2, B2=layer.B2)
    if layer.in_dim == layer.out_dim:
        t["A2"], t["B2"] = layer.A1, layer.B1
    return t


def make_genft_layer(in_dim, out_dim, dtype=torch.float64, use_bias=False, **cfg_kwargs):
    """A GenFTLinear (random, not zero, init) and its generators, in ``dtype``."""
    cfg_kwargs.setdefault("zero_init", False)
    gens = GenFTGenerators(GenFTConfig(**cfg_kwargs))
    layer = genft_linear(in_dim, out_dim, generators=gens, use_bias=use_bias)
    gens.to(dtype)
    layer.to(dtype)
    return layer, gens


def genft_reference_output(layer, x):
    """The reference of ``layer(x)``, in fp64 (from the dequantised W0 when NF4)."""
    W0 = layer.base_weight().detach().double()
    t = {n: None if v is None else v.double() for n, v in genft_tensors(layer).items()}
    delta = genft_reference_delta(W0, t, layer.config)
    bias = layer.bias.double() if layer.bias is not None else None
    return F.linear(x.double(), W0 + delta, bias)


# ---- WeGeFT: dW = (alpha / r) * drop(W0) @ phi.T @ psi ----------------------------------
# (arXiv 2312.00700 and the authors' PEFT tuner; phi, psi of shape (r, in))


def wegeft_reference_delta(W0, phi, psi, alpha, r, mask=None):
    """WeGeFT's dW in fp64 from the formula; ``mask`` is the (already 1/(1-p)-scaled)
    dropout mask on W0, or None."""
    W0, phi, psi = (t.detach().double() if not t.requires_grad else t.double() for t in (W0, phi, psi))
    Wd = W0 if mask is None else W0 * mask
    return (alpha / r) * Wd @ phi.T @ psi


def wegeft_reference_output(layer, x, mask=None):
    """The reference of ``layer(x)``, in fp64."""
    W0 = layer.base_weight().detach().double()
    f = layer.factors
    delta = wegeft_reference_delta(W0, f.phi, f.psi, layer.config.alpha, layer.config.rank, mask)
    bias = layer.bias.double() if layer.bias is not None else None
    # the base term uses the undropped W0; only the generator's input is dropped
    return F.linear(x.double(), W0, bias) + F.linear(x.double(), delta)


class TinyWeGeFT(nn.Module):
    """A model root holding the shared factors (when shared) and some WeGeFT layers,
    ``shapes`` being ``{name: (module type, in_dim, out_dim)}``."""

    def __init__(self, config, shapes, use_bias=False):
        super().__init__()
        self.wegeft_factors = WeGeFTSharedFactors(config)
        self.layers = nn.ModuleDict(
            {
                name: wegeft_linear(
                    i, o, factors=self.wegeft_factors.factors_for(mtype, i), use_bias=use_bias
                )
                for name, (mtype, i, o) in shapes.items()
            }
        )


def make_wegeft_layer(in_dim, out_dim, *, shared=True, dtype=torch.float64, use_bias=False,
                      random_phi=True, random_psi=False, **cfg):
    """A WeGeFTLinear (rank 3, alpha 5 unless given) and the TinyWeGeFT holding it."""
    cfg.setdefault("rank", 3)
    cfg.setdefault("alpha", 5.0)
    config = WeGeFTConfig(shared=shared, **cfg)
    model = TinyWeGeFT(config, {"l": ("q_proj", in_dim, out_dim)}, use_bias=use_bias).to(dtype)
    layer = model.layers["l"]
    with torch.no_grad():
        if random_phi:  # phi starts at zero; make dW non-trivial for the checks
            layer.factors.phi.normal_()
        if random_psi:  # psi starts small (kaiming-uniform); a larger dW
            layer.factors.psi.normal_()
        if use_bias:
            layer.bias.normal_()
    return layer, model


# ---- either method ----------------------------------------------------------------------


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


# method -> (layer, x) -> the fp64 reference of layer(x)
REFERENCE_OUTPUT = {"genft": genft_reference_output, "wegeft": wegeft_reference_output}


class AdapterLayer(NamedTuple):
    """A layer of one method with what the checks on both methods need."""

    layer: nn.Module
    model: nn.Module  # every tensor the layer uses: the layer and its generators / factors
    reference: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (layer, x) -> fp64 reference of layer(x)


def build_adapter_layer(method, in_dim, out_dim, *, dtype=torch.float32, **cfg):
    """A ``method`` layer with a non-zero dW (GenFT: shared_dim = specific_dim = 2 unless
    given, random init; WeGeFT: see ``make_wegeft_layer``); ``cfg`` goes to that builder."""
    if method == "genft":
        cfg = {"shared_dim": 2, "specific_dim": 2, **cfg}
        layer, gens = make_genft_layer(in_dim, out_dim, dtype=dtype, **cfg)
        return AdapterLayer(layer, nn.ModuleList([layer, gens]), REFERENCE_OUTPUT[method])
    if method == "wegeft":
        layer, model = make_wegeft_layer(in_dim, out_dim, dtype=dtype, **cfg)
        return AdapterLayer(layer, model, REFERENCE_OUTPUT[method])
    raise ValueError(f"unknown method {method!r}, expected one of {METHODS}")
