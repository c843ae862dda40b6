"""The single-device and distributed GenFT recipes on a CUDA GPU: every precision
switch trains and writes the merged model (``pytest -m gpu``; skipped without CUDA)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _recipe_runs as runs
import _tiny_llama as tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

GPU = {
    "device": "cuda",
    "dtype": "bf16",
    "max_steps_per_epoch": 6,
    "optimizer.lr": 0.01,
    "model.scaling": 1.0,
    "log_peak_memory_stats": True,
    "batch_size": 4,
}
# 128 x 128 weights: NF4 blocks fit, float8 dims are multiples of 16
DIMS = dict(embed_dim=128, num_kv_heads=4, intermediate_dim=256)

CASES = {
    "bf16": {},
    "fp32": {"dtype": "fp32"},
    "adamw_bf16_stochastic_round": {
        "optimizer._component_": "torchao.optim._AdamW",
        "optimizer.bf16_stochastic_round": True,
    },
    "adamw8bit": {"optimizer._component_": "torchao.optim.AdamW8bit", "optimizer.weight_decay": tiny.DELETE},
    "adamw4bit": {"optimizer._component_": "torchao.optim.AdamW4bit", "optimizer.weight_decay": tiny.DELETE},
    "fp8_tensorwise": {"enable_fp8_training": True},
    "fp8_rowwise_compiled": {"enable_fp8_training": True, "fp8_recipe_name": "rowwise", "compile": True},
    "activation_offloading": {"enable_activation_checkpointing": True, "enable_activation_offloading": True},
    "nf4_base": {"model.quantize_base": True},
    "compile": {"compile": True},
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    saved = dict(tiny.TINY)
    tiny.TINY.update(DIMS)
    try:
        yield tiny.write_tiny_checkpoint(tmp_path_factory.mktemp("gpu") / "base")
    finally:
        tiny.TINY.clear()
        tiny.TINY.update(saved)


def _config(tmp_path, base, **overrides):
    saved = dict(tiny.TINY)
    tiny.TINY.update(DIMS)
    try:
        return tiny.base_config(tmp_path, ckpt_dir=base, **{**GPU, **overrides})
    finally:
        tiny.TINY.clear()
        tiny.TINY.update(saved)


@pytest.mark.parametrize("case", list(CASES))
def test_single_device_precision_switches(tmp_path, base, case):
    cfg = _config(tmp_path, base, **CASES[case])
    runs.run_recipe_in_process(runs.SINGLE_DEVICE_RECIPE, runs.write_config(cfg, tmp_path / "c.yaml"))
    out = Path(cfg["output_dir"])
    metrics = runs.read_metrics(out / "logs" / "log.txt")
    values = [metrics["loss"][s] for s in sorted(metrics["loss"])]
    assert len(values) == 6 and all(v == v for v in values)
    assert max(metrics["peak_memory_alloc"].values()) > 0  # CUDA memory stats are logged
    assert (out / "epoch_0" / "model-00001-of-00001.safetensors").is_file()


def test_distributed_nccl_one_gpu(tmp_path, base):
    cfg = _config(tmp_path, base)
    path = runs.write_config(cfg, tmp_path / "c.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
         str(runs.DISTRIBUTED_RECIPE), "--config", str(path)],
        capture_output=True, text=True, env=runs.subprocess_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = runs.losses(Path(cfg["output_dir"]) / "logs" / "log.txt")
    assert len(values) == 6 and all(v == v for v in values)
    assert (Path(cfg["output_dir"]) / "epoch_0" / "model-00001-of-00001.safetensors").is_file()
