"""A user's mistakes fail before anything is loaded or written, with one clear message
each (field, value, what is allowed), all at once, and without a traceback.

``BAD_INPUTS`` is also the table in ``docs/bad_inputs.md``: the test checks that the file
is exactly what this list produces (``GENFT_TUNE_UPDATE_DOCS=1`` rewrites it).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_recipes_fixtures import base_config, load_recipe_module, SINGLE_DEVICE_RECIPE, subprocess_env, write_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"

# (overrides as on the command line, a part of the message that must be printed)
BAD_INPUTS = [
    ("model.act_in=foo", "model.act_in: act_in must be one of ['identity', 'relu', 'leaky_relu', 'gelu', 'tanh'], got 'foo'"),
    ("model.shared_dim=0 model.specific_dim=0", "model: shared_dim + specific_dim must be > 0"),
    ("model.dropout=1.5", "model.dropout: dropout must be in [0, 1), got 1.5"),
    ("model.shared_dim=abc", "model.shared_dim: shared_dim must be an integer >= 0, got 'abc'"),
    ("model.stages=sideways", "model.stages: stages must be one of ['both', 'row', 'column'], got 'sideways'"),
    ("model.convention=theirs", "model.convention: convention must be one of ['ours', 'authors_peft', 'authors_vit']"),
    ("model.ratio=inf", "model.ratio: ratio must be a finite number, got 'inf'"),
    ("optimizer.lr=abc", "optimizer.lr must be a number > 0, got 'abc'"),
    ("optimizer.lr=-1", "optimizer.lr must be a number > 0, got -1"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay must be a number >= 0, got -0.1"),
    ("batch_size=0", "batch_size must be an integer >= 1, got 0"),
    ("epochs=0", "epochs must be an integer >= 1, got 0"),
    ("max_steps_per_epoch=-3", "max_steps_per_epoch must be null or an integer >= 1, got -3"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps must be an integer >= 1, got 0"),
    ("lr_scheduler.num_warmup_steps=-1", "lr_scheduler.num_warmup_steps must be an integer >= 0, got -1"),
    ("clip_grad_norm=0", "clip_grad_norm must be null or a number > 0, got 0"),
    ("device=cuda", "device: 'cuda' is not available on this machine; use device=cpu"),
    ("device=tpu", "device must be one of ['cpu', 'cuda', 'mps', 'xpu', 'npu']"),
    ("dtype=fp16", "dtype: fp16 is not supported by the GenFT recipes; use fp32 or bf16"),
    ("dtype=fp64", "dtype must be one of ['fp32', 'bf16'], got 'fp64'"),
    ("output_dir={file}", "exists and is not a folder"),
    ("checkpointer.checkpoint_dir={tmp}/nowhere", "checkpointer.checkpoint_dir '{tmp}/nowhere' does not exist"),
    ("checkpointer.checkpoint_files=[missing.safetensors]", "checkpointer.checkpoint_files: 'missing.safetensors' not found"),
    ("model._component_=genft_tune.models.llama.no_such_model", "model._component_: cannot import 'genft_tune.models.llama.no_such_model'"),
    ("model.genft_attn_modules=[q_proj,gate_proj]", "model.genft_attn_modules: 'gate_proj' is not an attention projection"),
    ("run_val_every_n_steps=5", "run_val_every_n_steps is set, but there is no dataset_val"),
]


def _run(tmp_path, overrides, **env):
    """The recipe in a subprocess, as `tune run` runs it: (exit code, stderr)."""
    (tmp_path / "a_file").write_text("x")
    cfg_path = write_config(base_config(tmp_path, **{"output_dir": str(tmp_path / "out")}), tmp_path / "c.yaml")
    args = [a.format(file=tmp_path / "a_file", tmp=tmp_path) for a in overrides.split()]
    proc = subprocess.run(
        [sys.executable, str(SINGLE_DEVICE_RECIPE), "--config", str(cfg_path), *args],
        capture_output=True, text=True, env={**subprocess_env(), **env}, timeout=300,
    )
    return proc.returncode, proc.stderr


def _in_process(tmp_path, overrides):
    """recipe_main in this process: (exit code, stderr text via the exception)."""
    import io
    from contextlib import redirect_stderr

    (tmp_path / "a_file").write_text("x")
    cfg_path = write_config(base_config(tmp_path, **{"output_dir": str(tmp_path / "out")}), tmp_path / "c.yaml")
    args = [a.format(file=tmp_path / "a_file", tmp=tmp_path) for a in overrides.split()]
    module = load_recipe_module(SINGLE_DEVICE_RECIPE)
    argv, sys.argv = sys.argv, [str(SINGLE_DEVICE_RECIPE), "--config", str(cfg_path), *args]
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            module.recipe_main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
    return code, err.getvalue()


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[o for o, _ in BAD_INPUTS])
def test_bad_input_fails_first_with_one_clear_message(tmp_path, overrides, message):
    code, err = _in_process(tmp_path, overrides)
    assert code == 2, err
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or overrides.startswith("output_dir")  # nothing written


def test_every_problem_is_reported_at_once_without_a_traceback(tmp_path):
    code, err = _run(tmp_path, "model.act_in=foo optimizer.lr=abc batch_size=0 device=cuda")
    assert code == 2
    assert "the config has 4 problems" in err
    for part in ("model.act_in", "optimizer.lr", "batch_size", "device"):
        assert part in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    code, err = _run(tmp_path, "batch_size=0", GENFT_TUNE_DEBUG="1")
    assert code != 0 and "Traceback" in err and "batch_size must be an integer >= 1" in err


def test_docs_table_is_the_tested_list(tmp_path):
    rows = ["| input (command-line override) | message (excerpt) |", "|---|---|"]
    rows += [f"| `{o}` | {m.replace('|', '/')} |" for o, m in BAD_INPUTS]
    text = (
        "## Bad inputs and their messages\n\n"
        "Every row is a test case of `tests/test_bad_inputs.py` (this file is written from its list,\n"
        "and a test fails when the two differ). Each fails before anything is loaded or written,\n"
        "exits with status 2, prints no traceback (`GENFT_TUNE_DEBUG=1` shows it), and several\n"
        "mistakes in one run are reported together. `{file}` is an existing file, `{tmp}` a folder.\n\n"
        + "\n".join(rows) + "\n"
    )
    if os.environ.get("GENFT_TUNE_UPDATE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.is_file() and DOC.read_text() == text, "run GENFT_TUNE_UPDATE_DOCS=1 pytest tests/test_bad_inputs.py"
