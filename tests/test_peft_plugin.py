"""``import genft_tune.peft`` registers GenFT with Hugging Face PEFT: get_peft_model,
save_pretrained / PeftModel.from_pretrained, merge_and_unload and the transformers
Trainer work, checked against PEFT and transformers themselves."""

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


def _tokens():
    return torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))


def test_save_load_merge_round_trip(tmp_path):
    base = _base()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, genft_peft.GenFTPeftConfig(target_modules=["q_proj", "v_proj"], zero_init=False))
    with torch.no_grad():
        want = model(_tokens()).logits
        assert (want - _base()(_tokens()).logits).abs().max() > 1e-3  # zero_init off: the adapter acts
    model.save_pretrained(tmp_path)
    assert PeftConfig.from_pretrained(tmp_path).peft_type == "GENFT"
    keys = sorted(load_file(str(tmp_path / "adapter_model.safetensors")))
    generator_keys = [k for k in keys if "genft_generators" in k]
    assert len(generator_keys) == 8  # 64x64 (q) and 32x64 (GQA v): P1, Q1, P2, Q2 each, once
    assert not any(".generator." in k or k.endswith(".weight") for k in keys)  # no per-layer copy, no W0

    fresh = _base()
    fresh.load_state_dict(state)
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_tokens()).logits, want, rtol=0, atol=0)
        merged = loaded.merge_and_unload()
        assert type(merged) is transformers.LlamaForCausalLM
        assert not any("genft" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(_tokens()).logits, want, rtol=1e-5, atol=1e-5)


def test_zero_init_starts_at_the_base_model():
    model = get_peft_model(_base(), genft_peft.GenFTPeftConfig(target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        torch.testing.assert_close(model(_tokens()).logits, _base()(_tokens()).logits, rtol=0, atol=0)
        with model.disable_adapter():
            torch.testing.assert_close(model(_tokens()).logits, _base()(_tokens()).logits, rtol=0, atol=0)


def test_trains_with_the_transformers_trainer(tmp_path):
    model = get_peft_model(_base(), genft_peft.GenFTPeftConfig(target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("genft_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 96, (16, 12), generator=torch.Generator().manual_seed(2))]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                                          learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no",
                                          logging_steps=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("genft_generators" in n for n in moved) and any("genft_B1" in n for n in moved)


def test_config_is_validated_like_genft_config():
    with pytest.raises(ValueError, match=r"act_in must be one of \['identity', 'relu', 'leaky_relu', 'gelu', 'tanh'\], got 'foo'"):
        genft_peft.GenFTPeftConfig(target_modules=["q_proj"], act_in="foo")
    with pytest.raises(ValueError, match="needs target_modules"):
        genft_peft.GenFTPeftConfig()
