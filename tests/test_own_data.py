"""``docs/own_data.md`` runs as printed: its config file and every command in it, in a
folder holding what the page says the user has (``./my_model``: a tiny Qwen2 checkpoint
written by transformers with a byte-level Qwen2.5 tokenizer; ``./my_data.jsonl``,
``./my_val.jsonl``, ``./my_data.csv``, ``./my_chats.jsonl``, ``./my_dataset/``)."""

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from _recipe_runs import read_metrics, subprocess_env

DOC = Path(__file__).resolve().parents[1] / "docs" / "own_data.md"
WORDS = "red green blue cat dog sun moon tree fish bird rock wind star rain snow leaf".split()


def doc_blocks():
    """``(language, text)`` of every fenced code block of the page."""
    return re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)


def doc_commands():
    """The shell commands of the page's bash blocks (continuation lines joined)."""
    commands = []
    for lang, text in doc_blocks():
        if lang == "bash":
            commands += [c.strip() for c in text.replace("\\\n", " ").splitlines() if c.strip()]
    return commands


def write_my_model(path: Path) -> None:
    """A tiny Qwen2 checkpoint and a byte-level Qwen2.5 tokenizer (vocab.json, merges.txt,
    tokenizer.json with the special tokens at ids 256...)."""
    import torch
    from torchtune.models.qwen2._tokenizer import bytes_to_unicode
    from torchtune.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=288, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ))
    model.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps({c: b for b, c in bytes_to_unicode().items()}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    added = [{"id": 256 + i, "content": t, "special": True} for i, t in enumerate(QWEN2_5_SPECIAL_TOKENS)]
    (path / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))


def _pairs(n, seed):
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 4))]
        out.append(("reverse: " + " ".join(words), " ".join(reversed(words))))
    return out


def write_my_files(folder: Path) -> None:
    write_my_model(folder / "my_model")
    jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
    (folder / "my_data.jsonl").write_text(jsonl({"input": i, "output": o} for i, o in _pairs(32, 0)))
    (folder / "my_val.jsonl").write_text(jsonl({"input": i, "output": o} for i, o in _pairs(8, 1)))
    with open(folder / "my_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        w.writerows(_pairs(32, 2))
    (folder / "my_chats.jsonl").write_text(jsonl(
        {"messages": [{"role": "user", "content": i}, {"role": "assistant", "content": o}]} for i, o in _pairs(32, 3)
    ))
    (folder / "my_dataset").mkdir()
    (folder / "my_dataset" / "train.jsonl").write_text(jsonl({"input": i, "output": o} for i, o in _pairs(32, 4)))
    (folder / "my_dataset" / "validation.jsonl").write_text(jsonl({"input": i, "output": o} for i, o in _pairs(8, 5)))


def test_page_defines_what_the_test_runs():
    yaml_blocks = [t for lang, t in doc_blocks() if lang == "yaml"]
    assert len(yaml_blocks) == 1 and yaml_blocks[0].startswith("# my_run.yaml")
    commands = doc_commands()
    assert len(commands) == 6 and all(c.startswith("tune run genft_finetune_single_device") for c in commands)
    readme = (DOC.parents[1] / "README.md").read_text()
    assert "docs/own_data.md" in readme


@pytest.mark.slow
def test_every_command_runs_as_printed(tmp_path):
    """The six runs of the page (about a minute on 2 cores); each must finish and leave
    what the page says."""
    _run_page(tmp_path, doc_commands())


def test_first_two_commands_run_as_printed(tmp_path):
    """The packaged-config command and the user's own config file (with validation)."""
    _run_page(tmp_path, doc_commands()[:2])


def _run_page(tmp_path, commands):
    write_my_files(tmp_path)
    (yaml_text,) = [t for lang, t in doc_blocks() if lang == "yaml"]
    (tmp_path / "my_run.yaml").write_text(yaml_text)
    env = subprocess_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf_cache")
    for command in commands:
        proc = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-4000:]}"
        out = tmp_path / re.search(r"output_dir=(\S+)", command).group(1) if "output_dir=" in command else tmp_path / "runs" / "mine"
        epochs = 2 if "epochs=2" in command else 1
        for e in range(epochs):
            assert (out / f"epoch_{e}" / "genft_adapter.safetensors").is_file(), command
        assert (out / f"epoch_{epochs - 1}" / "config.json").is_file()  # the merged model
        (log,) = (out / "logs").glob("*.txt") if epochs == 1 else [max((out / "logs").glob("*.txt"), key=os.path.getmtime)]
        metrics = read_metrics(log)
        assert metrics["loss"] and all(v == v for v in metrics["loss"].values())  # no nan
        if "--config my_run.yaml" in command and "dataset_val" not in command and epochs == 1:
            assert "val_loss" in metrics  # the validation file is used
