"""ViT with GenFT (and WeGeFT): equivalence with transformers' ViT, checkpoint conversion (HF both
ways, timm), builders and adapter bookkeeping. Tiny random models, CPU, fp32."""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import ViTConfig, ViTForImageClassification, ViTModel  # noqa: E402

from torchtune.modules.peft import disable_adapter, get_adapter_params, set_trainable_params  # noqa: E402

from genft_tune.models.vit import (  # noqa: E402
    convert_timm_vit_state_dict,
    load_hf_vit_state_dict,
    load_timm_vit_state_dict,
    load_vit_state_dict,
    read_state_dict,
    save_hf_vit,
    vit,
    vit_genft,
    vit_hf_config,
    vit_hf_to_tune,
    vit_lora,
    vit_tiny_genft,
    vit_tiny_wegeft,
    vit_tune_to_hf,
    vit_wegeft,
    ViTClassifier,
)
from genft_tune.modules import GenFTLinear, merge_genft_state_dict, WeGeFTLinear
from genft_tune.modules.genft import get_genft_config, get_genft_modules

DIMS = dict(image_size=16, patch_size=4, num_channels=3, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64)
NUM_CLASSES = 5
ATOL = 1e-5


def _hf_config(**overrides) -> ViTConfig:
    kwargs = dict(
        hidden_size=DIMS["embed_dim"],
        num_hidden_layers=DIMS["num_layers"],
        num_attention_heads=DIMS["num_heads"],
        intermediate_size=DIMS["mlp_dim"],
        image_size=DIMS["image_size"],
        patch_size=DIMS["patch_size"],
        num_channels=DIMS["num_channels"],
        num_labels=NUM_CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    return ViTConfig(**kwargs)


def _randomize(model: nn.Module, seed: int = 0) -> None:
    """Every parameter random (LayerNorm scales around 1), so no converter mistake hides
    behind a default init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(1.0 + noise if "layernorm" in name and name.endswith("weight") else noise)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = ViTForImageClassification(_hf_config()).eval()
    _randomize(model)
    path = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, DIMS["num_channels"], DIMS["image_size"], DIMS["image_size"], generator=torch.Generator().manual_seed(1))


def _hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def _perturb_adapter(model: nn.Module, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in get_adapter_params(model).items():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _genft(**kwargs) -> ViTClassifier:
    base = dict(DIMS, num_classes=NUM_CLASSES, genft_attn_modules=["q_proj", "v_proj"], shared_dim=4, specific_dim=2)
    base.update(kwargs)
    return vit_genft(**base).eval()


# ---- Hugging Face equivalence -------------------------------------------------------


def test_saved_checkpoint_uses_hub_key_spelling(hf_dir):
    keys = set(read_state_dict(hf_dir[0]))
    assert "vit.encoder.layer.0.attention.attention.query.weight" in keys
    assert "classifier.weight" in keys


def test_plain_vit_matches_transformers(hf_dir, images):
    path, hf = hf_dir
    model = vit(**DIMS, num_classes=NUM_CLASSES).eval()
    info = load_hf_vit_state_dict(model, path)
    assert info == {"head_reset": False, "pos_embed_resized": False}
    with torch.no_grad():
        ours = model(images)
    torch.testing.assert_close(ours, _hf_logits(hf, images), atol=ATOL, rtol=0)


@pytest.mark.parametrize("targets,mlp", [(["q_proj", "v_proj"], False), (["q_proj", "k_proj", "v_proj", "output_proj"], True)])
def test_genft_zero_init_matches_transformers_at_step_zero(hf_dir, images, targets, mlp):
    path, hf = hf_dir
    model = _genft(genft_attn_modules=targets, apply_genft_to_mlp=mlp, zero_init=True, act_out="gelu")
    load_hf_vit_state_dict(model, path)
    with torch.no_grad():
        ours = model(images)
    torch.testing.assert_close(ours, _hf_logits(hf, images), atol=ATOL, rtol=0)


def test_genft_disabled_matches_transformers(hf_dir, images):
    path, hf = hf_dir
    model = _genft(apply_genft_to_mlp=True, zero_init=False)
    load_hf_vit_state_dict(model, path)
    _perturb_adapter(model)
    expected = _hf_logits(hf, images)
    with torch.no_grad():
        with disable_adapter(model):
            disabled = model(images)
        enabled = model(images)
    torch.testing.assert_close(disabled, expected, atol=ATOL, rtol=0)
    assert (enabled - expected).abs().max() > 1e-3  # the adapter does act when enabled


def test_vit_model_checkpoint_gives_fresh_head_and_same_features(tmp_path, images):
    torch.manual_seed(3)
    hf = ViTModel(_hf_config(), add_pooling_layer=True).eval()
    _randomize(hf, seed=3)
    hf.save_pretrained(tmp_path)
    model = vit(**DIMS, num_classes=7).eval()
    info = load_hf_vit_state_dict(model, tmp_path)
    assert info["head_reset"]
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    with torch.no_grad():
        expected = hf(pixel_values=images).last_hidden_state[:, 0]
        torch.testing.assert_close(model.features(images), expected, atol=ATOL, rtol=0)


def test_transformers5_module_names_are_read(hf_dir, images):
    _, hf = hf_dir
    in_memory = hf.state_dict()  # transformers >= 5 names: vit.layers.{i}.attention.q_proj...
    model = vit(**DIMS, num_classes=NUM_CLASSES).eval()
    load_vit_state_dict(model, vit_hf_to_tune(in_memory))
    with torch.no_grad():
        torch.testing.assert_close(model(images), _hf_logits(hf, images), atol=ATOL, rtol=0)


def test_head_of_other_size_is_replaced(hf_dir):
    model = vit(**DIMS, num_classes=NUM_CLASSES + 3)
    info = load_hf_vit_state_dict(model, hf_dir[0])
    assert info["head_reset"] and model.head.weight.shape == (NUM_CLASSES + 3, DIMS["embed_dim"])
    assert torch.count_nonzero(model.head.weight) == 0


def test_reset_head_on_request(hf_dir):
    model = vit(**DIMS, num_classes=NUM_CLASSES)
    assert load_hf_vit_state_dict(model, hf_dir[0], reset_head=True)["head_reset"]
    assert torch.count_nonzero(model.head.weight) == 0


def test_position_embeddings_resampled_for_another_image_size(hf_dir):
    path, _ = hf_dir
    model = vit(**dict(DIMS, image_size=24), num_classes=NUM_CLASSES)
    info = load_hf_vit_state_dict(model, path)
    assert info["pos_embed_resized"]
    original = read_state_dict(path)["vit.embeddings.position_embeddings"]
    assert model.pos_embed.shape == (1, 1 + 6 * 6, DIMS["embed_dim"])
    torch.testing.assert_close(model.pos_embed[:, 0], original[:, 0])  # class token kept
    with pytest.raises(ValueError, match="pos_embed"):
        load_hf_vit_state_dict(vit(**dict(DIMS, image_size=24), num_classes=5), path, interpolate_pos_embed=False)


# ---- conversion round trips ---------------------------------------------------------


def test_hf_round_trip_keys_and_values(hf_dir):
    hub = read_state_dict(hf_dir[0])
    back = vit_tune_to_hf(vit_hf_to_tune(hub))
    assert set(back) == set(hub)
    for key, value in hub.items():
        assert torch.equal(back[key], value), key


def test_ours_saved_as_hf_loads_in_transformers(tmp_path, images):
    torch.manual_seed(4)
    model = vit(**DIMS, num_classes=NUM_CLASSES).eval()
    _randomize(model, seed=4)
    save_hf_vit(model.state_dict(), config=vit_hf_config(model), output_dir=tmp_path)
    hf = ViTForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(hf, images), model(images), atol=ATOL, rtol=0)


def test_merged_genft_saved_as_hf_matches_adapted_model(hf_dir, tmp_path, images):
    model = _genft(apply_genft_to_mlp=True, zero_init=False)
    load_hf_vit_state_dict(model, hf_dir[0])
    _perturb_adapter(model)
    merged = merge_genft_state_dict(
        model.state_dict(), config=get_genft_config(model), target_modules=list(get_genft_modules(model))
    )
    save_hf_vit(merged, config=vit_hf_config(model), output_dir=tmp_path)
    hf = ViTForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(hf, images), model(images), atol=ATOL, rtol=0)


def test_tune_to_hf_refuses_adapter_keys():
    model = _genft()
    with pytest.raises(ValueError, match="merge"):
        vit_tune_to_hf(model.state_dict())


# ---- timm ---------------------------------------------------------------------------


def _timm_from_hf(hub: dict) -> dict:
    """A timm ``vit_*_patch*`` state dict written by hand from the HF one (q, k, v fused)."""
    p = lambda k: hub["vit." + k]  # noqa: E731
    timm = {
        "cls_token": p("embeddings.cls_token"),
        "pos_embed": p("embeddings.position_embeddings"),
        "patch_embed.proj.weight": p("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": p("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": p("layernorm.weight"),
        "norm.bias": p("layernorm.bias"),
        "head.weight": hub["classifier.weight"],
        "head.bias": hub["classifier.bias"],
    }
    for i in range(DIMS["num_layers"]):
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            timm[tm + "attn.qkv." + kind] = torch.cat(
                [p(hf + f"attention.attention.{n}.{kind}") for n in ("query", "key", "value")], dim=0
            )
            timm[tm + "attn.proj." + kind] = p(hf + f"attention.output.dense.{kind}")
            timm[tm + "norm1." + kind] = p(hf + f"layernorm_before.{kind}")
            timm[tm + "norm2." + kind] = p(hf + f"layernorm_after.{kind}")
            timm[tm + "mlp.fc1." + kind] = p(hf + f"intermediate.dense.{kind}")
            timm[tm + "mlp.fc2." + kind] = p(hf + f"output.dense.{kind}")
    return timm


def test_timm_layout_gives_same_logits(hf_dir, images, tmp_path):
    path, hf = hf_dir
    timm = _timm_from_hf(read_state_dict(path))
    torch.save({"model": timm}, tmp_path / "timm.pth")  # training scripts nest the weights
    # The HF model was built with eps 1e-12; a real timm checkpoint needs norm_eps=1e-6.
    model = _genft(apply_genft_to_mlp=True)
    load_timm_vit_state_dict(model, tmp_path / "timm.pth")
    with torch.no_grad():
        torch.testing.assert_close(model(images), _hf_logits(hf, images), atol=ATOL, rtol=0)


def test_timm_qkv_split_order():
    d = 8
    qkv = torch.arange(3 * d * d, dtype=torch.float32).reshape(3 * d, d)
    out = convert_timm_vit_state_dict({"blocks.0.attn.qkv.weight": qkv, "module.norm.bias": torch.zeros(d)})
    assert torch.equal(out["layers.0.attn.q_proj.weight"], qkv[:d])
    assert torch.equal(out["layers.0.attn.k_proj.weight"], qkv[d : 2 * d])
    assert torch.equal(out["layers.0.attn.v_proj.weight"], qkv[2 * d :])
    assert "norm.bias" in out


@pytest.mark.parametrize("key", ["fc_norm.weight", "blocks.0.ls1.gamma", "reg_token"])
def test_timm_unsupported_keys_are_named(key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        convert_timm_vit_state_dict({key: torch.zeros(4)})


# ---- errors ------------------------------------------------------------------------


def test_missing_weight_is_named(hf_dir):
    sd = vit_hf_to_tune(read_state_dict(hf_dir[0]))
    del sd["layers.1.mlp.w2.weight"]
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.w2\.weight"):
        load_vit_state_dict(vit(**DIMS, num_classes=NUM_CLASSES), sd)


def test_misshaped_weight_is_named(hf_dir):
    sd = vit_hf_to_tune(read_state_dict(hf_dir[0]))
    sd["layers.0.attn.k_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.k_proj\.weight.*\(3, 3\)"):
        load_vit_state_dict(vit(**DIMS, num_classes=NUM_CLASSES), sd)


def test_unknown_hf_key_is_named():
    with pytest.raises(ValueError, match=r"vit\.encoder\.layer\.0\.foo\.weight"):
        vit_hf_to_tune({"vit.encoder.layer.0.foo.weight": torch.zeros(1)})


def test_checkpoint_key_unknown_to_model_is_named():
    with pytest.raises(ValueError, match=r"layers\.9\.sa_norm\.weight"):
        load_vit_state_dict(vit(**DIMS, num_classes=2), {"layers.9.sa_norm.weight": torch.zeros(32)})


# ---- builders and adapter bookkeeping -----------------------------------------------


def test_genft_generators_shared_and_registered_once():
    model = _genft(genft_attn_modules=["q_proj", "k_proj", "v_proj"], apply_genft_to_mlp=True)
    d, m = DIMS["embed_dim"], DIMS["mlp_dim"]
    assert set(model.genft_generators.keys()) == {f"{d}x{d}", f"{m}x{d}", f"{d}x{m}"}
    layers = get_genft_modules(model)
    assert len(layers) == DIMS["num_layers"] * 5
    gens = {id(layer.generator) for name, layer in layers.items() if name.endswith("q_proj") or name.endswith("v_proj")}
    assert gens == {id(model.genft_generators[f"{d}x{d}"])}
    assert all(k.startswith("genft_generators.") for k in model.state_dict() if ".P1" in k or ".Q2" in k)


def test_adapter_parameter_count_matches_formula():
    a, b = 4, 2
    d, m, n = DIMS["embed_dim"], DIMS["mlp_dim"], DIMS["num_layers"]
    model = _genft(genft_attn_modules=["q_proj", "v_proj"], apply_genft_to_mlp=True, shared_dim=a, specific_dim=b)
    count = sum(p.numel() for p in get_adapter_params(model).values())
    shared = 4 * a * d + 2 * (2 * a * d + 2 * a * m)  # square group + the two MLP groups
    specific = n * (2 * (2 * b * d) + 2 * (2 * b * d + 2 * b * m))  # q, v tied; w1, w2 not
    assert count == shared + specific


def test_head_is_not_an_adapter_parameter_and_can_be_made_trainable():
    model = _genft()
    adapter = get_adapter_params(model)
    assert not any(k.startswith("head.") for k in adapter)
    set_trainable_params(model, {**adapter, **{f"head.{n}": p for n, p in model.head.named_parameters()}})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert not any(n.endswith("q_proj.weight") or n.startswith("layers.0.sa_norm") for n in trainable)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(genft_attn_modules=["q"]), "genft_attn_modules"),
        (dict(genft_attn_modules="q_proj"), "genft_attn_modules"),
        (dict(genft_attn_modules=[]), "genft_attn_modules"),
        (dict(act_out="swish"), "act_out"),
        (dict(num_heads=5), "num_heads"),
        (dict(drop_path=1.0), "drop_path"),
    ],
)
def test_builder_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        _genft(**kwargs)


def test_wrong_image_shape_is_explained():
    with pytest.raises(ValueError, match="images must have shape"):
        vit(**DIMS, num_classes=2)(torch.zeros(1, 3, 8, 8))


def test_lora_baseline_matches_base_at_step_zero(hf_dir, images):
    path, hf = hf_dir
    model = vit_lora(**DIMS, num_classes=NUM_CLASSES, lora_attn_modules=["q_proj", "v_proj"], lora_rank=2).eval()
    load_hf_vit_state_dict(model, path)
    with torch.no_grad():
        torch.testing.assert_close(model(images), _hf_logits(hf, images), atol=ATOL, rtol=0)


def test_drop_path_only_in_training(images):
    model = vit(**DIMS, num_classes=3, drop_path=0.5)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
    model.train()
    torch.manual_seed(0)
    outs = {tuple(model(images).flatten().tolist()) for _ in range(4)}
    assert len(outs) > 1


def test_genft_training_step_updates_only_trainable(hf_dir, images):
    model = _genft()
    load_hf_vit_state_dict(model, hf_dir[0], reset_head=True)
    params = {**get_adapter_params(model), "head.weight": model.head.weight, "head.bias": model.head.bias}
    set_trainable_params(model, params)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2]))
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n
    assert isinstance(model.layers[0].attn.q_proj, GenFTLinear)
    assert model.layers[0].attn.q_proj.B1.abs().sum() > 0  # the zero-initialised B moved


# ---- WeGeFT on ViT --------------------------------------------------------------------


def _wegeft(**kwargs) -> ViTClassifier:
    base = dict(DIMS, num_classes=NUM_CLASSES, wegeft_rank=4, wegeft_alpha=8.0)
    base.update(kwargs)
    return vit_wegeft(**base).eval()


def test_wegeft_matches_transformers_at_step_zero(hf_dir, images):
    path, hf = hf_dir
    model = _wegeft(apply_wegeft_to_mlp=True)
    load_hf_vit_state_dict(model, path)
    assert all(p.abs().sum() == 0 for n, p in get_adapter_params(model).items() if n.endswith("phi"))
    with torch.no_grad():
        torch.testing.assert_close(model(images), _hf_logits(hf, images), atol=ATOL, rtol=0)


@pytest.mark.parametrize("shared", [True, False])
def test_wegeft_equals_plain_vit_with_formula_weights(hf_dir, images, shared):
    """A trained WeGeFT ViT is a plain ViT with W = W0 + (alpha/r) W0 phi^T psi (formula
    written here) on each target."""
    path, _ = hf_dir
    rank, alpha = 4, 8.0
    model = _wegeft(wegeft_attn_modules=["q_proj", "v_proj", "output_proj"], wegeft_shared=shared)
    load_hf_vit_state_dict(model, path)
    _perturb_adapter(model)
    plain = vit(**DIMS, num_classes=NUM_CLASSES).eval()
    sd = model.state_dict()
    expected = {}
    for key, value in sd.items():
        if key.startswith("wegeft_factors.") or ".wegeft." in key:
            continue
        expected[key] = value.clone()
    for name in get_wegeft_layers(model):
        factors = f"wegeft_factors.{name.rsplit('.', 1)[-1]}" if shared else f"{name}.wegeft"
        w0, phi, psi = sd[f"{name}.weight"], sd[f"{factors}.phi"], sd[f"{factors}.psi"]
        expected[f"{name}.weight"] = w0 + (alpha / rank) * w0 @ phi.T @ psi
    plain.load_state_dict(expected)
    with torch.no_grad():
        got = model(images)
        torch.testing.assert_close(got, plain(images), atol=ATOL, rtol=0)
        with disable_adapter(model):
            base = model(images)
        assert not torch.allclose(got, base, atol=1e-3)  # the adapter does something


def test_wegeft_merged_state_dict_saves_as_hf(hf_dir, images, tmp_path):
    """Merged with merge_wegeft_state_dict, a WeGeFT ViT saves as a plain HF ViT that
    transformers loads with the same logits; unmerged adapter keys are refused."""
    from genft_tune.modules import merge_wegeft_state_dict
    from genft_tune.modules.wegeft import get_wegeft_config, get_wegeft_target_modules

    model = _wegeft()
    load_hf_vit_state_dict(model, hf_dir[0])
    _perturb_adapter(model)
    with pytest.raises(ValueError, match="wegeft_factors"):
        vit_tune_to_hf(model.state_dict())
    merged = merge_wegeft_state_dict(
        model.state_dict(), config=get_wegeft_config(model), target_modules=get_wegeft_target_modules(model)
    )
    save_hf_vit(merged, config=vit_hf_config(model), output_dir=tmp_path / "hf")
    hf = ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(hf, images), model(images), atol=ATOL, rtol=0)


def get_wegeft_layers(model):
    return [n for n, m in model.named_modules() if isinstance(m, WeGeFTLinear)]


def test_wegeft_factors_registered_once_per_module_type():
    model = _wegeft(wegeft_attn_modules=["q_proj", "k_proj", "v_proj"], apply_wegeft_to_mlp=True)
    d, m, n, r = DIMS["embed_dim"], DIMS["mlp_dim"], DIMS["num_layers"], 4
    assert set(model.wegeft_factors.keys()) == {"q_proj", "k_proj", "v_proj", "w1", "w2"}
    assert len(get_wegeft_layers(model)) == 5 * n
    adapter = get_adapter_params(model)
    assert set(adapter) == {f"wegeft_factors.{t}.{f}" for t in model.wegeft_factors for f in ("phi", "psi")}
    # phi, psi are (r, in): in = d for attention and w1, m for w2
    assert sum(p.numel() for p in adapter.values()) == 2 * r * (4 * d + m)
    per_layer = _wegeft(wegeft_shared=False)
    assert len(per_layer.wegeft_factors) == 0
    assert sum(p.numel() for p in get_adapter_params(per_layer).values()) == n * 2 * (2 * r * d)
    assert not any(k.startswith("head.") for k in adapter)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(wegeft_attn_modules=["q"]), "wegeft_attn_modules"),
        (dict(wegeft_attn_modules=[]), "wegeft_attn_modules"),
        (dict(wegeft_rank=0), "rank"),
        (dict(wegeft_dropout=1.5), "dropout"),
    ],
)
def test_wegeft_builder_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        _wegeft(**kwargs)


# ---- training on real images (Fashion-MNIST, Debian's dataset-fashion-mnist) -------------

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _fashion_mnist(n_per_class: int = 20, classes=(0, 1, 2, 3, 4)):
    """The first ``n_per_class`` training images of each class, normalised, (N, 1, 28, 28)."""
    import gzip
    import os

    import numpy as np

    files = [os.path.join(FASHION_MNIST, f) for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")]
    if not all(os.path.isfile(f) for f in files):
        pytest.skip("Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)")
    with gzip.open(files[0]) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(files[1]) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    rows = np.concatenate([np.flatnonzero(labels == c)[:n_per_class] for c in classes])
    x = torch.from_numpy(images[rows].astype(np.float32) / 255.0)[:, None]
    y = torch.from_numpy(np.searchsorted(np.array(classes), labels[rows]).astype(np.int64))
    return (x - 0.286) / 0.353, y


@pytest.mark.parametrize("builder", ["genft", "wegeft"])
def test_adapter_and_head_train_on_real_images(builder):
    """GenFT (and WeGeFT) on a ViT trains: with the adapter and a fresh zero head trained
    (the recipe's default), the loss on 100 real Fashion-MNIST images falls well below
    chance level, and the adapter's zero-initialised factors have moved."""
    x, y = _fashion_mnist()
    torch.manual_seed(0)
    common = dict(num_classes=5, image_size=28, patch_size=7, num_channels=1)  # 16 patches: fast
    if builder == "genft":
        model = vit_tiny_genft(**common, shared_dim=8, specific_dim=4)
        zero_init = lambda m: m.layers[0].attn.q_proj.B1  # noqa: E731
    else:
        model = vit_tiny_wegeft(**common, wegeft_rank=8, wegeft_alpha=16.0)
        zero_init = lambda m: m.wegeft_factors.q_proj.phi  # noqa: E731
    plain = vit(**{**common, "embed_dim": 64, "num_layers": 4, "num_heads": 4, "mlp_dim": 128})
    model.load_state_dict(plain.state_dict(), strict=False)  # a random "pretrained" base
    model.reset_head()
    assert zero_init(model).abs().sum() == 0
    params = {**get_adapter_params(model), "head.weight": model.head.weight, "head.bias": model.head.bias}
    set_trainable_params(model, params)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(5.0)).item(), abs=1e-4)  # zero head: chance
    assert losses[-1] < 0.7 * losses[0], losses
    assert zero_init(model).abs().sum() > 0


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_merge_cli_verify_on_vit(hf_dir, tmp_path, method):
    """``genft-tune merge --verify`` on a ViT: the merged checkpoint's logits equal the
    adapted model's, and a wrong "merged" checkpoint (the base) is reported."""
    from genft_tune._cli.genft import main as cli_main
    from genft_tune.checkpointing import save_adapter, verify_merge
    from genft_tune.modules.wegeft import (
        get_wegeft_adapter_state_dict,
        get_wegeft_config,
        get_wegeft_target_modules,
    )
    from genft_tune.modules.genft import get_genft_adapter_state_dict

    if method == "genft":
        model = _genft(apply_genft_to_mlp=True, zero_init=False)
    else:
        model = _wegeft()
    load_hf_vit_state_dict(model, hf_dir[0])
    _perturb_adapter(model)
    if method == "genft":
        adapter = get_genft_adapter_state_dict(model.state_dict())
        config, targets = get_genft_config(model), list(get_genft_modules(model))
    else:
        adapter = get_wegeft_adapter_state_dict(model.state_dict())
        config, targets = get_wegeft_config(model), get_wegeft_target_modules(model)
    save_adapter(tmp_path / "adapter", adapter_state_dict=adapter, config=config, target_modules=targets)
    out = tmp_path / "merged"
    rc = cli_main(["merge", "--base", str(hf_dir[0]), "--adapter", str(tmp_path / "adapter"),
                   "--output", str(out), "--verify", "--tolerance", "1e-4"])
    assert rc == 0
    # the reference for the adapted model: our ViT with the adapter, on the same images
    images = torch.randn(2, DIMS["num_channels"], DIMS["image_size"], DIMS["image_size"])
    hf = ViTForImageClassification.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(_hf_logits(hf, images), model(images), atol=ATOL, rtol=0)
    assert verify_merge(base_dir=hf_dir[0], adapter_dir=tmp_path / "adapter", merged_dir=hf_dir[0]) > 1e-3
