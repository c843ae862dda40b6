"""What is WeGeFT's own in the recipes (the recipe detects the method): the adapter-method
object, its adapter files, resuming with the other method refused, the 2-process CPU
distributed run equal to one device, and the image recipe's merged WeGeFT ViT. Training,
mid-epoch resume and the merged checkpoint in transformers run for both methods in
``test_recipes.py``. Tiny Llama / ViT, CPU, fp32."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from test_recipes_fixtures import (
    base_config,
    losses,
    RECIPES_DIR,
    run_recipe_in_process,
    SINGLE_DEVICE_RECIPE,
    subprocess_env,
    TINY,
    WEGEFT_MODEL,
    WEGEFT_RANK,
    wegeft_config,
    write_config,
    write_tiny_checkpoint,
)


def _build(model_cfg: dict, *, device: str = "cpu", dtype=torch.float32, seed: int = 0):
    from torchtune import config as tt_config
    from torchtune.training import set_default_dtype

    torch.manual_seed(seed)
    with set_default_dtype(dtype), torch.device(device):
        return tt_config.instantiate(OmegaConf.create(model_cfg))


def test_adapter_method_detects_wegeft_and_genft(tmp_path):
    from genft_tune.modules.genft import is_genft_key
    from genft_tune.modules.wegeft import get_wegeft_target_modules, is_wegeft_key
    from genft_tune.modules import get_adapter_kind
    from genft_tune.modules.genft import genft_adapter_init_state_dict
    from genft_tune.training import get_model_adapter
    from genft_tune.training._targets import adapter_target_modules

    wegeft = get_model_adapter(_build(WEGEFT_MODEL))
    assert (wegeft.name, wegeft.label) == ("wegeft", "WeGeFT")
    assert wegeft.config.to_dict()["rank"] == WEGEFT_RANK
    assert wegeft.target_modules == get_wegeft_target_modules(_build(WEGEFT_MODEL))
    assert wegeft.is_key("wegeft_factors.q_proj.phi") and not wegeft.is_key("layers.0.attn.q_proj.weight")

    # GenFT: the same values the recipes used before the abstraction
    genft_cfg = base_config(tmp_path)["model"]
    model = _build(genft_cfg)
    genft = get_model_adapter(model)
    assert genft.name == "genft" and genft.is_key is is_genft_key and wegeft.is_key is is_wegeft_key
    assert genft.target_modules == adapter_target_modules(model, get_adapter_kind("genft"))
    a, b = genft.init_state_dict(model, seed=3), genft_adapter_init_state_dict(model, seed=3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_method_refuses_neither_and_both(tmp_path):
    from torch import nn

    from genft_tune.training import find_model_adapter, get_model_adapter

    plain = nn.Sequential(nn.Linear(4, 4))
    assert find_model_adapter(plain) is None
    with pytest.raises(ValueError, match="no GenFT or WeGeFT layers"):
        get_model_adapter(plain)
    both = _build(base_config(tmp_path)["model"])
    both.other = _build(WEGEFT_MODEL)
    with pytest.raises(ValueError, match="both GenFT and WeGeFT"):
        get_model_adapter(both)


def test_wegeft_init_depends_on_the_seed_and_layout_only():
    """Fresh factors: phi zero (dW = 0), psi from the seed alone, whatever the device,
    dtype or global RNG state; the keys are exactly the model's adapter keys."""
    from genft_tune.modules.wegeft import is_wegeft_key
    from genft_tune.training import get_model_adapter

    cpu = _build(WEGEFT_MODEL, seed=1)
    meta = _build(WEGEFT_MODEL, device="meta", dtype=torch.bfloat16, seed=2)
    method = get_model_adapter(cpu)
    a, b = method.init_state_dict(cpu, seed=7), method.init_state_dict(meta, seed=7)
    assert a.keys() == b.keys() == {k for k in cpu.state_dict() if is_wegeft_key(k)}
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)
    assert all(v.abs().max() == 0 for k, v in a.items() if k.endswith(".phi"))
    assert any(not torch.equal(a[k], v) for k, v in method.init_state_dict(cpu, seed=8).items())
    # per-layer factors (wegeft_shared: False) get one pair per layer
    per_layer = _build({**WEGEFT_MODEL, "wegeft_shared": False})
    keys = get_model_adapter(per_layer).init_state_dict(per_layer, seed=0).keys()
    assert keys == {k for k in per_layer.state_dict() if is_wegeft_key(k)}
    assert len(keys) == 2 * 2 * TINY["num_layers"]


def test_wegeft_target_check_names_the_field():
    from genft_tune.modules import get_adapter_kind
    from genft_tune.training._targets import check_adapter_targets

    def check_wegeft_targets(cfg, model):
        check_adapter_targets(cfg, model, get_adapter_kind("wegeft"))

    model = _build(WEGEFT_MODEL)
    check_wegeft_targets(OmegaConf.create(WEGEFT_MODEL), model)
    with pytest.raises(ValueError, match="wegeft_attn_modules asks for 'k_proj'"):
        check_wegeft_targets(OmegaConf.create({**WEGEFT_MODEL, "wegeft_attn_modules": ["k_proj"]}), model)
    with pytest.raises(ValueError, match="apply_wegeft_to_mlp"):
        check_wegeft_targets(OmegaConf.create({**WEGEFT_MODEL, "apply_wegeft_to_mlp": True}), model)


def test_wegeft_two_cpu_processes_match_single_device(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "base")
    common = {
        "max_steps_per_epoch": 3,
        "optimizer.lr": 0.01,
        "model.wegeft_dropout": 0.0,  # dropout masks come from per-process RNGs
        "gradient_accumulation_steps": 2,
    }
    single = wegeft_config(tmp_path / "single", ckpt_dir=ckpt, batch_size=4, **common)
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(single, tmp_path / "single.yaml"))
    dist = wegeft_config(tmp_path / "dist", ckpt_dir=ckpt, batch_size=2, **common)
    cmd = [
        str(Path(sys.executable).parent / "tune"), "run", "--nproc_per_node", "2",
        "genft_finetune_distributed", "--config", str(write_config(dist, tmp_path / "dist.yaml")),
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env([RECIPES_DIR]), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ref = losses(Path(single["output_dir"]) / "logs" / "log.txt")
    got = losses(Path(dist["output_dir"]) / "logs" / "log.txt")
    assert len(ref) == len(got) == 3
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-5)
    a = load_file(Path(single["output_dir"]) / "epoch_0" / "genft_adapter.safetensors")
    b = load_file(Path(dist["output_dir"]) / "epoch_0" / "genft_adapter.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("wegeft_factors.") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_wegeft_vit_merged_model_in_transformers(tmp_path):
    """The image recipe merges a WeGeFT ViT too: its ``hf_model/`` is a plain
    ViTForImageClassification (no factor tensors) with the trained model's logits."""
    from test_image_recipe import _cfg, _load_recipe, _make_folder, CLASSES, SIZE
    from transformers import ViTForImageClassification

    from genft_tune.models.vit import save_hf_vit, vit_hf_config, vit_tiny

    torch.manual_seed(0)
    base = vit_tiny(5, image_size=SIZE, patch_size=4)
    save_hf_vit(base.state_dict(), config=vit_hf_config(base), output_dir=tmp_path / "base")
    cfg = _cfg(
        tmp_path, _make_folder(tmp_path / "images"), tmp_path / "base",
        epochs=1, max_steps_per_epoch=3, batch_size=6, save_merged=True,
    )
    cfg.model = OmegaConf.create(
        {
            "_component_": "genft_tune.models.vit.vit_tiny_wegeft",
            "num_classes": len(CLASSES),
            "image_size": SIZE,
            "patch_size": 4,
            "wegeft_attn_modules": ["q_proj", "v_proj"],
            "wegeft_rank": 4,
            "wegeft_alpha": 8.0,
        }
    )
    recipe = _load_recipe().run(cfg)
    assert recipe._model.wegeft_factors.q_proj.phi.abs().sum() > 0  # dW != 0
    hf_dir = Path(cfg.output_dir) / "hf_model"
    assert not [k for k in load_file(hf_dir / "model.safetensors") if "wegeft" in k]
    hf = ViTForImageClassification.from_pretrained(hf_dir).eval()
    pixels = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = recipe._model.eval()(pixels)
        torch.testing.assert_close(hf(pixel_values=pixels).logits, ours, atol=1e-4, rtol=1e-4)
