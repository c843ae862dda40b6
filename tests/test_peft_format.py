"""Our adapter files as PEFT's (``export_peft_adapter``) and back (``import_peft_adapter``):
checked against PEFT and transformers themselves. The PEFT-loaded Hugging Face model's
logits equal our unmerged torchtune model's and the merged checkpoint's (fp32), for GenFT
and WeGeFT, square (q, o) and non-square (GQA k/v, MLP) targets, tied and untied
embeddings; q/k rows are in torchtune's RoPE order in our model and in Hugging Face's in
PEFT's, so the round trip checks the row handling too."""

import json

import pytest
import torch
from safetensors.torch import load_file
from _tiny_llama import adapted_model as _tune_model  # on TARGETS (its default)
from _tiny_llama import save_model_adapter as _save
from _tiny_llama import TINY, write_tiny_checkpoint

from genft_tune.checkpointing import load_adapter, merge_adapter_checkpoint, read_adapter, save_adapter
from genft_tune.checkpointing._peft_format import (
    export_peft_adapter,
    import_peft_adapter,
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
    PeftFormatError,
)
from genft_tune.modules._rope import tune_rows_in_hf_order
from genft_tune.modules import GenFTConfig, WeGeFTConfig
from genft_tune.modules._method import adapter_kind_for_config

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
import genft_tune.peft  # noqa: E402,F401  (registers GENFT and WEGEFT)

TARGETS = ["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2"]
CONFIGS = {
    "genft": GenFTConfig(shared_dim=2, specific_dim=2, scaling=0.5, zero_init=False),
    "genft_bias": GenFTConfig(shared_dim=3, specific_dim=1, scaling=0.5, generator_bias=True, act_in="tanh"),
    "wegeft": WeGeFTConfig(rank=2, alpha=4.0),
    "wegeft_per_layer": WeGeFTConfig(rank=2, alpha=4.0, shared=False),
}


def _tokens():
    return torch.randint(0, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(1))


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_peft_export_has_our_logits_and_merges_like_ours(tmp_path, method, tied):
    config = CONFIGS[method]
    base = write_tiny_checkpoint(tmp_path / "base", tie_word_embeddings=tied)
    model, hf_config = _tune_model(base, config)
    adapter = tmp_path / "adapter"
    _save(model, config, adapter, base)
    export_peft_adapter(adapter, base_dir=base, base_model_name_or_path="org/tiny-llama")

    peft_config = json.loads((adapter / PEFT_CONFIG_FILE).read_text())
    assert peft_config["base_model_name_or_path"] == "org/tiny-llama"
    assert peft_config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "v_proj"]
    if method.startswith("genft"):  # q/k rows: torchtune's RoPE order, recorded per module type
        assert peft_config["torchtune_rope_heads"] == {"q_proj": TINY["num_heads"], "k_proj": TINY["num_kv_heads"]}
    tokens = _tokens()
    with torch.no_grad():
        ours = model(tokens)
        loaded = peft.PeftModel.from_pretrained(_hf(base), str(adapter)).eval()
        theirs = loaded(tokens).logits
        assert (ours - _hf(base)(tokens).logits).abs().max() > 1e-2  # the adapter acts
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(tokens).logits, ours, rtol=1e-4, atol=1e-4)
    out = merge_adapter_checkpoint(base_dir=base, adapter_dir=adapter, output_dir=tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(_hf(out)(tokens).logits, ours, rtol=1e-4, atol=1e-4)

    # back to ours: the same tensors, the same targets, the same config
    back = import_peft_adapter(adapter, tmp_path / "back", base_dir=base)
    (sd0, cfg0), (sd1, cfg1) = load_adapter(adapter), load_adapter(back)
    assert sorted(sd1) == sorted(sd0)
    for k in sd0:
        torch.testing.assert_close(sd1[k], sd0[k], rtol=0, atol=0, msg=k)
    assert cfg1.config == cfg0.config and cfg1.target_shapes == cfg0.target_shapes
    t0, t1 = cfg0.target_modules, cfg1.target_modules
    assert (t1 == t0 if isinstance(t0, dict) else sorted(t1) == sorted(t0)) and cfg1.weight_layout == "torchtune"


def test_merge_and_resume_paths_take_a_peft_only_adapter(tmp_path):
    """A folder with PEFT's pair alone merges like ours (the reader converts it)."""
    config = CONFIGS["genft"]
    base = write_tiny_checkpoint(tmp_path / "base")
    model, hf_config = _tune_model(base, config)
    _save(model, config, tmp_path / "ours", base)
    export_peft_adapter(tmp_path / "ours", base_dir=base, output_dir=tmp_path / "peft_only")
    assert sorted(p.name for p in (tmp_path / "peft_only").iterdir()) == [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]
    a = merge_adapter_checkpoint(base_dir=base, adapter_dir=tmp_path / "ours", output_dir=tmp_path / "m1")
    b = merge_adapter_checkpoint(base_dir=base, adapter_dir=tmp_path / "peft_only", output_dir=tmp_path / "m2")
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_read_adapter_gives_the_same_adapter_from_ours_and_peft(tmp_path, method):
    """read_adapter: the same tensors and config from our pair, PEFT's pair alone, and
    PEFT's pair in a recipe checkpoint's peft/ subfolder beside ours (ours is read)."""
    config = CONFIGS[method]
    base = write_tiny_checkpoint(tmp_path / "base")
    model, _ = _tune_model(base, config)
    _save(model, config, tmp_path / "ours", base)
    export_peft_adapter(tmp_path / "ours", base_dir=base, output_dir=tmp_path / "peft_only")
    export_peft_adapter(tmp_path / "ours", base_dir=base, output_dir=tmp_path / "ours" / "peft")
    sd0, cfg0 = load_adapter(tmp_path / "ours")
    for folder in ("ours", "peft_only", "ours/peft"):
        sd, cfg = read_adapter(tmp_path / folder, base_dir=base)
        assert sorted(sd) == sorted(sd0), folder
        assert all(torch.equal(sd[k], sd0[k]) for k in sd0), folder
        assert cfg.config == cfg0.config and cfg.target_shapes == cfg0.target_shapes, folder
    with pytest.raises(PeftFormatError, match="needs its Hugging Face base"):
        read_adapter(tmp_path / "peft_only")


def test_an_adapter_trained_by_peft_merges_in_hf_layout(tmp_path):
    """A GenFT adapter trained with PEFT (on Hugging Face's q/k rows: no
    torchtune_rope_heads) becomes ours with weight_layout hf, and merges to PEFT's own
    merge_and_unload."""
    base = write_tiny_checkpoint(tmp_path / "base")
    model = peft.get_peft_model(_hf(base), genft_tune.peft.GenFTPeftConfig(target_modules=["q_proj", "k_proj"], zero_init=False))
    model.save_pretrained(tmp_path / "peft")
    ours = import_peft_adapter(tmp_path / "peft", tmp_path / "ours", base_dir=base)
    assert load_adapter(ours)[1].weight_layout == "hf"
    out = merge_adapter_checkpoint(base_dir=base, adapter_dir=ours, output_dir=tmp_path / "merged")
    with torch.no_grad():
        want = model.eval()(_tokens()).logits
        torch.testing.assert_close(_hf(out)(_tokens()).logits, want, rtol=1e-4, atol=1e-4)


def test_rope_rows_are_torchtunes_permutation():
    from torchtune.models.convert_weights import tune_to_hf

    w = torch.randn(TINY["num_kv_heads"] * 16, 64)
    hf = tune_to_hf({"layers.0.attn.k_proj.weight": w}, num_heads=4, num_kv_heads=TINY["num_kv_heads"], dim=64)
    torch.testing.assert_close(hf["model.layers.0.self_attn.k_proj.weight"], w[tune_rows_in_hf_order(32, 2)], rtol=0, atol=0)


def test_fused_targets_are_refused_with_a_reason(tmp_path):
    """Phi-3 fuses q, k, v (and gate/up) into one Hugging Face linear: no PEFT file."""
    from genft_tune.checkpointing._peft_format import peft_files_from_adapter
    from genft_tune.checkpointing._adapter import AdapterFileConfig

    cfg = AdapterFileConfig(method="genft", genft_config=CONFIGS["genft"].to_dict(),
                             target_modules=["layers.0.attn.q_proj"], target_shapes={"layers.0.attn.q_proj": [64, 64]})
    phi3 = dict(model_type="phi3", num_attention_heads=4, num_key_value_heads=4, hidden_size=64, num_hidden_layers=1,
                intermediate_size=128, vocab_size=128)
    with pytest.raises(PeftFormatError, match="fuses it with others into one tensor"):
        peft_files_from_adapter({}, cfg, hf_config=phi3, base_model_name_or_path=None)


def test_export_peft_cli(tmp_path, capsys):
    from genft_tune._cli.genft import main as cli_main
    from genft_tune.training._adapter_files import save_adapter_files
    from genft_tune.training._model_adapter import find_model_adapter

    config = CONFIGS["wegeft"]
    base = write_tiny_checkpoint(tmp_path / "base")
    model, _ = _tune_model(base, config)
    adapter = find_model_adapter(model)
    sd = {k: v for k, v in model.state_dict().items() if adapter.is_key(k)}
    save_adapter_files(tmp_path / "ckpt", adapter=adapter, adapter_state_dict=sd, base_dir=base)  # as a recipe
    (tmp_path / "ckpt" / "peft" / PEFT_CONFIG_FILE).unlink()
    # the base directory comes from what the adapter recorded
    assert cli_main(["export-peft", str(tmp_path / "ckpt"), "--base-model", "org/tiny"]) == 0
    assert json.loads((tmp_path / "ckpt" / "peft" / PEFT_CONFIG_FILE).read_text())["base_model_name_or_path"] == "org/tiny"
    assert "PEFT adapter written to" in capsys.readouterr().out
    assert cli_main(["export-peft", str(tmp_path / "ckpt"), "--base-model", "not a hub id"]) == 2
    assert "--base-model must be a Hub id like ORG/NAME, got 'not a hub id'" in capsys.readouterr().err
    assert cli_main(["export-peft", str(tmp_path / "ckpt"), "--base", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "--base" in err and "no such folder" in err and "Traceback" not in err


def test_wegeft_adapter_without_recorded_keys_shares_by_module_type(tmp_path):
    """An adapter file whose target_modules is a plain list (no shared keys recorded) shares
    by module type, as our merge does: output_proj's pair must reach PEFT's o_proj."""
    config = CONFIGS["wegeft"]
    base = write_tiny_checkpoint(tmp_path / "base")
    model, _ = _tune_model(base, config)
    kind = adapter_kind_for_config(config)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, kind.layer_cls)}
    save_adapter(tmp_path / "a", adapter_state_dict={k: v for k, v in model.state_dict().items() if kind.is_key(k)},
                       config=config, target_modules=list(layers),
                       target_shapes={n: (m.out_dim, m.in_dim) for n, m in layers.items()})
    export_peft_adapter(tmp_path / "a", base_dir=base)
    assert "base_model.wegeft_factors.o_proj.phi" in load_file(str(tmp_path / "a" / PEFT_WEIGHTS_FILE))
    with torch.no_grad():
        loaded = peft.PeftModel.from_pretrained(_hf(base), str(tmp_path / "a")).eval()
        torch.testing.assert_close(loaded(_tokens()).logits, model(_tokens()), rtol=1e-4, atol=1e-4)


def test_peft_layer_filters_are_refused_on_import(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base")
    model = peft.get_peft_model(_hf(base), genft_tune.peft.GenFTPeftConfig(target_modules=["q_proj"], layers_to_transform=[0]))
    model.save_pretrained(tmp_path / "peft")
    with pytest.raises(PeftFormatError, match=r"layers_to_transform \[0\] is not supported"):
        import_peft_adapter(tmp_path / "peft", tmp_path / "ours", base_dir=base)
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_merging_two_peft_adapters_generates_both_from_the_original_weight(tmp_path, method):
    base = write_tiny_checkpoint(tmp_path / "base")
    make = {"genft": lambda: genft_tune.peft.GenFTPeftConfig(target_modules=["q_proj"], zero_init=False),
            "wegeft": lambda: genft_tune.peft.WeGeFTPeftConfig(target_modules=["q_proj"], rank=2)}[method]
    model = peft.get_peft_model(_hf(base), make(), adapter_name="a")
    model.add_adapter("b", make())
    with torch.no_grad():  # WeGeFT starts at dW = 0 (phi = 0)
        for name, p in model.named_parameters():
            if ".phi" in name or "_phi" in name:
                p.normal_(std=0.3)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    W0 = layer.get_base_layer().weight.detach().clone()
    want = W0 + layer.get_delta_weight("a") + layer.get_delta_weight("b")
    assert (layer.get_delta_weight("b") - layer.get_delta_weight("a")).abs().max() > 1e-4  # two different adapters
    layer.merge(adapter_names=["a", "b"])
    torch.testing.assert_close(layer.get_base_layer().weight, want, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(layer.get_base_layer().weight, W0, rtol=0, atol=0)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"adapter_config.json": '{"peft_type": "LORA", "r": 8}', "adapter_model.safetensors": ""},
         "holds a PEFT LORA adapter, not a GenFT or WeGeFT one: load it with PEFT"),
        ({"trained_modules.json": "{}", "trained_modules.safetensors": ""},
         "holds the trained modules of a run without a GenFT or WeGeFT adapter"),
    ],
    ids=["peft-lora", "trained-modules"],
)
def test_read_adapter_names_what_a_folder_of_other_files_holds(tmp_path, files, message):
    """The image recipe's LoRA and linear-probe runs write these: merge, verify and export
    say what the folder is instead of "holds no adapter" beside files that look like one."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(FileNotFoundError, match=message):
        read_adapter(tmp_path)
