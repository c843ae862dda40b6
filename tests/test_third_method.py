"""A third adapter method is one package and one registry entry.

The method below (``rowscale``: ``dW = diag(s) W0``, one learned scale per output row,
``s = 0`` at step 0) lives only in this file. Registered with ``register_adapter_kind``,
it trains, saves, resumes mid-run, merges (in the recipe and with ``genft-tune merge``)
and verifies (``--verify``) through the real recipe and CLI, with no other file of the
package changed.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from safetensors.torch import load_file
from _recipe_runs import (
    read_metrics,
    run_recipe_in_process,
    run_single_device_with_snapshot,
    SINGLE_DEVICE_RECIPE,
    write_config,
)
from _tiny_llama import base_config
from torch import nn

from genft_tune._cli.genft import main as cli_main
from genft_tune.models import adapter_model
from genft_tune.modules import AdapterKind, AdapterLinear, register_adapter_kind
from genft_tune.modules._method import clean_module_name

# ---- the method: config, layer, kind (what a new package would hold) ----------------


@dataclass(frozen=True)
class RowScaleConfig:
    dropout: float = 0.0  # AdapterLinear's cache skips layers whose dropout is active

    def to_dict(self):
        return asdict(self)


class RowScaleLinear(AdapterLinear):
    state_dict_merge_function = "merge_state_dict of the rowscale kind"

    def __init__(self, in_dim, out_dim, *, config: RowScaleConfig, use_bias=False, quantize_base=False, base=None):
        super().__init__(in_dim, out_dim, use_bias=use_bias, quantize_base=quantize_base, base=base)
        self.config = config
        self.row_scale = nn.Parameter(torch.zeros(out_dim))

    def adapter_params(self) -> List[str]:
        return ["row_scale"]

    def initialize_parameters(self):
        nn.init.zeros_(self.row_scale)

    def _tracked_tensors(self):
        return [self.weight, self.row_scale]

    def _merged_weight_from(self, weight):
        w = weight.float()
        return (w + self.row_scale.float()[:, None] * w).to(weight.dtype)

    def _adapted_forward(self, x, tensors, needs_graph):
        base = self._base_forward(x)
        return base + self.row_scale * torch.nn.functional.linear(x, self.base_weight())


class RowScaleKind(AdapterKind):
    name = "rowscale"
    label = "RowScale"
    description = "RowScale (a test method)"
    config_cls = RowScaleConfig
    layer_cls = RowScaleLinear
    root_attr = "rowscale_root"

    def make_root(self, config):
        root = nn.Module()
        root.config = config
        return root

    def make_linear(self, root, name, in_dim, out_dim, *, use_bias=False, quantize_base=False, base=None, **kw):
        return RowScaleLinear(in_dim, out_dim, config=root.config, use_bias=use_bias, base=base)

    def is_key(self, key: str) -> bool:
        return key.endswith(".row_scale")

    def merge_state_dict(self, state_dict, *, config, target_modules) -> Dict[str, torch.Tensor]:
        out = {k: v for k, v in state_dict.items() if not self.is_key(k)}
        for t in target_modules:
            w = state_dict[f"{t}.weight"].float()
            out[f"{t}.weight"] = (w + state_dict[f"{t}.row_scale"].float()[:, None] * w).to(state_dict[f"{t}.weight"].dtype)
        return out

    def init_state_dict(self, model, *, seed):
        return {f"{clean_module_name(n)}.row_scale": torch.zeros(m.out_dim)
                for n, m in model.named_modules() if isinstance(m, RowScaleLinear)}


register_adapter_kind(RowScaleKind())


def rowscale_model(*, base, targets, base_kwargs=None):
    """The method's model builder (what a config's ``model._component_`` names)."""
    return adapter_model(base=base, config=RowScaleConfig(), targets=targets, base_kwargs=base_kwargs)


# ---- through the real recipe and CLI --------------------------------------------------


def _cfg(tmp_path: Path, **overrides):
    from _tiny_llama import TINY

    cfg = base_config(tmp_path, max_steps_per_epoch=4, save_every_n_steps=2, **{"optimizer.lr": 5e-2}, **overrides)
    dims = {k: v for k, v in TINY.items()}
    cfg["model"] = {"_component_": "test_third_method.rowscale_model",
                    "base": "torchtune.models.llama3._component_builders.llama3",
                    "base_kwargs": dims, "targets": ["q_proj", "v_proj"]}
    return cfg


def test_a_registered_third_method_trains_saves_resumes_merges_and_verifies(tmp_path, capsys):
    cfg = _cfg(tmp_path / "a")
    cfg_path = write_config(cfg, tmp_path / "a.yaml")
    snapshot = tmp_path / "snapshot"
    run_single_device_with_snapshot(cfg_path, crash_after_step=3, snapshot=snapshot)  # uninterrupted; snapshot at 3 holds the step-2 checkpoint
    out = Path(cfg["output_dir"])
    losses = read_metrics(out / "logs" / "log.txt")["loss"]
    assert losses[4] < losses[1]  # it trains

    adapter = load_file(str(out / "epoch_0" / "genft_adapter.safetensors"))
    assert sorted(adapter) == [f"layers.{i}.attn.{m}.row_scale" for i in range(2) for m in ("q_proj", "v_proj")]
    assert all(v.abs().max() > 0 for v in adapter.values())

    # resume from the snapshot (step-2 checkpoint): the same losses and the same final adapter
    resumed = dict(cfg, output_dir=str(snapshot), resume_from_checkpoint=True)
    resumed["metric_logger"] = {**cfg["metric_logger"], "filename": "resumed.txt"}
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(resumed, tmp_path / "resume.yaml"))
    again = read_metrics(snapshot / "logs" / "resumed.txt")["loss"]
    for step in (3, 4):
        assert again[step] == pytest.approx(losses[step], rel=1e-5)
    b = load_file(str(snapshot / "epoch_0" / "genft_adapter.safetensors"))
    assert all(torch.allclose(adapter[k], b[k], rtol=1e-5, atol=1e-7) for k in adapter)

    # genft-tune merge --verify; the recipe's own merge agrees
    base = Path(cfg["checkpointer"]["checkpoint_dir"])
    rc = cli_main(["merge", "--base", str(base), "--adapter", str(out / "epoch_0"), "--output", str(tmp_path / "m"),
                   "--verify", "--tolerance", "1e-5"])
    assert rc == 0, capsys.readouterr().err
    ours = load_file(str(tmp_path / "m" / "model.safetensors"))
    recipe = load_file(str(next((out / "epoch_0").glob("model-*.safetensors"))))
    for key, value in ours.items():
        torch.testing.assert_close(value, recipe[key], rtol=1e-6, atol=1e-6)
