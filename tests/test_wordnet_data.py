"""Tests for the WordNet 3.0 instruction dataset (needs `apt-get install wordnet-base`)."""

import json
from collections import Counter
from typing import Any, List, Mapping, Tuple

import pytest

from genft_tune.datasets import build_wordnet_instruct, wordnet_instruct_dataset
from genft_tune.datasets._wordnet import (
    _parse_gloss,
    find_wordnet_dir,
    load_wordnet_definitions,
    wordnet_split,
)
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX, Message
from torchtune.modules.transforms import Transform
from torchtune.modules.transforms.tokenizers import ModelTokenizer

try:
    find_wordnet_dir()
    HAVE_WORDNET = True
except FileNotFoundError:
    HAVE_WORDNET = False

needs_wordnet = pytest.mark.skipif(not HAVE_WORDNET, reason="apt-get install wordnet-base")


class ByteTokenizer(ModelTokenizer, Transform):
    """Tiny byte-level tokenizer: id = byte + 3; 1 = BOS, 2 = EOS, 0 = pad."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def __init__(self, max_seq_len=None):
        self.max_seq_len = max_seq_len
        self.special_tokens = {"<bos>": 1, "<eos>": 2}

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> List[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: List[int]) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8")

    def tokenize_messages(self, messages: List[Message], **kw) -> Tuple[List[int], List[bool]]:
        tokens, mask = [self.bos_id], [True]
        for message in messages:
            ids = self.encode(message.text_content, add_bos=False, add_eos=False)
            tokens += ids
            mask += [message.masked] * len(ids)
        tokens, mask = tokens + [self.eos_id], mask + [False]
        if self.max_seq_len:
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        return tokens, mask

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> Mapping[str, Any]:
        sample["tokens"], sample["mask"] = self.tokenize_messages(sample.pop("messages"))
        return sample


# A miniature WordNet database in the real file format (license header lines start
# with two spaces; fields: offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss).
_MINI_DATA = {
    "noun": [
        '00000001 05 n 02 dog 0 domestic_dog 0 000 | a domesticated canine; "the dog barked"  ',
        '00000002 18 n 01 dog 1 000 | a dull unattractive unpleasant girl or woman  ',
        '00000003 15 n 01 Paris 0 000 | the capital of France  ',
    ],
    "verb": ['00000004 29 v 01 bark 0 000 | make barking sounds; "the dogs barked at the stranger"  '],
    "adj": ['00000005 00 s 02 galore(ip) 0 abounding 0 000 | existing in abundance; "whiskey galore"  '],
    "adv": ['00000006 02 r 01 quickly 0 000 | with rapid movements  '],
}
_MINI_INDEX = {
    "noun": ["dog n 2 0 2 1 00000001 00000002  ", "domestic_dog n 1 0 1 0 00000001  ", "paris n 1 0 1 0 00000003  "],
    "verb": ["bark v 1 0 1 0 00000004  "],
    "adj": ["abounding a 1 0 1 0 00000005  ", "galore a 1 0 1 0 00000005  "],
    "adv": ["quickly r 1 0 1 0 00000006  "],
}


@pytest.fixture
def mini_wordnet(tmp_path):
    root = tmp_path / "dict"
    root.mkdir()
    header = ["  1 This software and database is being provided to you  "]
    for pos in _MINI_DATA:
        (root / f"data.{pos}").write_text("\n".join(header + _MINI_DATA[pos]) + "\n")
        (root / f"index.{pos}").write_text("\n".join(header + _MINI_INDEX[pos]) + "\n")
    return root


@pytest.fixture(scope="module")
def records():
    return load_wordnet_definitions()


def test_parse_gloss():
    parsed = _parse_gloss('a member of the genus Canis; occurs in many breeds; "the dog barked"; "woof"  ')
    assert parsed == {
        "definition": "a member of the genus Canis; occurs in many breeds",
        "examples": ["the dog barked", "woof"],
    }
    # Quotes inside the definition (not after ";" or ":") are kept.
    parsed = _parse_gloss('progress (in the phrase "make strides"); "big strides"')
    assert parsed["definition"] == 'progress (in the phrase "make strides")'
    assert parsed["examples"] == ["big strides"]


def test_missing_wordnet_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        find_wordnet_dir(tmp_path)


def test_split_is_stable_and_roughly_five_percent():
    lemmas = [f"word{i}" for i in range(20_000)]
    splits = [wordnet_split(lemma) for lemma in lemmas]
    assert splits == [wordnet_split(lemma) for lemma in lemmas]
    share = splits.count("validation") / len(splits)
    assert 0.04 < share < 0.06
    assert wordnet_split("Hot Dog") == wordnet_split("hot_dog")


def test_explicit_wordnet_dir_uses_primary_sense(mini_wordnet):
    recs = {(r["lemma"], r["pos"]): r for r in load_wordnet_definitions(mini_wordnet)}
    assert len(recs) == 7
    # "dog" has two senses; the first offset in index.noun is the primary one.
    assert recs["dog", "noun"]["definition"] == "a domesticated canine"
    assert recs["dog", "noun"]["examples"] == ["the dog barked"]
    assert recs["domestic_dog", "noun"]["word"] == "domestic dog"
    assert recs["domestic_dog", "noun"]["examples"] == []  # example lacks the word
    assert recs["paris", "noun"]["word"] == "Paris"
    assert recs["galore", "adjective"]["word"] == "galore"  # "(ip)" marker dropped
    assert recs["quickly", "adverb"]["definition"] == "with rapid movements"


def test_build_is_deterministic_and_splits_are_disjoint(mini_wordnet, tmp_path):
    def build(name, **kw):
        path = tmp_path / name
        n = build_wordnet_instruct(path, wordnet_dir=mini_wordnet, **kw)
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == n
        return rows

    train = build("a.jsonl", split="train", include_examples=True)
    val = build("b.jsonl", split="validation", include_examples=True)
    assert build("c.jsonl", split="train", include_examples=True) == train
    assert not {r["lemma"] for r in train} & {r["lemma"] for r in val}
    assert len({(r["lemma"], r["pos"]) for r in train + val}) == 7
    tasks = Counter(r["task"] for r in train + val)
    # Example sentences only where they contain the word: dog, bark, galore.
    assert tasks == {"define": 7, "example": 3}
    for row in train + val:
        assert row["input"] and row["output"][0].isupper() and row["output"].endswith(".")
        assert f'"{row["lemma"].replace("_", " ")}"' in row["input"].lower()
    subset = build("d.jsonl", split="train", include_examples=True, max_examples=2, seed=1)
    assert len(subset) == min(2, len(train)) and all(r in train for r in subset)
    assert (tmp_path / "WORDNET_LICENSE.txt").read_text().count("Princeton") >= 3


@needs_wordnet
def test_real_wordnet_counts_and_dog(records):
    pos_counts = Counter(r["pos"] for r in records)
    # WordNet 3.0 has 117,798 noun, 11,529 verb, 21,479 adjective and 4,481 adverb lemmas.
    assert pos_counts["noun"] > 100_000
    assert pos_counts["verb"] > 10_000
    assert pos_counts["adjective"] > 15_000
    assert pos_counts["adverb"] > 3_000
    assert len({(r["lemma"], r["pos"]) for r in records}) == len(records)
    assert all(r["definition"] and '"' not in r["definition"][:1] for r in records)
    dog = next(r for r in records if r["lemma"] == "dog" and r["pos"] == "noun")
    assert "domesticated" in dog["definition"]
    assert "Canis" in dog["definition"]


@needs_wordnet
def test_real_wordnet_splits_disjoint(records):
    by_split = {"train": set(), "validation": set()}
    for r in records:
        by_split[wordnet_split(r["lemma"])].add(r["lemma"])
    assert not by_split["train"] & by_split["validation"]
    share = len(by_split["validation"]) / (len(by_split["train"]) + len(by_split["validation"]))
    assert 0.04 < share < 0.06


@needs_wordnet
def test_torchtune_dataset_masks_prompt(tmp_path):
    tokenizer = ByteTokenizer()
    ds = wordnet_instruct_dataset(tokenizer, split="validation", max_examples=40, cache_dir=tmp_path)
    assert len(ds) == 40
    (jsonl,) = (tmp_path / "wordnet").glob("*.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert all(wordnet_split(r["lemma"]) == "validation" for r in rows)
    for i in (0, 17, 39):
        sample = ds[i]
        tokens, labels = sample["tokens"], sample["labels"]
        assert len(tokens) == len(labels)
        n_prompt = next(j for j, label in enumerate(labels) if label != CROSS_ENTROPY_IGNORE_IDX)
        assert all(label != CROSS_ENTROPY_IGNORE_IDX for label in labels[n_prompt:])
        assert tokenizer.decode(tokens[:n_prompt]) == rows[i]["input"]
        assert tokenizer.decode(labels[n_prompt:]) == rows[i]["output"]
        assert labels[-1] == tokenizer.eos_id
    # Cached: a second build reuses the same file.
    mtime = jsonl.stat().st_mtime_ns
    wordnet_instruct_dataset(tokenizer, split="validation", max_examples=40, cache_dir=tmp_path)
    assert jsonl.stat().st_mtime_ns == mtime


@needs_wordnet
def test_torchtune_dataset_packed(tmp_path):
    tokenizer = ByteTokenizer(max_seq_len=512)
    ds = wordnet_instruct_dataset(tokenizer, split="validation", max_examples=30, packed=True, cache_dir=tmp_path)
    assert 0 < len(ds) < 30
    pack = ds[0]
    assert pack["tokens"].shape == pack["labels"].shape == (512,)
    assert (pack["labels"] == CROSS_ENTROPY_IGNORE_IDX).any()
    assert (pack["labels"] != CROSS_ENTROPY_IGNORE_IDX).any()
