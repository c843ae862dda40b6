"""Fixtures more than one test module uses. Plain helpers live in ``_tiny_llama.py``
(the tiny Llama, its files and configs), ``_recipe_runs.py`` (running the recipes) and
``_layer_references.py`` (GenFT / WeGeFT layers and their references); test modules
import those, never each other.

Session-scoped fixtures are built once per ``pytest`` run and must be treated as
read-only: tests write into their own ``tmp_path``.
"""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _layer_references import build_adapter_layer, METHODS
from _tiny_llama import TINY, trained_adapter, write_tiny_checkpoint


@pytest.fixture(params=METHODS)
def adapter_method(request):
    """The adapter method a test runs on: each test asking for it runs once per method."""
    return request.param


@pytest.fixture
def make_adapter_layer(adapter_method):
    """``make_adapter_layer(in_dim, out_dim, dtype=torch.float32, **cfg)``: an
    ``AdapterLayer`` (layer, the module holding all its tensors, its reference) of
    ``adapter_method``; ``cfg`` goes to that method's builder."""
    return functools.partial(build_adapter_layer, adapter_method)


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test, restored after (the benchmark tests
    ask for it module-wide with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def genft_run(tmp_path_factory):
    """A tiny Llama base (with a tokenizer and generation config to copy) and a GenFT
    adapter trained on it in-process (q, k, v, o, w1, w2): the model, some tokens and
    its logits on them."""
    root = tmp_path_factory.mktemp("merge")
    base = write_tiny_checkpoint(root / "base")
    (base / "tokenizer_config.json").write_text('{"note": "copied verbatim"}')
    (base / "generation_config.json").write_text(json.dumps({"bos_token_id": 256, "eos_token_id": 257}))
    model = trained_adapter(base, root / "adapter")
    tokens = torch.randint(0, TINY["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tokens)
    return dict(root=root, base=base, adapter=root / "adapter", tokens=tokens, logits=logits, model=model)


def _hub_cache_repo(cache: Path, repo_id: str, files: dict) -> None:
    """``files`` as the snapshot of ``repo_id`` in a huggingface_hub cache (what a download leaves)."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, src in files.items():
        (snap / name).write_bytes(Path(src).read_bytes())


def _run_card_snippet(card: str, tmp_path: Path, repos: dict, check: str) -> None:
    """Run the card's python block unmodified (then ``check``) in a fresh interpreter that
    finds ``repos`` (``{repo_id: {file name: source path}}``) in an offline Hub cache."""
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    cache = tmp_path / "hub"
    for repo_id, files in repos.items():
        _hub_cache_repo(cache, repo_id, files)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.run([sys.executable, "-c", snippet + check], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def run_card_snippet():
    """``run_card_snippet(card, tmp_path, repos, check)``: a model card's usage snippet,
    run as printed against an offline Hub cache holding ``repos``."""
    return _run_card_snippet
