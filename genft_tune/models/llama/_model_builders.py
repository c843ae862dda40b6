"""Model builders for Llama models with GenFT (and WeGeFT), with torchtune's architecture numbers.

Each ``genft_*`` builder has exactly the dimensions of torchtune's base builder of the
same name (``torchtune.models.llama3_2.llama3_2_1b`` etc.), so torchtune's Hugging Face
checkpoints load into it; ``qgenft_*`` is the same with NF4 base weights (QGenFT). A
size is one row of ``LLAMA_SIZES``: the builders are :func:`llama_genft` /
:func:`llama_wegeft` with those numbers fixed, and take every other argument of theirs
(the adapter's hyperparameters are declared once, on ``GenFTConfig`` / ``WeGeFTConfig``).
Any other size: ``llama_genft(...)`` with its numbers, or
``genft_tune.models.genft_model(base=<torchtune builder>)``.
"""

from functools import partial
from typing import Callable, Dict

from torchtune.modules import TransformerDecoder

from genft_tune.models.llama._component_builders import llama_genft, llama_wegeft
from genft_tune.modules._builder_args import sized_builder

# The authors' LLaMA runs adapt q and v.
DEFAULT_ATTN_MODULES = ("q_proj", "v_proj")

_LLAMA3 = dict(vocab_size=128_256, num_kv_heads=8, max_seq_len=131072, norm_eps=1e-5, rope_base=500_000, attn_dropout=0.0)

# torchtune's builder name -> (title, its architecture numbers, tied embeddings by default)
LLAMA_SIZES: Dict[str, tuple] = {
    "llama3_2_1b": ("Llama 3.2 1B", dict(_LLAMA3, num_layers=16, num_heads=32, embed_dim=2048,
                                          intermediate_dim=8192, scale_factor=32), True),
    "llama3_2_3b": ("Llama 3.2 3B", dict(_LLAMA3, num_layers=28, num_heads=24, embed_dim=3072,
                                          intermediate_dim=8192, scale_factor=32), True),
    "llama3_1_8b": ("Llama 3.1 8B", dict(_LLAMA3, num_layers=32, num_heads=32, embed_dim=4096,
                                          intermediate_dim=14336, scale_factor=8), False),
    "llama3_1_70b": ("Llama 3.1 70B", dict(_LLAMA3, num_layers=80, num_heads=64, embed_dim=8192,
                                            intermediate_dim=28672, scale_factor=8), False),
    "llama3_1_405b": ("Llama 3.1 405B", dict(_LLAMA3, num_layers=126, num_heads=128, embed_dim=16384,
                                              intermediate_dim=53248, scale_factor=8), False),
    "llama2_7b": ("Llama 2 7B", dict(vocab_size=32_000, num_layers=32, num_heads=32, num_kv_heads=32,
                                      embed_dim=4096, max_seq_len=4096, intermediate_dim=None, norm_eps=1e-5,
                                      rope_base=10_000, scale_factor=None, attn_dropout=0.0), False),
}


def _sized(component: Callable[..., TransformerDecoder], method: str, size: str) -> Callable[..., TransformerDecoder]:
    """``component`` (``llama_genft`` / ``llama_wegeft``) with ``LLAMA_SIZES[size]`` fixed."""
    title, numbers, tied = LLAMA_SIZES[size]
    prefix = method.lower()
    return sized_builder(
        component,
        name=f"{prefix}_{size}",
        summary=f"{title} with {method}: the architecture of torchtune's ``{size}``.",
        fixed=numbers,
        defaults={f"{prefix}_attn_modules": DEFAULT_ATTN_MODULES, "tie_word_embeddings": tied},
    )


def _quantized(builder: Callable[..., TransformerDecoder]) -> Callable[..., TransformerDecoder]:
    """``builder`` with ``quantize_base=True``, documented like torchtune's ``qlora_*``."""
    quantized = partial(builder, quantize_base=True)
    if builder.__doc__:  # None under python -OO
        quantized.__doc__ = f"""
Builder for {builder.__doc__.splitlines()[0].split(':')[0]} on an NF4-quantized base (QGenFT):
the frozen weights of the attention and MLP linears are torchao NF4 tensors, the adapter
trains in the model's dtype. Please see `{builder.__name__}` for full API arguments.
"""
    return quantized


genft_llama3_2_1b = _sized(llama_genft, "GenFT", "llama3_2_1b")
genft_llama3_2_3b = _sized(llama_genft, "GenFT", "llama3_2_3b")
genft_llama3_1_8b = _sized(llama_genft, "GenFT", "llama3_1_8b")
genft_llama3_1_70b = _sized(llama_genft, "GenFT", "llama3_1_70b")
genft_llama3_1_405b = _sized(llama_genft, "GenFT", "llama3_1_405b")
genft_llama2_7b = _sized(llama_genft, "GenFT", "llama2_7b")

qgenft_llama3_2_1b = _quantized(genft_llama3_2_1b)
qgenft_llama3_2_3b = _quantized(genft_llama3_2_3b)
qgenft_llama3_1_8b = _quantized(genft_llama3_1_8b)
qgenft_llama3_1_70b = _quantized(genft_llama3_1_70b)
qgenft_llama3_1_405b = _quantized(genft_llama3_1_405b)
qgenft_llama2_7b = _quantized(genft_llama2_7b)

# ---- WeGeFT (the weight-generative baseline) ---------------------------------------

wegeft_llama3_2_1b = _sized(llama_wegeft, "WeGeFT", "llama3_2_1b")
wegeft_llama3_1_8b = _sized(llama_wegeft, "WeGeFT", "llama3_1_8b")
