# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""The exact-match task of ``benchmarks/quality.py`` (``benchmarks/_tasks.py``): the
WordNet exception-file parser and split, the answer normaliser, greedy decoding (against
a no-cache argmax loop, and on a model forced to emit known answers) and the plumbing of
the accuracy column into the results."""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _models  # noqa: E402
import _tasks  # noqa: E402
import quality  # noqa: E402

from genft_tune.modules import GenFTConfig  # noqa: E402

SMALL = _models.Shape("llama3", 64, 2, 4, 2, 64, 96, 64, 10_000)
# every test here runs on one thread (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def _split(lemma):
    """The split rule written out: sha256 of the lowercased lemma, bucket < 500 of 10k."""
    key = lemma.lower().replace(" ", "_").encode()
    return "validation" if int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 10_000 < 500 else "train"


def _wordnet_dir(tmp_path, exc):
    """A fake WordNet directory: empty index/data files and the given exception files."""
    for suffix in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"index.{suffix}").write_text("")
        (tmp_path / f"data.{suffix}").write_text("")
        (tmp_path / f"{suffix}.exc").write_text(exc.get(suffix, ""))
    return tmp_path


def test_parse_exception_file(tmp_path):
    path = tmp_path / "noun.exc"
    path.write_text("axes ax axis\nmen man\n\nlookers-on looker-on\nsea_horses sea_horse\n")
    assert _tasks.parse_exception_file(path) == [
        ("axes", ["ax", "axis"]),
        ("men", ["man"]),
        ("lookers-on", ["looker-on"]),
        ("sea horses", ["sea horse"]),
    ]


def test_records_merge_duplicates_and_drop_identity(tmp_path):
    root = _wordnet_dir(
        tmp_path,
        {
            "noun": "axes ax axis\nacer acer\nmen man\naxes axis\n",
            "verb": "went go\naxes ax\n",
            "adv": "best well\n",
        },
    )
    records = _tasks.load_baseform_records(root)
    assert sorted((r["pos"], r["word"], tuple(r["answers"])) for r in records) == sorted(
        [
            ("noun", "axes", ("ax", "axis")),  # the two lines merged, no repeat
            ("noun", "men", ("man",)),
            ("verb", "went", ("go",)),
            ("verb", "axes", ("ax",)),  # same word, other part of speech: its own record
            ("adverb", "best", ("well",)),
        ]
    )


def test_split_is_disjoint_by_lemma_and_multi_base_never_trains(tmp_path):
    lemmas = [f"lemma{i}" for i in range(400)]
    val_lemmas = [w for w in lemmas if _split(w) == "validation"]
    train_lemmas = [w for w in lemmas if _split(w) == "train"]
    assert len(val_lemmas) >= 4  # the fixture needs both splits
    lines = [f"{w}s {w}" for w in lemmas]
    lines += [f"{w}z {w}" for w in lemmas[:50]]  # a second form of the same lemma
    both_val = f"multi1 {val_lemmas[0]} {val_lemmas[1]}"
    both_train = f"multi2 {train_lemmas[0]} {train_lemmas[1]}"
    mixed = f"multi3 {val_lemmas[2]} {train_lemmas[2]}"
    root = _wordnet_dir(tmp_path, {"noun": "\n".join(lines + [both_val, both_train, mixed]) + "\n"})

    train = _tasks.baseform_examples(split="train", wordnet_dir=root)
    val = _tasks.baseform_examples(split="validation", wordnet_dir=root)
    train_bases = {a for ex in train for a in ex["answers"]}
    val_bases = {a for ex in val for a in ex["answers"]}
    assert train_bases == set(train_lemmas) and val_bases == set(val_lemmas)
    assert not train_bases & val_bases
    assert all(len(ex["answers"]) == 1 for ex in train)
    words = {ex["word"]: ex for ex in val}
    assert words["multi1"]["answers"] == [val_lemmas[0], val_lemmas[1]]
    assert words["multi1"]["output"] == val_lemmas[0]
    assert "multi2" not in {ex["word"] for ex in train} and "multi3" not in words
    assert len(train) + len(val) == 400 + 50 + 1  # every single-base form, plus multi1
    ex = words[f"{val_lemmas[0]}s"]
    assert ex["input"] == f'Give the base (dictionary) form of the noun "{val_lemmas[0]}s". Answer with the word only.'
    assert ex["output"] == val_lemmas[0]
    # deterministic order for a seed, another order for another seed
    assert _tasks.baseform_examples(split="train", wordnet_dir=root) == train
    assert [e["word"] for e in _tasks.baseform_examples(split="train", wordnet_dir=root, seed=1)] != [
        e["word"] for e in train
    ]
    assert len(_tasks.baseform_examples(split="train", wordnet_dir=root, max_examples=7)) == 7
    with pytest.raises(ValueError, match="split"):
        _tasks.baseform_examples(split="test", wordnet_dir=root)


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("go", ["go"], True),
        ("Go.", ["go"], True),
        ("  go\n", ["go"], True),
        ('"Go"', ["go"], True),
        ("sea  Horse!", ["sea horse"], True),
        ("axis", ["ax", "axis"], True),
        ("Ax", ["ax", "axis"], True),
        ("axes", ["ax", "axis"], False),
        ("gone", ["go"], False),
        ("The base form is go.", ["go"], False),
        ("", ["go"], False),
        ("looker-on", ["looker-on"], True),
    ],
)
def test_exact_match(prediction, answers, expected):
    assert _tasks.exact_match(prediction, answers) is expected


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = _models.build_base(SMALL)
    return model.eval()


def _reference_greedy(model, prompt, max_new_tokens, stop):
    """Argmax over the full sequence at every step (no KV cache)."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([tokens]))[0, -1].argmax())
            if token == stop:
                break
            tokens.append(token)
    return tokens[len(prompt):]


@pytest.mark.parametrize("adapter", [None, "genft"])
def test_greedy_decode_matches_full_recompute(adapter):
    model = _tiny()
    if adapter:  # a GenFT model with a non-zero update, decoded in eval (its cached weight)
        attn, mlp = _models.parse_targets("q,v")
        _models.apply_method(
            model, _models.Method("g", "genft", genft=GenFTConfig(shared_dim=4, specific_dim=2)),
            attn_modules=attn, apply_to_mlp=mlp,
        )
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn_like(p))
        model.eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, SMALL.vocab_size, (n,), generator=g).tolist() for n in (5, 9, 3)]
    stop = 2
    expected = [_reference_greedy(model, p, 6, stop) for p in prompts]
    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    # accept exactly what the reference produced for the first two prompts, not the third
    answers = [[decode(expected[0])], [decode(expected[1])], ["not an answer"]]
    result = _tasks.exact_match_accuracy(model, prompts, answers, decode=decode, stop_tokens=[stop], max_new_tokens=6)
    assert result["predictions"] == [decode(e) for e in expected]
    assert result["correct"] == 2 and result["n"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert not model.caches_are_setup()  # the KV cache is gone afterwards


def _force(model, scripts, vocab):
    """Make ``model`` emit ``scripts[tuple(prompt)]`` and then token 2, whatever it computes."""
    state = {}

    def hook(module, args, kwargs, output):
        tokens, pos = args[0], kwargs["input_pos"]
        if int(pos[0, 0]) == 0:  # prefill: remember the prompt
            state["prompt"] = tuple(tokens[0].tolist())
        prompt = state["prompt"]
        script = list(scripts[prompt]) + [2]
        k = int(pos[0, -1]) - len(prompt) + 1  # index of the token to emit next
        logits = torch.zeros(output.shape[0], output.shape[1], vocab)
        logits[..., script[min(k, len(script) - 1)]] = 10.0
        return logits

    return model.register_forward_hook(hook, with_kwargs=True)


def test_forced_model_scores_its_answers():
    model = _tiny()
    words = {i: f"w{i}" for i in range(SMALL.vocab_size)}
    decode = lambda ids: " ".join(words[i] for i in ids)  # noqa: E731
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    scripts = {(5, 6, 7): [40, 41], (8, 9): [42], (10, 11, 12, 13): [43, 44, 45, 46, 47], (14,): [48]}
    handle = _force(model, scripts, SMALL.vocab_size)
    answers = [["w40 w41"], ["w99", "w42"], ["w43 w44 w45"], ["w49"]]
    result = _tasks.exact_match_accuracy(model, prompts, answers, decode=decode, stop_tokens=[2], max_new_tokens=3)
    # the 3rd is cut at 3 tokens (and so matches), the 4th emits w48 where w49 is accepted
    assert result["predictions"] == ["w40 w41", "w42", "w43 w44 w45", "w48"]
    assert result["accuracy"] == pytest.approx(3 / 4)
    answers[3] = ["W48."]
    assert _tasks.exact_match_accuracy(
        model, prompts, answers, decode=decode, stop_tokens=[2], max_new_tokens=3
    )["accuracy"] == 1.0
    handle.remove()


def test_quality_reports_exact_match(tmp_path, monkeypatch):
    """main() with an exact-match task: per-run accuracy, its mean ± std, the table column."""
    load_data = quality.load_data

    def with_exact(args, vocab_size):
        train, val, pad_id, _ = load_data(args, vocab_size)
        prompts = [ex["tokens"][:10] for ex in val]  # [1] + x + [2]: the answer follows
        answers = [[" ".join(map(str, ex["tokens"][10:]))] for ex in val]
        exact = quality.ExactMatchTask(prompts, answers, lambda ids: " ".join(map(str, ids)), [0], 3)
        return train, val, pad_id, exact

    monkeypatch.setattr(quality, "load_data", with_exact)
    out = tmp_path / "q.json"
    result = quality.main(
        [
            "--model", "tiny", "--data", "synthetic", "--max-steps", "1", "--seeds", "0,1",
            "--methods", "genft,lora", "--train-examples", "8", "--eval-examples", "4", "--batch-size", "4",
            "--shared-dim", "8", "--specific-dim", "2", "--out", str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert 0.0 <= saved["base"]["accuracy"] <= 1.0 and len(saved["base"]["predictions"]) == 4
    for name in ("genft", "lora"):
        accs = [r["accuracy"] for r in result["runs"][name]]
        assert all(len(r["predictions"]) == 4 for r in result["runs"][name])
        assert saved["summary"][name]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    table = out.with_suffix(".md").read_text()
    assert "exact match %" in table
    header, rule, base_row = table.splitlines()[2:5]
    assert header.count("|") == rule.count("|") == base_row.count("|") == 9
    assert f"| {100 * saved['base']['accuracy']:.1f} |" in base_row


def test_table_without_exact_match_has_no_column():
    base = {"loss": 1.0, "ppl": 2.718}
    s = {"config": "r=1", "trainable_params": 10, "lr": 1e-3, "loss": {"mean": 1, "std": 0},
         "ppl": {"mean": 2, "std": 0}, "train_s": {"mean": 1, "std": 0}}
    table = quality.format_table(base, {"lora": s})
    assert "exact" not in table and all(line.count("|") == 8 for line in table.splitlines())


def test_quality_rejects_bad_exact_match_args():
    with pytest.raises(SystemExit):
        quality.parse_args(["--max-new-tokens", "0"])
    with pytest.raises(SystemExit):
        quality.parse_args(["--data", "wordnet_nope"])
    assert quality.parse_args(["--data", "wordnet_baseform"]).max_new_tokens == 8
