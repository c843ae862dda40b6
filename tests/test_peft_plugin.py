"""``import genft_tune.peft`` registers GenFT and WeGeFT with Hugging Face PEFT:
get_peft_model, save_pretrained / PeftModel.from_pretrained, merge_and_unload and the
transformers Trainer work, checked against PEFT and transformers themselves."""

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import genft_tune.peft as genft_peft  # noqa: E402
from peft import get_peft_model, PeftConfig, PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

CFG = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)


def _base(seed=0):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    return model


def _genft(**kw):
    return genft_peft.GenFTPeftConfig(target_modules=["q_proj", "v_proj"], **kw)


def _wegeft(**kw):
    return genft_peft.WeGeFTPeftConfig(target_modules=["q_proj", "v_proj", "down_proj"], rank=4, **kw)


# (config with an adapter that acts at step 0, what its saved file holds)
ACTING = {
    # 64x64 (q) and 32x64 (GQA v): P1, Q1, P2, Q2 each, once
    "genft": (lambda: _genft(zero_init=False), 8, "genft_generators", "GENFT"),
    # one (phi, psi) per module type, once
    "wegeft_shared": (lambda: _wegeft(), 6, "wegeft_factors", "WEGEFT"),
    # (phi, psi) per layer: 3 targets x 2 layers
    "wegeft_per_layer": (lambda: _wegeft(shared=False), 12, "wegeft_layer_factors", "WEGEFT"),
}


def _make_acting(model):
    """WeGeFT starts at dW = 0 (phi = 0): give phi values so that the adapter acts."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("phi") or ".phi." in name:
                p.normal_(std=0.3)


def _tokens():
    return torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", list(ACTING))
def test_save_load_merge_round_trip(tmp_path, method):
    make_config, n_shared, shared_attr, peft_type = ACTING[method]
    base = _base()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, make_config())
    _make_acting(model)
    with torch.no_grad():
        want = model(_tokens()).logits
        assert (want - _base()(_tokens()).logits).abs().max() > 1e-3  # the adapter acts
    model.save_pretrained(tmp_path)
    assert PeftConfig.from_pretrained(tmp_path).peft_type == peft_type
    keys = sorted(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert len([k for k in keys if shared_attr in k]) == n_shared
    assert not any(k.endswith(".weight") for k in keys)  # no W0
    assert not any(".generator." in k for k in keys)  # no per-layer copy of a shared generator

    assert not any(".default." in k for k in keys)  # the file does not depend on the adapter's name

    fresh = _base()
    fresh.load_state_dict(state)
    loaded = PeftModel.from_pretrained(fresh, tmp_path, adapter_name="other").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_tokens()).logits, want, rtol=0, atol=0)
        merged = loaded.merge_and_unload()
        assert type(merged) is transformers.LlamaForCausalLM
        assert not any(m in n for n, _ in merged.named_parameters() for m in ("genft", "wegeft"))
        torch.testing.assert_close(merged(_tokens()).logits, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_config", [_genft, _wegeft], ids=["genft", "wegeft"])
def test_zero_init_starts_at_the_base_model(make_config):
    model = get_peft_model(_base(), make_config())
    with torch.no_grad():
        torch.testing.assert_close(model(_tokens()).logits, _base()(_tokens()).logits, rtol=0, atol=0)
        with model.disable_adapter():
            torch.testing.assert_close(model(_tokens()).logits, _base()(_tokens()).logits, rtol=0, atol=0)


@pytest.mark.parametrize("make_config, prefix, moves", [
    (_genft, "genft_", ("genft_generators", "genft_B1")),
    (_wegeft, "wegeft_", ("wegeft_factors.default.q_proj.phi", "wegeft_factors.default.down_proj.phi")),
], ids=["genft", "wegeft"])
def test_trains_with_the_transformers_trainer(tmp_path, make_config, prefix, moves):
    model = get_peft_model(_base(), make_config())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(prefix in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 96, (16, 12), generator=torch.Generator().manual_seed(2))]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                                          learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no",
                                          logging_steps=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert all(any(m in n for n in moved) for m in moves), moved


def test_config_is_validated_like_genft_config():
    with pytest.raises(ValueError, match=r"act_in must be one of \['identity', 'relu', 'leaky_relu', 'gelu', 'tanh'\], got 'foo'"):
        genft_peft.GenFTPeftConfig(target_modules=["q_proj"], act_in="foo")
    genft_peft.GenFTPeftConfig()  # target_modules=None: PEFT's defaults (tests/test_peft_compat.py)
    with pytest.raises(ValueError, match=r"rank must be an integer >= 1, got 0"):
        genft_peft.WeGeFTPeftConfig(target_modules=["q_proj"], rank=0)


@pytest.mark.parametrize("peft_cls, ours", [
    (genft_peft.GenFTPeftConfig, "GenFTConfig"), (genft_peft.WeGeFTPeftConfig, "WeGeFTConfig")])
def test_peft_configs_carry_every_field_of_ours(peft_cls, ours):
    import dataclasses

    import genft_tune.modules as modules

    theirs = {f.name for f in dataclasses.fields(peft_cls)}
    missing = {f.name for f in dataclasses.fields(getattr(modules, ours))} - theirs
    assert not missing, f"{peft_cls.__name__} lacks {sorted(missing)}"


def test_wegeft_update_is_the_papers_formula():
    """dW = (alpha/r) W0 phi^T psi, in fp64 from the saved tensors, against PEFT's merge."""
    model = get_peft_model(_base(), _wegeft(alpha=3.0))
    _make_acting(model)
    layer = model.base_model.model.model.layers[1].self_attn.q_proj
    factors = model.base_model.wegeft_factors["default"]["q_proj"]
    W0 = layer.get_base_layer().weight.detach().double()
    want = (3.0 / 4) * W0 @ factors.phi.detach().double().T @ factors.psi.detach().double()
    torch.testing.assert_close(layer.get_delta_weight("default").double(), want, rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), (x.double() @ (W0 + want).T), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_config", [_genft, _wegeft], ids=["genft", "wegeft"])
def test_trains_with_trls_sft_trainer(tmp_path, make_config):
    """TRL's SFTTrainer (trl 1.16.0, pinned in [dev]) builds the PEFT model from our config
    itself, trains it on text, and saves an adapter that PEFT loads back."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import models, pre_tokenizers, Tokenizer

    vocab = {f"w{i}": i for i in range(94)} | {"<pad>": 94, "<eos>": 95}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    g = torch.Generator().manual_seed(2)
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(0, 94, (10,), generator=g)) for _ in range(16)]
    args = trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                         report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, max_length=16)
    trainer = trl.SFTTrainer(model=_base(), args=args, train_dataset=Dataset.from_dict({"text": texts}),
                             processing_class=tokenizer, peft_config=make_config())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any(("generators" in n or "factors" in n) for n in before)  # the shared tensors train too
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    moved = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any(("generators" in n or "factors" in n) for n in moved), moved
    trainer.model.save_pretrained(tmp_path / "adapter")
    # (TRL also touches the base: it aligns the pad token's embedding row, and its model's
    # forward differs from a plain one; so compare what the adapter adds, layer by layer)
    loaded = PeftModel.from_pretrained(_base(), tmp_path / "adapter")
    ours = {n: m for n, m in trainer.model.named_modules() if hasattr(m, "get_delta_weight")}
    theirs = {n: m for n, m in loaded.named_modules() if hasattr(m, "get_delta_weight")}
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        torch.testing.assert_close(theirs[name].get_delta_weight("default"), ours[name].get_delta_weight("default"),
                                   rtol=0, atol=0, msg=name)
