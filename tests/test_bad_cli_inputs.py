"""Every row of ``CLI_BAD_INPUTS`` (``tests/_bad_cli_cases.py``): the command, run in this
process through its ``main(argv)``, exits with status 2, prints the row's message once and
no traceback, and writes nothing (the case's folder and the shared inputs are unchanged)."""

import contextlib
import io
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from _bad_cli_cases import CLI_BAD_INPUTS
from _tiny_llama import hf_base_to_tune, hf_config, trained_adapter, write_tiny_checkpoint
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The placeholders' folders (see ``tests/_bad_cli_cases.py``), written once."""
    from transformers import LlamaForCausalLM

    from genft_tune.checkpointing import merge_adapter_checkpoint

    root = tmp_path_factory.mktemp("cli_inputs")
    base = write_tiny_checkpoint(root / "base")
    cfg = hf_config()
    cfg.num_key_value_heads = 4  # v_proj [64, 64], the adapter was trained on [32, 64]
    LlamaForCausalLM(cfg).save_pretrained(root / "other_base")
    (root / "tt_base").mkdir()
    torch.save(hf_base_to_tune(base), root / "tt_base" / "model.pt")
    trained_adapter(base, root / "adapter", targets=("q_proj", "v_proj"))
    merge_adapter_checkpoint(base_dir=base, adapter_dir=root / "adapter", output_dir=root / "merged")
    assert load_file(str(root / "merged" / "model.safetensors"))
    shutil.copytree(root / "merged", root / "run" / "epoch_0")
    shutil.copytree(root / "adapter", root / "run" / "step_2")
    return {name: root / name for name in ("base", "other_base", "tt_base", "adapter", "merged", "run")}


def _tree(path: Path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in path.rglob("*"))


def run_cli(command: str):
    """``(exit status, stderr + stdout)`` of a ``genft-tune ...`` or ``python -m
    genft_tune.quickstart ...`` command line, run in this process."""
    argv = shlex.split(command)
    if argv[0] == "genft-tune":
        from genft_tune._cli.genft import main

        argv = argv[1:]
    else:
        assert argv[:3] == ["python", "-m", "genft_tune.quickstart"], command
        from genft_tune.quickstart import main

        argv = argv[3:]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, err.getvalue() + out.getvalue()


@pytest.mark.parametrize("command,message", CLI_BAD_INPUTS, ids=[c for c, _ in CLI_BAD_INPUTS])
def test_cli_mistake_is_one_clear_message(inputs, tmp_path, command, message):
    (tmp_path / "a_file").write_text("x")
    names = {**{k: str(v) for k, v in inputs.items()}, "tmp": str(tmp_path), "file": str(tmp_path / "a_file")}
    before = {k: _tree(v) for k, v in inputs.items()}, _tree(tmp_path)
    code, text = run_cli(command.format(**names))
    assert code == 2, text
    assert message.format(**names) in text, text
    assert "Traceback" not in text and text.count("error:") == 1, text
    assert ({k: _tree(v) for k, v in inputs.items()}, _tree(tmp_path)) == before  # nothing written


def test_the_list_covers_every_tool():
    tools = {" ".join(shlex.split(c)[:2]) for c, _ in CLI_BAD_INPUTS}
    assert {"genft-tune merge", "genft-tune publish", "genft-tune export-peft", "genft-tune import-authors",
            "genft-tune cat", "genft-tune cp", "python -m"} <= tools
    assert len(CLI_BAD_INPUTS) >= 10
