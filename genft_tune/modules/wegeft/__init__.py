"""WeGeFT layers: weight-generative fine-tuning as a torchtune adapter.

WeGeFT (Savadikar, Song, Wu; arXiv 2312.00700, ICML 2025) generates the weight
residual of a frozen linear layer from its own pretrained weight ``W0 (out, in)``
with two linear maps ``phi, psi`` of shape ``(r, in)``::

    dW = (alpha / r) * drop(W0) @ phi.T @ psi                         (out, in)
    y  = x @ W0.T + (alpha / r) * (x @ psi.T) @ (drop(W0) @ phi.T).T  (+ bias)

What the authors' code does (github savadikarc/gift,
``peft/src/peft/tuners/wegeft/{layer,model,config}.py``), and so what this module does:

- ``phi`` and ``psi`` are ``nn.Linear(in, r, bias=False)``: weights of shape
  ``(r, in)``, the *input* dimension (``transform_dim="input"``, the default and
  the one all their scripts use). Only ``in`` enters the factors, so non-square
  weights need nothing special: ``W0 @ phi.T`` is ``(out, r)``, times ``psi``
  gives ``(out, in)``; layers with the same ``in`` but different ``out`` (``q``
  and ``k`` under GQA) can share one pair.
- Init: ``psi`` kaiming-uniform (``a = sqrt(5)``, ``nn.Linear``'s default),
  ``phi`` zeros, so ``dW = 0`` at step 0.
- Scaling ``alpha / r``; their training script's defaults are ``r = 64``,
  ``alpha = 128``, ``dropout = 0`` (0.1 in the commonsense runs), which are ours.
- Dropout (``nn.Dropout``) acts on the frozen weight ``W0``, not on the input:
  one ``(out, in)`` mask per forward, drawn after casting ``W0`` to the factors'
  dtype and before ``phi``; the base term ``x @ W0.T`` uses the undropped weight.
  So the efficient forward stays exact: the dropped ``W0`` is projected once per
  forward to ``(out, r)``, never per token, and every token sees the same mask
  (that is what the dense ``W0 + dW`` with a dropped ``W0`` means). Under
  ``config.recompute`` that projection runs under activation checkpointing
  whenever it materialises an ``(out, in)`` tensor (dropout mask, NF4 dequant,
  dtype cast), so no ``(out, in)`` copy is kept for backward; the RNG state is
  restored on recomputation, so the mask is identical.
- Sharing (``tied_modules``): their scripts tie each module type across all
  layers (``model.layers.\\d+.self_attn.q_proj`` ...), one ``(phi, psi)`` per
  type; the first layer of a group owns the tensors and the others get them via
  a forward pre-hook. Here shared factors live in one :class:`WeGeFTSharedFactors`
  registered on the model root as ``wegeft_factors`` (keys
  ``wegeft_factors.<type>.phi``), like ``genft_generators``; per-layer factors
  are a submodule of the layer (keys ``<layer>.wegeft.phi``).

Where we differ from the authors' code, deliberately: their merge applies the
dropout module (a random mask when the model is in training mode) and their
unmerge restores a ``base_weight_copy`` that ``merge`` never saves; here merge
never uses dropout and :meth:`WeGeFTLinear.unmerge` restores the ``W0`` saved by
:meth:`WeGeFTLinear.merge`, bit for bit. Their ``transform_dim="output"`` branch
does not type-check for ``r != out`` and is not implemented here.

Layout, as HF PEFT's tuners: ``config`` (WeGeFTConfig), ``layer`` (the factors and
WeGeFTLinear), ``model`` (model-level helpers and the ``WEGEFT`` adapter kind), ``peft``
(its Hugging Face PEFT tuner; needs the ``peft`` extra, so not imported here: ``import
genft_tune.peft`` does).
"""

from genft_tune.modules.wegeft.config import WeGeFTConfig
from genft_tune.modules.wegeft.layer import (
    WeGeFTFactors,
    WeGeFTLinear,
    WeGeFTSharedFactors,
    wegeft_linear,
    wegeft_merged_weight,
)
from genft_tune.modules.wegeft.model import (
    get_wegeft_adapter_state_dict,
    get_wegeft_config,
    get_wegeft_modules,
    get_wegeft_target_modules,
    is_wegeft_key,
    merge_wegeft_state_dict,
    WEGEFT,
)

__all__ = [
    "get_wegeft_adapter_state_dict",
    "get_wegeft_config",
    "get_wegeft_modules",
    "get_wegeft_target_modules",
    "is_wegeft_key",
    "merge_wegeft_state_dict",
    "WEGEFT",
    "wegeft_linear",
    "wegeft_merged_weight",
    "WeGeFTConfig",
    "WeGeFTFactors",
    "WeGeFTLinear",
    "WeGeFTSharedFactors",
]
