"""The image-classification recipe end to end on tiny image folders made here, the image
datasets and transforms, and their errors. CPU, tiny ViT, seconds per run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from genft_tune.datasets._image import (
    decode_image,
    image_classification_dataset,
    image_collate,
    ImageClassificationTransform,
)
from genft_tune.checkpointing import load_adapter
from genft_tune.models.vit import save_hf_vit, vit_hf_config, vit_tiny
from genft_tune.modules.genft import is_genft_key
from genft_tune.modules.wegeft import is_wegeft_key

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "genft_finetune_image_single_device.py"
CONFIG = ROOT / "configs" / "vit" / "tiny_genft_cpu.yaml"
SIZE = 16
CLASSES = ["blue", "green", "red"]  # sorted: imagefolder's label order
MEAN = STD = (0.5, 0.5, 0.5)


def _load_recipe():
    spec = importlib.util.spec_from_file_location("genft_finetune_image_single_device", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(cls: int, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """A noisy image whose dominant channel is the class (red, green or blue), plus a bar
    whose position is random, so the task is learnable but not trivial at step 0."""
    arr = rng.integers(0, 90, size=(size, size, 3))
    channel = {"blue": 2, "green": 1, "red": 0}[CLASSES[cls]]
    arr[..., channel] += 120
    row = rng.integers(0, size - 3)
    arr[row : row + 3] = rng.integers(0, 255)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _make_folder(root: Path, n_train: int = 8, n_test: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _image(c, rng).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def recipe_module():
    return _load_recipe()


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """A 'pretrained' tiny ViT saved in HF format (random weights: the recipe only needs
    a checkpoint to load and adapt)."""
    torch.manual_seed(0)
    model = vit_tiny(5, image_size=SIZE, patch_size=4)
    path = tmp_path_factory.mktemp("base")
    save_hf_vit(model.state_dict(), config=vit_hf_config(model), output_dir=path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _make_folder(tmp_path_factory.mktemp("images"))


def _cfg(tmp_path: Path, data_dir: Path, base: Path, **overrides):
    cfg = OmegaConf.load(CONFIG)
    cfg = OmegaConf.merge(
        cfg,
        OmegaConf.create(
            {
                "output_dir": str(tmp_path / "out"),
                "data_dir": str(data_dir),
                "num_classes": len(CLASSES),
                "image_size": SIZE,
                "checkpoint": {"path": str(base) if base else None},
                "dataset": {"cache_dir": str(tmp_path / "hf_cache")},
                "eval_dataset": {"cache_dir": str(tmp_path / "hf_cache")},
                "batch_size": 8,
                "epochs": 2,
                "optimizer": {"lr": 1e-2},
                "lr_scheduler": {"num_warmup_steps": 1},
                "log_every_n_steps": 1,
            }
        ),
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def _hand_preprocess(path: Path) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


# ---- the recipe ---------------------------------------------------------------------


def test_recipe_end_to_end(recipe_module, folder, base_ckpt, tmp_path, run_card_snippet):
    transformers = pytest.importorskip("transformers")
    cfg = _cfg(tmp_path, folder, base_ckpt)
    recipe = recipe_module.run(cfg)
    out = Path(cfg.output_dir)

    # top-1 after every epoch, in the recipe and in eval_results.json
    results = json.loads((out / "eval_results.json").read_text())
    assert [r["epoch"] for r in results] == [1, 2]
    assert results == recipe.eval_results
    assert all(r["total"] == 4 * len(CLASSES) for r in results)

    # an adapter checkpoint per epoch (genft_adapter.safetensors + genft_config.json):
    # GenFT keys and the head (as modules_to_save), no base weights
    for epoch in (0, 1):
        adapter, config = load_adapter(out / f"epoch_{epoch}")
        assert {"head.weight", "head.bias"} <= set(adapter)
        assert any(k.startswith("genft_generators.") for k in adapter)
        assert all(is_genft_key(k) or k.startswith("head.") for k in adapter)
        assert config["modules_to_save"] == ["head.bias", "head.weight"]
        assert config["method"] == "genft" and config["genft_config"]["shared_dim"] == cfg.model.shared_dim
        assert config["extra"]["peft_type"] == "GENFT" and config["extra"]["num_classes"] == len(CLASSES)
        assert config["extra"]["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}
        assert not (out / f"epoch_{epoch}" / "adapter_model.safetensors").exists()

    # `genft-tune merge` of the last adapter into the base checkpoint gives the
    # recipe's own merged model: same logits in ViTForImageClassification
    from genft_tune._cli.genft import main as cli_main

    merged_dir = tmp_path / "merged_cli"
    assert cli_main(["merge", "--base", str(base_ckpt), "--adapter", str(out / "epoch_1"), "--output", str(merged_dir)]) == 0
    ours = transformers.ViTForImageClassification.from_pretrained(merged_dir).eval()
    recipe_hf = transformers.ViTForImageClassification.from_pretrained(out / "hf_model").eval()
    assert ours.config.id2label == dict(enumerate(CLASSES))
    pixels = torch.stack([_hand_preprocess(p) for p in sorted((folder / "test" / "red").glob("*.png"))])
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values=pixels).logits, recipe_hf(pixel_values=pixels).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(pixel_values=pixels).logits, recipe._model.eval()(pixels), atol=1e-4, rtol=1e-4)

    # PEFT's pair in peft/ (targets and the head as modules_to_save) gives the same model on
    # the Hugging Face base with the task's classes
    pytest.importorskip("peft")
    import genft_tune.peft  # noqa: F401
    from peft import PeftModel

    base_hf = transformers.ViTForImageClassification.from_pretrained(
        base_ckpt, num_labels=len(CLASSES), ignore_mismatched_sizes=True)
    peft_model = PeftModel.from_pretrained(base_hf, out / "epoch_1" / "peft").eval()
    assert json.loads((out / "epoch_1" / "peft" / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
    with torch.no_grad():
        torch.testing.assert_close(peft_model(pixel_values=pixels).logits, recipe_hf(pixel_values=pixels).logits,
                                   atol=1e-4, rtol=1e-4)
    # and back: merging PEFT's pair alone writes the same weights as merging ours
    assert cli_main(["merge", "--base", str(base_ckpt), "--adapter", str(out / "epoch_1" / "peft"),
                     "--output", str(tmp_path / "merged_peft")]) == 0
    from safetensors.torch import load_file

    a, b = load_file(str(merged_dir / "model.safetensors")), load_file(str(tmp_path / "merged_peft" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # `publish --adapter-only`: its card's snippet, run as printed against a Hub cache with the
    # base and the adapter, loads the same classifier
    staged = tmp_path / "staged"
    assert cli_main(["publish", "--folder", str(out / "epoch_1"), "--repo-id", "me/vit-genft", "--adapter-only",
                     "--base-model", "org/tiny-vit", "--dry-run", str(staged)]) == 0
    card = (staged / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert f"num_labels={len(CLASSES)}, ignore_mismatched_sizes=True" in snippet
    torch.save(pixels, tmp_path / "pixels.pt")
    check = (f"\nimport torch\nwith torch.no_grad():\n    torch.save(merged.eval()(pixel_values=torch.load("
             f"{str(tmp_path / 'pixels.pt')!r})).logits, {str(tmp_path / 'logits.pt')!r})\n")
    run_card_snippet(card, tmp_path, {
        "org/tiny-vit": {p.name: p for p in base_ckpt.iterdir() if p.is_file()},
        "me/vit-genft": {n: staged / n for n in ("adapter_config.json", "adapter_model.safetensors")},
    }, check)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), recipe_hf(pixel_values=pixels).logits,
                                   atol=1e-4, rtol=1e-4)

    # the merged model is a plain HF ViT; its accuracy, counted by hand, is the recipe's
    hf = transformers.ViTForImageClassification.from_pretrained(out / "hf_model").eval()
    assert hf.config.id2label == dict(enumerate(CLASSES))
    correct = total = 0
    for label, name in enumerate(CLASSES):
        for path in sorted((folder / "test" / name).glob("*.png")):
            with torch.no_grad():
                pred = hf(pixel_values=_hand_preprocess(path)[None]).logits.argmax(-1).item()
            correct += int(pred == label)
            total += 1
    assert (results[-1]["correct"], results[-1]["total"]) == (correct, total)
    assert results[-1]["top1"] == pytest.approx(correct / total)


def test_recipe_trains_the_authors_vit_setting(recipe_module, folder, base_ckpt, tmp_path):
    """vit/b16_genft_authors_*'s model settings on the tiny ViT: ratio on the generator
    matrices, q and v of a block sharing one A/B pair, A = B = 0 without zero_init. The
    pair stays exactly 0 (their saddle), the shared generator trains, and the CLI merge
    of the saved adapter passes --verify."""
    authors = OmegaConf.load(ROOT / "configs" / "vit" / "b16_genft_authors_vtab.yaml").model
    keys = ("convention", "share_qv_specific", "init_a", "init_b", "zero_init", "ratio", "dropout", "act_in", "act_out")
    overrides = {f"model.{k}": authors[k] for k in keys}
    assert overrides["model.convention"] == "authors_vit" and overrides["model.share_qv_specific"] is True
    cfg = _cfg(tmp_path, folder, base_ckpt, epochs=1, save_merged=False, **overrides)
    recipe = recipe_module.run(cfg)
    attn = recipe._model.layers[0].attn
    assert attn.q_proj.A1 is attn.v_proj.A1 and attn.q_proj.B1 is attn.v_proj.B1
    assert torch.count_nonzero(attn.q_proj.A1) == 0 and torch.count_nonzero(attn.q_proj.B1) == 0
    adapter, config = load_adapter(Path(cfg.output_dir) / "epoch_0")
    assert config["genft_config"]["convention"] == "authors_vit"
    assert torch.equal(adapter["layers.0.attn.q_proj.A1"], adapter["layers.0.attn.v_proj.A1"])
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapter.items() if k.startswith("genft_generators."))

    from genft_tune._cli.genft import main as cli_main

    rc = cli_main(["merge", "--base", str(base_ckpt), "--adapter", str(Path(cfg.output_dir) / "epoch_0"),
                   "--output", str(tmp_path / "merged"), "--verify", "--tolerance", "1e-4"])
    assert rc == 0


def test_recipe_learns_the_task(recipe_module, folder, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, folder, base_ckpt, epochs=6, batch_size=6, save_merged=False)
    recipe = recipe_module.run(cfg)
    assert recipe.eval_results[-1]["top1"] > 1 / len(CLASSES) + 0.25  # well above chance


def test_gradient_accumulation_equals_a_bigger_batch(recipe_module, folder, base_ckpt, tmp_path):
    common = dict(epochs=1, max_steps_per_epoch=1, shuffle=False, eval_dataset=None, save_merged=False)
    one = _cfg(tmp_path / "a", folder, base_ckpt, batch_size=8, gradient_accumulation_steps=1, **common)
    two = _cfg(tmp_path / "b", folder, base_ckpt, batch_size=4, gradient_accumulation_steps=2, **common)
    r1, r2 = recipe_module.run(one), recipe_module.run(two)
    p1 = {n: p for n, p in r1._model.named_parameters() if p.requires_grad}
    p2 = dict(r2._model.named_parameters())
    assert p1
    for name, p in p1.items():
        torch.testing.assert_close(p, p2[name], atol=1e-6, rtol=1e-5, msg=name)


def _baseline_cfg(tmp_path, folder, base_ckpt, component, trainable, **overrides):
    model = {"_component_": component, "num_classes": len(CLASSES), "image_size": SIZE, "patch_size": 4}
    if "lora" in component:
        model.update(lora_attn_modules=["q_proj", "v_proj"], lora_rank=2, lora_alpha=4)
    overrides = {"epochs": 1, "max_steps_per_epoch": 2, **overrides}
    cfg = _cfg(tmp_path, folder, base_ckpt, trainable_modules=trainable, **overrides)
    cfg.model = OmegaConf.create(model)
    return cfg


@pytest.mark.parametrize(
    "component,trainable",
    [
        ("genft_tune.models.vit.vit_tiny_lora", ["head"]),
        ("genft_tune.models.vit.vit_tiny_lora", "all"),  # trained base weights: no LoRA holds them
        ("genft_tune.models.vit.vit_tiny", ["head"]),
        ("genft_tune.models.vit.vit_tiny", "all"),
    ],
)
def test_recipe_baselines(recipe_module, folder, base_ckpt, tmp_path, component, trainable):
    """LoRA runs write PEFT's pair (see test_lora_run_writes_a_peft_lora_of_the_hf_vit);
    linear probing, full fine-tuning and a LoRA run that also trains its base weights write
    the trained tensors under names of their own, not PEFT's (they are no PEFT adapter)."""
    cfg = _baseline_cfg(tmp_path, folder, base_ckpt, component, trainable)
    recipe = recipe_module.run(cfg)
    epoch_dir = Path(cfg.output_dir) / "epoch_0"
    lora = "lora" in component and trainable != "all"
    assert (epoch_dir / "adapter_config.json").is_file() == lora
    assert (epoch_dir / "adapter_model.safetensors").is_file() == lora
    assert (epoch_dir / "trained_modules.safetensors").is_file() != lora
    if not lora:
        info = json.loads((epoch_dir / "trained_modules.json").read_text())
        assert "peft_type" not in info and info["trainable_modules"] == (["all"] if trainable == "all" else trainable)
        assert info["num_classes"] == len(CLASSES)
        if "lora" in component:
            assert (info["r"], info["lora_alpha"], info["target_modules"][0]) == (2, 4, "layers.0.attn.q_proj")
        saved = load_file(str(epoch_dir / "trained_modules.safetensors"))
        trained = {n: p for n, p in recipe._model.named_parameters() if p.requires_grad}
        assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k].detach()) for k in saved)
    trainable_count = sum(p.requires_grad for p in recipe._model.parameters())
    total = sum(1 for _ in recipe._model.parameters())
    assert (trainable_count == total) == (trainable == "all")
    assert (Path(cfg.output_dir) / "hf_model" / "model.safetensors").is_file()


def test_lora_run_writes_a_peft_lora_of_the_hf_vit(recipe_module, folder, base_ckpt, tmp_path):
    """The LoRA baseline's epoch folder is PEFT's own LoRA format for transformers'
    ViTForImageClassification (what PEFT 0.21's save_pretrained writes for
    LoraConfig(target_modules=[q_proj, v_proj], modules_to_save=[classifier])):
    PeftModel.from_pretrained on the Hugging Face base gives the trained model's logits."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from peft import PeftConfig, PeftModel

    cfg = _baseline_cfg(tmp_path, folder, base_ckpt, "genft_tune.models.vit.vit_tiny_lora", ["head"],
                        max_steps_per_epoch=3, save_merged=False)
    recipe = recipe_module.run(cfg)
    epoch_dir = Path(cfg.output_dir) / "epoch_0"
    tensors = load_file(str(epoch_dir / "adapter_model.safetensors"))
    layers = range(len(recipe._model.layers))
    lora_keys = {f"base_model.model.vit.layers.{i}.attention.{m}.lora_{ab}.weight"
                 for i in layers for m in ("q_proj", "v_proj") for ab in "AB"}
    assert set(tensors) == lora_keys | {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    assert any(torch.count_nonzero(v) for k, v in tensors.items() if "lora_B" in k)  # the LoRA trained
    config = json.loads((epoch_dir / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules",
                                   "modules_to_save", "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": None, "r": 2, "lora_alpha": 4, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["classifier"],
        "base_model_name_or_path": str(base_ckpt)}
    assert type(PeftConfig.from_pretrained(epoch_dir)).__name__ == "LoraConfig"

    base = transformers.ViTForImageClassification.from_pretrained(
        base_ckpt, num_labels=len(CLASSES), ignore_mismatched_sizes=True)
    peft_model = PeftModel.from_pretrained(base, epoch_dir).eval()
    pixels = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(pixel_values=pixels).logits, recipe._model.eval()(pixels),
                                   atol=1e-5, rtol=1e-5)


def test_recipe_trains_and_merges_a_wegeft_vit(recipe_module, folder, base_ckpt, tmp_path):
    """The WeGeFT baseline (``vit_tiny_wegeft``) through the same recipe: only the
    tied factors and the head train, and both are saved each epoch; its ``hf_model/`` is
    a plain ViTForImageClassification (no factor tensors) with the trained model's logits."""
    model = {
        "_component_": "genft_tune.models.vit.vit_tiny_wegeft",
        "num_classes": len(CLASSES),
        "image_size": SIZE,
        "patch_size": 4,
        "wegeft_attn_modules": ["q_proj", "v_proj"],
        "wegeft_rank": 4,
        "wegeft_alpha": 8.0,
    }
    # 3 steps: lr is 0 at the warmup's first step, the zero head moves at the second,
    # so the factors' gradient is non-zero from the third on.
    cfg = _cfg(tmp_path, folder, base_ckpt, epochs=1, max_steps_per_epoch=3, batch_size=6, save_merged=True)
    cfg.model = OmegaConf.create(model)
    recipe = recipe_module.run(cfg)
    trainable = {n for n, p in recipe._model.named_parameters() if p.requires_grad}
    factors = {f"wegeft_factors.{t}.{f}" for t in ("q_proj", "v_proj") for f in ("phi", "psi")}
    assert trainable == factors | {"head.weight", "head.bias"}
    assert recipe._model.wegeft_factors.q_proj.phi.abs().sum() > 0  # moved from its zero init: dW != 0
    adapter, adapter_config = load_adapter(Path(cfg.output_dir) / "epoch_0")
    assert adapter_config["method"] == "wegeft" and adapter_config["modules_to_save"] == ["head.bias", "head.weight"]
    assert set(adapter) == factors | {"head.weight", "head.bias"}
    assert all(is_wegeft_key(k) for k in factors)
    assert len(recipe.eval_results) == 1
    # the merged model in transformers
    transformers = pytest.importorskip("transformers")
    hf_dir = Path(cfg.output_dir) / "hf_model"
    assert not [k for k in load_file(hf_dir / "model.safetensors") if "wegeft" in k]
    hf = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    pixels = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = recipe._model.eval()(pixels)
        torch.testing.assert_close(hf(pixel_values=pixels).logits, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # a subprocess importing torch + torchtune: 15-60 s on shared cores
def test_tune_run_with_packaged_config_name(folder, base_ckpt, tmp_path):
    """``tune run genft_finetune_image_single_device --config vit/tiny_genft_cpu``: the
    recipe as a top-level module, the config by its packaged name, CLI overrides."""
    out = tmp_path / "out"
    cmd = [
        str(Path(sys.executable).parent / "tune"),
        "run",
        "genft_finetune_image_single_device",
        "--config",
        "vit/tiny_genft_cpu",
        f"data_dir={folder}",
        f"output_dir={out}",
        f"num_classes={len(CLASSES)}",
        f"image_size={SIZE}",
        f"checkpoint.path={base_ckpt}",
        f"dataset.cache_dir={tmp_path / 'hf_cache'}",
        f"eval_dataset.cache_dir={tmp_path / 'hf_cache'}",
        "epochs=1",
        "max_steps_per_epoch=1",
        "batch_size=4",
        "save_merged=False",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "recipes"), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert [r["epoch"] for r in results] == [1] and results[0]["total"] == 4 * len(CLASSES)
    assert (out / "epoch_0" / "genft_adapter.safetensors").is_file()


def test_recipe_bf16_runs(recipe_module, folder, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, folder, base_ckpt, epochs=1, max_steps_per_epoch=1, dtype="bf16")
    recipe = recipe_module.run(cfg)
    assert recipe._model.head.weight.dtype == torch.bfloat16
    merged = load_file(str(Path(cfg.output_dir) / "hf_model" / "model.safetensors"))
    assert merged["classifier.weight"].dtype == torch.bfloat16


def test_recipe_names_a_corrupt_image(recipe_module, base_ckpt, tmp_path):
    data = _make_folder(tmp_path / "images", n_train=2, n_test=1)
    (data / "train" / "red" / "broken.png").write_bytes(b"\x89PNG but not really")
    cfg = _cfg(tmp_path, data, base_ckpt, epochs=1)
    with pytest.raises(ValueError, match=r"broken\.png"):
        recipe_module.run(cfg)


def test_recipe_rejects_dataset_model_class_mismatch(recipe_module, folder, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, folder, base_ckpt)
    cfg.model.num_classes = 4
    with pytest.raises(ValueError, match="num_classes"):
        recipe_module.run(cfg)


def test_recipe_rejects_unknown_trainable_module(recipe_module, folder, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, folder, base_ckpt, trainable_modules=["classifier"])
    with pytest.raises(ValueError, match="classifier"):
        recipe_module.run(cfg)


def test_recipe_rejects_unknown_checkpoint_format(recipe_module, folder, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, folder, base_ckpt)
    cfg.checkpoint.format = "jax"
    with pytest.raises(ValueError, match="checkpoint.format"):
        recipe_module.run(cfg)


# ---- datasets -----------------------------------------------------------------------


def test_label_outside_num_classes_is_named(folder, tmp_path):
    with pytest.raises(ValueError, match=r"label 2 of image file .*red.*outside \[0, 2\)"):
        image_classification_dataset(
            "imagefolder", data_dir=str(folder), split="train", num_classes=2, image_size=SIZE, cache_dir=str(tmp_path)
        )


def _hub_style(tmp_path: Path, labels):
    import datasets

    rng = np.random.default_rng(1)
    images = [_image(i % 3, rng) for i in range(len(labels))]
    data = datasets.Dataset.from_dict({"img": images, "fine_label": labels})
    data = data.cast_column("img", datasets.Image())
    path = tmp_path / "hub"
    data.save_to_disk(str(path))
    return path, images


def test_hub_style_columns_and_values(tmp_path):
    path, images = _hub_style(tmp_path, [0, 1, 2, 1])
    ds = image_classification_dataset(
        str(path), image_column="img", label_column="fine_label", num_classes=3, image_size=SIZE, mean=MEAN, std=STD
    )
    assert len(ds) == 4 and ds.labels == [0, 1, 2, 1]
    batch = image_collate([ds[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, SIZE, SIZE) and batch["labels"].dtype == torch.long
    for i, image in enumerate(images):
        arr = np.asarray(image, dtype=np.float32) / 255.0
        expected = (torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5
        torch.testing.assert_close(batch["images"][i], expected)


def test_hub_style_bad_label_is_named(tmp_path):
    path, _ = _hub_style(tmp_path, [0, 7, 1])
    with pytest.raises(ValueError, match=r"label 7 of .*row 1.*outside \[0, 3\)"):
        image_classification_dataset(str(path), image_column="img", label_column="fine_label", num_classes=3, image_size=SIZE)


def test_missing_column_is_named(tmp_path):
    path, _ = _hub_style(tmp_path, [0, 1])
    with pytest.raises(ValueError, match="label_column 'label'"):
        image_classification_dataset(str(path), image_column="img", num_classes=3, image_size=SIZE)


def test_filelist_sources(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        _image(i, rng).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "train.txt").write_text("imgs/0.png 0\nimgs/1.png 1\n\nimgs/2.png 2\n")
    (tmp_path / "test.json").write_text(json.dumps({"imgs/0.png": 11, "imgs/1.png": 12, "imgs/2.png": 13}))
    txt = image_classification_dataset("filelist", data_dir=str(tmp_path), data_files="train.txt", num_classes=3, image_size=8)
    js = image_classification_dataset("filelist", data_dir=str(tmp_path), data_files="test.json", num_classes=3, image_size=8)
    assert txt.labels == [0, 1, 2] and js.labels == [0, 1, 2]
    assert txt[2]["images"].shape == (3, 8, 8)
    (tmp_path / "bad.txt").write_text("imgs/0.png zero\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1"):
        image_classification_dataset("filelist", data_dir=str(tmp_path), data_files="bad.txt", num_classes=3, image_size=8)


def test_decode_names_corrupt_and_truncated_files(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        decode_image({"path": str(bad), "bytes": None}, 3)
    good = tmp_path / "good.png"
    _image(0, np.random.default_rng(0), size=64).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        decode_image(str(truncated), 0)


# ---- transforms ---------------------------------------------------------------------


def _ramp(size: int) -> Image.Image:
    arr = np.arange(size * size * 3, dtype=np.int64).reshape(size, size, 3) % 251
    return Image.fromarray(arr.astype(np.uint8))


def test_centre_crop_and_flip_match_slicing():
    image = _ramp(12)
    full = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    t = ImageClassificationTransform(8, resize_size=12, mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(t(image), full[:, 2:10, 2:10])
    flip = ImageClassificationTransform(12, mean=(0, 0, 0), std=(1, 1, 1), hflip=True)
    torch.manual_seed(0)
    seen = {tuple(flip(image)[0, 0, :2].tolist()) for _ in range(16)}
    assert seen == {tuple(full[0, 0, :2].tolist()), tuple(full[0, 0, -2:].flip(0).tolist())}


def test_random_crop_is_a_window_of_the_resized_image():
    image = _ramp(12)
    full = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    windows = {(i, j): full[:, i : i + 8, j : j + 8] for i in range(5) for j in range(5)}
    t = ImageClassificationTransform(8, resize_size=12, mean=(0, 0, 0), std=(1, 1, 1), random_crop=True)
    torch.manual_seed(0)
    hits = set()
    for _ in range(20):
        crop = t(image)
        hits |= {k for k, w in windows.items() if torch.equal(w, crop)}
        assert any(torch.equal(w, crop) for w in windows.values())
    assert len(hits) > 1


def test_grayscale_transform():
    t = ImageClassificationTransform(12, num_channels=1, mean=(0.5,), std=(0.25,))
    out = t(_ramp(12))
    gray = np.asarray(_ramp(12).convert("L"), dtype=np.float32) / 255.0
    torch.testing.assert_close(out, (torch.from_numpy(gray)[None] - 0.5) / 0.25)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(image_size=0), "image_size"),
        (dict(image_size=8, resize_size=4), "resize_size"),
        (dict(image_size=8, num_channels=2), "num_channels"),
        (dict(image_size=8, num_channels=1), "mean"),
        (dict(image_size=8, interpolation="area"), "interpolation"),
    ],
)
def test_transform_errors_name_the_field(kwargs, field):
    size = kwargs.pop("image_size")
    with pytest.raises(ValueError, match=field):
        ImageClassificationTransform(size, **kwargs)


def test_merge_into_a_hf_vitmodel_base(recipe_module, folder, tmp_path):
    """The README's base format (google/vit-base-patch16-224-in21k is a ViTModel, no head):
    `genft-tune merge` writes a ViTForImageClassification with the trained head that
    transformers loads, and --verify passes."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = vit_hf_config(vit_tiny(5, image_size=SIZE, patch_size=4))
    torch.manual_seed(0)
    base = tmp_path / "vitmodel"
    transformers.ViTModel(transformers.ViTConfig(**{k: v for k, v in hf_cfg.items() if k not in ("architectures", "id2label", "label2id")})).save_pretrained(base)
    assert not any(k.startswith("vit.") for k in load_file(str(base / "model.safetensors")))
    cfg = _cfg(tmp_path, folder, base, epochs=1)
    recipe_module.run(cfg)
    from genft_tune._cli.genft import main as cli_main

    merged = tmp_path / "merged"
    rc = cli_main(["merge", "--base", str(base), "--adapter", str(Path(cfg.output_dir) / "epoch_0"), "--output", str(merged),
                   "--verify", "--tolerance", "1e-4"])
    assert rc == 0
    ours = transformers.ViTForImageClassification.from_pretrained(merged).eval()
    recipe_hf = transformers.ViTForImageClassification.from_pretrained(Path(cfg.output_dir) / "hf_model").eval()
    pixels = torch.stack([_hand_preprocess(p) for p in sorted((folder / "test" / "red").glob("*.png"))])
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values=pixels).logits, recipe_hf(pixel_values=pixels).logits, atol=1e-5, rtol=1e-5)
    assert ours.config.id2label == dict(enumerate(CLASSES))


def test_num_classes_must_match_the_class_folders(recipe_module, folder, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, folder, base_ckpt, num_classes=5)
    with pytest.raises(ValueError, match=r"num_classes is 5, but the data has 3 classes \(\['blue', 'green', 'red'\]\); set num_classes=3"):
        recipe_module.run(cfg)


def test_missing_data_dir_is_named(recipe_module, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, tmp_path / "no_such_dir", base_ckpt)
    with pytest.raises(FileNotFoundError, match=r"data_dir '.*no_such_dir' does not exist"):
        recipe_module.run(cfg)


def test_image_size_must_be_a_multiple_of_the_patch(recipe_module, folder, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, folder, base_ckpt, image_size=30, **{"checkpoint.path": None})
    with pytest.raises(ValueError, match=r"image_size \(30\) must be a multiple of patch_size \(4\).*use 28 or 32"):
        recipe_module.run(cfg)


def test_an_undecodable_eval_image_is_skipped_and_the_epoch_kept(recipe_module, base_ckpt, tmp_path, caplog):
    data = _make_folder(tmp_path / "images", n_train=4, n_test=2)
    (data / "test" / "red" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cfg = _cfg(tmp_path, data, base_ckpt, epochs=1)
    with caplog.at_level("WARNING"):
        recipe = recipe_module.run(cfg)
    assert recipe.eval_results[-1]["skipped"] == 1 and recipe.eval_results[-1]["total"] == 6
    assert "truncated.png" in caplog.text
    assert (Path(cfg.output_dir) / "epoch_0" / "genft_config.json").is_file()


def test_merged_model_has_the_image_processor_it_was_trained_with(recipe_module, folder, base_ckpt, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = _cfg(tmp_path, folder, base_ckpt, epochs=1)
    recipe_module.run(cfg)
    hf_dir = Path(cfg.output_dir) / "hf_model"
    processor = transformers.AutoImageProcessor.from_pretrained(hf_dir)
    path = sorted((folder / "test" / "green").glob("*.png"))[0]
    pixels = processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, _hand_preprocess(path), atol=1e-5, rtol=1e-5)


def test_tiny_wegeft_cpu_config_trains(recipe_module, folder, base_ckpt, tmp_path):
    cfg = _cfg(tmp_path, folder, base_ckpt, epochs=1)
    cfg.model = OmegaConf.load(ROOT / "configs" / "vit" / "tiny_wegeft_cpu.yaml").model
    OmegaConf.update(cfg, "model.num_classes", len(CLASSES))
    OmegaConf.update(cfg, "model.image_size", SIZE)
    recipe = recipe_module.run(cfg)
    _, config = load_adapter(Path(cfg.output_dir) / "epoch_0")
    assert config["method"] == "wegeft" and recipe.eval_results


def test_cli_mistakes_are_one_message_without_a_traceback(folder, base_ckpt, tmp_path):
    from _recipe_runs import subprocess_env

    cfg_path = tmp_path / "c.yaml"
    OmegaConf.save(_cfg(tmp_path, folder, base_ckpt), cfg_path)

    def run(*overrides):
        proc = subprocess.run([sys.executable, str(RECIPE), "--config", str(cfg_path), *overrides],
                              capture_output=True, text=True, env=subprocess_env(), timeout=300)
        return proc.returncode, proc.stderr

    code, err = run(f"data_dir={tmp_path}/nowhere", "image_size=30", "checkpoint.path=null", "optimizer.lr=abc")
    assert code == 2 and "Traceback" not in err and "the config has 4 problems" in err
    assert "image_size (30) must be a multiple" in err and "nowhere' does not exist" in err and "optimizer.lr" in err
    code, err = run("num_classes=5")  # found only when the data is read
    assert code == 2 and "Traceback" not in err and "set num_classes=3" in err
    assert not (tmp_path / "out" / "epoch_0").exists()
