"""Kills at any point lose nothing.

Training: a run that checkpoints every step is killed with SIGKILL at random moments
(forward, backward, optimizer step, checkpoint write: wherever the clock lands), resumed
each time, at least 10 times; after every kill each checkpoint that looks complete loads,
and the final adapter equals the uninterrupted run's bit for bit.

Merge: ``genft-tune merge`` (small shards, so that it spends its time writing) is killed
at random moments at least 10 times; an output name exists only when the merge
completed, and the last merge's output loads and passes ``--verify``.
"""

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from _recipe_runs import SINGLE_DEVICE_RECIPE, subprocess_env, write_config
from _tiny_llama import base_config, trained_adapter, write_tiny_checkpoint

from genft_tune.checkpointing import load_adapter

pytestmark = pytest.mark.slow

KILLS = 10


def _env():
    return {**subprocess_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(cfg_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SINGLE_DEVICE_RECIPE), "--config", str(cfg_path), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
    )


def _check_complete_checkpoints_load(out: Path) -> int:
    """Every adapter folder with a genft_config.json loads (its sha256 matches); the
    recipe state, when present, loads. Returns how many adapters were checked."""
    n = 0
    for config in out.glob("*/genft_config.json"):
        load_adapter(config.parent)
        n += 1
    state = out / "recipe_state" / "recipe_state.pt"
    if state.exists():
        torch.load(state, weights_only=False)
    return n


def _steps_done(out: Path) -> int:
    state = out / "recipe_state" / "recipe_state.pt"
    return torch.load(state, weights_only=False)["steps_run"] if state.exists() else 0


def test_training_killed_anywhere_resumes_to_the_same_adapter(tmp_path):
    cfg = base_config(tmp_path, max_steps_per_epoch=40, save_every_n_steps=1, save_adapter_weights_only=True)
    ref = tmp_path / "ref"
    ref_cfg = write_config(dict(cfg, output_dir=str(ref)), tmp_path / "ref.yaml")
    t0 = time.perf_counter()
    proc, startup, trained = _start(ref_cfg), None, None
    while proc.poll() is None:
        if startup is None and (ref / "step_1").exists():
            startup = time.perf_counter() - t0  # imports, model and data set-up
        if trained is None and (ref / "epoch_0").exists():
            trained = time.perf_counter() - t0  # then only the exit is left
        time.sleep(0.01)
    assert proc.returncode == 0 and startup is not None
    train_time = (trained or time.perf_counter() - t0) - startup
    steps = _steps_done(ref)  # the data set may end the epoch before max_steps_per_epoch
    reference = load_file(str(ref / "epoch_0" / "genft_adapter.safetensors"))

    out = tmp_path / "soak"
    soak_cfg = write_config(dict(cfg, output_dir=str(out)), tmp_path / "soak.yaml")
    rng = random.Random(0)
    kills, points, completed = 0, [], 0
    while kills < KILLS or not (out / "epoch_0" / "genft_adapter.safetensors").exists():
        if (out / "epoch_0" / "genft_adapter.safetensors").exists():  # finished before enough kills:
            shutil.rmtree(out)  # its adapter was checked below; start over and keep killing
        done = _steps_done(out)
        proc = _start(soak_cfg, f"resume_from_checkpoint={done > 0}")
        if kills < KILLS:
            # Start-up (imports, model, data) takes most of a run of this tiny model, so a delay
            # drawn over the whole run would mostly kill start-ups. Every third kill is anywhere
            # in the run; the others wait for the run's first new checkpoint and then kill at a
            # random moment of the steps still to run: forward, backward, optimizer step or
            # checkpoint write.
            delay = rng.uniform(0.6, 1.3) * (startup + train_time)
            if kills % 3:
                while proc.poll() is None and _steps_done(out) <= done:
                    time.sleep(0.01)
                delay = rng.uniform(0.0, 1.1) * train_time * (steps - done) / steps
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                points.append((round(delay, 2), _steps_done(out)))
                _check_complete_checkpoints_load(out)
                continue
        assert proc.wait(timeout=600) == 0
        final = load_file(str(out / "epoch_0" / "genft_adapter.safetensors"))
        assert final.keys() == reference.keys()
        assert all(torch.equal(final[k], reference[k]) for k in final), "resumed adapter differs from the uninterrupted one"
        completed += 1
    assert len({step for _, step in points}) >= 3, points  # the kills landed at different steps
    print(f"killed at (seconds, last checkpointed step) {points}; {completed} resumed runs completed, each == "
          f"the uninterrupted adapter; start-up {startup:.1f} s, {steps} steps in {train_time:.1f} s")


def test_merge_killed_anywhere_leaves_no_output_name_until_complete(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base")
    trained_adapter(base, tmp_path / "adapter")
    out = tmp_path / "merged"
    args = [sys.executable, "-m", "genft_tune._cli.genft", "merge", "--base", str(base), "--adapter",
            str(tmp_path / "adapter"), "--output", str(out), "--max-shard-size", "20KB", "--overwrite"]
    t0 = time.perf_counter()
    assert subprocess.run(args, env=_env(), capture_output=True).returncode == 0
    duration = time.perf_counter() - t0
    shutil.rmtree(out)
    rng = random.Random(1)
    for _ in range(KILLS):
        proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.4 * duration, duration))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if out.exists():  # it finished: the output is complete and loads
            from transformers import AutoModelForCausalLM

            AutoModelForCausalLM.from_pretrained(str(out))
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("merged.")]
        assert all(".tmp-" in n or ".old-" in n for n in leftovers), leftovers
    final = subprocess.run([*args, "--verify", "--tolerance", "1e-4"], env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("merged.")]  # the last run cleaned up
