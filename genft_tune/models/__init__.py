"""Model builders: any torchtune model (``genft_model`` / ``wegeft_model``), Llama-family
decoders (``llama``), SmolLM2 (``smollm2``) and ViT (``vit``, import it as
``genft_tune.models.vit``)."""

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
    load_base_checkpoint,
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
    "load_base_checkpoint",
    "qgenft_llama2_7b",
    "qgenft_llama3_1_405b",
    "qgenft_llama3_1_70b",
    "qgenft_llama3_1_8b",
    "qgenft_llama3_2_1b",
    "qgenft_llama3_2_3b",
    "wegeft_llama3_1_8b",
    "wegeft_llama3_2_1b",
]
