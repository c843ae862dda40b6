"""The model families and their builders.

``genft_model`` / ``wegeft_model`` / ``adapter_model`` put a method into any torchtune
model builder; ``checkpoint_decoder`` builds the decoder a Hugging Face checkpoint's
``config.json`` describes. A family's knowledge (HF <-> torchtune keys and module names,
fused-tensor slicing, RoPE row order, its torchtune builder, the ``--verify`` input, what a
merged ``config.json`` needs) is its entry in ``_families.py``; merge, verify, the PEFT
format, cards and the checkpointer ask the entry. Sub-packages hold what torchtune 0.6.1
lacks or gets wrong: Llama-family builders with GenFT/WeGeFT (``llama``), SmolLM2's GGUF
weights and tokenizer (``smollm2``), Qwen3 (``qwen3``), Gemma 2 (``gemma2``) and ViT
classifiers (``vit``, import it as ``genft_tune.models.vit``). Imports only the methods
(:mod:`genft_tune.modules`) and the files layer (:mod:`genft_tune._fs`,
:mod:`genft_tune._weights`, :mod:`genft_tune._file_names`)."""

from genft_tune.models._generic import adapter_model, checkpoint_decoder, genft_model, wegeft_model

from genft_tune.models.llama import (
    genft_llama2_7b,
    genft_llama3_1_405b,
    genft_llama3_1_70b,
    genft_llama3_1_8b,
    genft_llama3_2_1b,
    genft_llama3_2_3b,
    llama_genft,
    llama_wegeft,
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
    "adapter_model",
    "checkpoint_decoder",
    "genft_model",
    "wegeft_model",
    "genft_llama2_7b",
    "genft_llama3_1_405b",
    "genft_llama3_1_70b",
    "genft_llama3_1_8b",
    "genft_llama3_2_1b",
    "genft_llama3_2_3b",
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
