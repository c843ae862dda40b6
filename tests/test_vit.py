"""ViT with GenFT: equivalence with transformers' ViT, checkpoint conversion (HF both
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
    vit_tune_to_hf,
    ViTClassifier,
)
from genft_tune.modules import (  # noqa: E402
    get_genft_config,
    get_genft_modules,
    GenFTLinear,
    merge_genft_state_dict,
)

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
