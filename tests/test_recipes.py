"""The single-device recipe on a tiny Llama (CPU, fp32), for GenFT and WeGeFT.

One training run per method (module fixture) feeds several tests: the loss falls, the
adapter files, mid-epoch resume reproducing the uninterrupted losses, and the merged
checkpoint loading in plain transformers (and PEFT's pair on the Hugging Face base) with
the adapted model's logits. Tests of one method's own files or behaviour (the model
adapter the recipe detects, WeGeFT's init and target check, resuming with the other
method refused) follow them; bad configs and precision switches close the file.
"""

import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from _recipe_runs import (
    load_recipe_module,
    losses,
    read_metrics,
    RECIPES_DIR,
    run_recipe_in_process,
    run_single_device_with_snapshot,
    SINGLE_DEVICE_RECIPE,
    subprocess_env,
    write_config,
)
from _tiny_llama import (
    base_config,
    DELETE,
    TINY,
    wegeft_config,
    WEGEFT_MODEL,
    WEGEFT_RANK,
    write_tiny_checkpoint,
)

from genft_tune.checkpointing import load_adapter
from genft_tune.modules import WeGeFTConfig
from genft_tune.modules.wegeft import wegeft_merged_weight

# Steps are counted in optimizer steps: 64 samples / batch 2 = 32 batches, 2 per step,
# capped at 6 steps per epoch; 2 epochs = 12 steps. Saves at steps 4 and 8 (mid-epoch)
# and at both epoch ends.
SCHEDULE = {
    "batch_size": 2,
    "gradient_accumulation_steps": 2,
    "epochs": 2,
    "max_steps_per_epoch": 6,
    "save_every_n_steps": 4,
    "clip_grad_norm": 1.0,
}
# per method: its config, and the settings it trains with (dropout exercises the RNG state on resume)
METHODS = {
    "genft": (base_config, {**SCHEDULE, "optimizer.lr": 0.02, "model.scaling": 1.0, "model.dropout": 0.1}),
    "wegeft": (wegeft_config, {**SCHEDULE, "optimizer.lr": 0.01}),  # WEGEFT_MODEL has wegeft_dropout 0.1
}
RUN = METHODS["genft"][1]
CRASH_AFTER_STEP = 9  # resume then starts from the step-8 checkpoint, mid epoch 2


class _Crash(Exception):
    pass


def _recipe(cfg_path: Path):
    module = load_recipe_module(SINGLE_DEVICE_RECIPE)
    cfg = OmegaConf.load(cfg_path)
    return module, cfg


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, tmp_path_factory):
    """An uninterrupted run of one method; at step 9 its output folder is copied, which is
    what a run that crashed right there would have left on disk. Tests of one method's
    files ask for it with ``@only("genft")``."""
    method = request.param
    make_config, run = METHODS[method]
    tmp = tmp_path_factory.mktemp(method)
    cfg = make_config(tmp, **run)
    cfg_path = write_config(cfg, tmp / "config.yaml")
    out = Path(cfg["output_dir"])
    snapshot = tmp / "crashed"
    run_single_device_with_snapshot(cfg_path, crash_after_step=CRASH_AFTER_STEP, snapshot=snapshot)
    return {"method": method, "tmp": tmp, "cfg": cfg, "cfg_path": cfg_path, "out": out, "snapshot": snapshot}


def only(method: str):
    """Runs a test on one method's ``trained`` run (the same cached run)."""
    return pytest.mark.parametrize("trained", [method], indirect=True)


def test_loss_falls(trained):
    values = losses(trained["out"] / "logs" / "log.txt")
    assert len(values) == 12
    assert all(torch.isfinite(torch.tensor(values)))
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    assert last < first - 0.3, values


@only("genft")
def test_checkpoint_layout(trained):
    out = trained["out"]
    for name in ("step_4", "epoch_0", "step_8", "epoch_1"):
        assert (out / name / "genft_adapter.safetensors").is_file(), name
        assert (out / name / "genft_config.json").is_file(), name
        # PEFT's pair in a subfolder (beside merged weights it would hide them from transformers)
        assert sorted(p.name for p in (out / name / "peft").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert not (out / name / "adapter_config.json").exists()
    # the merged model only at the end, in the base checkpoint's (HF) format
    assert (out / "epoch_1" / "model-00001-of-00001.safetensors").is_file()
    assert (out / "epoch_1" / "config.json").is_file()
    assert not (out / "epoch_0" / "model-00001-of-00001.safetensors").exists()
    state = torch.load(out / "recipe_state" / "recipe_state.pt", weights_only=False)
    assert state["steps_run"] == 12 and state["epochs_run"] == 2
    assert state["adapter_dir"] == "epoch_1"
    # the shared generator is saved once, next to every layer's specific factors
    from safetensors.torch import load_file

    adapter = load_file(out / "epoch_1" / "genft_adapter.safetensors")
    d = TINY["embed_dim"]
    kv = TINY["num_kv_heads"] * d // TINY["num_heads"]
    assert {k for k in adapter if k.startswith("genft_generators.")} >= {
        f"genft_generators.{d}x{d}.P1",
        f"genft_generators.{kv}x{d}.P1",
    }
    for layer in range(TINY["num_layers"]):
        assert f"layers.{layer}.attn.q_proj.A1" in adapter
        assert f"layers.{layer}.attn.v_proj.A2" in adapter  # non-square: both stages' factors
    assert not any(k.endswith(".weight") for k in adapter)


def test_resume_mid_epoch_reproduces_losses(trained):
    snapshot = trained["snapshot"]
    state = torch.load(snapshot / "recipe_state" / "recipe_state.pt", weights_only=False)
    assert state["steps_run"] == 8 and state["steps_in_epoch"] == 2
    assert "dataloader" in state  # a mid-epoch checkpoint

    if trained["method"] == "genft":  # resume reads PEFT's pair when ours is gone (WeGeFT reads ours)
        for name in ("genft_adapter.safetensors", "genft_config.json"):
            (snapshot / "step_8" / name).unlink()
        assert (snapshot / "step_8" / "peft" / "adapter_config.json").is_file()
    cfg = dict(trained["cfg"])
    cfg["output_dir"] = str(snapshot)
    cfg["resume_from_checkpoint"] = True
    cfg["metric_logger"] = {**cfg["metric_logger"], "filename": "resumed.txt"}
    cfg_path = write_config(cfg, trained["tmp"] / "resume.yaml")
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, cfg_path)

    reference = read_metrics(trained["out"] / "logs" / "log.txt")
    resumed = read_metrics(snapshot / "logs" / "resumed.txt")
    assert sorted(resumed["loss"]) == [9, 10, 11, 12]
    for step in (9, 10, 11, 12):
        assert resumed["loss"][step] == pytest.approx(reference["loss"][step], rel=1e-5, abs=1e-6)
        assert resumed["lr"][step] == pytest.approx(reference["lr"][step], rel=1e-6)
    # and the final adapters agree
    from safetensors.torch import load_file

    a = load_file(trained["out"] / "epoch_1" / "genft_adapter.safetensors")
    b = load_file(snapshot / "epoch_1" / "genft_adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _adapter_logits(cfg: dict, base_dir: Path, adapter_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the adapted model itself: the tiny base (HF -> torchtune conversion) plus
    the saved adapter, in fp32."""
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
    adapter, _ = load_adapter(adapter_dir)
    missing, unexpected = model.load_state_dict(adapter, strict=False)
    assert not unexpected and not [k for k in missing if k in adapter]
    model.eval()
    with torch.no_grad():
        return model(tokens)


# how close transformers' merged model is to the adapted one (fp32)
TOLERANCE = {"genft": dict(rtol=1e-4, atol=1e-4), "wegeft": dict(rtol=0, atol=1e-5)}


def test_merged_checkpoint_loads_in_transformers_with_the_adapted_logits(trained, tmp_path):
    out = trained["out"]
    merged_dir = out / "epoch_1"
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.save(tokens, tmp_path / "tokens.pt")

    # Load the merged checkpoint in a fresh interpreter in which genft_tune cannot be
    # imported: it is a plain Llama.
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
    subprocess.run(
        [sys.executable, "-c", script], check=True, env=subprocess_env(), capture_output=True
    )
    hf_logits = torch.load(tmp_path / "hf_logits.pt")

    base_dir = Path(trained["cfg"]["checkpointer"]["checkpoint_dir"])
    adapted = _adapter_logits(trained["cfg"], base_dir, merged_dir, tokens)
    torch.testing.assert_close(hf_logits, adapted, **TOLERANCE[trained["method"]])

    # PEFT's pair that the recipe wrote gives the same model on the Hugging Face base
    import genft_tune.peft  # noqa: F401
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    peft_model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32), str(merged_dir / "peft")
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(tokens).logits, adapted, rtol=1e-4, atol=1e-4)

    # not trivially equal: the base model's logits differ

    base = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(tokens).logits
    assert (base_logits - hf_logits).abs().max() > 1e-2


@only("wegeft")
def test_wegeft_adapter_files(trained):
    adapter, config = load_adapter(trained["out"] / "epoch_1")
    assert config["method"] == "wegeft"
    assert config["wegeft_config"]["rank"] == WEGEFT_RANK and config["wegeft_config"]["shared"] is True
    # one shared (phi, psi) pair per module type, saved once; no base weights
    assert set(adapter) == {f"wegeft_factors.{t}.{f}" for t in ("q_proj", "v_proj") for f in ("phi", "psi")}
    assert adapter["wegeft_factors.q_proj.phi"].shape == (WEGEFT_RANK, TINY["embed_dim"])
    assert adapter["wegeft_factors.q_proj.phi"].abs().max() > 0  # trained off its zero init
    targets = {f"layers.{i}.attn.{t}" for i in range(TINY["num_layers"]) for t in ("q_proj", "v_proj")}
    assert set(config["target_modules"]) == targets


@only("wegeft")
def test_wegeft_merge_is_the_formula_in_transformers(trained, tmp_path):
    """The merged HF checkpoint equals the base weights plus dW computed here from the
    formula and the saved factors, in transformers' own model."""
    from transformers import LlamaForCausalLM

    merged_dir = trained["out"] / "epoch_1"
    base_dir = Path(trained["cfg"]["checkpointer"]["checkpoint_dir"])
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    merged = LlamaForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    # W0 + (alpha/r) W0 phi^T psi written into q and v (HF layout: the same linear maps, rows
    # permuted for RoPE, which the formula commutes with: (P W0) phi^T psi = P (W0 phi^T psi))
    adapter, _ = load_adapter(merged_dir)
    scale = trained["cfg"]["model"]["wegeft_alpha"] / WEGEFT_RANK
    model = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for name in ("q_proj", "v_proj"):
                lin = getattr(layer.self_attn, name)
                phi = adapter[f"wegeft_factors.{name}.phi"].double()
                psi = adapter[f"wegeft_factors.{name}.psi"].double()
                W0 = lin.weight.double()
                lin.weight.copy_((W0 + scale * (W0 @ phi.T) @ psi).float())
        torch.testing.assert_close(merged(tokens).logits, model(tokens).logits, rtol=1e-4, atol=1e-4)

    # and the library's own merge formula agrees with the one written above
    W0 = torch.randn(6, 5, dtype=torch.float64)
    phi, psi = torch.randn(WEGEFT_RANK, 5, dtype=torch.float64), torch.randn(WEGEFT_RANK, 5, dtype=torch.float64)
    cfg = WeGeFTConfig(rank=WEGEFT_RANK, alpha=2.0 * WEGEFT_RANK)
    torch.testing.assert_close(wegeft_merged_weight(W0, phi, psi, cfg), W0 + 2.0 * (W0 @ phi.T) @ psi)


@only("wegeft")
def test_resuming_with_the_other_method_is_refused(trained, tmp_path, capsys):
    """A WeGeFT adapter cannot be resumed into a GenFT model: one message, exit 2."""
    snapshot = tmp_path / "snap"
    shutil.copytree(trained["snapshot"], snapshot)
    cfg = base_config(trained["tmp"] / "genft", ckpt_dir=Path(trained["cfg"]["checkpointer"]["checkpoint_dir"]), **RUN)
    cfg["output_dir"] = str(snapshot)
    cfg["resume_from_checkpoint"] = True
    with pytest.raises(SystemExit) as exit_:
        run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "genft.yaml"))
    assert exit_.value.code == 2
    assert re.search("saved adapter is 'wegeft'.*built with 'genft'", capsys.readouterr().err)


# ---- the model adapter the recipes detect (GenFT or WeGeFT) ---------------------------


def _build(model_cfg: dict, *, device: str = "cpu", dtype=torch.float32, seed: int = 0):
    from torchtune import config as tt_config
    from torchtune.training import set_default_dtype

    torch.manual_seed(seed)
    with set_default_dtype(dtype), torch.device(device):
        return tt_config.instantiate(OmegaConf.create(model_cfg))


def test_model_adapter_detects_wegeft_and_genft(tmp_path):
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


def test_model_adapter_refuses_neither_and_both(tmp_path):
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


def test_tune_run_installed_module_with_cli_overrides(tmp_path):
    """``tune run genft_finetune_single_device`` (the recipe as a top-level module, as
    installed) with a yaml path and ``key=value`` / ``~key`` overrides."""
    cfg = base_config(tmp_path, **{"max_steps_per_epoch": 2, "model.dropout": 0.1})
    cfg_path = write_config(cfg, tmp_path / "config.yaml")
    cmd = [
        str(Path(sys.executable).parent / "tune"),
        "run",
        "genft_finetune_single_device",
        "--config",
        str(cfg_path),
        "batch_size=8",
        "model.shared_dim=2",
        "~model.dropout",
        "save_adapter_weights_only=True",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env([RECIPES_DIR]), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(cfg["output_dir"])
    saved = OmegaConf.load(out / "torchtune_config.yaml")
    assert saved.batch_size == 8 and saved.model.shared_dim == 2 and "dropout" not in saved.model
    genft_config = json.loads((out / "epoch_0" / "genft_config.json").read_text())
    flat = json.dumps(genft_config)
    assert '"shared_dim": 2' in flat
    assert '"dropout": 0.0' in flat  # the builder's default, since ~model.dropout removed 0.1
    assert not (out / "epoch_0" / "model-00001-of-00001.safetensors").exists()
    assert len(losses(out / "logs" / "log.txt")) == 2


def test_tune_run_resolves_packaged_config_names(tmp_path):
    """A packaged config name resolves to its yaml (then fails the pre-flight check on
    the missing base checkpoint, before anything is loaded)."""
    cmd = [
        str(Path(sys.executable).parent / "tune"),
        "run",
        "genft_finetune_single_device",
        "--config",
        "llama3_2/1B_genft_single_device",
        f"checkpointer.checkpoint_dir={tmp_path / 'missing'}",
        f"output_dir={tmp_path / 'out'}",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env([RECIPES_DIR]), capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "checkpointer.checkpoint_dir" in proc.stderr and "does not exist" in proc.stderr


# ---- bad configs fail before training, with a clear message -------------------------


def _setup(tmp_path, **overrides):
    cfg = base_config(tmp_path, **overrides)
    module, c = _recipe(write_config(cfg, tmp_path / "config.yaml"))
    recipe = module.GenFTFinetuneRecipeSingleDevice(cfg=c)
    recipe.setup(cfg=c)
    return recipe


def test_unknown_component(tmp_path):
    with pytest.raises(ValueError, match=r"model\._component_.*genft_tune\.models\.llama\.no_such_model"):
        _setup(tmp_path, **{"model._component_": "genft_tune.models.llama.no_such_model"})
    with pytest.raises(ValueError, match=r"optimizer\._component_.*torch\.optim\.NoSuchOpt"):
        _setup(tmp_path, **{"optimizer._component_": "torch.optim.NoSuchOpt"})


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint_files.*missing\.safetensors"):
        _setup(tmp_path, **{"checkpointer.checkpoint_files": ["missing.safetensors"]})
    with pytest.raises(FileNotFoundError, match=r"checkpointer\.checkpoint_dir.*does not exist"):
        _setup(tmp_path, **{"checkpointer.checkpoint_dir": str(tmp_path / "nowhere")})


def test_genft_target_not_in_model(tmp_path):
    with pytest.raises(ValueError, match=r"genft_attn_modules.*gate_proj.*q_proj"):
        _setup(tmp_path, **{"model.genft_attn_modules": ["q_proj", "gate_proj"]})
    with pytest.raises(ValueError, match=r"no GenFT layers|GenFT is applied to no layer"):
        _setup(tmp_path, **{"model.genft_attn_modules": []})


def test_nf4_shape_nf4_cannot_take(tmp_path):
    # 36 x 36 = 1296 values: not a multiple of NF4's block of 64
    with pytest.raises(ValueError, match=r"NF4"):
        _setup(tmp_path, **{"model.quantize_base": True, "model.embed_dim": 36, "model.intermediate_dim": 72})


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"enable_activation_offloading": True, "enable_activation_checkpointing": True},
         ValueError, r"enable_activation_offloading.*CUDA"),  # the pre-flight's, since issue 23
        ({"optimizer._component_": "torchao.optim._AdamW", "optimizer.bf16_stochastic_round": True},
         ValueError, r"bf16_stochastic_round.*dtype: bf16"),
        ({"optimizer._component_": "torchao.optim.AdamWFp8"}, RuntimeError, r"AdamWFp8.*8\.9"),
        ({"dtype": "fp16"}, ValueError, r"fp16"),
        ({"gradient_accumulation_steps": 0}, ValueError, r"gradient_accumulation_steps"),
    ],
)
def test_device_and_precision_checks(tmp_path, overrides, error, message):
    cfg = base_config(tmp_path, **overrides)
    module, c = _recipe(write_config(cfg, tmp_path / "config.yaml"))
    with pytest.raises(error, match=message):
        module.GenFTFinetuneRecipeSingleDevice(cfg=c)


def test_validation_loss_and_activation_checkpointing(tmp_path):
    """``dataset_val`` logs ``val_loss``; activation checkpointing gives the same losses."""
    val = {
        "_component_": "torchtune.datasets.instruct_dataset",
        "source": "json",
        "data_files": None,  # filled below
        "split": "train",
        "cache_dir": str(tmp_path / "hf_cache"),
    }
    common = {"max_steps_per_epoch": 3, "optimizer.lr": 0.02, "model.scaling": 1.0, "run_val_every_n_steps": 2,
              "max_validation_steps": 2, "shuffle": False}
    runs = {}
    for name, ac in (("plain", False), ("ac", True)):
        cfg = base_config(tmp_path / name, **common, enable_activation_checkpointing=ac)
        val["data_files"] = cfg["dataset"]["data_files"]
        cfg["dataset_val"] = dict(val)
        run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / name / "c.yaml"))
        runs[name] = read_metrics(Path(cfg["output_dir"]) / "logs" / "log.txt")
    assert sorted(runs["plain"]["val_loss"]) == [2, 3]  # every 2 steps, and at the epoch end
    for metric in ("loss", "val_loss"):
        for step, value in runs["plain"][metric].items():
            assert runs["ac"][metric][step] == pytest.approx(value, rel=1e-5)


def test_tied_embeddings_base(tmp_path):
    """A Llama 3.2-style base with tied embeddings (no lm_head in the checkpoint)."""
    ckpt = write_tiny_checkpoint(tmp_path / "tied", tie_word_embeddings=True)
    cfg = base_config(tmp_path, ckpt_dir=ckpt, **{"max_steps_per_epoch": 2, "model.tie_word_embeddings": True,
                                                 "checkpointer.model_type": "LLAMA3_2"})
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "c.yaml"))
    out = Path(cfg["output_dir"]) / "epoch_0"
    from safetensors.torch import load_file

    merged = load_file(out / "model-00001-of-00001.safetensors")
    assert "lm_head.weight" not in merged and "model.embed_tokens.weight" in merged


@pytest.mark.slow
def test_torchao_low_bit_optimizer_on_cpu(tmp_path):
    """``optimizer._component_: torchao.optim.AdamW8bit`` trains (torch.compile'd step)."""
    cfg = base_config(tmp_path, **{"max_steps_per_epoch": 2, "optimizer._component_": "torchao.optim.AdamW8bit",
                                   "optimizer.weight_decay": DELETE})
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "c.yaml"))
    values = losses(Path(cfg["output_dir"]) / "logs" / "log.txt")
    assert len(values) == 2 and all(v == v for v in values)


@pytest.mark.slow
def test_compile(tmp_path):
    """``compile: True`` (per-layer torch.compile of model and loss) matches eager."""
    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        cfg = base_config(tmp_path / name, **{"max_steps_per_epoch": 3, "compile": compile_, "shuffle": False,
                                              "optimizer.lr": 0.02, "model.scaling": 1.0})
        run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / name / "c.yaml"))
        runs[name] = losses(Path(cfg["output_dir"]) / "logs" / "log.txt")
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-3)


def test_fp8_training_on_cpu(tmp_path, caplog, monkeypatch):
    """``enable_fp8_training`` on CPU (torch emulates float8 matmuls): every frozen base
    linear except the output runs in float8, with every float8 GEMM dimension divisible
    by 16 as CUDA requires (the CPU kernel does not check: the test does, so the padding
    of variable-length batches is exercised), the losses stay close to the bf16 run's but
    are not identical (float8 rounding), and the merged checkpoint is written."""
    real_scaled_mm, fp8_gemms = torch._scaled_mm, []

    def scaled_mm_with_cuda_shape_rules(a, b, *args, **kwargs):
        odd = [d for d in (*a.shape, *b.shape) if d % 16]
        if odd:
            raise RuntimeError(f"float8 GEMM {tuple(a.shape)} x {tuple(b.shape)}: dims {odd} not divisible by 16")
        fp8_gemms.append(tuple(a.shape))
        return real_scaled_mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm_with_cuda_shape_rules)
    runs = {}
    for name, fp8 in (("bf16", False), ("fp8", True)):
        # 3 sequences of up to 50 tokens: token counts that float8 needs padded
        cfg = base_config(tmp_path / name, **{"max_steps_per_epoch": 3, "dtype": "bf16", "shuffle": False,
                                              "batch_size": 3, "tokenizer.max_seq_len": 50,
                                              "enable_fp8_training": fp8})
        with caplog.at_level(logging.INFO):
            run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / name / "c.yaml"))
        assert bool(fp8_gemms) == fp8  # float8 GEMMs ran in the fp8 run only
        runs[name] = losses(Path(cfg["output_dir"]) / "logs" / "log.txt")
        assert (Path(cfg["output_dir"]) / "epoch_0" / "model-00001-of-00001.safetensors").is_file()
    # not adapted: k_proj, output_proj, w1, w2, w3 in each layer
    assert f"float8 training of {5 * TINY['num_layers']} frozen base linear layers" in caplog.text
    assert "emulates the float8 matmuls" in caplog.text
    assert runs["fp8"] == pytest.approx(runs["bf16"], rel=0.05)
    assert runs["fp8"] != runs["bf16"]


@pytest.mark.slow
def test_fp8_rowwise_compiled_on_cpu(tmp_path):
    """``fp8_recipe_name: rowwise`` with ``compile: True`` (static shapes, padded to
    multiples of 16) trains on CPU and matches the eager float8 run."""
    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        cfg = base_config(tmp_path / name, **{"max_steps_per_epoch": 3, "dtype": "bf16", "shuffle": False,
                                              "enable_fp8_training": True, "fp8_recipe_name": "rowwise",
                                              "compile": compile_})
        run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / name / "c.yaml"))
        runs[name] = losses(Path(cfg["output_dir"]) / "logs" / "log.txt")
    assert len(runs["compiled"]) == 3
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=2e-2)


def test_fp8_error_on_a_device_without_float8(monkeypatch):
    from genft_tune.training import _precision

    monkeypatch.setattr(_precision, "cpu_emulates_float8", lambda: False)
    with pytest.raises(RuntimeError, match=r"enable_fp8_training.*compute capability 8\.9.*Set enable_fp8_training: False"):
        _precision.validate_fp8_training(torch.device("cpu"), None)
    with pytest.raises(ValueError, match=r"fp8_recipe_name.*tensorwise"):
        _precision.validate_fp8_training(torch.device("cpu"), "blockwise")


def test_fp8_padding_keeps_the_loss():
    """``PadToMultiple`` (float8 needs token counts divisible by 16) pads tokens and
    labels; the masked padding changes neither the token count nor the loss."""
    from functools import partial

    from torchtune.data import padded_collate_sft

    from genft_tune.training._precision import PadToMultiple

    batch = [{"tokens": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]},
             {"tokens": [6, 7, 8], "labels": [-100, 7, 8]}]
    plain = partial(padded_collate_sft, padding_idx=0, ignore_idx=-100)
    padded = PadToMultiple(plain, 16, padding_idx=0, ignore_idx=-100)(batch)
    ref = plain(batch)
    assert padded["tokens"].shape == (2, 16) and ref["tokens"].shape == (2, 5)
    torch.testing.assert_close(padded["tokens"][:, :5], ref["tokens"])
    assert (padded["tokens"][:, 5:] == 0).all() and (padded["labels"][:, 5:] == -100).all()
    logits = torch.randn(2, 16, 10, generator=torch.Generator().manual_seed(0))
    ce = torch.nn.functional.cross_entropy
    full = ce(logits.reshape(-1, 10), padded["labels"].reshape(-1) % 10 * (padded["labels"].reshape(-1) >= 0)
              - 100 * (padded["labels"].reshape(-1) < 0), ignore_index=-100)
    short = ce(logits[:, :5].reshape(-1, 10), ref["labels"].reshape(-1) % 10 * (ref["labels"].reshape(-1) >= 0)
               - 100 * (ref["labels"].reshape(-1) < 0), ignore_index=-100)
    torch.testing.assert_close(full, short)


def test_profiler_steps_once_per_optimizer_step(tmp_path, monkeypatch):
    """As in the distributed recipe: with gradient accumulation the profiler's schedule
    counts optimizer steps, not micro-batches."""
    import torchtune.training

    class CountingProfiler:
        steps = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def step(self):
            CountingProfiler.steps += 1

    monkeypatch.setattr(torchtune.training, "setup_torch_profiler", lambda **kw: (CountingProfiler(), {"enabled": False}))
    cfg = base_config(tmp_path, max_steps_per_epoch=3, gradient_accumulation_steps=2, batch_size=2,
                      save_adapter_weights_only=True)
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "c.yaml"))
    assert CountingProfiler.steps == 3
