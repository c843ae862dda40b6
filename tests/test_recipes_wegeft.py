"""WeGeFT through the same recipes as GenFT (the recipe detects the method): the
adapter-method object, training, adapter files, mid-epoch resume, the merged checkpoint
in plain transformers, the 2-process CPU distributed run equal to one device, and the
image recipe's merged WeGeFT ViT. Tiny Llama / ViT, CPU, fp32."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from test_recipes_fixtures import (
    base_config,
    losses,
    read_metrics,
    RECIPES_DIR,
    run_recipe_in_process,
    run_single_device_with_snapshot,
    SINGLE_DEVICE_RECIPE,
    subprocess_env,
    TINY,
    write_config,
    write_tiny_checkpoint,
)

from genft_tune.checkpointing import load_genft_adapter
from genft_tune.modules import wegeft_merged_weight, WeGeFTConfig

RANK = 4
WEGEFT_MODEL = {
    "_component_": "genft_tune.models.llama.llama_wegeft",
    "wegeft_attn_modules": ["q_proj", "v_proj"],
    **TINY,
    "tie_word_embeddings": False,
    "wegeft_rank": RANK,
    "wegeft_alpha": 2.0 * RANK,
    "wegeft_dropout": 0.1,  # exercises the RNG state on resume
    "wegeft_shared": True,
}
# 64 samples / batch 2 = 32 batches, 2 per optimizer step, 6 steps per epoch, 2 epochs;
# saves at steps 4 and 8 (mid-epoch) and at both epoch ends.
RUN = {
    "batch_size": 2,
    "gradient_accumulation_steps": 2,
    "epochs": 2,
    "max_steps_per_epoch": 6,
    "save_every_n_steps": 4,
    "optimizer.lr": 0.01,
    "clip_grad_norm": 1.0,
}
CRASH_AFTER_STEP = 9  # resume then starts from the step-8 checkpoint, mid epoch 2


def _build(model_cfg: dict, *, device: str = "cpu", dtype=torch.float32, seed: int = 0):
    from torchtune import config as tt_config
    from torchtune.training import set_default_dtype

    torch.manual_seed(seed)
    with set_default_dtype(dtype), torch.device(device):
        return tt_config.instantiate(OmegaConf.create(model_cfg))


def test_adapter_method_detects_wegeft_and_genft(tmp_path):
    from genft_tune.modules import get_wegeft_target_modules, is_genft_key, is_wegeft_key
    from genft_tune.training import genft_adapter_init_state_dict, genft_target_modules, get_adapter_method

    wegeft = get_adapter_method(_build(WEGEFT_MODEL))
    assert (wegeft.name, wegeft.label) == ("wegeft", "WeGeFT")
    assert wegeft.config.to_dict()["rank"] == RANK
    assert wegeft.target_modules == get_wegeft_target_modules(_build(WEGEFT_MODEL))
    assert wegeft.is_key("wegeft_factors.q_proj.phi") and not wegeft.is_key("layers.0.attn.q_proj.weight")

    # GenFT: the same values the recipes used before the abstraction
    genft_cfg = base_config(tmp_path)["model"]
    model = _build(genft_cfg)
    genft = get_adapter_method(model)
    assert genft.name == "genft" and genft.is_key is is_genft_key and wegeft.is_key is is_wegeft_key
    assert genft.target_modules == genft_target_modules(model)
    a, b = genft.init_state_dict(model, seed=3), genft_adapter_init_state_dict(model, seed=3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_method_refuses_neither_and_both(tmp_path):
    from torch import nn

    from genft_tune.training import find_adapter_method, get_adapter_method

    plain = nn.Sequential(nn.Linear(4, 4))
    assert find_adapter_method(plain) is None
    with pytest.raises(ValueError, match="no GenFT or WeGeFT layers"):
        get_adapter_method(plain)
    both = _build(base_config(tmp_path)["model"])
    both.other = _build(WEGEFT_MODEL)
    with pytest.raises(ValueError, match="both GenFT and WeGeFT"):
        get_adapter_method(both)


def test_wegeft_init_depends_on_the_seed_and_layout_only():
    """Fresh factors: phi zero (dW = 0), psi from the seed alone, whatever the device,
    dtype or global RNG state; the keys are exactly the model's adapter keys."""
    from genft_tune.modules import is_wegeft_key
    from genft_tune.training import get_adapter_method

    cpu = _build(WEGEFT_MODEL, seed=1)
    meta = _build(WEGEFT_MODEL, device="meta", dtype=torch.bfloat16, seed=2)
    method = get_adapter_method(cpu)
    a, b = method.init_state_dict(cpu, seed=7), method.init_state_dict(meta, seed=7)
    assert a.keys() == b.keys() == {k for k in cpu.state_dict() if is_wegeft_key(k)}
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)
    assert all(v.abs().max() == 0 for k, v in a.items() if k.endswith(".phi"))
    assert any(not torch.equal(a[k], v) for k, v in method.init_state_dict(cpu, seed=8).items())
    # per-layer factors (wegeft_shared: False) get one pair per layer
    per_layer = _build({**WEGEFT_MODEL, "wegeft_shared": False})
    keys = get_adapter_method(per_layer).init_state_dict(per_layer, seed=0).keys()
    assert keys == {k for k in per_layer.state_dict() if is_wegeft_key(k)}
    assert len(keys) == 2 * 2 * TINY["num_layers"]


def test_wegeft_target_check_names_the_field():
    from genft_tune.training import check_wegeft_targets

    model = _build(WEGEFT_MODEL)
    check_wegeft_targets(OmegaConf.create(WEGEFT_MODEL), model)
    with pytest.raises(ValueError, match="wegeft_attn_modules asks for 'k_proj'"):
        check_wegeft_targets(OmegaConf.create({**WEGEFT_MODEL, "wegeft_attn_modules": ["k_proj"]}), model)
    with pytest.raises(ValueError, match="apply_wegeft_to_mlp"):
        check_wegeft_targets(OmegaConf.create({**WEGEFT_MODEL, "apply_wegeft_to_mlp": True}), model)


def wegeft_config(tmp_path: Path, **overrides):
    cfg = base_config(tmp_path, **overrides)
    cfg["model"] = dict(WEGEFT_MODEL)
    for key, value in overrides.items():  # model.* overrides apply to the WeGeFT model
        if key.startswith("model."):
            cfg["model"][key.split(".", 1)[1]] = value
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted WeGeFT run; at step 9 its output folder is copied, which is
    what a run that crashed right there would have left on disk."""
    tmp = tmp_path_factory.mktemp("wegeft")
    cfg = wegeft_config(tmp, **RUN)
    cfg_path = write_config(cfg, tmp / "config.yaml")
    out = Path(cfg["output_dir"])
    snapshot = tmp / "crashed"
    run_single_device_with_snapshot(cfg_path, crash_after_step=CRASH_AFTER_STEP, snapshot=snapshot)
    return {"tmp": tmp, "cfg": cfg, "out": out, "snapshot": snapshot}


def test_wegeft_loss_falls(trained):
    values = losses(trained["out"] / "logs" / "log.txt")
    assert len(values) == 12 and all(torch.isfinite(torch.tensor(values)))
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3 - 0.3, values


def test_wegeft_adapter_files(trained):
    adapter, config = load_genft_adapter(trained["out"] / "epoch_1")
    assert config["method"] == "wegeft"
    assert config["wegeft_config"]["rank"] == RANK and config["wegeft_config"]["shared"] is True
    # one shared (phi, psi) pair per module type, saved once; no base weights
    assert set(adapter) == {f"wegeft_factors.{t}.{f}" for t in ("q_proj", "v_proj") for f in ("phi", "psi")}
    assert adapter["wegeft_factors.q_proj.phi"].shape == (RANK, TINY["embed_dim"])
    assert adapter["wegeft_factors.q_proj.phi"].abs().max() > 0  # trained off its zero init
    targets = {f"layers.{i}.attn.{t}" for i in range(TINY["num_layers"]) for t in ("q_proj", "v_proj")}
    assert set(config["target_modules"]) == targets


def test_wegeft_resume_mid_epoch_reproduces_losses(trained):
    snapshot = trained["snapshot"]
    cfg = dict(trained["cfg"])
    cfg["output_dir"] = str(snapshot)
    cfg["resume_from_checkpoint"] = True
    cfg["metric_logger"] = {**cfg["metric_logger"], "filename": "resumed.txt"}
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, trained["tmp"] / "resume.yaml"))
    reference = read_metrics(trained["out"] / "logs" / "log.txt")
    resumed = read_metrics(snapshot / "logs" / "resumed.txt")
    assert sorted(resumed["loss"]) == [9, 10, 11, 12]
    for step in (9, 10, 11, 12):
        assert resumed["loss"][step] == pytest.approx(reference["loss"][step], rel=1e-5, abs=1e-6)
    a = load_file(trained["out"] / "epoch_1" / "genft_adapter.safetensors")
    b = load_file(snapshot / "epoch_1" / "genft_adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_resuming_with_the_other_method_is_refused(trained, tmp_path):
    """A WeGeFT adapter cannot be resumed into a GenFT model."""
    snapshot = tmp_path / "snap"
    shutil.copytree(trained["snapshot"], snapshot)
    cfg = base_config(trained["tmp"] / "genft", ckpt_dir=Path(trained["cfg"]["checkpointer"]["checkpoint_dir"]), **RUN)
    cfg["output_dir"] = str(snapshot)
    cfg["resume_from_checkpoint"] = True
    with pytest.raises(ValueError, match="saved adapter is 'wegeft'.*built with 'genft'"):
        run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "genft.yaml"))


def _wegeft_logits(cfg: dict, base_dir: Path, adapter_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the WeGeFT model itself: the tiny base (HF -> torchtune conversion)
    plus the saved factors, in fp32."""
    from torchtune import config as tt_config
    from torchtune.training import FullModelHFCheckpointer, MODEL_KEY

    model = tt_config.instantiate(OmegaConf.create(cfg["model"]))
    ckpt = FullModelHFCheckpointer(
        checkpoint_dir=str(base_dir),
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3",
        output_dir=str(adapter_dir.parent / "_unused"),
    )
    model.load_state_dict(ckpt.load_checkpoint()[MODEL_KEY], strict=False)
    adapter, _ = load_genft_adapter(adapter_dir)
    missing, unexpected = model.load_state_dict(adapter, strict=False)
    assert not unexpected and not [k for k in missing if "wegeft" in k]
    model.eval()
    with torch.no_grad():
        return model(tokens)


def test_wegeft_merged_checkpoint_loads_in_transformers(trained, tmp_path):
    """The merged HF checkpoint, loaded where genft_tune cannot be imported, gives the
    WeGeFT model's logits, and equals the base weights plus dW computed here from the
    formula and the saved factors."""
    merged_dir = trained["out"] / "epoch_1"
    base_dir = Path(trained["cfg"]["checkpointer"]["checkpoint_dir"])
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.save(tokens, tmp_path / "tokens.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["genft_tune"] = None  # any import of this package now fails
        import torch
        from transformers import LlamaForCausalLM
        model = LlamaForCausalLM.from_pretrained({str(merged_dir)!r}, dtype=torch.float32).eval()
        tokens = torch.load({str(tmp_path / "tokens.pt")!r})
        with torch.no_grad():
            torch.save(model(tokens).logits, {str(tmp_path / "hf_logits.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=subprocess_env(), capture_output=True)
    hf_logits = torch.load(tmp_path / "hf_logits.pt")
    wegeft = _wegeft_logits(trained["cfg"], base_dir, merged_dir, tokens)
    torch.testing.assert_close(hf_logits, wegeft, rtol=0, atol=1e-5)

    # the reference: transformers' model on the base weights with W0 + (alpha/r) W0 phi^T psi
    # written into q and v (HF layout: the same linear maps, rows permuted for RoPE,
    # which the formula commutes with: (P W0) phi^T psi = P (W0 phi^T psi))
    from transformers import LlamaForCausalLM

    adapter, _ = load_genft_adapter(merged_dir)
    scale = WEGEFT_MODEL["wegeft_alpha"] / RANK
    model = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = model(tokens).logits
        for layer in model.model.layers:
            for hf_name, ours in (("q_proj", "q_proj"), ("v_proj", "v_proj")):
                lin = getattr(layer.self_attn, hf_name)
                phi = adapter[f"wegeft_factors.{ours}.phi"].double()
                psi = adapter[f"wegeft_factors.{ours}.psi"].double()
                W0 = lin.weight.double()
                lin.weight.copy_((W0 + scale * (W0 @ phi.T) @ psi).float())
        reference = model(tokens).logits
    torch.testing.assert_close(hf_logits, reference, rtol=1e-4, atol=1e-4)
    assert (base_logits - hf_logits).abs().max() > 1e-2  # not trivially equal

    # and the library's own merge formula agrees with the one written above
    W0 = torch.randn(6, 5, dtype=torch.float64)
    phi, psi = torch.randn(RANK, 5, dtype=torch.float64), torch.randn(RANK, 5, dtype=torch.float64)
    cfg = WeGeFTConfig(rank=RANK, alpha=2.0 * RANK)
    torch.testing.assert_close(wegeft_merged_weight(W0, phi, psi, cfg), W0 + 2.0 * (W0 @ phi.T) @ psi)


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
