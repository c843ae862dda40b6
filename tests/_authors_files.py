"""The GenFT authors' adapter files, laid out exactly as their patched PEFT's
``save_pretrained`` writes them (no tests here), and the tiny Llama they fit: used by
``test_import_authors.py`` and ``test_export_lora.py``."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

D, LAYERS, A, B = 64, 2, 3, 2
TARGETS = ["q_proj", "v_proj"]


def write_base(path: Path) -> Path:
    """A tiny Llama with square q/v (4 heads, 4 KV heads), saved by transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96, hidden_size=D, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    model.save_pretrained(path)
    return path


def write_authors_adapter(path: Path, *, act=("gelu", "gelu"), ratio=0.8, scaling=1.5, b=B, bias="none", seed=1):
    """Their save_pretrained output: adapter_config.json + adapter_model.safetensors."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return 0.3 * torch.randn(*shape, generator=g)

    r = A + b
    shared = {
        "genft_share_1_a.linear.weight": rand(A, D), "genft_share_1_b.linear.weight": rand(D, A),
        "genft_share_2_a.linear.weight": rand(A, D), "genft_share_2_b.linear.weight": rand(D, A),
    }
    if bias:
        shared.update({
            "genft_share_1_a.linear.bias": rand(r), "genft_share_1_b.linear.bias": rand(D),
            "genft_share_2_a.linear.bias": rand(r), "genft_share_2_b.linear.bias": rand(D),
        })
    tensors = {f"base_model.generator.{k}": v for k, v in shared.items()}
    specific = {}
    for i in range(LAYERS):
        for m in TARGETS:
            owner = f"base_model.model.model.layers.{i}.self_attn.{m}"
            for k, v in shared.items():  # every adapted linear saves its own copy
                tensors[f"{owner}.generator.{k}"] = v.clone()
            if b:
                specific[owner] = (rand(b, D), rand(D, b))
                tensors[f"{owner}.genft_individual_weight_a"] = specific[owner][0]
                tensors[f"{owner}.genft_individual_weight_b"] = specific[owner][1]
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "GENFT", "task_type": "CAUSAL_LM", "base_model_name_or_path": "yahma/llama-7b-hf",
        "revision": None, "inference_mode": True, "generator_share_dim": A, "individual_features": b,
        "individual_init_a": "kaiming_uniform", "individual_init_b": "kaiming_uniform", "ratio_W0": ratio,
        "inner_activation": act[0], "outer_activation": act[1], "scaling": scaling, "fan_in_fan_out": False,
        "bias": bias, "drop": 0.0, "modules_to_save": None, "target_modules": TARGETS,
        "exclude_modules": None, "layers_to_transform": None, "layers_pattern": None,
    }
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return shared, specific
