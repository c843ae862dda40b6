# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Datasets for genft-tune."""

from ._wordnet import build_wordnet_instruct, wordnet_instruct_dataset

__all__ = ["build_wordnet_instruct", "wordnet_instruct_dataset"]
