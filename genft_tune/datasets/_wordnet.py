# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Instruction dataset built from WordNet 3.0 glosses.

Every (lemma, part of speech) pair of WordNet becomes one instruction::

    {"input": "Define the noun \\"dog\\".",
     "output": "A member of the genus Canis (probably descended from the common wolf) ..."}

The answer is the definition part of the gloss (the text before the quoted usage
examples) of the lemma's most frequent sense, i.e. the first synset listed for it in
``index.<pos>``. Optionally a second instruction per lemma asks for an example
sentence, answered with a usage example of that sense that contains the lemma.

Data source: the Debian package ``wordnet-base`` (``apt-get install wordnet-base``)
installs the WordNet 3.0 database in ``/usr/share/wordnet``. Other locations can be
passed explicitly (``wordnet_dir``) or through the standard ``WNSEARCHDIR``
environment variable; any directory with ``index.{noun,verb,adj,adv}`` and
``data.{noun,verb,adj,adv}`` from WordNet 3.0 works (e.g. ``WordNet-3.0/dict``).

License: WordNet 3.0 is distributed by Princeton University under the "WordNet 3.0
license" (see ``/usr/share/doc/wordnet-base/copyright``), a permissive BSD-style
license: use, copying, modification and distribution for any purpose and without fee
are allowed, provided the copyright notice "WordNet 3.0 Copyright 2006 by Princeton
University. All rights reserved." and the disclaimer appear on all copies, and
Princeton's name is not used in advertising. The full text is in
:data:`WORDNET_LICENSE`; it is written next to every generated JSONL.
"""

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from torchtune.datasets import instruct_dataset, PackedDataset, SFTDataset
from torchtune.modules.transforms.tokenizers import ModelTokenizer

from genft_tune._fs import write_text_atomically

__all__ = [
    "WORDNET_COPYRIGHT",
    "WORDNET_LICENSE",
    "build_wordnet_instruct",
    "find_wordnet_dir",
    "load_wordnet_definitions",
    "wordnet_instruct_dataset",
    "wordnet_split",
]

WORDNET_COPYRIGHT = "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved."

# Bump when the JSONL format or the selection logic changes (invalidates caches).
_FORMAT_VERSION = 1
_DEFAULT_WORDNET_DIRS = ("/usr/share/wordnet",)
_POS = {"n": "noun", "v": "verb", "a": "adjective", "r": "adverb"}
_FILE_SUFFIX = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_EXAMPLES_START = re.compile(r'(?:^|[;:])\s*"')
_VALIDATION_PERCENT = 5.0

WORDNET_LICENSE = """\
WordNet Release 3.0

This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same.
"""


def _required_files() -> List[str]:
    return [f"{kind}.{suffix}" for suffix in _FILE_SUFFIX.values() for kind in ("index", "data")]


def find_wordnet_dir(wordnet_dir: Optional[Union[str, Path]] = None) -> Path:
    """Return the directory holding the WordNet 3.0 database files.

    Looks at ``wordnet_dir`` if given, else ``$WNSEARCHDIR``, else the Debian
    location ``/usr/share/wordnet`` (package ``wordnet-base``).

    Args:
        wordnet_dir (Optional[Union[str, Path]]): explicit directory. Default: None.

    Returns:
        Path: directory containing ``index.*`` and ``data.*`` files.

    Raises:
        FileNotFoundError: if no candidate holds all eight database files.
    """
    if wordnet_dir is not None:
        candidates = [Path(wordnet_dir).expanduser()]
    else:
        candidates = [Path(p) for p in (os.environ.get("WNSEARCHDIR"), *_DEFAULT_WORDNET_DIRS) if p]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in _required_files()):
            return candidate
    raise FileNotFoundError(
        f"WordNet 3.0 database not found in {[str(c) for c in candidates]} (need "
        f"{', '.join(_required_files())}). On Debian/Ubuntu install it with "
        "`apt-get install wordnet-base`, or pass `wordnet_dir=` / set WNSEARCHDIR to a "
        "directory containing the WordNet 3.0 `dict` files."
    )


def wordnet_split(lemma: str, validation_percent: float = _VALIDATION_PERCENT) -> str:
    """Assign a lemma to ``"train"`` or ``"validation"`` by a stable hash.

    The split depends only on the lowercased lemma, so all parts of speech of a word
    land in the same split and the two splits never share a word.

    Args:
        lemma (str): the lemma, e.g. ``"dog"`` or ``"hot_dog"``.
        validation_percent (float): share of lemmas in the validation split. Default: 5.

    Returns:
        str: ``"train"`` or ``"validation"``.
    """
    key = lemma.lower().replace(" ", "_").encode("utf-8")
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 10_000
    return "validation" if bucket < validation_percent * 100 else "train"


def _iter_lines(path: Path) -> Iterator[str]:
    """Yield database lines, skipping the license header (lines starting with a space)."""
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            if not line.startswith(" "):
                yield line.rstrip("\n")


def _parse_gloss(gloss: str) -> Dict[str, Any]:
    """Split a gloss into its definition and its quoted usage examples.

    Examples start at the first quote that opens the gloss or follows ``;`` or ``:``
    (quotes inside the definition, as in ``(in the phrase "make strides")``, stay).
    """
    match = _EXAMPLES_START.search(gloss)
    cut = match.start() if match else len(gloss)
    definition = gloss[:cut].strip().rstrip(";:").strip()
    examples = [e.strip() for e in re.findall(r'"([^"]+)"', gloss[cut:])]
    return {"definition": definition, "examples": [e for e in examples if e]}


def _parse_data_file(path: Path) -> Dict[int, Dict[str, Any]]:
    """Parse a ``data.<pos>`` file into ``{offset: {"words": [...], "definition", "examples"}}``."""
    synsets = {}
    for line in _iter_lines(path):
        fields, _, gloss = line.partition(" | ")
        parts = fields.split()
        offset, n_words = int(parts[0]), int(parts[3], 16)
        words = [_ADJ_MARKER.sub("", parts[4 + 2 * i]) for i in range(n_words)]
        synsets[offset] = {"words": words, **_parse_gloss(gloss)}
    return synsets


def load_wordnet_definitions(wordnet_dir: Optional[Union[str, Path]] = None) -> List[Dict[str, Any]]:
    """Read the primary sense of every (lemma, part of speech) in WordNet.

    Args:
        wordnet_dir (Optional[Union[str, Path]]): database directory, see
            :func:`find_wordnet_dir`. Default: None.

    Returns:
        List[Dict[str, Any]]: one record per index entry with non-empty definition,
        sorted by (pos, lemma), with keys ``lemma`` (index form, e.g. ``"hot_dog"``),
        ``word`` (display form with original casing, e.g. ``"Paris"``), ``pos``
        (``"noun"``, ``"verb"``, ``"adjective"``, ``"adverb"``), ``definition`` and
        ``examples`` (usage examples of that sense containing the word).
    """
    root = find_wordnet_dir(wordnet_dir)
    records = []
    for pos, suffix in _FILE_SUFFIX.items():
        synsets = _parse_data_file(root / f"data.{suffix}")
        for line in _iter_lines(root / f"index.{suffix}"):
            parts = line.split()
            lemma, synset_cnt = parts[0], int(parts[2])
            synset = synsets[int(parts[-synset_cnt])]  # first offset = most frequent sense
            if not synset["definition"]:
                continue
            word = next((w for w in synset["words"] if w.lower() == lemma), lemma)
            word = word.replace("_", " ")
            examples = [e for e in synset["examples"] if word.lower() in e.lower()]
            records.append(
                {
                    "lemma": lemma,
                    "word": word,
                    "pos": _POS[pos],
                    "definition": synset["definition"],
                    "examples": examples,
                }
            )
    records.sort(key=lambda r: (r["pos"], r["lemma"]))
    return records


def _sentence(text: str) -> str:
    """Capitalise the first letter and end with a period."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _to_examples(record: Dict[str, Any], include_examples: bool) -> List[Dict[str, str]]:
    word, pos = record["word"], record["pos"]
    meta = {"lemma": record["lemma"], "pos": pos}
    out = [
        {
            "input": f'Define the {pos} "{word}".',
            "output": _sentence(record["definition"]),
            "task": "define",
            **meta,
        }
    ]
    if include_examples and record["examples"]:
        out.append(
            {
                "input": f'Use the {pos} "{word}" in a sentence.',
                "output": _sentence(record["examples"][0]),
                "task": "example",
                **meta,
            }
        )
    return out


def build_wordnet_instruct(
    output_path: Union[str, Path],
    *,
    split: str = "train",
    wordnet_dir: Optional[Union[str, Path]] = None,
    max_examples: Optional[int] = None,
    seed: int = 0,
    include_examples: bool = False,
) -> int:
    """Write a WordNet instruction dataset as JSONL.

    Each line is ``{"input", "output", "task", "lemma", "pos"}``; ``input``/``output``
    are the instruction and the answer, the rest is metadata. The output is
    deterministic for given arguments: records are shuffled with ``seed`` and the
    first ``max_examples`` are kept. The file is written atomically, and the WordNet
    license is written next to it as ``WORDNET_LICENSE.txt``.

    Args:
        output_path (Union[str, Path]): JSONL file to write.
        split (str): ``"train"`` (~95% of the lemmas) or ``"validation"`` (~5%),
            assigned by :func:`wordnet_split`; the two never share a lemma.
            Default: ``"train"``.
        wordnet_dir (Optional[Union[str, Path]]): database directory, see
            :func:`find_wordnet_dir`. Default: None.
        max_examples (Optional[int]): keep at most this many examples. Default: None (all).
        seed (int): shuffling seed. Default: 0.
        include_examples (bool): also add a "use the word in a sentence" instruction
            for senses with a usage example containing the word. Default: False.

    Returns:
        int: number of examples written.

    Raises:
        ValueError: if ``split`` is unknown.
        FileNotFoundError: if the WordNet database is missing.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got '{split}'")
    examples = [
        example
        for record in load_wordnet_definitions(wordnet_dir)
        if wordnet_split(record["lemma"]) == split
        for example in _to_examples(record, include_examples)
    ]
    random.Random(seed).shuffle(examples)
    if max_examples is not None:
        examples = examples[:max_examples]

    write_wordnet_jsonl(output_path, examples)
    return len(examples)


def write_wordnet_jsonl(output_path: Union[str, Path], rows: Sequence[Dict[str, Any]]) -> None:
    """Write ``rows`` as JSONL atomically (temporary name, then rename), with the
    WordNet license next to it as ``WORDNET_LICENSE.txt``.

    Args:
        output_path (Union[str, Path]): JSONL file to write.
        rows (Sequence[Dict[str, Any]]): one JSON object per line.
    """
    output_path = Path(output_path)
    license_path = output_path.parent / "WORDNET_LICENSE.txt"
    if not license_path.is_file():
        write_text_atomically(license_path, WORDNET_LICENSE)
    write_text_atomically(output_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _cache_dir(cache_dir: Optional[Union[str, Path]]) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("GENFT_TUNE_CACHE", "~/.cache/genft_tune")
    return Path(cache_dir).expanduser() / "wordnet"


def wordnet_instruct_jsonl(
    *,
    split: str = "train",
    wordnet_dir: Optional[Union[str, Path]] = None,
    max_examples: Optional[int] = None,
    seed: int = 0,
    include_examples: bool = False,
    cache_dir: Optional[Union[str, Path]] = None,
) -> Path:
    """Return the cached JSONL for these arguments, building it on first use.

    The cache lives in ``cache_dir`` (default ``$GENFT_TUNE_CACHE`` or
    ``~/.cache/genft_tune``) under ``wordnet/``; its name encodes the arguments and
    a fingerprint of the database files.

    Args:
        split (str): ``"train"`` or ``"validation"``. Default: ``"train"``.
        wordnet_dir (Optional[Union[str, Path]]): database directory. Default: None.
        max_examples (Optional[int]): keep at most this many examples. Default: None.
        seed (int): shuffling seed. Default: 0.
        include_examples (bool): add example-sentence instructions. Default: False.
        cache_dir (Optional[Union[str, Path]]): cache root. Default: None.

    Returns:
        Path: the JSONL file.
    """
    root = find_wordnet_dir(wordnet_dir)
    fingerprint = hashlib.sha256(str(root.resolve()).encode())
    for name in _required_files():
        fingerprint.update(f"{name}:{(root / name).stat().st_size}".encode())
    name = (
        f"wordnet_instruct-v{_FORMAT_VERSION}-{split}-n{max_examples or 'all'}-s{seed}"
        f"{'-ex' if include_examples else ''}-{fingerprint.hexdigest()[:10]}.jsonl"
    )
    path = _cache_dir(cache_dir) / name
    if not path.is_file():
        build_wordnet_instruct(
            path,
            split=split,
            wordnet_dir=root,
            max_examples=max_examples,
            seed=seed,
            include_examples=include_examples,
        )
    return path


def wordnet_instruct_dataset(
    tokenizer: ModelTokenizer,
    *,
    split: str = "train",
    max_examples: Optional[int] = None,
    packed: bool = False,
    train_on_input: bool = False,
    seed: int = 0,
    include_examples: bool = False,
    wordnet_dir: Optional[Union[str, Path]] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    **kwargs: Any,
) -> Union[SFTDataset, PackedDataset]:
    """WordNet 3.0 definitions as a torchtune instruct dataset.

    Builds (once, cached) the JSONL of :func:`build_wordnet_instruct` and wraps it in
    torchtune's :func:`~torchtune.datasets.instruct_dataset`: the instruction is the
    user turn, the definition the assistant turn, and with ``train_on_input=False``
    only the answer contributes to the loss.

    Example config::

        dataset:
          _component_: genft_tune.datasets.wordnet_instruct_dataset
          split: train
          max_examples: 20000

    Args:
        tokenizer (ModelTokenizer): tokenizer used by the model.
        split (str): ``"train"`` or ``"validation"`` (disjoint lemmas). Default: ``"train"``.
        max_examples (Optional[int]): keep at most this many examples. Default: None (all).
        packed (bool): pack samples up to ``tokenizer.max_seq_len``. Default: False.
        train_on_input (bool): also compute the loss on the prompt. Default: False.
        seed (int): seed for the (deterministic) example order and subset. Default: 0.
        include_examples (bool): add example-sentence instructions. Default: False.
        wordnet_dir (Optional[Union[str, Path]]): WordNet database directory.
            Default: None (``$WNSEARCHDIR`` or ``/usr/share/wordnet``).
        cache_dir (Optional[Union[str, Path]]): cache root. Default: None
            (``$GENFT_TUNE_CACHE`` or ``~/.cache/genft_tune``).
        **kwargs: passed to :func:`~torchtune.datasets.instruct_dataset`
            (e.g. ``new_system_prompt``, ``filter_fn``).

    Returns:
        Union[SFTDataset, PackedDataset]: the dataset.
    """
    path = wordnet_instruct_jsonl(
        split=split,
        wordnet_dir=wordnet_dir,
        max_examples=max_examples,
        seed=seed,
        include_examples=include_examples,
        cache_dir=cache_dir,
    )
    return instruct_dataset(
        tokenizer,
        source="json",
        data_files=str(path),
        split="train",  # a single JSON file always loads as HF split "train"
        column_map={"input": "input", "output": "output"},
        train_on_input=train_on_input,
        packed=packed,
        **kwargs,
    )
