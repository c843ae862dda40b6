# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""SmolLM2 models (HuggingFaceTB, Apache-2.0).

The GGUF -> Hugging Face conversion lives in :mod:`._convert_gguf`
(``python -m genft_tune.models.smollm2._convert_gguf OUTPUT_DIR``); it is not
imported here so that importing this package does not require ``gguf``.
"""

from genft_tune.models.smollm2._model_builders import (
    genft_smollm2_135m,
    qgenft_smollm2_135m,
    smollm2_135m,
    wegeft_smollm2_135m,
)
from genft_tune.models.smollm2._tokenizer import (
    SmolLM2Tokenizer,
    smollm2_tokenizer,
)

__all__ = [
    "genft_smollm2_135m",
    "qgenft_smollm2_135m",
    "smollm2_135m",
    "SmolLM2Tokenizer",
    "smollm2_tokenizer",
    "wegeft_smollm2_135m",
]
