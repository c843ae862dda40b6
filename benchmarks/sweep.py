# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Hyperparameter sweeps on the quality benchmark's tasks: how the shipped defaults were chosen.

Each point is one adapter setting with one learning rate, written as a short string::

    genft a=4 b=4 ratio=0.5 scaling=0.05 act=gelu/gelu lr=1e-2
    lora r=8 alpha=16 lr=3e-4
    dora r=7 alpha=14 lr=1e-3

Every point trains from the same base on the same batches as ``benchmarks/quality.py``
(its model, data, training loop and evaluation are used as they are; every option of
``quality.py`` but ``--methods``/``--lr`` applies here too), and the table reports the
held-out loss (and exact match, for tasks that have it), mean ± std over ``--seeds``,
sorted best first. Named grids (``--grid``) are the ones whose tables are in
``benchmarks/README.md``; ``--point`` adds points by hand.

Examples::

    python benchmarks/sweep.py --grid scale --seeds 0 --out benchmarks/results/sweep_scale.json
    python benchmarks/sweep.py --point "genft a=4 b=4 lr=3e-3" --point "lora r=8 alpha=16 lr=3e-4" --seeds 0,1,2
    python benchmarks/sweep.py --model tiny --data synthetic --max-steps 5 --point "genft a=2 b=2 lr=1e-2"
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402
from _models import Method, parse_targets, get_shape  # noqa: E402

from torchtune.modules.loss import CEWithChunkedOutputLoss  # noqa: E402

from genft_tune.modules import GenFTConfig  # noqa: E402

# torchtune's shipped LoRA recipe setting (lora_finetune_single_device configs: r=8, alpha=16, lr=3e-4)
TORCHTUNE_LORA = "lora r=8 alpha=16 lr=3e-4"

GRIDS: Dict[str, List[str]] = {
    # (ratio, scaling, lr) for the shipped architecture a=4, b=4, gelu/gelu
    "scale": [
        *(f"genft a=4 b=4 ratio=0.5 scaling=0.05 lr={lr}" for lr in ("3e-3", "1e-2", "3e-2")),
        *(f"genft a=4 b=4 ratio=1 scaling=0.05 lr={lr}" for lr in ("1e-2",)),
        *(f"genft a=4 b=4 ratio=1 scaling=0.25 lr={lr}" for lr in ("1e-3", "3e-3", "1e-2")),
        *(f"genft a=4 b=4 ratio=1 scaling=1 lr={lr}" for lr in ("3e-4", "1e-3", "3e-3")),
    ],
    # the scale grid's best corner, extended (run after "scale" pointed there)
    "scale2": [
        "genft a=4 b=4 ratio=1 scaling=0.25 lr=3e-2",
        "genft a=4 b=4 ratio=1 scaling=1 lr=1e-2",
        "genft a=4 b=4 ratio=0.5 scaling=0.25 lr=1e-2",
        "genft a=4 b=4 ratio=2 scaling=0.25 lr=1e-2",
    ],
    # (a, b) at budgets <= LoRA r=8's and the activation pairs, at the best scale point
    "arch": [
        *(f"genft a={a} b={b} ratio=1 scaling=0.25 lr=1e-2" for a, b in ((32, 4), (64, 2), (8, 5))),
        *(
            f"genft a=4 b=4 ratio=1 scaling=0.25 lr=1e-2 act={act}"
            for act in ("identity/identity", "tanh/tanh", "identity/leaky_relu", "gelu/identity", "relu/relu")
        ),
    ],
    # the chosen default next to torchtune's shipped LoRA setting (more seeds; both tasks)
    "finalists": [
        "genft a=4 b=4 ratio=1 scaling=0.25 lr=1e-2",
        TORCHTUNE_LORA,
    ],
    # LoRA and DoRA over the same learning-rate grid (r matched to the LoRA r=8 budget)
    "lora": [
        *(f"lora r=8 alpha=16 lr={lr}" for lr in ("3e-4", "1e-3", "3e-3", "1e-2")),
        *(f"dora r=7 alpha=14 lr={lr}" for lr in ("3e-4", "1e-3", "3e-3", "1e-2")),
    ],
}


def parse_point(text: str) -> Dict:
    """``"genft a=4 b=4 lr=1e-2"`` -> ``{"kind": "genft", "lr": 0.01, ...}``.

    Raises:
        ValueError: on an unknown kind or key, or a value of the wrong type.
    """
    kind, *items = text.split()
    keys = {
        "genft": {"a", "b", "ratio", "scaling", "act", "lr", "bias"},
        "lora": {"r", "alpha", "lr"},
        "dora": {"r", "alpha", "lr"},
    }
    if kind not in keys:
        raise ValueError(f"point {text!r}: kind must be one of {list(keys)}, got {kind!r}")
    point: Dict = {"kind": kind, "text": text}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in keys[kind]:
            raise ValueError(f"point {text!r}: items must be KEY=VALUE with KEY in {sorted(keys[kind])}, got {item!r}")
        point[key] = value
    if "lr" not in point:
        raise ValueError(f"point {text!r} needs lr=VALUE")
    return point


def _genft_method(point: Dict, name: str) -> Method:
    act_in, _, act_out = point.get("act", "gelu/gelu").partition("/")
    cfg = GenFTConfig(
        shared_dim=int(point.get("a", GenFTConfig.shared_dim)),
        specific_dim=int(point.get("b", GenFTConfig.specific_dim)),
        ratio=float(point.get("ratio", GenFTConfig.ratio)),
        scaling=float(point.get("scaling", GenFTConfig.scaling)),
        act_in=act_in,
        act_out=act_out or act_in,
        generator_bias=point.get("bias", "false").lower() in ("1", "true"),
    )
    return Method(name, "genft", genft=cfg)


def _lora_method(point: Dict, name: str) -> Method:
    rank = int(point.get("r", 8))
    return Method(name, point["kind"], rank=rank, alpha=float(point.get("alpha", 2 * rank)))


_POINT_METHODS = {"genft": _genft_method, "lora": _lora_method, "dora": _lora_method}


def point_method(point: Dict, name: str) -> Method:
    """The benchmark :class:`Method` of a parsed point."""
    return _POINT_METHODS[point["kind"]](point, name)


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("--grid", action="append", default=[], choices=list(GRIDS), help="a named grid (repeatable)")
    p.add_argument("--point", action="append", default=[], help="one point, e.g. 'genft a=4 b=4 lr=1e-2' (repeatable)")
    p.add_argument("-h", "--help", action="store_true")
    own, rest = p.parse_known_args(argv)
    if own.help:
        p.print_help()
        print("\nEvery other option is quality.py's:")
        quality.parse_args(["--help"])
    args = quality.parse_args(rest)
    texts = [t for g in own.grid for t in GRIDS[g]] + own.point
    if not texts:
        p.error("give at least one --grid or --point")
    try:
        args.points = [parse_point(t) for t in dict.fromkeys(texts)]  # dedup, keep order
        args.point_methods = [point_method(pt, f"p{i}") for i, pt in enumerate(args.points)]
    except ValueError as e:
        p.error(str(e))
    return args


def format_table(base_eval: Dict, rows: List[Dict]) -> str:
    em = "accuracy" in base_eval
    head = "| point | trainable | seeds | held-out loss |" + (" exact match % |" if em else "") + " train s / run |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    base = f"| base (no fine-tuning) | 0 | - | {base_eval['loss']:.4f} |"
    lines.append(base + (f" {100 * base_eval['accuracy']:.1f} |" if em else "") + " - |")
    for r in sorted(rows, key=lambda r: r["loss"]["mean"]):
        row = f"| `{r['point']}` | {r['trainable_params']:,} | {len(r['seeds'])} | "
        row += f"{r['loss']['mean']:.4f} ± {r['loss']['std']:.4f} |"
        if em:
            row += f" {100 * r['accuracy']['mean']:.1f} ± {100 * r['accuracy']['std']:.1f} |"
        lines.append(row + f" {r['train_s']['mean']:.0f} |")
    return "\n".join(lines)


def summarize(points: List[Dict], runs: Dict[str, List[Dict]]) -> List[Dict]:
    rows = []
    for pt in points:
        rs = runs.get(pt["text"], [])
        if not rs:
            continue
        row = {
            "point": pt["text"],
            "trainable_params": rs[0]["trainable_params"],
            "seeds": [r["seed"] for r in rs],
            "loss": quality._mean_std([r["loss"] for r in rs]),
            "train_s": quality._mean_std([r["train_s"] for r in rs]),
        }
        if "accuracy" in rs[0]:
            row["accuracy"] = quality._mean_std([r["accuracy"] for r in rs])
        rows.append(row)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    device, dtype = torch.device(args.device), quality.DTYPES[args.dtype]
    shape = quality.TINY_SHAPE if args.model == "tiny" else get_shape("smollm2_135m")
    attn_modules, apply_to_mlp = parse_targets(args.targets)
    t0 = time.perf_counter()
    base = quality.load_base(args, shape, dtype, device)
    train, val, pad_id, exact = quality.load_data(args, shape.vocab_size)
    loss_fn = CEWithChunkedOutputLoss()
    base.set_num_output_chunks(loss_fn.num_output_chunks)
    base_eval = quality.evaluate(base, val, args, pad_id, loss_fn, device)
    base_eval.update(quality.score_exact(base, exact, dtype))
    print(f"base: held-out loss {base_eval['loss']:.4f}, setup {time.perf_counter() - t0:.0f} s", flush=True)
    runs: Dict[str, List[Dict]] = {}
    result: Dict = {
        "args": {k: v for k, v in vars(args).items() if k != "point_methods"},
        "device": quality.cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "base": base_eval,
        "runs": runs,
    }
    out = Path(args.out) if args.out else None
    for seed in args.seed_list:  # seed-major: an interrupted sweep has every point at the same seeds
        for pt, method in zip(args.points, args.point_methods):
            args.lrs = {**args.lrs, method.name: float(pt["lr"])}
            r = quality.train_one(base, method, args, train, val, pad_id, attn_modules, apply_to_mlp, seed, device, exact)
            r["method"] = method.describe()
            runs.setdefault(pt["text"], []).append(r)
            em = f", exact match {r['accuracy']:.3f}" if "accuracy" in r else ""
            print(
                f"[{pt['text']}] seed {seed}: held-out loss {r['loss']:.4f}{em}, train loss "
                f"{r['final_train_loss']:.4f}, {r['trainable_params']:,} params, {r['train_s']:.0f} s",
                flush=True,
            )
            rows = summarize(args.points, runs)
            result.update(summary=rows, table=format_table(base_eval, rows), total_s=time.perf_counter() - t0)
            if out:
                _write(out, result, args)
    result["complete"] = True
    if out:
        _write(out, result, args)
    print(result["table"])
    return result


def _write(out: Path, result: Dict, args) -> None:
    heading = quality._heading(args, result).replace("targets", "sweep; targets")
    quality.write_json(str(out), result)
    quality.write_report(out.with_suffix(".md"), result, heading)


if __name__ == "__main__":
    main()
