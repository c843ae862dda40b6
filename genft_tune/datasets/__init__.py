# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Data sets: WordNet definitions as instructions (``wordnet_instruct_dataset``, the
quickstart's and the benchmarks' task) and image classification folders and transforms
(``image_classification_dataset``, the image recipe's). Imports only :mod:`genft_tune._fs`."""

from genft_tune.datasets._image import (
    image_classification_dataset,
    image_collate,
    image_processor_config,
    ImageClassificationTransform,
    top1_correct,
)
from genft_tune.datasets._wordnet import build_wordnet_instruct, wordnet_instruct_dataset

__all__ = [
    "build_wordnet_instruct",
    "image_classification_dataset",
    "image_collate",
    "image_processor_config",
    "ImageClassificationTransform",
    "top1_correct",
    "wordnet_instruct_dataset",
]
