"""GenFT / WeGeFT on every decoder family: Qwen2 (q/k/v biases, tied embeddings), Qwen3
(QK-norm, head_dim != hidden / heads, tied), Gemma 2 (tied, soft-capping), Mistral and
Phi-3 (fused qkv / gate_up in the checkpoint).

For each family a tiny checkpoint is written by transformers' own config and model
classes; the real single-device recipe fine-tunes ``genft_tune.models.genft_model`` on
it for a few steps; ``genft-tune merge --verify`` merges the adapter; the merged
checkpoint, loaded by plain ``transformers.AutoModelForCausalLM``, must give the
unmerged model's logits (fp32), as must the recipe's own merged checkpoint.
"""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from _recipe_runs import run_recipe_in_process, SINGLE_DEVICE_RECIPE, write_config
from _tiny_llama import base_config, VOCAB_SIZE

from genft_tune._cli.genft import main as cli_main
from genft_tune.checkpointing import load_adapter

DIMS = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
TUNE_DIMS = dict(vocab_size=VOCAB_SIZE, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                 intermediate_dim=128, max_seq_len=256)

FAMILIES = {
    "qwen2": dict(
        hf=("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
        base="torchtune.models.qwen2._component_builders.qwen2",
        base_kwargs=dict(rope_base=10000.0, norm_eps=1e-6, tie_word_embeddings=True),
        model_type="QWEN2",
    ),
    "qwen3": dict(
        hf=("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
        base="genft_tune.models.qwen3.qwen3",
        base_kwargs=dict(head_dim=32, rope_base=10000.0, norm_eps=1e-6, tie_word_embeddings=True),
        model_type="QWEN3",
        checkpointer="genft_tune.checkpointing.HFCheckpointer",
    ),
    "gemma2": dict(
        hf=("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6, query_pre_attn_scalar=16,
                                                      attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=128)),
        base="genft_tune.models.gemma2.gemma2",
        base_kwargs=dict(head_dim=16, rope_base=10000, norm_eps=1e-6, query_pre_attn_scalar=16,
                         attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window_size=128),
        model_type="GEMMA2",
        checkpointer="genft_tune.checkpointing.HFCheckpointer",
    ),
    "mistral": dict(
        hf=("MistralConfig", "MistralForCausalLM", dict(rope_theta=10000.0, rms_norm_eps=1e-5, sliding_window=None)),
        base="torchtune.models.mistral._component_builders.mistral",
        base_kwargs=dict(rope_base=10000, norm_eps=1e-5),
        model_type="MISTRAL",
    ),
    "phi3": dict(
        hf=("Phi3Config", "Phi3ForCausalLM", dict(rope_theta=10000.0, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        base="torchtune.models.phi3._component_builders.phi3",
        base_kwargs=dict(rope_base=10000, norm_eps=1e-5),
        model_type="PHI3_MINI",
    ),
}


def write_family_checkpoint(family: str, path: Path, seed: int = 0) -> Path:
    import transformers

    cfg_name, model_name, extra = FAMILIES[family]["hf"]
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**DIMS, **extra))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
            elif "norm" in name or "layernorm" in name:
                p.uniform_(-0.3, 0.3) if family == "gemma2" else p.uniform_(0.5, 1.5)  # Gemma's norms are 1 + w
            else:
                p.normal_(std=0.02)  # biases
    model.save_pretrained(path)
    return path


def _config(family: str, tmp_path: Path, method: str):
    spec = FAMILIES[family]
    ckpt = write_family_checkpoint(family, tmp_path / "base")
    model = {"_component_": f"genft_tune.models.{method}_model", "base": spec["base"],
             "base_kwargs": {**TUNE_DIMS, **spec["base_kwargs"]}, "targets": ["q_proj", "v_proj"]}
    if method == "genft":
        model.update(shared_dim=4, specific_dim=2, scaling=0.25, ratio=1.0)
    else:
        model.update(rank=4, alpha=8.0)
    cfg = base_config(tmp_path, ckpt_dir=ckpt, max_steps_per_epoch=3, **{"optimizer.lr": 2e-2})
    cfg["model"] = model
    cfg["checkpointer"]["model_type"] = spec["model_type"]
    cfg["checkpointer"]["_component_"] = spec.get("checkpointer", "torchtune.training.FullModelHFCheckpointer")
    return cfg, ckpt


def _unmerged_logits(cfg, adapter_dir: Path, tokens):
    """Base (through the config's own checkpointer) + the saved adapter, fp32."""
    from torchtune import config as tt_config
    from torchtune.training import MODEL_KEY

    model = tt_config.instantiate(OmegaConf.create(cfg["model"]))
    ckpt_cfg = OmegaConf.create({**cfg["checkpointer"], "output_dir": str(adapter_dir.parent / "_unused")})
    base = tt_config.instantiate(ckpt_cfg).load_checkpoint()[MODEL_KEY]
    model.load_state_dict(base, strict=False)
    adapter, _ = load_adapter(adapter_dir)
    _, unexpected = model.load_state_dict(adapter, strict=False)
    assert not unexpected
    with torch.no_grad():
        return model.eval()(tokens)


def _hf_logits(directory: Path, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("family,method", [*((f, "genft") for f in FAMILIES), ("qwen2", "wegeft"), ("gemma2", "wegeft")])
def test_family_trains_merges_and_loads_in_transformers(family, method, tmp_path, capsys):
    cfg, base = _config(family, tmp_path, method)
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "c.yaml"))
    adapter_dir = Path(cfg["output_dir"]) / "epoch_0"
    meta = json.loads((adapter_dir / "genft_config.json").read_text())
    assert meta["method"] == method
    assert {t.rsplit(".", 1)[-1] for t in meta["target_modules"]} == {"q_proj", "v_proj"}

    merged = tmp_path / "merged"
    rc = cli_main(["merge", "--base", str(base), "--adapter", str(adapter_dir), "--output", str(merged),
                   "--verify", "--tolerance", "1e-4"])
    assert rc == 0, capsys.readouterr().err

    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    unmerged = _unmerged_logits(cfg, adapter_dir, tokens)
    torch.testing.assert_close(_hf_logits(merged, tokens), unmerged, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_hf_logits(adapter_dir, tokens), unmerged, rtol=1e-4, atol=1e-4)  # the recipe's merge
    assert (_hf_logits(base, tokens) - unmerged).abs().max() > 1e-3  # the adapter did something


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_our_builders_match_transformers(family, tmp_path):
    """Qwen3 (ours: torchtune has none) and Gemma 2 (ours: torchtune's soft-caps and
    converts its MLP norms differently from the checkpoints) against transformers, fp32,
    full forward and token-by-token decoding with the KV cache."""
    from safetensors.torch import load_file

    from genft_tune.models._families import get_family

    ckpt = write_family_checkpoint(family, tmp_path / "ckpt", seed=3)
    config = json.loads((ckpt / "config.json").read_text())
    fam = get_family(config)
    model = fam.build(config)
    model.load_state_dict(fam.to_tune(load_file(str(ckpt / "model.safetensors")), config), strict=True)
    model.eval()
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    want = _hf_logits(ckpt, tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), want, rtol=1e-4, atol=1e-4)
        model.setup_caches(batch_size=1, dtype=torch.float32, decoder_max_seq_len=32)
        causal = torch.tril(torch.ones(32, 32, dtype=torch.bool))
        steps = [
            model(tokens[:, i : i + 1], input_pos=torch.tensor([[i]]), mask=causal[None, i : i + 1])
            for i in range(tokens.shape[1])
        ]
    torch.testing.assert_close(torch.cat(steps, dim=1), want, rtol=1e-4, atol=1e-4)
    # the converter round-trips the checkpoint's keys and tensors
    back = fam.from_tune(fam.to_tune(load_file(str(ckpt / "model.safetensors")), config), config)
    original = load_file(str(ckpt / "model.safetensors"))
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in back)


def test_torchtune_gemma2_differs_from_the_checkpoint(tmp_path):
    """Why genft_tune.models.gemma2 exists: torchtune 0.6.1's converter + component builder,
    given the checkpoint's own numbers, do not reproduce transformers' logits."""
    from safetensors.torch import load_file
    from torchtune.models.gemma2._component_builders import gemma2
    from torchtune.models.gemma2._convert_weights import gemma2_hf_to_tune

    ckpt = write_family_checkpoint("gemma2", tmp_path / "ckpt", seed=3)
    model = gemma2(**TUNE_DIMS, **{k: v for k, v in FAMILIES["gemma2"]["base_kwargs"].items() if "softcapping" not in k},
                   hidden_capping_value=50.0, final_capping_value=30.0)
    model.load_state_dict(gemma2_hf_to_tune(load_file(str(ckpt / "model.safetensors")), num_heads=4, num_kv_heads=2,
                                            dim=64, head_dim=16), strict=True)
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model.eval()(tokens) - _hf_logits(ckpt, tokens)).abs().max() > 1e-2


@pytest.mark.parametrize("model_type", ["QWEN3", "qwen3"])  # as before family_read_by: any case
def test_hf_checkpointer_round_trips_qwen3(tmp_path, model_type):
    from genft_tune.checkpointing import HFCheckpointer

    ckpt = write_family_checkpoint("qwen3", tmp_path / "ckpt")
    checkpointer = HFCheckpointer(checkpoint_dir=str(ckpt), checkpoint_files=["model.safetensors"],
                                  model_type=model_type, output_dir=str(tmp_path / "out"))
    sd = checkpointer.load_checkpoint()["model"]
    assert "layers.0.attn.q_norm.scale" in sd and "output.weight" not in sd  # tied
    checkpointer.save_checkpoint({"model": sd}, epoch=0)
    written = next((tmp_path / "out" / "epoch_0").glob("*.safetensors"))
    from safetensors.torch import load_file

    original = load_file(str(ckpt / "model.safetensors"))
    got = load_file(str(written))
    assert got.keys() == original.keys() and all(torch.equal(got[k], original[k]) for k in got)
    import torchtune.models.qwen2._convert_weights as qwen2_convert

    assert qwen2_convert.qwen2_hf_to_tune.__module__.startswith("torchtune")  # restored after use
