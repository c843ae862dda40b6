"""Tiny OPT, GPT-2, Llama and Qwen2 causal LMs built from ``transformers`` config classes, in
place of the Hub models PEFT's decoder tests load (no Hub access here). Writes each to
``OUT/<name>/`` and ``OUT/map.json`` (Hub id -> folder), which the harness's conftest reads.

Sizes are PEFT's tiny-random models' kind (hidden 16, 2 layers, a few heads), seeded, so
every run measures the same weights. Usage: ``python tiny_models.py OUT``.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig, Qwen2Config

COMMON = dict(vocab_size=128, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)

MODELS = {
    "peft-internal-testing/tiny-random-OPTForCausalLM": (
        "opt", OPTConfig(**COMMON, ffn_dim=32, word_embed_proj_dim=16)),
    "trl-internal-testing/tiny-random-LlamaForCausalLM": (
        "llama", LlamaConfig(**COMMON, intermediate_size=32, num_key_value_heads=2)),
    "peft-internal-testing/tiny-dummy-qwen2": (
        "qwen2", Qwen2Config(**COMMON, intermediate_size=32, num_key_value_heads=2)),
    # GPT-2's attention and MLP are transformers Conv1D layers (c_attn, c_fc, ...)
    "peft-internal-testing/tiny-random-GPT2LMHeadModel": (
        "gpt2", GPT2Config(vocab_size=128, n_embd=16, n_layer=2, n_head=4, n_positions=64, n_inner=32,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for hub_id, (name, config) in MODELS.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(out / name)
        mapping[hub_id] = str(out / name)
    (out / "map.json").write_text(json.dumps(mapping, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
