"""Files and folders this package writes are readable as a plain ``open()``/``mkdir``
would leave them (not tempfile's 0600/0700), and a killed merge's leftovers are
cleaned up by the next merge into the same output."""

import logging
import os
import stat

import pytest
import torch
from _recipe_runs import run_recipe_in_process, SINGLE_DEVICE_RECIPE, write_config
from _tiny_llama import base_config

from genft_tune._cli.genft import main as cli_main
from genft_tune.checkpointing import save_adapter
from genft_tune.modules import GenFTConfig


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_adapter_and_merge_outputs_have_open_modes(genft_run, tmp_path, umask_022):
    out = tmp_path / "merged"
    assert cli_main(["merge", "--base", str(genft_run["base"]), "--adapter", str(genft_run["adapter"]), "--output", str(out)]) == 0
    assert _mode(out) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(_mode(p) == 0o644 for p in files), {p.name: oct(_mode(p)) for p in files}

    save_adapter(tmp_path / "a", adapter_state_dict={"layers.0.attn.q_proj.A1": torch.zeros(2, 4)},
                       config=GenFTConfig(), target_modules=["layers.0.attn.q_proj"])
    assert {p.name: _mode(p) for p in (tmp_path / "a").iterdir()} == {
        "genft_adapter.safetensors": 0o644, "genft_config.json": 0o644}


def test_a_killed_merges_leftovers_are_removed_by_the_next(genft_run, tmp_path, caplog):
    out = tmp_path / "merged"
    stale = tmp_path / "merged.tmp-abc123"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"x" * 100)
    other = tmp_path / "unrelated.tmp-1"
    other.mkdir()
    with caplog.at_level(logging.INFO):
        assert cli_main(["merge", "--base", str(genft_run["base"]), "--adapter", str(genft_run["adapter"]), "--output", str(out)]) == 0
    assert not stale.exists() and other.exists()
    assert "merged.tmp-abc123" in caplog.text and "interrupted" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "unrelated.tmp-1"]


def test_recipe_outputs_have_open_modes(tmp_path, umask_022):
    cfg = base_config(tmp_path, max_steps_per_epoch=2, save_every_n_steps=1)
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "c.yaml"))
    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" and "model" in p.name for p in files)  # the merged checkpoint
    assert all(_mode(p) == 0o644 for p in files), {str(p.relative_to(out)): oct(_mode(p)) for p in files if _mode(p) != 0o644}
