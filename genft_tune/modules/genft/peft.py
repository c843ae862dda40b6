"""GenFT as a PEFT method: :class:`GenFTPeftConfig`, :class:`GenFTPeftLinear`,
:class:`GenFTPeftModel`, registered with PEFT when this module is imported (by
:mod:`genft_tune.peft`; needs the ``peft`` extra, so the package's ``__init__`` leaves it).

The shared generators live once, on the model (``base_model.genft_generators.<OUT>x<IN>.*``
in the saved file; :mod:`genft_tune.modules._peft_tuner`), not per layer; each adapted
linear holds its specific factors (``genft_A1`` ...). The maths is
:class:`~genft_tune.modules.genft.generator.GenFTGenerator`'s; the names are the registry entry's
(:data:`~genft_tune.modules.genft.model.GENFT`'s ``peft_names``).

Adapters trained by this package's torchtune recipes saw ``q_proj``/``k_proj`` rows of
Llama-style models in torchtune's RoPE order (Hugging Face permutes them). A GenFT
``dW`` is no row-wise function of ``W0``, so such an adapter records
``torchtune_rope_heads`` (``{"q_proj": 32, "k_proj": 8}``): the layer generates ``dW``
from ``W0`` in torchtune's row order and returns it in Hugging Face's, exactly the
``dW`` the recipe trained.
"""

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from peft.utils import register_peft_method

from genft_tune.modules._peft_tuner import AdapterPeftConfig, AdapterPeftLayer, AdapterPeftModel, move_like, peft_type
from genft_tune.modules._rope import tune_rows_in_hf_order
from genft_tune.modules.genft.config import GenFTConfig
from genft_tune.modules.genft.generator import (
    delta_weight_fp32,
    generator_key,
    GenFTGenerators,
    init_keeping_scale,
    merged_weight_fp32,
    tie_specific_factors,
)
from genft_tune.modules.genft.layer import initialize_specific_factors, SPECIFIC, specific_factor_shapes
from genft_tune.modules.genft.model import GENFT

NAMES = GENFT.peft_names  # the registry entry's names in PEFT (the files use the same)
PREFIX = NAMES.prefix
PEFT_TYPE = peft_type(NAMES.peft_type)


@dataclass
class GenFTPeftConfig(AdapterPeftConfig):
    """:class:`~genft_tune.modules.GenFTConfig`'s fields as a PEFT config, plus PEFT's
    ``target_modules`` (required: e.g. ``["q_proj", "v_proj"]``) and friends; validated
    as :class:`GenFTConfig` is, with the same messages.

    ``torchtune_rope_heads`` (module name -> number of heads) is set by
    ``genft-tune export-peft`` for adapters trained in torchtune's q/k row order (see
    the module docstring); leave it empty for adapters trained with PEFT. ``recompute``
    and ``fused`` are carried for the recipes (the same adapter trains there with them);
    the PEFT layer always runs the eager generator and keeps its graph.
    ``init_weights=False`` (PEFT's switch for an adapter that acts at initialisation,
    for tests) is ``zero_init=False`` with every generator matrix drawn to keep the size
    of its input (:func:`~genft_tune.modules.genft.generator.init_keeping_scale`), so
    that ``dW`` is about ``ratio * scaling * W0`` in size (as HiRA's random init gives a
    ``dW = W0 * BA`` of ``W0``'s order), whatever the scale of ``W0``.
    """

    shared_dim: int = GenFTConfig.shared_dim
    specific_dim: int = GenFTConfig.specific_dim
    ratio: float = GenFTConfig.ratio
    scaling: float = GenFTConfig.scaling
    act_in: str = GenFTConfig.act_in
    act_out: str = GenFTConfig.act_out
    dropout: float = GenFTConfig.dropout
    init_a: str = GenFTConfig.init_a
    init_b: str = GenFTConfig.init_b
    generator_bias: bool = GenFTConfig.generator_bias
    zero_init: bool = GenFTConfig.zero_init
    recompute: bool = GenFTConfig.recompute
    stages: str = GenFTConfig.stages
    convention: str = GenFTConfig.convention
    fused: str = GenFTConfig.fused
    torchtune_rope_heads: Optional[Dict[str, int]] = field(default=None)

    method_config_cls = GenFTConfig
    method_peft_type = PEFT_TYPE

    def __post_init__(self):
        for name, heads in (self.torchtune_rope_heads or {}).items():
            if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
                raise ValueError(f"torchtune_rope_heads[{name!r}] must be a number of heads >= 1, got {heads!r}")
        super().__post_init__()

    def method_config(self) -> GenFTConfig:
        config = super().method_config()
        return config if self.init_weights else replace(config, zero_init=False)


class GenFTPeftLinear(AdapterPeftLayer):
    """A PEFT tuner layer: ``base_layer(x) + x @ dW.T`` with ``dW`` from the shared
    generator of the weight's shape and this layer's specific factors."""

    adapter_layer_names = tuple(NAMES.to_peft(n) for n in SPECIFIC)  # genft_A1 ...

    @property
    def tied(self) -> bool:
        return self.in_features == self.out_features

    def update_layer(self, adapter_name: str, config: GenFTPeftConfig, generators: GenFTGenerators) -> None:
        if not hasattr(self, "_generators"):
            self._generators: Dict[str, nn.Module] = {}  # adapter -> its GenFTGenerator (on the model)
            self._rope_rows: Dict[str, Optional[torch.Tensor]] = {}
        weight = self.get_base_layer().weight
        new_generator = generator_key(self.out_features, self.in_features) not in generators
        generator = generators.get(self.out_features, self.in_features)
        move_like(generator, weight)
        self._generators[adapter_name] = generator
        heads = (config.torchtune_rope_heads or {}).get(self.module_name)
        self._rope_rows[adapter_name] = None if heads is None else tune_rows_in_hf_order(self.out_features, heads)
        cfg = config.method_config()
        shapes = specific_factor_shapes(cfg, self.in_features, self.out_features)
        factors = {n: nn.Parameter(torch.empty(*s)) for n, s in shapes.items()}
        initialize_specific_factors(factors, cfg, tied=self.tied)
        if not config.init_weights:  # an adapter that clearly acts (PEFT's tests); the shared half once
            init_keeping_scale(factors, cfg)
            if new_generator:
                init_keeping_scale(dict(generator.named_parameters(recurse=False)), cfg)
        for name, param in factors.items():
            getattr(self, NAMES.to_peft(name))[adapter_name] = param
        self._finish_update(adapter_name)

    def _shared_modules(self) -> Dict[str, nn.Module]:
        return getattr(self, "_generators", {})

    def _forget(self, adapter: str) -> None:
        self._shared_modules().pop(adapter, None)
        getattr(self, "_rope_rows", {}).pop(adapter, None)

    def _specific(self, adapter: str):
        def get(name):
            store = getattr(self, NAMES.to_peft(name))
            return store[adapter] if adapter in store else None

        return tie_specific_factors(get("A1"), get("B1"), get("A2"), get("B2"), tied=self.tied)

    def _in_generator_rows(self, adapter: str, weight: torch.Tensor, generate):
        """``generate(W0)`` with ``W0``'s rows in the order the adapter was trained on."""
        rows = self._rope_rows[adapter]
        if rows is None:
            return generate(weight)
        rows = rows.to(weight.device)
        return generate(weight[torch.argsort(rows)])[rows]

    def _merged_weight(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        generator, specific = self._generators[adapter], self._specific(adapter)
        return self._in_generator_rows(adapter, weight, lambda w: merged_weight_fp32(w, generator, specific))

    def _exact_delta(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        generator, specific = self._generators[adapter], self._specific(adapter)
        return self._in_generator_rows(adapter, weight, lambda w: delta_weight_fp32(w, generator, specific))

    def _update(self, adapter: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self._dtype(adapter)), self._delta_weight(adapter, weight, training=self.training))

    def _dtype(self, adapter: str) -> torch.dtype:
        generator, specific = self._generators[adapter], self._specific(adapter)
        return next(t.dtype for t in (*specific, *generator.shared_tensors()) if t is not None)

    def _delta_weight(self, adapter: str, weight: torch.Tensor, training: bool) -> torch.Tensor:
        generator, specific = self._generators[adapter], self._specific(adapter)
        return self._in_generator_rows(
            adapter, weight.to(self._dtype(adapter)),
            lambda w: generator.delta_weight(w, *specific, training=training),
        )

    def _cached_inputs(self, adapter: str) -> List[torch.Tensor]:
        specific = [t for t in self._specific(adapter) if t is not None]
        return specific + self._generators[adapter].shared_tensors()

    def _eval_state(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        return self._delta_weight(adapter, weight, training=False)  # dW, in the adapter's dtype

    def _eval_update(self, adapter: str, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(state.dtype), state)

    def __repr__(self) -> str:
        return f"{GENFT.name}." + super().__repr__()


class GenFTPeftModel(AdapterPeftModel):
    """The PEFT tuner of GenFT: one :class:`GenFTGenerators` per adapter on the model
    (``genft_generators``), :class:`GenFTPeftLinear` on every target linear."""

    prefix: str = PREFIX
    tuner_layer_cls = GenFTPeftLinear
    root_attr = GENFT.root_attr

    def make_root(self, peft_config: GenFTPeftConfig) -> GenFTGenerators:
        return GenFTGenerators(peft_config.method_config())


register_peft_method(name=GENFT.name, config_cls=GenFTPeftConfig, model_cls=GenFTPeftModel, prefix=PREFIX)
