"""The distributed (FSDP2) recipe on CPU: 2 processes with gloo equal one device at the
same global batch (GenFT and WeGeFT), and a mid-epoch resume reproduces the uninterrupted run."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from _recipe_runs import (
    DISTRIBUTED_RECIPE,
    losses,
    read_metrics,
    RECIPES_DIR,
    run_recipe_in_process,
    SINGLE_DEVICE_RECIPE,
    subprocess_env,
    write_config,
)
from _tiny_llama import base_config, TINY, wegeft_config, write_tiny_checkpoint

STEPS = 4
COMMON = {
    "max_steps_per_epoch": STEPS,
    "optimizer.lr": 0.02,
    "model.scaling": 1.0,
    "model.dropout": 0.0,  # dropout masks come from per-process RNGs
    "clip_grad_norm": 1.0,
    "shuffle": True,
    "gradient_accumulation_steps": 2,
}
GLOBAL_BATCH = 4  # per optimizer step: 4 samples x 2 micro-batches on one device
# per method: its recipe config, its settings and the prefix of its shared adapter tensors
METHODS = {
    "genft": (base_config, COMMON, "genft_generators."),
    "wegeft": (
        wegeft_config,
        {**{k: v for k, v in COMMON.items() if not k.startswith("model.")},
         "optimizer.lr": 0.01, "model.wegeft_dropout": 0.0},  # dropout masks come from per-process RNGs
        "wegeft_factors.",
    ),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_cpu_processes_match_single_device(tmp_path, method):
    make_config, common, shared_prefix = METHODS[method]
    ckpt = write_tiny_checkpoint(tmp_path / "base")

    single = make_config(tmp_path / "single", ckpt_dir=ckpt, batch_size=GLOBAL_BATCH, **common)
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(single, tmp_path / "single.yaml"))

    dist = make_config(tmp_path / "dist", ckpt_dir=ckpt, batch_size=GLOBAL_BATCH // 2, **common)
    dist_cfg = write_config(dist, tmp_path / "dist.yaml")
    cmd = [
        str(Path(sys.executable).parent / "tune"),
        "run",
        "--nproc_per_node",
        "2",
        "genft_finetune_distributed",
        "--config",
        str(dist_cfg),
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env([RECIPES_DIR]), capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    ref = losses(Path(single["output_dir"]) / "logs" / "log.txt")
    got = losses(Path(dist["output_dir"]) / "logs" / "log.txt")
    assert len(ref) == len(got) == STEPS
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-5)

    from safetensors.torch import load_file

    a = load_file(Path(single["output_dir"]) / "epoch_0" / "genft_adapter.safetensors")
    b = load_file(Path(dist["output_dir"]) / "epoch_0" / "genft_adapter.safetensors")
    assert a.keys() == b.keys() and any(k.startswith(shared_prefix) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    # the merged checkpoints agree too
    ma = load_file(Path(single["output_dir"]) / "epoch_0" / "model-00001-of-00001.safetensors")
    mb = load_file(Path(dist["output_dir"]) / "epoch_0" / "model-00001-of-00001.safetensors")
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], rtol=1e-4, atol=1e-5)
    # and training changed them (the adapter moved the adapted weights off the base)
    base = load_file(ckpt / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (ma[q] - base[q]).abs().max() > 1e-3
    k_ = "model.layers.0.self_attn.k_proj.weight"  # not adapted: unchanged
    torch.testing.assert_close(ma[k_], base[k_], rtol=0, atol=0)


# Runs the distributed recipe under torchrun; rank 0 copies the output folder when it
# logs step CRASH_AFTER_STEP, i.e. what a run that crashed right there leaves on disk.
SNAPSHOT_LAUNCHER = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path
    import genft_finetune_distributed as recipe

    crash_after, snapshot = int(sys.argv.pop(1)), Path(sys.argv.pop(1))
    setup = recipe.GenFTFinetuneRecipeDistributed.setup

    def setup_with_snapshot(self, cfg):
        setup(self, cfg)
        if not self._is_rank_zero:
            return
        log_dict = self._metric_logger.log_dict

        def log_and_snapshot(payload, step):
            log_dict(payload, step)
            if step == crash_after and "loss" in payload:
                self._metric_logger._file.flush()
                shutil.copytree(self._output_dir, snapshot)

        self._metric_logger.log_dict = log_and_snapshot

    recipe.GenFTFinetuneRecipeDistributed.setup = setup_with_snapshot
    sys.exit(recipe.recipe_main())
    """
)


def _torchrun(script, *args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=subprocess_env([RECIPES_DIR]), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_two_cpu_processes_resume_mid_epoch(tmp_path):
    """2 gloo processes, checkpoint every 2 steps; the copy taken at step 3 (holding the
    step-2 adapter, sharded optimizer state gathered to rank 0, dataloader position)
    resumes and logs the uninterrupted run's losses and learning rates for steps 3-6."""
    steps = 6
    cfg = base_config(tmp_path, batch_size=2, **{**COMMON, "max_steps_per_epoch": steps, "save_every_n_steps": 2})
    cfg_path = write_config(cfg, tmp_path / "c.yaml")
    snapshot = tmp_path / "crashed"
    launcher = tmp_path / "launch_with_snapshot.py"
    launcher.write_text(SNAPSHOT_LAUNCHER)
    _torchrun(launcher, 3, snapshot, "--config", cfg_path, cwd=tmp_path)

    state = torch.load(snapshot / "recipe_state" / "recipe_state.pt", weights_only=False)
    assert state["steps_run"] == 2 and "dataloader" in state  # a mid-epoch checkpoint
    resumed_cfg = {**cfg, "output_dir": str(snapshot), "resume_from_checkpoint": True,
                   "metric_logger": {**cfg["metric_logger"], "filename": "resumed.txt"}}
    _torchrun(DISTRIBUTED_RECIPE, "--config", write_config(resumed_cfg, tmp_path / "resume.yaml"), cwd=tmp_path)

    reference = read_metrics(Path(cfg["output_dir"]) / "logs" / "log.txt")
    resumed = read_metrics(snapshot / "logs" / "resumed.txt")
    assert sorted(resumed["loss"]) == [3, 4, 5, 6]
    for step in (3, 4, 5, 6):
        assert resumed["loss"][step] == pytest.approx(reference["loss"][step], rel=1e-5, abs=1e-6)
        assert resumed["lr"][step] == pytest.approx(reference["lr"][step], rel=1e-6)


def test_two_cpu_processes_fp8_match_single_device(tmp_path):
    """float8 training of the frozen base under FSDP2 (2 gloo processes, CPU-emulated
    float8 GEMMs): losses close to the single-device float8 run at the same global batch
    (not equal: each process scales its own half of the activations)."""
    ckpt = write_tiny_checkpoint(tmp_path / "base")
    fp8 = {**COMMON, "max_steps_per_epoch": 3, "dtype": "bf16", "enable_fp8_training": True,
           "tokenizer.max_seq_len": 50}
    single = base_config(tmp_path / "single", ckpt_dir=ckpt, batch_size=GLOBAL_BATCH, **fp8)
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(single, tmp_path / "single.yaml"))
    dist = base_config(tmp_path / "dist", ckpt_dir=ckpt, batch_size=GLOBAL_BATCH // 2, **fp8)
    proc = _torchrun(DISTRIBUTED_RECIPE, "--config", write_config(dist, tmp_path / "dist.yaml"), cwd=tmp_path)
    assert f"float8 training of {5 * TINY['num_layers']} frozen base linear layers" in proc.stdout + proc.stderr

    ref = losses(Path(single["output_dir"]) / "logs" / "log.txt")
    got = losses(Path(dist["output_dir"]) / "logs" / "log.txt")
    assert len(ref) == len(got) == 3
    assert got == pytest.approx(ref, rel=2e-2)
    assert (Path(dist["output_dir"]) / "epoch_0" / "model-00001-of-00001.safetensors").is_file()
