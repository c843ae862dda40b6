"""Llama-family decoders (Llama 2, 3.1, 3.2 and SmolLM2's architecture) with GenFT
(and WeGeFT, the weight-generative baseline)."""

from genft_tune.models.llama._component_builders import (
    llama,
    llama_genft,
    llama_wegeft,
)
from genft_tune.models.llama._model_builders import (
    genft_llama2_7b,
    genft_llama3_1_405b,
    genft_llama3_1_70b,
    genft_llama3_1_8b,
    genft_llama3_2_1b,
    genft_llama3_2_3b,
    qgenft_llama2_7b,
    qgenft_llama3_1_405b,
    qgenft_llama3_1_70b,
    qgenft_llama3_1_8b,
    qgenft_llama3_2_1b,
    qgenft_llama3_2_3b,
    wegeft_llama3_1_8b,
    wegeft_llama3_2_1b,
)

__all__ = [
    "genft_llama2_7b",
    "genft_llama3_1_405b",
    "genft_llama3_1_70b",
    "genft_llama3_1_8b",
    "genft_llama3_2_1b",
    "genft_llama3_2_3b",
    "llama",
    "llama_genft",
    "llama_wegeft",
    "qgenft_llama2_7b",
    "qgenft_llama3_1_405b",
    "qgenft_llama3_1_70b",
    "qgenft_llama3_1_8b",
    "qgenft_llama3_2_1b",
    "qgenft_llama3_2_3b",
    "wegeft_llama3_1_8b",
    "wegeft_llama3_2_1b",
]
