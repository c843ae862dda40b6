# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""An instruction task with an exact answer, and its exact-match scoring.

WordNet 3.0's morphological exception lists (``noun.exc``, ``verb.exc``, ``adj.exc``,
``adv.exc``; one ``inflected base [base ...]`` per line, underscores for spaces) become
instructions such as::

    user:      Give the base (dictionary) form of the verb "went". Answer with the word only.
    assistant: go

Train and validation are split by base lemma with
:func:`genft_tune.datasets._wordnet.wordnet_split` (the two splits share no base form).
An inflected form with several bases (``axes`` -> ``ax``, ``axis``) is kept out of the
training split (it has no single answer to train on); in the validation split any of its
bases counts as correct, and the first one listed is the answer the held-out loss uses.

Exact match: greedy decoding (argmax, no sampling) from the prompt with a KV cache, one
example at a time, until the end-of-turn token or ``max_new_tokens``; the text and the
accepted answers are normalised by :func:`normalize_answer` and compared.

WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. (License:
:data:`genft_tune.datasets._wordnet.WORDNET_LICENSE`, written next to every JSONL.)
"""

import hashlib
import json
import os
import random
import string
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torchtune.data import Message
from torchtune.modules import local_kv_cache

from genft_tune.datasets._wordnet import find_wordnet_dir, wordnet_split, write_wordnet_jsonl

# part of speech as written in the prompt -> exception file
EXCEPTION_FILES = {"noun": "noun.exc", "verb": "verb.exc", "adjective": "adj.exc", "adverb": "adv.exc"}
_FORMAT_VERSION = 1
_PUNCT = string.punctuation + string.whitespace


def baseform_prompt(word: str, pos: str) -> str:
    """The instruction for one inflected form."""
    return f'Give the base (dictionary) form of the {pos} "{word}". Answer with the word only.'


def parse_exception_file(path: Union[str, Path]) -> List[Tuple[str, List[str]]]:
    """Read one WordNet exception file.

    Args:
        path (Union[str, Path]): e.g. ``/usr/share/wordnet/verb.exc``.

    Returns:
        List[Tuple[str, List[str]]]: ``(inflected, bases)`` per non-empty line, in file
        order, with underscores replaced by spaces.
    """
    out = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            words = [w.replace("_", " ") for w in line.split()]
            if len(words) >= 2:
                out.append((words[0], words[1:]))
    return out


def load_baseform_records(wordnet_dir: Optional[Union[str, Path]] = None) -> List[Dict]:
    """All (inflected form, part of speech) pairs of the four exception files.

    Duplicate lines are merged (their bases joined in order, without repeats), and
    pairs whose only base is the inflected form itself (``acer acer``) are dropped.

    Args:
        wordnet_dir (Optional[Union[str, Path]]): see ``find_wordnet_dir``. Default: None.

    Returns:
        List[Dict]: ``{"word", "pos", "answers"}`` sorted by (pos, word).
    """
    root = find_wordnet_dir(wordnet_dir)
    merged: Dict[Tuple[str, str], List[str]] = {}
    for pos, name in EXCEPTION_FILES.items():
        for word, bases in parse_exception_file(root / name):
            answers = merged.setdefault((pos, word), [])
            answers += [b for b in bases if b not in answers]
    records = [
        {"word": word, "pos": pos, "answers": answers}
        for (pos, word), answers in sorted(merged.items())
        if answers != [word]
    ]
    return records


def baseform_split(record: Dict) -> Optional[str]:
    """``"train"``, ``"validation"`` or None (dropped) for one record.

    A record belongs to the split of its base lemmas (``wordnet_split``); one whose bases
    fall in different splits is dropped, and one with several bases never trains.
    """
    splits = {wordnet_split(base) for base in record["answers"]}
    if len(splits) != 1:
        return None
    split = splits.pop()
    if split == "train" and len(record["answers"]) > 1:
        return None
    return split


def baseform_examples(
    *,
    split: str,
    wordnet_dir: Optional[Union[str, Path]] = None,
    max_examples: Optional[int] = None,
    seed: int = 0,
) -> List[Dict]:
    """The instruction examples of one split, shuffled with ``seed``.

    Args:
        split (str): ``"train"`` or ``"validation"``.
        wordnet_dir (Optional[Union[str, Path]]): see ``find_wordnet_dir``. Default: None.
        max_examples (Optional[int]): keep the first this many. Default: None (all).
        seed (int): shuffling seed. Default: 0.

    Returns:
        List[Dict]: ``{"input", "output", "answers", "word", "pos"}``; ``output`` is the
        first accepted answer.

    Raises:
        ValueError: if ``split`` is unknown.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    examples = [
        {"input": baseform_prompt(r["word"], r["pos"]), "output": r["answers"][0], **r}
        for r in load_baseform_records(wordnet_dir)
        if baseform_split(r) == split
    ]
    random.Random(seed).shuffle(examples)
    return examples[:max_examples] if max_examples is not None else examples


def baseform_dataset(
    tokenizer,
    *,
    split: str,
    max_examples: Optional[int] = None,
    seed: int = 0,
    wordnet_dir: Optional[Union[str, Path]] = None,
    cache_dir: Optional[Union[str, Path]] = None,
):
    """The base-form task as a torchtune instruct dataset, and its examples.

    The examples are written (atomically, once) to a JSONL under ``cache_dir`` (default
    ``$GENFT_TUNE_CACHE`` or ``~/.cache/genft_tune``) ``/wordnet_baseform/`` and wrapped
    in torchtune's ``instruct_dataset`` like the definitions task: the instruction is
    the user turn, the base form the assistant turn, loss on the answer only.

    Returns:
        Tuple[SFTDataset, List[Dict]]: the dataset and, in the same order, the examples
        (with their accepted ``answers``).
    """
    from torchtune.datasets import instruct_dataset

    examples = baseform_examples(split=split, wordnet_dir=wordnet_dir, max_examples=max_examples, seed=seed)
    digest = hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(cache_dir or os.environ.get("GENFT_TUNE_CACHE", "~/.cache/genft_tune")).expanduser()
    path = root / "wordnet_baseform" / f"baseform-v{_FORMAT_VERSION}-{split}-{digest}.jsonl"
    if not path.is_file():
        write_wordnet_jsonl(path, examples)
    ds = instruct_dataset(
        tokenizer,
        source="json",
        data_files=str(path),
        split="train",  # a single JSON file always loads as HF split "train"
        column_map={"input": "input", "output": "output"},
        train_on_input=False,
    )
    return ds, examples


def prompt_tokens(tokenizer, instruction: str) -> List[int]:
    """The user turn plus the open assistant header, as the model sees it before answering."""
    tokens, _ = tokenizer.tokenize_messages([Message(role="user", content=instruction)], add_end_tokens=False)
    return tokens


# ---- exact match ----------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lowercase, collapse whitespace, strip punctuation and whitespace at both ends."""
    return " ".join(text.split()).strip(_PUNCT).lower()


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Whether the normalised prediction equals one of the normalised answers."""
    return normalize_answer(prediction) in {normalize_answer(a) for a in answers}


def _last_logits(out) -> torch.Tensor:
    """Logits of the last position of the first sequence (chunked output or not)."""
    if isinstance(out, list):  # CEWithChunkedOutputLoss's chunks along the sequence
        out = out[-1]
    return out[0, -1]


@torch.no_grad()
def greedy_decode(model, prompt: Sequence[int], *, max_new_tokens: int, stop_tokens: Sequence[int]) -> List[int]:
    """Greedy continuation of one prompt, using the model's KV cache (already set up).

    Args:
        model (TransformerDecoder): a model with KV caches set up for batch size 1 and
            at least ``len(prompt) + max_new_tokens`` positions.
        prompt (Sequence[int]): the prompt tokens.
        max_new_tokens (int): stop after this many tokens.
        stop_tokens (Sequence[int]): stop after emitting one of these (it is not returned).

    Returns:
        List[int]: the generated tokens, without the stop token.
    """
    model.reset_caches()
    device = next(model.parameters()).device
    total = len(prompt) + max_new_tokens
    mask = torch.tril(torch.ones(total, model.decoder_max_cache_seq_len, dtype=torch.bool, device=device))
    tokens = torch.tensor([list(prompt)], device=device)
    pos = torch.arange(len(prompt), device=device)
    out: List[int] = []
    for _ in range(max_new_tokens):
        logits = _last_logits(model(tokens, input_pos=pos[None], mask=mask[None, pos]))
        token = int(logits.argmax())
        if token in stop_tokens:
            break
        out.append(token)
        pos = pos[-1:] + 1
        tokens = torch.tensor([[token]], device=device)
    return out


def exact_match_accuracy(
    model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[str]],
    *,
    decode: Callable[[List[int]], str],
    stop_tokens: Sequence[int],
    max_new_tokens: int = 8,
    dtype: Optional[torch.dtype] = None,
) -> Dict:
    """Greedy-decode every prompt and score it against its accepted answers.

    The model is put in eval mode (GenFT then uses its cached merged weight) and given a
    KV cache for the duration of the call (removed afterwards).

    Returns:
        Dict: ``accuracy`` (fraction correct), ``correct``, ``n``, ``seconds`` and
        ``predictions`` (the decoded texts, in order).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"prompts and answers differ in length: {len(prompts)} vs {len(answers)}")
    model.eval()
    param = next(model.parameters())
    t0, predictions, correct = time.perf_counter(), [], 0
    max_len = max((len(p) for p in prompts), default=0) + max_new_tokens
    with local_kv_cache(
        model, batch_size=1, device=param.device, dtype=dtype or param.dtype, decoder_max_seq_len=max_len
    ):
        for prompt, accepted in zip(prompts, answers):
            text = decode(greedy_decode(model, prompt, max_new_tokens=max_new_tokens, stop_tokens=stop_tokens))
            predictions.append(text)
            correct += exact_match(text, accepted)
    n = len(prompts)
    return {
        "accuracy": correct / n if n else float("nan"),
        "correct": correct,
        "n": n,
        "seconds": time.perf_counter() - t0,
        "predictions": predictions,
    }
