"""The quickstart (``python -m genft_tune.quickstart``): its plumbing on a tiny stand-in
model (fast), and the real SmolLM2-135M run (slow)."""

import json
from pathlib import Path

import pytest
import torch

from _tiny_llama import TINY, write_tiny_checkpoint, write_tiny_tokenizer

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write_hf_tokenizer(path: Path) -> Path:
    """A byte-level Hugging Face tokenizer (256 byte tokens + ChatML specials, no merges)
    with a ChatML chat template, for the answers of the tiny stand-in."""
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>",
                "chat_template": CHATML,
            }
        )
    )
    return path


def test_quickstart_plumbing_on_tiny_stand_in(tmp_path, monkeypatch, capsys):
    from genft_tune import quickstart as qs

    monkeypatch.setenv("GENFT_TUNE_CACHE", str(tmp_path / "cache"))
    base = write_tiny_checkpoint(tmp_path / "base", tie_word_embeddings=True)
    # a card naming its Hub source, as the SmolLM2 conversion writes
    (base / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: org/tiny\n---\n")
    tok = write_tiny_tokenizer(tmp_path / "tok")
    hf_tok = _write_hf_tokenizer(tmp_path / "hf_tok")
    overrides = [
        "model._component_=genft_tune.models.llama.llama_genft",
        *(f"model.{k}={v}" for k, v in TINY.items()),
        "model.tie_word_embeddings=True",
        "optimizer.lr=0.02",
        "model.scaling=1.0",
        "tokenizer._component_=torchtune.models.llama3.llama3_tokenizer",
        f"tokenizer.path={tok['path']}",
        f"tokenizer.special_tokens_path={tok['special_tokens_path']}",
        "tokenizer.max_seq_len=64",
        "dataset.max_examples=64",
        "dataset_val.max_examples=8",
        "batch_size=4",
        "gradient_accumulation_steps=1",
        "run_val_every_n_steps=4",
        "max_validation_steps=2",
        "save_every_n_steps=null",
        "lr_scheduler.num_warmup_steps=1",
    ]
    question = {"input": 'Define the noun "cat".', "output": "a small feline"}
    result = qs.quickstart(
        work_dir=tmp_path / "qs",
        base_dir=base,
        max_steps=8,
        overrides=overrides,
        question=question,
        tokenizer_dir=hf_tok,
        max_new_tokens=8,
    )
    out = capsys.readouterr().out
    assert len(result["losses"]) == 8
    assert all(v == v and v < 100 for v in result["losses"])  # finite (learning: test_recipes.py)
    assert len(result["val_losses"]) == 2  # step 4 and the epoch end
    assert result["plot"].is_file() and result["plot"].read_bytes()[:4] == b"\x89PNG"
    card = result["card"].read_text()
    assert card.startswith("---\nbase_model: org/tiny\nlibrary_name: peft\n") and "license: apache-2.0" in card
    assert sorted(p.name for p in result["card"].parent.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "loss_curve.png"]
    assert (result["merged_dir"] / "config.json").is_file()
    from safetensors.torch import load_file

    merged = load_file(result["merged_dir"] / "model-00001-of-00001.safetensors")
    original = load_file(base / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (merged[q] - original[q]).abs().max() > 0  # the adapter was merged in
    assert isinstance(result["base_answer"], str) and isinstance(result["merged_answer"], str)
    for text in ("Held-out question", question["input"], "base model:", "GenFT (merged):", "loss"):
        assert text in out

    # the answers are greedy decodes of the two checkpoints (independent reference:
    # a manual argmax loop in transformers)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_tok))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question["input"]}], tokenize=False, add_generation_prompt=True
    )
    for model_dir, expected in ((base, result["base_answer"]), (result["merged_dir"], result["merged_answer"])):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        n = ids.shape[1]
        with torch.no_grad():
            for _ in range(8):
                nxt = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
                if nxt.item() == tokenizer.eos_token_id:
                    break
        assert tokenizer.decode(ids[0, n:], skip_special_tokens=True).strip() == expected


def test_build_config_points_at_the_base_and_applies_overrides(tmp_path):
    from genft_tune.quickstart import build_config

    cfg = build_config(
        base_dir=tmp_path / "b", output_dir=tmp_path / "o", max_steps=7,
        overrides=["batch_size=2", "~model.dropout"],
    )
    assert cfg.checkpointer.checkpoint_dir == str(tmp_path / "b")
    assert cfg.tokenizer.path == str(tmp_path / "b" / "tokenizer.json")
    assert cfg.output_dir == str(tmp_path / "o") and cfg.max_steps_per_epoch == 7
    assert cfg.batch_size == 2 and "dropout" not in cfg.model
    assert cfg.model._component_ == "genft_tune.models.smollm2.genft_smollm2_135m"


@pytest.mark.slow
def test_real_quickstart(tmp_path):
    """The real thing: SmolLM2-135M-Instruct, WordNet, the packaged config (minutes)."""
    from genft_tune.quickstart import quickstart

    result = quickstart(work_dir=tmp_path / "qs")
    losses = result["losses"]
    k = 10
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k
    assert result["val_losses"][-1] < result["val_losses"][0]
    assert result["merged_answer"] and result["base_answer"]
    assert result["train_seconds"] < 600
