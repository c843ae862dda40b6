"""GenFT vs LoRA vs WeGeFT vs linear probing vs full fine-tuning on real images, on two CPU cores.

1. Pretrain a tiny ViT (64 wide, 4 layers) from scratch on Fashion-MNIST classes 0-4
   (T-shirt/top, Trouser, Pullover, Dress, Coat) with the image recipe; it saves a
   merged Hugging Face ViT.
2. Adapt it to the other five classes (Sandal, Shirt, Sneaker, Bag, Ankle boot) from
   100 images per class (few-shot, in the spirit of VTAB-1K) with each method, the
   same recipe and budget. GenFT (q, v; a=8, b=4), LoRA (q, v; rank 6) and WeGeFT
   (q, v; rank 24, tied across layers) train the same number of adapter parameters.
   Each method's learning rate is picked on a held-out validation set of 100 images
   per class; the picked run's accuracy on all 5000 test images of those classes is
   reported.

Data: the Debian package ``dataset-fashion-mnist`` (``apt-get install
dataset-fashion-mnist``; ``make data-packages`` does it), read from its IDX files.

    python demos/fashion_mnist/run_demo.py            # a few minutes on 2 idle cores
    python demos/fashion_mnist/run_demo.py --quick    # smaller (a smoke test)
    python demos/fashion_mnist/run_demo.py --threads 1   # on cores shared with other jobs

Prints the accuracy table and writes it to ``demos/fashion_mnist/RESULTS.md``
(``--results`` to change).
"""

import argparse
import gzip
import importlib.util
import os
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECIPE = ROOT / "recipes" / "genft_finetune_image_single_device.py"
BASE_CONFIG = ROOT / "configs" / "vit" / "tiny_genft_cpu.yaml"
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PRETRAIN_CLASSES = [0, 1, 2, 3, 4]
TASK_CLASSES = [5, 6, 7, 8, 9]
MEAN, STD = [0.286], [0.353]  # Fashion-MNIST pixel statistics


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(data_dir: Path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    missing = [n for pair in files.values() for n in pair if not (data_dir / n).is_file()]
    if missing:
        raise SystemExit(
            f"Fashion-MNIST not found in {data_dir} (missing {missing}). Install it with\n"
            "  sudo apt-get install dataset-fashion-mnist    (or: make data-packages)"
        )
    return {split: (read_idx(data_dir / i), read_idx(data_dir / l)) for split, (i, l) in files.items()}


def pick(images, labels, classes: Sequence[int], per_class: Optional[int], rng, exclude=None):
    """Up to ``per_class`` random rows of each class (all when None), relabelled 0..k-1;
    also returns the chosen row indices."""
    rows: List[int] = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if exclude is not None:
            idx = np.setdiff1d(idx, exclude)
        rows.extend(idx if per_class is None else rng.choice(idx, per_class, replace=False))
    rows = np.array(sorted(rows))
    remap = {c: i for i, c in enumerate(classes)}
    return images[rows], np.array([remap[int(v)] for v in labels[rows]]), rows


def write_dataset(path: Path, images: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> str:
    """Save PNG-encoded images + class labels as a ``datasets`` directory."""
    import datasets
    from PIL import Image

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[NAMES[c] for c in classes])}
    )
    data = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in images], "label": [int(v) for v in labels]},
        features=features,
    )
    data.save_to_disk(str(path))
    return str(path)


def load_recipe():
    spec = importlib.util.spec_from_file_location("genft_finetune_image_single_device", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dataset_cfg(source: str, *, train: bool) -> Dict:
    cfg = {
        "_component_": "genft_tune.datasets._image.image_classification_dataset",
        "source": source,
        "data_dir": None,
        "split": "train",
        "num_classes": 5,
        "image_size": 28,
        "num_channels": 1,
        "mean": MEAN,
        "std": STD,
    }
    if train:  # pad-and-crop style jitter (resize to 32, random 28 crop) and flips
        cfg.update(resize_size=32, random_crop=True, hflip=True)
    else:
        cfg.update(resize_size=32)
    return cfg


def run_recipe(recipe, out: Path, *, model: Dict, train: str, evaluate: str, trainable, lr: float,
               epochs: int, batch_size: int, checkpoint: Optional[str], warmup: int, weight_decay: float,
               save_merged: bool = False):
    """Train one model with the image recipe; returns the finished recipe (its model and
    ``eval_results``) and the wall time."""
    cfg = OmegaConf.load(BASE_CONFIG)
    overrides = {
        "output_dir": str(out),
        "data_dir": "unused",
        "num_classes": 5,
        "image_size": 28,
        "num_channels": 1,
        "model": model,
        "checkpoint": {"path": checkpoint, "format": "hf", "reset_head": True},
        "trainable_modules": trainable,
        "dataset": dataset_cfg(train, train=True),
        "eval_dataset": dataset_cfg(evaluate, train=False),
        "batch_size": batch_size,
        "eval_batch_size": 500,
        "epochs": epochs,
        "eval_every_n_epochs": epochs,
        "optimizer": {"lr": lr, "weight_decay": weight_decay},
        "lr_scheduler": {"num_warmup_steps": warmup},
        "log_every_n_steps": 50,
        "save_merged": save_merged,
    }
    for key, value in overrides.items():  # replace whole components, merge option groups
        OmegaConf.update(cfg, key, value, merge=key not in ("model", "dataset", "eval_dataset"))
    t0 = time.perf_counter()
    result = recipe.run(cfg)
    return result, time.perf_counter() - t0


def evaluate_on(result, source: str) -> Dict:
    """Top-1 of a finished run's model on another split, with the recipe's own evaluation."""
    from torchtune import config as tt_config

    data = tt_config.instantiate(OmegaConf.create(dataset_cfg(source, train=False)))
    result._eval_dataloader = result._setup_dataloader(
        data, batch_size=500, shuffle=False, drop_last=False, num_workers=0
    )
    return result.evaluate()


def param_counts(result) -> Tuple[int, int]:
    """(trained parameters outside the head, head parameters)."""
    model = result._model
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters())
    return trained - head, head


def tiny(component: str, **extra) -> Dict:
    return {"_component_": component, "num_classes": 5, "image_size": 28, "patch_size": 4, "num_channels": 1, **extra}


METHODS = {
    # name: (model config, trainable modules)
    "GenFT (q,v; a=8, b=4)": (
        tiny(
            "genft_tune.models.vit.vit_tiny_genft",
            genft_attn_modules=["q_proj", "v_proj"],
            shared_dim=8,
            specific_dim=4,
            ratio=1.4,
            scaling=1.0,
            act_in="identity",
            act_out="leaky_relu",
        ),
        ["head"],
    ),
    "LoRA (q,v; r=6)": (
        tiny("genft_tune.models.vit.vit_tiny_lora", lora_attn_modules=["q_proj", "v_proj"], lora_rank=6, lora_alpha=12),
        ["head"],
    ),
    "WeGeFT (q,v; r=24, tied)": (
        tiny("genft_tune.models.vit.vit_tiny_wegeft", wegeft_attn_modules=["q_proj", "v_proj"], wegeft_rank=24,
             wegeft_alpha=48),
        ["head"],
    ),
    "Linear probe": (tiny("genft_tune.models.vit.vit_tiny"), ["head"]),
    "Full fine-tuning": (tiny("genft_tune.models.vit.vit_tiny"), "all"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="smaller pretraining and sweep (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1),
        help="torch CPU threads (use 1 on a machine shared with other jobs)",
    )
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    raw = load_fashion_mnist(args.data_dir)
    rng = np.random.default_rng(args.seed)
    quick = args.quick
    pre_per_class = 400 if quick else 600
    pre_epochs = 2 if quick else 3
    shots = 100
    ft_epochs = 6 if quick else 10
    lrs = [1e-2] if quick else [3e-3, 1e-2, 3e-2]

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="genft_fmnist_"))
    work.mkdir(parents=True, exist_ok=True)
    (tr_x, tr_y), (te_x, te_y) = raw["train"], raw["test"]
    px, py, _ = pick(tr_x, tr_y, PRETRAIN_CLASSES, pre_per_class, rng)
    ptx, pty, _ = pick(te_x, te_y, PRETRAIN_CLASSES, 200, rng)
    fx, fy, used = pick(tr_x, tr_y, TASK_CLASSES, shots, rng)
    vx, vy, _ = pick(tr_x, tr_y, TASK_CLASSES, shots, rng, exclude=used)
    tx, ty, _ = pick(te_x, te_y, TASK_CLASSES, 200 if quick else None, rng)
    data = {
        "pre_train": write_dataset(work / "data" / "pre_train", px, py, PRETRAIN_CLASSES),
        "pre_test": write_dataset(work / "data" / "pre_test", ptx, pty, PRETRAIN_CLASSES),
        "task_train": write_dataset(work / "data" / "task_train", fx, fy, TASK_CLASSES),
        "task_val": write_dataset(work / "data" / "task_val", vx, vy, TASK_CLASSES),
        "task_test": write_dataset(work / "data" / "task_test", tx, ty, TASK_CLASSES),
    }
    recipe = load_recipe()

    print(f"== pretraining a tiny ViT on classes {[NAMES[c] for c in PRETRAIN_CLASSES]} ({len(px)} images)")
    result, pre_time = run_recipe(
        recipe, work / "pretrain", model=tiny("genft_tune.models.vit.vit_tiny"), train=data["pre_train"],
        evaluate=data["pre_test"], trainable="all", lr=2e-3, epochs=pre_epochs, batch_size=64, checkpoint=None,
        warmup=50, weight_decay=0.05, save_merged=True,
    )
    pre = result.eval_results[-1]
    del result
    base = str(work / "pretrain" / "hf_model")
    print(f"   pretraining top-1 on its own test classes: {pre['top1']:.4f} ({pre_time:.0f} s)")

    rows = []
    for name, (model, trainable) in METHODS.items():
        sweep, runs, train_secs = {}, {}, {}
        for lr in lrs:
            result, secs = run_recipe(
                recipe, work / "sweep" / f"{name.split()[0]}_{lr:g}", model=model, train=data["task_train"],
                evaluate=data["task_val"], trainable=trainable, lr=lr, epochs=ft_epochs, batch_size=25,
                checkpoint=base, warmup=10, weight_decay=1e-4,
            )
            sweep[lr], runs[lr], train_secs[lr] = result.eval_results[-1]["top1"], result, secs
            print(f"   {name:24s} lr {lr:g}: validation top-1 {sweep[lr]:.4f} ({secs:.0f} s)")
        best = max(lrs, key=lambda lr: (sweep[lr], -lr))
        test = evaluate_on(runs[best], data["task_test"])  # the picked run, on the test split
        n_adapter, n_head = param_counts(runs[best])
        print(f"   {name:24s} picked lr {best:g}: test top-1 {test['top1']:.4f}")
        rows.append((name, n_adapter, n_head, best, sweep[best], test["top1"], test["correct"], test["total"],
                     train_secs[best]))
        del runs

    total = time.perf_counter() - t_start
    lines = [
        "| method | adapter / backbone params trained | head params | lr (picked on val) | val top-1 "
        "| test top-1 | train time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, n_adapter, n_head, lr, val, top1, correct, count, secs in rows:
        lines.append(
            f"| {name} | {n_adapter:,} | {n_head:,} | {lr:g} | {val:.4f} | {top1:.4f} ({correct}/{count}) "
            f"| {secs:.0f} s |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\ntotal time {total:.0f} s")

    text = f"""# Fashion-MNIST demo: GenFT vs LoRA vs WeGeFT vs linear probing vs full fine-tuning

Produced by `python demos/fashion_mnist/run_demo.py{' --quick' if quick else ''}` (seed {args.seed}) on
{platform.machine()} with {torch.get_num_threads()} CPU threads in {total:.0f} s.

A tiny ViT (64 wide, 4 layers, 4 heads, patch 4 on 28x28 grayscale) was pretrained from scratch on
Fashion-MNIST classes {', '.join(NAMES[c] for c in PRETRAIN_CLASSES)} ({len(px)} training images,
{pre_epochs} epochs; top-1 {pre['top1']:.4f} on {pre['total']} test images of those classes), saved as a
merged Hugging Face ViT, and adapted by each method to the other five classes
({', '.join(NAMES[c] for c in TASK_CLASSES)}) from {shots} training images per class, {ft_epochs} epochs,
batch 25, AdamW (weight decay 1e-4), warmup + cosine, zero-initialised head. The learning rate of
each method was picked from {{{', '.join(f'{lr:g}' for lr in lrs)}}} on a disjoint validation set of
{shots} images per class; test top-1 is on {rows[0][7]} test images of the new classes.

{table}

GenFT, LoRA and WeGeFT train the same number of adapter parameters (GenFT: the shared P/Q of the
64x64 generator, 4·a·64, plus per-layer A/B, 2·b·64 for each of q and v; LoRA: 2·r·64 per adapted
layer; WeGeFT: one (phi, psi) pair of 2·r·64 per module type, tied across layers, as its authors do).
The test accuracy is that of the run whose learning rate was picked (no retraining). "train time" is
that run's wall time (training and validation), on CPU cores shared with other jobs, so only
roughly comparable. One seed, so differences of a point or two are within noise.
"""
    edge = [name for name, *_rest in rows if _rest[2] == max(lrs)]
    if edge and len(lrs) > 1:
        text += (
            f"\nPicked at the largest learning rate tried ({max(lrs):g}), so possibly better with a larger "
            f"one: {', '.join(edge)}.\n"
        )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_name(f".{args.results.name}.tmp")
    tmp.write_text(text)
    tmp.replace(args.results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
