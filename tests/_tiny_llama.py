"""Helpers for the Llama builder/checkpoint tests (no tests here).

A tiny Llama (2 layers, embed 64, 4 heads, 2 KV heads, vocab 128) written in Hugging
Face format by ``transformers`` itself and read back through torchtune's
``FullModelHFCheckpointer``: the reference for every equality test.
"""

from pathlib import Path
from typing import Any, Dict, Optional

import torch

TINY: Dict[str, Any] = dict(
    vocab_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=64,
    intermediate_dim=128,
    max_seq_len=64,
    norm_eps=1e-5,
    rope_base=10_000,
)

ALL_ATTN = ["q_proj", "k_proj", "v_proj", "output_proj"]


def hf_config(*, tie_word_embeddings: bool = False, scale_factor: Optional[float] = None):
    """``LlamaConfig`` of the tiny model; ``scale_factor`` adds Llama 3.1 RoPE scaling
    with the constants torchtune's ``Llama3ScaledRoPE`` uses."""
    from transformers import LlamaConfig

    rope_scaling = None
    if scale_factor is not None:
        rope_scaling = {
            "rope_type": "llama3",
            "factor": float(scale_factor),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    return LlamaConfig(
        vocab_size=TINY["vocab_size"],
        hidden_size=TINY["embed_dim"],
        intermediate_size=TINY["intermediate_dim"],
        num_hidden_layers=TINY["num_layers"],
        num_attention_heads=TINY["num_heads"],
        num_key_value_heads=TINY["num_kv_heads"],
        max_position_embeddings=16384,
        rms_norm_eps=TINY["norm_eps"],
        rope_theta=float(TINY["rope_base"]),
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie_word_embeddings,
    )


def write_hf_checkpoint(
    path: Path, *, tie_word_embeddings: bool = False, scale_factor: Optional[float] = None,
    seed: int = 0,
) -> Path:
    """A random ``LlamaForCausalLM`` saved with ``save_pretrained`` (weights scaled to
    ``N(0, 1/fan_in)`` so that the model is far from trivial)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        hf_config(tie_word_embeddings=tie_word_embeddings, scale_factor=scale_factor)
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
            else:
                p.uniform_(0.5, 1.5)  # RMSNorm scales
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def load_hf_model(path: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def hf_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    return load_hf_model(path)(tokens).logits


def read_tune_state_dict(path: Path, out_dir: Path, *, tie_word_embeddings: bool = False):
    """The checkpoint in torchtune's key format, read by ``FullModelHFCheckpointer``."""
    from torchtune.training import FullModelHFCheckpointer

    checkpointer = FullModelHFCheckpointer(
        checkpoint_dir=str(path),
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3_2" if tie_word_embeddings else "LLAMA3",
        output_dir=str(out_dir),
    )
    return checkpointer.load_checkpoint()["model"]


def tokens(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (batch, seq), generator=g)


def genft_model(**overrides: Any):
    """``llama_genft`` on the tiny architecture; GenFT on q, k, v, o and the MLP by default."""
    from genft_tune.models.llama import llama_genft

    kwargs: Dict[str, Any] = dict(
        genft_attn_modules=ALL_ATTN,
        apply_genft_to_mlp=True,
        **TINY,
    )
    kwargs.update(overrides)
    return llama_genft(**kwargs)
