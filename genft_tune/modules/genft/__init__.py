"""GenFT layers: the layer-shared generator and the ``GenFTLinear`` adapter.

The maths follows ``GENFT_SPEC.md`` (arXiv 2506.11042 and its authors' code).
A frozen weight ``W0`` of shape ``(out, in)`` is adapted by ``W = W0 + dW`` with
``dW = G(W0)`` produced in two stages::

    H1    = act_in(ratio * W0 @ D1.T + c1)      D1 = [P1; A1]  (a+b, in)
    F_row = drop(act_out(H1 @ E1.T + d1))       E1 = [Q1 | B1] (in, a+b)
    H2    = act_in(F_row.T @ D2.T + c2)         D2 = [P2; A2]  (a+b, out)
    F_col = drop(act_out(H2 @ E2.T + d2))       E2 = [Q2 | B2] (out, a+b)
    dW    = scaling * F_col.T

``P*``/``Q*`` (and the biases) live in a :class:`GenFTGenerator` shared by every
layer with the same ``(out, in)``; ``A*``/``B*`` belong to each :class:`GenFTLinear`.

Layout, as HF PEFT's tuners: ``config`` (GenFTConfig), ``generator`` (the shared half),
``layer`` (GenFTLinear), ``model`` (model-level helpers and the ``GENFT`` adapter kind),
``peft`` (its Hugging Face PEFT tuner; needs the ``peft`` extra, so not imported here:
``import genft_tune.peft`` does), ``_fused``/``_fused_kernels`` (experimental kernels).
"""

from genft_tune.modules.genft.config import ACTIVATIONS, FACTOR_INITS, GenFTConfig
from genft_tune.modules.genft.generator import (
    GenFTGenerators,
    generator_key,
    merged_weight_fp32,
)
from genft_tune.modules.genft.layer import genft_linear, GenFTLinear
from genft_tune.modules.genft.model import (
    GENERATORS_ATTR,
    GENFT,
    genft_adapter_init_state_dict,
    get_genft_adapter_state_dict,
    get_genft_config,
    get_genft_modules,
    is_genft_key,
    merge_genft_state_dict,
)

__all__ = [
    "ACTIVATIONS",
    "FACTOR_INITS",
    "GENERATORS_ATTR",
    "GENFT",
    "genft_adapter_init_state_dict",
    "genft_linear",
    "GenFTConfig",
    "GenFTGenerators",
    "GenFTLinear",
    "generator_key",
    "get_genft_adapter_state_dict",
    "get_genft_config",
    "get_genft_modules",
    "is_genft_key",
    "merge_genft_state_dict",
    "merged_weight_fp32",
]
