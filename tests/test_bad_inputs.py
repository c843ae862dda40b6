"""A user's mistakes fail before anything is loaded or written, with one clear message
each (field, value, what is allowed), all at once, and without a traceback; what can go
wrong during a run (a bad row, a truncated example, Ctrl-C) is handled without a traceback
and without half-written files, and a start that fails leaves an earlier run's files alone.

``BAD_INPUTS`` and ``HANDLED`` are the tables of ``docs/bad_inputs.md`` (with the
command-line tools' ``CLI_BAD_INPUTS`` of ``tests/_bad_cli_cases.py`` when it exists): the
test checks that the file is exactly what these lists produce (``GENFT_TUNE_UPDATE_DOCS=1``
rewrites it).

Placeholders: ``{file}`` an existing file, ``{tmp}`` the case's folder, ``{data}`` a folder
of bad data files (see ``write_bad_data``), ``{big}`` a Llama checkpoint of another size,
``{sharded}`` the tiny checkpoint in two shards, ``{tied}`` a tiny Llama checkpoint with
tied embeddings, ``{gemma2}`` a tiny Gemma 2 checkpoint.
A case starting with ``[genft_model]`` runs on a ``genft_tune.models.genft_model`` config.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _recipe_runs import (
    DISTRIBUTED_RECIPE,
    load_recipe_module,
    losses,
    run_recipe_in_process,
    SINGLE_DEVICE_RECIPE,
    subprocess_env,
    write_config,
)
from _tiny_llama import base_config, TINY, write_tiny_checkpoint

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
    # issue 23: config keys, data, checkpoint, targets, known situations
    ("max_step_per_epoch=1", "unknown config key 'max_step_per_epoch'; did you mean 'max_steps_per_epoch'?"),
    ("save_every_n_step=1", "unknown config key 'save_every_n_step'; did you mean 'save_every_n_steps'?"),
    ("model.shared_dimm=8", "unknown config key 'model.shared_dimm'; did you mean 'model.shared_dim'?"),
    ("optimizer.lrr=1e-3", "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'?"),
    ("dataset.data_files={data}/qa.jsonl", "dataset ({data}/qa.jsonl): row 0 has no column 'input', 'output' (its columns: ['question', 'answer']); map yours with dataset.column_map.input=question dataset.column_map.output=answer"),
    ("dataset.data_files={data}/empty.jsonl", "dataset ({data}/empty.jsonl): {data}/empty.jsonl is empty (0 bytes): nothing to train on"),
    ("dataset.data_files={data}/empty_list.json", "dataset ({data}/empty_list.json): cannot open the data set: ValueError: no rows could be read from it as json"),
    ("dataset.data_files={data}/long.jsonl", "dataset ({data}/long.jsonl): every example (16 rows) is longer than tokenizer.max_seq_len=64: truncation masks all of its labels"),
    ("checkpointer.checkpoint_dir={big}", "the checkpoint in {big} does not fit the model config: it has hidden size 96 (the model config builds 64), layers 3 (the model config builds 2)"),
    ("checkpointer.checkpoint_dir={big}", "set model.vocab_size=272 model.num_layers=3 model.num_heads=6 model.num_kv_heads=2 model.embed_dim=96 model.intermediate_dim=192"),
    ("[genft_model] model.base=torchtune.models.llama3_2.llama3_2_1b", "model.base_kwargs: torchtune.models.llama3_2.llama3_2_1b builds one fixed size and takes only ['tie_word_embeddings'], not ['vocab_size', 'num_layers'"),
    ("[genft_model] model.targets=[attention]", "targets ['attention'] match no linear layer of the model (TransformerDecoder); its linear layers are named ['k_proj', 'output', 'output_proj', 'q_proj', 'v_proj', 'w1', 'w2', 'w3']"),
    ("model.genft_attn_modules=[q_proj,o_proj]", "'o_proj' is not an attention projection of the model; allowed: ['q_proj', 'k_proj', 'v_proj', 'output_proj']; 'o_proj' is called 'output_proj' here"),
    ("resume_from_checkpoint=True", "resume_from_checkpoint=True, but output_dir '{tmp}/out' holds no checkpoint to resume"),
    ("enable_activation_offloading=True enable_activation_checkpointing=True", "enable_activation_offloading=True needs CUDA (device=cuda; this run uses 'cpu')"),
    ("dataset.packed=True tokenizer.max_seq_len=null", "dataset.packed=True needs tokenizer.max_seq_len (the length of a pack)"),
    # further mistakes (issue 23: "try, as a user would, ... that nobody listed")
    ("dataset.source=jsonl", "local files are read with source set to their format, one of ['json', 'csv', 'parquet', 'text', 'arrow'] (JSON Lines files are read with source=json)"),
    ("dataset.data_files={data}/broken.jsonl", "dataset ({data}/broken.jsonl): cannot open the data set: ValueError"),
    ("dataset.source=csv dataset.data_files={data}/latin1.csv", "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9 in position 3: unexpected end of data); save the file as UTF-8, or name its encoding: dataset.encoding=latin-1"),
    ("dataset.split=validation", "Unknown split \"validation\". Should be one of ['train']"),
    ("dataset.source=csv dataset.data_files={data}/qa.csv", "dataset ({data}/qa.csv): row 0 has no column 'input', 'output' (its columns: ['question', 'answer'])"),
    ("dataset.column_map.input=prompt dataset.column_map.output=output", "row 0 has no column 'prompt' (its columns: ['input', 'output'])"),
    ("dataset.column_map.input=question", "Expected a key of 'output' in column_map"),
    ("dataset.data_files={data}", "dataset.data_files '{data}' is a folder; name the files in it"),
    ("dataset.data_files={tmp}/nope.jsonl", "dataset ({tmp}/nope.jsonl): Unable to find '{tmp}/nope.jsonl'"),
    ("dataset._component_=torchtune.datasets.chat_dataset dataset.data_files={data}/chats.jsonl", "missing 2 required keyword-only arguments: 'conversation_column' and 'conversation_style'"),
    ("dataset._component_=torchtune.datasets.chat_dataset dataset.data_files={data}/chats.jsonl dataset.conversation_column=messages dataset.conversation_style=sharegpt", "dataset ({data}/chats.jsonl): row 0 cannot be read: KeyError: 'from'"),
    ("dataset_val._component_=torchtune.datasets.instruct_dataset dataset_val.source=json dataset_val.data_files={tmp}/val.jsonl", "dataset_val ({tmp}/val.jsonl): Unable to find"),
    ("batch_size=100", "has 64 rows, fewer than batch_size=100 x gradient_accumulation_steps=1: no optimizer step would run"),
    ("seed=abc", "seed must be null or an integer, got 'abc'"),
    ("shuffle=maybe", "shuffle must be True or False, got 'maybe'"),
    ("dataset.train_on_input=yes_please", "dataset.train_on_input must be True or False, got 'yes_please'"),
    ("tokenizer.max_seq_len=1000", "tokenizer.max_seq_len=1000 is longer than the model's max_seq_len=256: an example longer than 256 tokens would stop the run"),
    ("tokenizer.max_seq_len=-5", "tokenizer.max_seq_len must be null or an integer >= 1, got -5"),
    ("tokenizer.path={tmp}/nope.model", "tokenizer: file not found: {tmp}/nope.model; check tokenizer.path"),
    ("tokenizer._component_=torchtune.models.qwen2_5.qwen2_5_tokenizer", "tokenizer: cannot load it (torchtune.models.qwen2_5.qwen2_5_tokenizer): TypeError"),
    ("checkpointer.model_type=QWEN2", "checkpointer.model_type is QWEN2, but the checkpoint's config.json says model_type 'llama': set checkpointer.model_type=LLAMA3"),
    ("checkpointer.model_type=GEMMA checkpointer.checkpoint_dir={gemma2}", "checkpointer.model_type is GEMMA, but the checkpoint's config.json says model_type 'gemma2': set checkpointer.model_type=GEMMA2"),
    ("checkpointer.model_type=QWEN2 checkpointer.checkpoint_dir={tied}", "checkpointer.model_type is QWEN2, but the checkpoint's config.json says model_type 'llama': set checkpointer.model_type=LLAMA3_2"),
    ("output_dir={tmp}/base/run", "output_dir '{tmp}/base/run' is inside checkpointer.checkpoint_dir '{tmp}/base'"),
    ("checkpointer.checkpoint_dir={sharded} checkpointer.checkpoint_files=[model-00001-of-00002.safetensors]", "checkpointer.checkpoint_files lists 1 of the 2 shards that model.safetensors.index.json names; add ['model-00002-of-00002.safetensors']"),
    ("metric_logger._component_=torchtune.training.metric_logging.CometLogger ~metric_logger.filename", "metric_logger: CometLogger needs the 'comet_ml' package (pip install comet_ml)"),
    ("collate_fn=torchtune.data.no_such_collate", "collate_fn: cannot import 'torchtune.data.no_such_collate'"),
    ("dataset._component_=torchtune.datasets.chat_dataset dataset.data_files={data}/chats.jsonl dataset.conversation_column=conversations dataset.conversation_style=openai", "row 0 has no column 'conversations' (its columns: ['messages']); set dataset.conversation_column to the column that holds the conversations"),
    ("dataset.packed=True dataset.data_files={data}/holes.jsonl", "1 of 16 rows have no 'output' (rows [5]); packing stops on them: drop them, or set dataset.packed=False"),
    ("model.targets=[q_proj,v_proj]", "unknown config key 'model.targets'; did you mean 'model.genft_attn_modules'?"),
    ("num_epochs=3", "unknown config key 'num_epochs'; did you mean 'epochs'?"),
    ("+dataset.train_on_input=True", "unknown config key '+dataset': torchtune's command line sets new keys without '+' (write dataset.<key>=<value>)"),
]


GENERIC_MODEL = {
    "_component_": "genft_tune.models.genft_model",
    "base": "torchtune.models.llama3_2._component_builders.llama3_2",
    "base_kwargs": {k: v for k, v in TINY.items() if k not in ("norm_eps",)} | {"tie_word_embeddings": False},
    "targets": ["q_proj", "v_proj"],
    "shared_dim": 4,
    "specific_dim": 4,
}

# What happens instead of a crash during a run (situation, what the user sees); each is
# checked by a test below.
HANDLED = [
    ("a row without its output (`null`), a row whose output is a number", "the row is skipped and its place taken by the next one: `skipping row 5: AttributeError: ...`, and per epoch `dataset (...): skipped 2 rows that failed to load (first: row 5: ...)`"),
    ("some prompts longer than `tokenizer.max_seq_len` (truncation masks every label)", "`dataset (...): 8 of the first 9 examples are longer than tokenizer.max_seq_len=...; such examples are skipped`, then `skipped 8 fully truncated examples`; no `nan` loss, no `ZeroDivisionError`"),
    ("`model.targets=[q_proj,gate_proj]`, `[o_proj]`, `[up_proj,down_proj]` (Hugging Face / PEFT names)", "accepted: `o_proj` = `output_proj`, `gate_proj` = `w1`, `up_proj` = `w3`, `down_proj` = `w2`"),
    ("Ctrl-C during training", "exit status 130, `genft_finetune_single_device: interrupted at step N; resume with resume_from_checkpoint=True (last checkpoint step_M)`, no traceback; a checkpoint being written is finished first"),
    ("`resume_from_checkpoint=True` with a changed adapter setting (`model.shared_dim=8`)", "exit status 2 before anything loads: `resume_from_checkpoint: the saved adapter's GenFT config differs from the model's (field: (saved, config)): {'shared_dim': (4, 8)}; resume with the interrupted run's model settings, or start a new output_dir`"),
    ("`resume_from_checkpoint=True` with other targets (`model.genft_attn_modules=[q_proj,k_proj,v_proj]`)", "exit status 2 before anything loads: `resume_from_checkpoint: the model config adapts other layers than the saved adapter (new: ['layers.0.attn.k_proj', ...], gone: []); ...` (before: `ValueError: Missing GenFT adapter key` traceback after loading)"),
    ("`resume_from_checkpoint=True` on a run that finished its epochs", "exit status 2 before anything loads: `resume_from_checkpoint: the run in '...' has already finished its 1 epoch(s) and epochs=1; raise epochs (e.g. epochs=2) to train further` (before: loaded everything, trained nothing, exit 0)"),
    ("`~dataset_val` or `dataset_val=null` (train without validation)", "trains without validation; `run_val_every_n_steps` is dropped with it (before: `~dataset_val` was a torchtune traceback, `Could not find key dataset_val in yaml config to remove`)"),
    ("any failed start in the `output_dir` of a finished run", "the finished run's `torchtune_config.yaml`, `logs/` and checkpoints are left as they were (the metric logger is created once everything is loaded)"),
]


def write_bad_data(folder: Path) -> Path:
    """The data files the ``{data}`` cases read."""
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
    good = [{"input": f"reverse: a b {i}", "output": f"b a {i}"} for i in range(16)]
    (folder / "qa.jsonl").write_text(jsonl({"question": r["input"], "answer": r["output"]} for r in good))
    (folder / "qa.csv").write_text("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(16)))
    (folder / "empty.jsonl").write_text("")
    (folder / "empty_list.json").write_text("[]")
    (folder / "latin1.csv").write_bytes(b"input,output\ncaf\xe9,x\nb,y\n")
    (folder / "long.jsonl").write_text(jsonl({"input": "x " * 200, "output": "y"} for _ in range(16)))
    (folder / "broken.jsonl").write_text(jsonl(good[:5]) + '{"input": "x", "output": \n' + jsonl(good[5:]))
    holes = [dict(r) for r in good]
    holes[5]["output"] = None
    (folder / "holes.jsonl").write_text(jsonl(holes))
    (folder / "chats.jsonl").write_text(jsonl(
        {"messages": [{"role": "user", "content": r["input"]}, {"role": "assistant", "content": r["output"]}]} for r in good
    ))
    return folder


def write_big_checkpoint(path: Path) -> Path:
    """A Llama checkpoint of another size than ``TINY`` (hidden 96, 3 layers, 6 heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(
        vocab_size=TINY["vocab_size"], hidden_size=96, intermediate_size=192, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
    )).save_pretrained(path)
    return path


def _case_config(tmp_path, overrides):
    """(config path, override arguments) of a case, with its placeholders' files written."""
    (tmp_path / "a_file").write_text("x")
    cfg = base_config(tmp_path, **{"output_dir": str(tmp_path / "out")})
    if overrides.startswith("[genft_model] "):
        overrides = overrides[len("[genft_model] "):]
        cfg["model"] = dict(GENERIC_MODEL)
    places = {"file": tmp_path / "a_file", "tmp": tmp_path, "data": tmp_path / "bad_data", "big": tmp_path / "big",
              "sharded": tmp_path / "sharded", "tied": tmp_path / "tied", "gemma2": tmp_path / "gemma2"}
    if "{data}" in overrides:
        write_bad_data(places["data"])
    if "{big}" in overrides:
        write_big_checkpoint(places["big"])
    if "{sharded}" in overrides:  # the tiny checkpoint again, in two shards
        from transformers import LlamaForCausalLM

        places["sharded"] = tmp_path / "sharded"
        LlamaForCausalLM.from_pretrained(str(tmp_path / "base")).save_pretrained(places["sharded"], max_shard_size="300KB")
    if "{tied}" in overrides:  # as SmolLM2 / Llama 3.2
        write_tiny_checkpoint(places["tied"], tie_word_embeddings=True)
    if "{gemma2}" in overrides:
        from transformers import Gemma2Config, Gemma2ForCausalLM

        Gemma2ForCausalLM(Gemma2Config(
            vocab_size=TINY["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        )).save_pretrained(places["gemma2"])
    cfg_path = write_config(cfg, tmp_path / "c.yaml")
    return cfg_path, [a.format(**places) for a in overrides.split()], places


def _run(tmp_path, overrides, **env):
    """The recipe in a subprocess, as `tune run` runs it: (exit code, stderr)."""
    cfg_path, args, _ = _case_config(tmp_path, overrides)
    proc = subprocess.run(
        [sys.executable, str(SINGLE_DEVICE_RECIPE), "--config", str(cfg_path), *args],
        capture_output=True, text=True, env={**subprocess_env(), **env}, timeout=300,
    )
    return proc.returncode, proc.stderr


def _main_in_process(cfg_path, args, recipe=SINGLE_DEVICE_RECIPE):
    """recipe_main in this process: (exit code, stderr)."""
    import io
    from contextlib import redirect_stderr

    module = load_recipe_module(recipe)
    argv, sys.argv = sys.argv, [str(recipe), "--config", str(cfg_path), *args]
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


def _in_process(tmp_path, overrides):
    cfg_path, args, places = _case_config(tmp_path, overrides)
    code, err = _main_in_process(cfg_path, args)
    return code, err, places


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[o for o, _ in BAD_INPUTS])
def test_bad_input_fails_first_with_one_clear_message(tmp_path, overrides, message):
    code, err, places = _in_process(tmp_path, overrides)
    assert code == 2, err
    assert message.format(**places) in err
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


@pytest.mark.parametrize("overrides,message", [
    ("max_step_per_epoch=1 optimizer.lrr=1", "the config has 2 problems"),
    ("dataset.data_files={data}/qa.jsonl", "row 0 has no column 'input', 'output'"),
    ("checkpointer.checkpoint_dir={big}", "does not fit the model config"),
])
def test_distributed_recipe_runs_the_same_preflight(tmp_path, overrides, message):
    """The distributed recipe's pre-flight, before any process group (before: a
    traceback asking for a distributed launcher, or a crash after start-up)."""
    cfg_path, args, places = _case_config(tmp_path, overrides)
    code, err = _main_in_process(cfg_path, args, recipe=DISTRIBUTED_RECIPE)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert "genft_finetune_distributed: error:" in err and not (tmp_path / "out").exists()


def test_every_packaged_llm_config_has_only_known_keys():
    """The unknown-key check knows every key the shipped configs use (no false alarm)."""
    from omegaconf import OmegaConf

    from genft_tune.training._keys import unknown_key_problems

    configs = sorted((Path(__file__).resolve().parents[1] / "genft_tune" / "configs").glob("*/*.yaml"))
    checked = 0
    for path in configs:
        if path.parent.name == "vit":
            continue
        assert unknown_key_problems(OmegaConf.load(path)) == [], path
        checked += 1
    assert checked > 30


def test_bad_rows_and_truncated_examples_are_skipped_and_counted(tmp_path, caplog):
    """A row without its output and a row whose output is a number (each a crash mid-run
    before) are skipped; examples whose prompt is longer than tokenizer.max_seq_len are
    skipped (before: a ZeroDivisionError or nan losses); every logged loss is finite."""
    import logging

    rows = [{"input": f"reverse: a b {i}", "output": f"b a {i}"} for i in range(16)]
    rows[5]["output"] = None
    rows[9]["output"] = 42
    for i in range(8):  # the first batch of 8 (no shuffle) is truncated away entirely
        rows.insert(i, {"input": "x " * 120, "output": "y"})
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    cfg = base_config(tmp_path, **{"dataset.data_files": str(data), "shuffle": False, "batch_size": 8,
                                   "tokenizer.max_seq_len": 100, "max_steps_per_epoch": 3})
    with caplog.at_level(logging.WARNING):
        run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "c.yaml"))
    text = caplog.text
    assert "skipped 2 rows that failed to load (first: row 13: AttributeError" in text
    assert "8 fully truncated examples (first: row 0)" in text
    assert "8 of the first 9 examples are longer than tokenizer.max_seq_len=100" in text  # the pre-flight
    (log,) = (tmp_path / "out" / "logs").glob("*.txt")
    got = losses(log)
    assert len(got) == 3 and all(torch.isfinite(torch.tensor(got))) and min(got) > 1.0  # real losses, not 0


@pytest.mark.parametrize("targets,leaves", [(["q_proj", "gate_proj"], {"q_proj", "w1"}),
                                            (["o_proj", "up_proj", "down_proj"], {"output_proj", "w3", "w2"})])
def test_hugging_face_target_names_are_aliases(tmp_path, targets, leaves):
    cfg = base_config(tmp_path, max_steps_per_epoch=1, save_adapter_weights_only=True)
    cfg["model"] = {**GENERIC_MODEL, "targets": targets}
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(cfg, tmp_path / "c.yaml"))
    meta = json.loads((tmp_path / "out" / "epoch_0" / "genft_config.json").read_text())
    assert {t.rsplit(".", 1)[-1] for t in meta["target_modules"]} == leaves


def _tree(folder: Path):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_start_leaves_a_finished_run_untouched(tmp_path, monkeypatch):
    """After a finished run: resuming with a changed adapter config is one message (exit 2,
    before: a traceback that had rewritten torchtune_config.yaml and opened a new log); a
    start that fails while loading (past the pre-flight) writes nothing either."""
    cfg = base_config(tmp_path, max_steps_per_epoch=2)
    cfg_path = write_config(cfg, tmp_path / "c.yaml")
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, cfg_path)
    out = tmp_path / "out"
    before = _tree(out)
    assert "torchtune_config.yaml" in before and any(k.startswith("logs/") for k in before)
    code, err = _main_in_process(cfg_path, ["resume_from_checkpoint=True", "model.shared_dim=8"])
    assert code == 2 and "Traceback" not in err
    assert "the saved adapter's GenFT config differs from the model's" in err and "'shared_dim': (4, 8)" in err
    assert _tree(out) == before
    code, err = _main_in_process(cfg_path, ["resume_from_checkpoint=True", "model.genft_attn_modules=[q_proj,k_proj,v_proj]"])
    assert code == 2 and "adapts other layers than the saved adapter (new: ['layers.0.attn.k_proj'" in err, err
    assert _tree(out) == before
    code, err = _main_in_process(cfg_path, ["resume_from_checkpoint=True"])  # before: loaded, did nothing, exit 0
    assert code == 2 and "has already finished its 1 epoch(s) and epochs=1; raise epochs (e.g. epochs=2)" in err, err
    assert _tree(out) == before
    time.sleep(1.1)  # a new DiskLogger file would get another name
    module = load_recipe_module(SINGLE_DEVICE_RECIPE)

    def broken(self, *a, **k):
        raise RuntimeError("the model failed to load")

    monkeypatch.setattr(module.GenFTFinetuneRecipeSingleDevice, "_setup_model", broken)
    argv, sys.argv = sys.argv, [str(SINGLE_DEVICE_RECIPE), "--config", str(cfg_path), "seed=7"]
    try:
        with pytest.raises(RuntimeError, match="failed to load"):
            module.recipe_main()
    finally:
        sys.argv = argv
    assert _tree(out) == before


def test_ctrl_c_prints_the_resume_line_and_exits_130(tmp_path):
    """SIGINT once the first checkpoint is written: exit 130, one line naming the step and
    the last checkpoint, no traceback, no partial files; the printed resume works."""
    cfg = base_config(tmp_path, epochs=40, save_every_n_steps=4)
    cfg_path = write_config(cfg, tmp_path / "c.yaml")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SINGLE_DEVICE_RECIPE), "--config", str(cfg_path)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=subprocess_env())
    deadline = time.time() + 240
    while not (out / "recipe_state" / "recipe_state.pt").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    line = [l for l in err.splitlines() if "interrupted at step" in l]
    assert line and "resume with resume_from_checkpoint=True (last checkpoint " in line[0], err[-2000:]
    last = line[0].rsplit("(last checkpoint ", 1)[1].rstrip(")")
    assert (out / last / "genft_adapter.safetensors").is_file()
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    state = torch.load(out / "recipe_state" / "recipe_state.pt", weights_only=False)
    assert state["adapter_dir"] == last


def test_a_held_ctrl_c_lets_the_save_finish():
    """deferred_interrupt: a SIGINT inside the block is raised only once the block is done."""
    from genft_tune.training import deferred_interrupt

    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("saved")
    assert done == ["saved"]


def _table(header, rows):
    lines = [header, "|---|---|"]
    lines += [f"| {a.replace('|', '/')} | {b.replace('|', '/')} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def docs_text() -> str:
    """``docs/bad_inputs.md`` as the lists give it."""
    text = (
        "## Bad inputs and their messages\n\n"
        "Every row is a test case of `tests/test_bad_inputs.py` (this file is written from its list,\n"
        "and a test fails when the two differ). Each fails before anything is loaded or written,\n"
        "exits with status 2, prints no traceback (`GENFT_TUNE_DEBUG=1` shows it), and several\n"
        "mistakes in one run are reported together. `{file}` is an existing file, `{tmp}` a folder,\n"
        "`{data}` a folder of data files (`qa.jsonl` has the columns `question,answer`), `{big}` a\n"
        "checkpoint of another size, `{tied}` a Llama checkpoint with tied embeddings, `{gemma2}` a\n"
        "Gemma 2 checkpoint; `[genft_model]` marks a config built with\n"
        "`genft_tune.models.genft_model`.\n\n"
        + _table("| input (command-line override) | message (excerpt) |", [(f"`{o}`", m) for o, m in BAD_INPUTS])
        + "\n### Handled during a run\n\n"
        "What would have stopped a run with a traceback, and what happens instead (each checked\n"
        "by a test of `tests/test_bad_inputs.py`).\n\n"
        + _table("| situation | what happens |", HANDLED)
    )
    try:
        from _bad_cli_cases import CLI_BAD_INPUTS
    except ImportError:
        return text
    return text + (
        "\n## Command-line tools\n\n"
        "Each row is run by `tests/test_bad_cli_inputs.py`: exit status 2, the message, no traceback,\n"
        "nothing written.\n\n"
        + _table("| command line | message (excerpt) |", [(f"`{c}`", m) for c, m in CLI_BAD_INPUTS])
    )


def test_docs_table_is_the_tested_list():
    text = docs_text()
    if os.environ.get("GENFT_TUNE_UPDATE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.is_file() and DOC.read_text() == text, "run GENFT_TUNE_UPDATE_DOCS=1 pytest tests/test_bad_inputs.py"


def test_validation_switches_off_from_the_command_line(tmp_path):
    """``~dataset_val`` (torchtune: a traceback, "Could not find key dataset_val") and
    ``dataset_val=null`` (before: "dataset_val._component_ must be a dotted import path")
    train without validation, run_val_every_n_steps dropped with it."""
    cfg = base_config(tmp_path, **{"max_steps_per_epoch": 2, "run_val_every_n_steps": 1})
    cfg["dataset_val"] = dict(cfg["dataset"])
    cfg_path = write_config(cfg, tmp_path / "c.yaml")
    for i, switch in enumerate(["~dataset_val", "dataset_val=null"]):
        out = tmp_path / f"out{i}"
        proc = subprocess.run(
            [sys.executable, str(SINGLE_DEVICE_RECIPE), "--config", str(cfg_path), switch, f"output_dir={out}"],
            capture_output=True, text=True, env=subprocess_env(), timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        (log,) = (out / "logs").glob("*.txt")
        assert len(losses(log)) == 2 and "val_loss" not in log.read_text()
