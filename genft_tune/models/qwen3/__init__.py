"""Qwen3 (QK-norm, no q/k/v biases, tied embeddings for the small sizes) from torchtune
modules, its Hugging Face weight conversion and model builders. torchtune 0.6.1 has no
Qwen3; use ``genft_tune.models.genft_model`` with ``base: genft_tune.models.qwen3.qwen3_1_7b``
and the checkpointer ``genft_tune.checkpointing.HFCheckpointer`` with ``model_type: QWEN3``."""

from genft_tune.models.qwen3._attention import Qwen3Attention
from genft_tune.models.qwen3._component_builders import qwen3
from genft_tune.models.qwen3._convert_weights import qwen3_hf_to_tune, qwen3_tune_to_hf
from genft_tune.models.qwen3._model_builders import qwen3_0_6b, qwen3_1_7b, qwen3_4b, qwen3_8b

__all__ = [
    "Qwen3Attention",
    "qwen3",
    "qwen3_0_6b",
    "qwen3_1_7b",
    "qwen3_4b",
    "qwen3_8b",
    "qwen3_hf_to_tune",
    "qwen3_tune_to_hf",
]
