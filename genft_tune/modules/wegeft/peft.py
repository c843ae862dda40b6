"""WeGeFT as a PEFT method: :class:`WeGeFTPeftConfig`, :class:`WeGeFTPeftLinear`,
:class:`WeGeFTPeftModel`, registered with PEFT when this module is imported (by
:mod:`genft_tune.peft`; needs the ``peft`` extra, so the package's ``__init__`` leaves it).

``dW = (alpha/r) W0 phi^T psi``. With ``shared`` (the default, the authors'
``tied_modules``) one ``(phi, psi)`` pair per module type lives once on the adapted
model (``base_model.wegeft_factors.<type>.phi`` in the saved file; see
:mod:`genft_tune.modules._peft_tuner`); otherwise each adapted linear holds its own
(``<module>.wegeft_layer_factors.phi``). The maths is
:mod:`genft_tune.modules.wegeft`'s; the names are the registry entry's
(:data:`~genft_tune.modules.wegeft.model.WEGEFT`'s ``peft_names``). ``dW`` is a
row-wise function of ``W0``, so a row permutation of ``W0`` (Hugging Face's q/k RoPE
order) permutes ``dW`` alike: adapters from the torchtune recipes need no conversion of
their rows.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from peft.utils import register_peft_method

from genft_tune.modules._base import linear_default_init
from genft_tune.modules._peft_tuner import AdapterPeftConfig, AdapterPeftLayer, AdapterPeftModel, move_like, peft_type
from genft_tune.modules.wegeft.config import PEFT_LAYER_FACTORS_ATTR, WeGeFTConfig
from genft_tune.modules.wegeft.layer import (
    wegeft_delta_weight,
    WeGeFTFactors,
    wegeft_merged_weight,
    wegeft_projection,
    WeGeFTSharedFactors,
    wegeft_update,
)
from genft_tune.modules.wegeft.model import WEGEFT

NAMES = WEGEFT.peft_names  # the registry entry's names in PEFT (the files use the same)
PREFIX = NAMES.prefix
PEFT_TYPE = peft_type(NAMES.peft_type)
LAYER_FACTORS = PEFT_LAYER_FACTORS_ATTR  # per-layer factors (shared=False), one per adapter


@dataclass
class WeGeFTPeftConfig(AdapterPeftConfig):
    """:class:`~genft_tune.modules.WeGeFTConfig`'s fields as a PEFT config, plus PEFT's
    ``target_modules`` (required) and friends; validated as :class:`WeGeFTConfig` is.

    ``shared_keys`` (module name -> key) groups module types under one shared pair
    (e.g. ``{"q_proj": "qk", "k_proj": "qk"}``); by default each module type has its own.
    ``init_weights=False`` starts ``phi`` as ``psi`` (``nn.Linear``'s init) instead of
    zeros: an adapter that changes the output at initialisation.
    """

    rank: int = WeGeFTConfig.rank
    alpha: float = WeGeFTConfig.alpha
    dropout: float = WeGeFTConfig.dropout
    shared: bool = WeGeFTConfig.shared
    recompute: bool = WeGeFTConfig.recompute
    shared_keys: Optional[Dict[str, str]] = field(default=None)

    method_config_cls = WeGeFTConfig
    method_peft_type = PEFT_TYPE


class WeGeFTPeftLinear(AdapterPeftLayer):
    """A PEFT tuner layer: ``base_layer(x) + (alpha/r) (x psi^T) (W0 phi^T)^T``."""

    adapter_layer_names = (LAYER_FACTORS,)
    _module_stores = (LAYER_FACTORS,)

    def update_layer(self, adapter_name: str, config: WeGeFTPeftConfig, shared: WeGeFTSharedFactors) -> None:
        if not hasattr(self, "_factors"):
            self._factors: Dict[str, WeGeFTFactors] = {}  # adapter -> its (phi, psi)
        cfg = config.method_config()
        weight = self.get_base_layer().weight
        if cfg.shared:
            key = (config.shared_keys or {}).get(self.module_name, self.module_name)
            new = key not in shared
            factors = shared.get(key, self.in_features)
            move_like(factors, weight)
        else:
            new = True
            factors = WeGeFTFactors(self.in_features, config=cfg)
            getattr(self, LAYER_FACTORS)[adapter_name] = factors
        if new and not config.init_weights and not factors.phi.is_meta:
            with torch.no_grad():
                linear_default_init(factors.phi, None)
        self._factors[adapter_name] = factors
        self._finish_update(adapter_name)

    def _shared_modules(self) -> Dict[str, nn.Module]:
        return getattr(self, "_factors", {})

    def _forget(self, adapter: str) -> None:
        self._shared_modules().pop(adapter, None)

    def _merged_weight(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        factors = self._factors[adapter]
        return wegeft_merged_weight(weight, factors.phi, factors.psi, factors.config)

    def _exact_delta(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        factors = self._factors[adapter]
        return wegeft_delta_weight(weight, factors.phi, factors.psi, factors.config)

    def _projection(self, adapter: str, weight: torch.Tensor, dropout: float) -> torch.Tensor:
        phi = self._factors[adapter].phi
        return wegeft_projection(weight.to(phi.dtype), phi, dropout)

    def _update(self, adapter: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        cfg = self._factors[adapter].config
        projection = self._projection(adapter, weight, cfg.dropout if self.training else 0.0)
        return self._eval_update(adapter, x, projection)

    def _cached_inputs(self, adapter: str) -> List[torch.Tensor]:
        return [self._factors[adapter].phi]

    def _eval_state(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        return self._projection(adapter, weight, 0.0)  # W0 phi^T, (out, r): the update then costs LoRA's

    def _eval_update(self, adapter: str, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        factors = self._factors[adapter]
        return wegeft_update(x.to(state.dtype), state, factors.psi, factors.config.scaling)

    def __repr__(self) -> str:
        return f"{WEGEFT.name}." + super().__repr__()


class WeGeFTPeftModel(AdapterPeftModel):
    """The PEFT tuner of WeGeFT: the shared ``(phi, psi)`` pairs of each adapter on the
    model (``wegeft_factors``), :class:`WeGeFTPeftLinear` on every target linear."""

    prefix: str = PREFIX
    tuner_layer_cls = WeGeFTPeftLinear
    root_attr = WEGEFT.root_attr

    def make_root(self, peft_config: WeGeFTPeftConfig) -> WeGeFTSharedFactors:
        return WeGeFTSharedFactors(peft_config.method_config())


register_peft_method(name=WEGEFT.name, config_cls=WeGeFTPeftConfig, model_cls=WeGeFTPeftModel, prefix=PREFIX)
