"""The distributed (FSDP2) GenFT recipe on CPU: 2 processes with gloo equal one device
at the same global batch."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_recipes_fixtures import (
    base_config,
    losses,
    RECIPES_DIR,
    run_recipe_in_process,
    SINGLE_DEVICE_RECIPE,
    subprocess_env,
    write_config,
    write_tiny_checkpoint,
)

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


def test_two_cpu_processes_match_single_device(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "base")

    single = base_config(tmp_path / "single", ckpt_dir=ckpt, batch_size=GLOBAL_BATCH, **COMMON)
    run_recipe_in_process(SINGLE_DEVICE_RECIPE, write_config(single, tmp_path / "single.yaml"))

    dist = base_config(tmp_path / "dist", ckpt_dir=ckpt, batch_size=GLOBAL_BATCH // 2, **COMMON)
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
    assert a.keys() == b.keys()
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
