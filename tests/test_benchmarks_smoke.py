# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Smoke runs of the benchmark scripts with tiny arguments, so they never rot, plus the
parameter-count formulas the scripts use to match budgets, checked against the
trainable parameters of the models they build."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _models  # noqa: E402
import generator_passes  # noqa: E402
import quality  # noqa: E402
import speed_memory  # noqa: E402
import sweep  # noqa: E402

from torchtune.modules.peft import get_adapter_params  # noqa: E402

from genft_tune.modules import GenFTConfig, WeGeFTConfig  # noqa: E402

SMALL = _models.Shape("llama3", 64, 2, 4, 2, 64, 96, 64, 10_000)
# every test here runs on one thread (conftest's one_thread fixture)
pytestmark = pytest.mark.usefixtures("one_thread")


def _count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("targets", ["q,v", "all"])
def test_param_count_formulas_match_built_models(targets):
    attn, mlp = _models.parse_targets(targets)
    genft = GenFTConfig(shared_dim=8, specific_dim=2)
    wegeft = WeGeFTConfig(rank=4)
    cases = [
        (_models.Method("g", "genft", genft=genft), _models.genft_param_count(SMALL, attn, mlp, genft)),
        (_models.Method("w", "wegeft", wegeft=wegeft), _models.wegeft_param_count(SMALL, attn, mlp, wegeft)),
        (_models.Method("l", "lora", rank=3), _models.lora_param_count(SMALL, attn, mlp, 3)),
        (_models.Method("d", "dora", rank=3), _models.lora_param_count(SMALL, attn, mlp, 3, dora=True)),
    ]
    for method, expected in cases:
        model = _models.build_base(SMALL)
        n = _models.apply_method(model, method, attn_modules=attn, apply_to_mlp=mlp)
        assert n == _count(model) == expected, method.name
        # only adapter parameters train, as torchtune's get_adapter_params sees them
        assert n == sum(p.numel() for p in get_adapter_params(model).values())


def test_swapped_lora_matches_torchtune_lora_builder():
    attn, mlp = _models.parse_targets("q,v,mlp")
    swapped = _models.build_base(SMALL)
    n = _models.apply_method(swapped, _models.Method("l", "lora", rank=4, alpha=8), attn_modules=attn, apply_to_mlp=mlp)
    built = _models.build_lora(SMALL, attn_modules=attn, apply_to_mlp=mlp, rank=4, alpha=8)
    ref = sum(p.numel() for p in get_adapter_params(built).values())
    assert n == ref
    assert sorted(get_adapter_params(swapped)) == sorted(get_adapter_params(built))


def test_apply_method_keeps_base_output_at_init():
    """Every adapter starts at dW = 0 (LoRA B = 0, GenFT zero_init, WeGeFT phi = 0,
    DoRA magnitude = ||W0||), so the adapted model equals the base model."""
    torch.manual_seed(0)
    base = _models.build_base(SMALL)
    tokens = torch.randint(0, SMALL.vocab_size, (2, 16))
    with torch.no_grad():
        ref = base(tokens)
    attn, mlp = _models.parse_targets("all")
    for method in (
        _models.Method("l", "lora", rank=2),
        _models.Method("d", "dora", rank=2),
        _models.Method("g", "genft", genft=GenFTConfig(shared_dim=4, specific_dim=2)),
        _models.Method("w", "wegeft", wegeft=WeGeFTConfig(rank=2)),
    ):
        model = _models.build_base(SMALL)
        model.load_state_dict(base.state_dict())
        _models.apply_method(model, method, attn_modules=attn, apply_to_mlp=mlp)
        with torch.no_grad():
            torch.testing.assert_close(model(tokens), ref, atol=1e-5, rtol=1e-5, msg=method.name)


def test_matched_lora_rank_is_closest():
    attn, mlp = _models.parse_targets("q,v")
    target = _models.genft_param_count(SMALL, attn, mlp, GenFTConfig(shared_dim=8, specific_dim=2))
    r = _models.matched_lora_rank(target, SMALL, attn, mlp)
    err = abs(_models.lora_param_count(SMALL, attn, mlp, r) - target)
    for other in (r - 1, r + 1):
        if other >= 1:
            assert err <= abs(_models.lora_param_count(SMALL, attn, mlp, other) - target)


def test_parse_targets_rejects_unknown():
    with pytest.raises(ValueError, match="targets"):
        _models.parse_targets("q,x")


def test_speed_memory_smoke(tmp_path, monkeypatch):
    monkeypatch.setitem(_models.SHAPES, "tiny", SMALL)  # smaller than the CPU preset: a fast test
    out = tmp_path / "speed.json"
    result = speed_memory.main(
        [
            "--shape", "tiny", "--tokens", "64", "--seq-len", "32",
            "--steps", "1", "--warmup", "0", "--eval-steps", "1", "--decode-tokens", "3",
            "--prompt-len", "4", "--shared-dim", "4", "--specific-dim", "2", "--wegeft-rank", "4",
            "--threads", "1", "--out", str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["rows"]] == list(speed_memory.VARIANTS)
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["base"]["trainable_params"] == 0
    assert rows["lora_r16"]["trainable_params"] > 0
    for r in rows.values():
        assert r["step_s_median"] > 0 and math.isfinite(r["tokens_per_s"])
    # the GenFT variants share one budget; LoRA "matched" is the closest rank to it
    genft_n = rows["genft_dense"]["trainable_params"]
    assert rows["genft_lowrank"]["trainable_params"] == rows["genft_dense_recompute"]["trainable_params"] == genft_n
    # eval: GenFT's cached merged weight gives the merged plain model's logits and tokens
    inf = saved["inference"]
    assert "error" not in inf, inf
    assert inf["max_abs_logit_diff"] < 1e-4
    assert inf["same_greedy_tokens"]
    assert len(inf["genft_eval"]["generated"]) == 3


def test_speed_memory_rejects_bad_args():
    with pytest.raises(SystemExit):
        speed_memory.parse_args(["--variants", "lora_r16,nope"])
    with pytest.raises(SystemExit):
        speed_memory.parse_args(["--tokens", "100", "--seq-len", "32"])


def test_quality_smoke(tmp_path):
    out = tmp_path / "quality.json"
    result = quality.main(
        [
            "--model", "tiny", "--data", "synthetic", "--max-steps", "2", "--seeds", "0,1",
            "--train-examples", "16", "--eval-examples", "8", "--batch-size", "4",
            "--shared-dim", "8", "--specific-dim", "2", "--out", str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["complete"] is True
    assert list(saved["summary"]) == list(quality.METHODS)
    attn, mlp = _models.parse_targets("q,v")
    budget = _models.genft_param_count(quality.TINY_SHAPE, attn, mlp, GenFTConfig(shared_dim=8, specific_dim=2))
    summary = result["summary"]
    assert summary["genft"]["trainable_params"] == budget
    assert summary["lora_latent"]["method"]["rank"] == 10
    for name in ("lora", "dora", "wegeft"):  # matched budgets
        assert abs(summary[name]["trainable_params"] - budget) / budget < 0.35, name
    for name, runs in result["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert math.isfinite(r["loss"]) and r["ppl"] == pytest.approx(math.exp(r["loss"]))
        losses = [r["loss"] for r in runs]
        assert summary[name]["loss"]["mean"] == pytest.approx(sum(losses) / 2)
        assert all(len(r["train_losses"]) == 2 for r in runs)
    # the markdown table lists every method, and the loss-curve plot is a PNG
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in quality.METHODS)
    assert "incomplete" not in table
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_eval_is_token_weighted_cross_entropy():
    """evaluate() equals a cross-entropy computed here over all answer tokens at once."""
    args = quality.parse_args(["--model", "tiny", "--data", "synthetic", "--batch-size", "3"])
    torch.manual_seed(0)
    model = _models.build_base(quality.TINY_SHAPE)
    data = quality.synthetic_examples(7, vocab=quality.TINY_SHAPE.vocab_size, seed=3)
    loss_fn = quality.CEWithChunkedOutputLoss()
    model.set_num_output_chunks(loss_fn.num_output_chunks)
    got = quality.evaluate(model, data, args, 0, loss_fn, torch.device("cpu"))
    model.set_num_output_chunks(0)
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in data:
            tokens = torch.tensor([ex["tokens"]])
            labels = torch.tensor(ex["labels"][1:])
            logits = model(tokens)[0, :-1]
            keep = labels != -100
            total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)


def test_quality_rejects_bad_args():
    with pytest.raises(SystemExit):
        quality.parse_args(["--methods", "genft,nope"])
    with pytest.raises(SystemExit):
        quality.parse_args(["--lr", "genft"])


def test_generator_passes_counts(capsys):
    """LoRA touches W0 twice (forward, and backward for the input's gradient); the
    low-rank GenFT path adds exactly the grad-free reads of W0 in its two W0 @ D.T
    products (forward and the D1 gradient); the dense paths form (out, in) tensors, and
    recomputation costs extra passes but never fewer than the dense path."""
    rows = generator_passes.main(["--dim", "64", "--tokens", "8"])
    assert rows["lora_r16"]["passes"] == 2
    assert rows["genft_lowrank"]["passes"] == 2 + 2
    assert rows["genft_dense"]["passes"] > rows["genft_lowrank"]["passes"]
    assert rows["genft_dense_recompute"]["passes"] > rows["genft_dense"]["passes"]
    # fused: 3 torch reads (x @ W.T, g @ W, W0 @ D1.T), the g.T @ x GEMM's write, and the
    # kernels' 2 + 2 (build W; rebuild it, with dD1 from the same read of W0) + 1 (read dLoss/dF)
    assert rows["genft_dense_fused"]["passes"] == 9
    assert "| genft_dense |" in capsys.readouterr().out


def test_sweep_points_and_a_tiny_run(tmp_path):
    """sweep.py's point syntax (what benchmarks/README's 'Defaults' tables name) and a run."""
    p = sweep.parse_point("genft a=4 b=2 ratio=1 scaling=0.25 act=tanh/gelu lr=1e-2")
    m = sweep.point_method(p, "x")
    assert (m.genft.shared_dim, m.genft.specific_dim, m.genft.act_in, m.genft.act_out, m.genft.scaling) == (4, 2, "tanh", "gelu", 0.25)
    lora = sweep.point_method(sweep.parse_point("lora r=8 alpha=16 lr=3e-4"), "y")
    assert (lora.kind, lora.rank, lora.alpha) == ("lora", 8, 16.0)
    for bad, msg in (("genft a=4", "needs lr"), ("adam lr=1", "kind must be one of"), ("lora q=3 lr=1", "KEY=VALUE")):
        with pytest.raises(ValueError, match=msg):
            sweep.parse_point(bad)
    out = tmp_path / "s.json"
    result = sweep.main(["--model", "tiny", "--data", "synthetic", "--max-steps", "2", "--seeds", "0",
                         "--point", "genft a=2 b=2 lr=1e-2", "--point", "lora r=2 lr=1e-3", "--out", str(out)])
    assert result["complete"] and {r["point"] for r in result["summary"]} == {"genft a=2 b=2 lr=1e-2", "lora r=2 lr=1e-3"}
    assert json.loads(out.read_text())["complete"] and out.with_suffix(".md").is_file()
