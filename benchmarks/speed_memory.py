# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Speed and memory of GenFT against torchtune's LoRA on a Llama-shaped decoder.

One run measures, for the same shape and the same adapted projections:

- ``base``: the frozen base model, the floor (forward + backward through every layer
  to the embeddings, no weight gradient, no optimizer);
- ``lora_r16``: torchtune ``LoRALinear``, rank 16;
- ``lora_matched``: LoRA at GenFT's trainable-parameter count;
- ``dora_r16``: torchtune ``DoRALinear``, rank 16;
- ``genft_dense_recompute`` / ``genft_dense``: GenFT with the default gelu/gelu
  generator (merged forward, the eager generator: ``fused="never"``), ``recompute`` on / off;
- ``genft_dense_fused``: the same generator through the fused Triton kernels
  (``fused="always"``); on CPU they run in Triton's interpreter (set for that variant
  only), which checks the code path but says nothing about speed;
- ``genft_lowrank``: GenFT with ``act_out="identity"`` (the low-rank path);
- ``wegeft``: WeGeFT (shared ``phi, psi`` per module type).

A training step is forward + cross-entropy + backward + AdamW; the reported time is
the median over ``--steps`` steps after ``--warmup`` steps (``torch.cuda.synchronize``
around each step on GPU). Peak memory is ``torch.cuda.max_memory_allocated`` on GPU
(everything: weights, activations, gradients, optimizer state); on CPU it is the peak
resident set size above the level right after building the model, sampled every
millisecond by a background thread reading ``/proc/self/statm`` (freed memory is handed
back to the OS with ``malloc_trim`` between variants), so CPU numbers are approximate.

Then, for inference: forward-only tokens/s of the trained GenFT model in eval mode
(its cached merged weight) against the plain model loaded with the merged state dict,
and a greedy token-by-token decode with torchtune's KV cache (``setup_caches``) for both.

Examples::

    python benchmarks/speed_memory.py                      # tiny shape on CPU, < 1 min
    python benchmarks/speed_memory.py --device cuda --dtype bf16 --shape llama3_2_1b \\
        --tokens 8192 --seq-len 2048 --out benchmarks/results/speed_1b_h100.json
    python benchmarks/speed_memory.py --device cuda --dtype bf16 --shape llama2_7b \\
        --layers 8 --tokens 2048 --seq-len 2048 --out benchmarks/results/speed_7b_h100.json
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import (  # noqa: E402
    apply_method,
    build_base,
    genft_param_count,
    get_shape,
    matched_lora_rank,
    Method,
    parse_targets,
    release_freed_memory,
    SHAPES,
)

from torchtune.generation import generate  # noqa: E402
from torchtune.modules import delete_kv_caches  # noqa: E402
from torchtune.training import set_default_dtype  # noqa: E402

from genft_tune._fs import temp_file  # noqa: E402
from genft_tune.modules import GenFTConfig, merge_genft_state_dict, WeGeFTConfig
from genft_tune.modules.genft import get_genft_modules

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = (
    "base",
    "lora_r16",
    "lora_matched",
    "dora_r16",
    "genft_dense_recompute",
    "genft_dense",
    "genft_dense_fused",
    "genft_lowrank",
    "wegeft",
)
REFERENCE = "lora_r16"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="tiny", choices=list(SHAPES))
    p.add_argument("--layers", type=int, default=None, help="truncate the model to N layers")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp32 on cpu, bf16 on cuda")
    p.add_argument("--tokens", type=int, default=512, help="tokens per training step (batch * seq-len)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: min(tokens, 256))")
    p.add_argument("--targets", default="q,v", help="comma list of q,k,v,o,mlp, or 'all'")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {list(VARIANTS)}")
    p.add_argument("--rank", type=int, default=16, help="LoRA/DoRA rank of the *_r16 variants")
    p.add_argument("--shared-dim", type=int, default=32, help="GenFT a")
    p.add_argument("--specific-dim", type=int, default=4, help="GenFT b")
    p.add_argument("--wegeft-rank", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-steps", type=int, default=3, help="timed eval forwards (0: skip inference)")
    p.add_argument("--decode-tokens", type=int, default=16, help="greedy decode length (0: skip)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="torch.compile each model (GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.seq_len is None:
        args.seq_len = min(args.tokens, 256)
    if args.tokens % args.seq_len:
        p.error(f"--tokens ({args.tokens}) must be a multiple of --seq-len ({args.seq_len})")
    for v in args.variants.split(","):
        if v not in VARIANTS:
            p.error(f"--variants must be a comma list from {list(VARIANTS)}, got {v!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return args


# ---- measurement helpers ------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or sampled RSS on CPU.

    ``peak`` is the absolute peak (CUDA: bytes allocated; CPU: RSS) and ``delta`` the
    peak above the level at entry.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.001):
        self.device, self.interval_s = device, interval_s
        self.peak = self.start = 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
        return False

    @property
    def delta(self) -> int:
        return self.peak - self.start


def _timed(fn: Callable[[], None], device: torch.device, *, steps: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _timed_alternately(
    fns: Dict[str, Callable[[], None]], device: torch.device, *, steps: int, warmup: int
) -> Dict[str, List[float]]:
    """Like :func:`_timed` for several functions, run in turn within each repetition."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for rep in range(warmup + steps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


# ---- variants -----------------------------------------------------------------------


def genft_config(args, **overrides) -> GenFTConfig:
    kwargs = dict(shared_dim=args.shared_dim, specific_dim=args.specific_dim)
    kwargs.update(overrides)
    return GenFTConfig(**kwargs)


def make_methods(args, shape, attn_modules, apply_to_mlp) -> Dict[str, Method]:
    dense = genft_config(args)
    budget = genft_param_count(shape, attn_modules, apply_to_mlp, dense)
    matched = matched_lora_rank(budget, shape, attn_modules, apply_to_mlp)
    r = args.rank
    methods = {
        "base": Method("base", "base"),
        "lora_r16": Method("lora_r16", "lora", rank=r, alpha=2.0 * r),
        "lora_matched": Method("lora_matched", "lora", rank=matched, alpha=2.0 * matched),
        "dora_r16": Method("dora_r16", "dora", rank=r, alpha=2.0 * r),
        "genft_dense_recompute": Method(
            "genft_dense_recompute", "genft", genft=genft_config(args, recompute=True, fused="never")
        ),
        "genft_dense": Method("genft_dense", "genft", genft=genft_config(args, recompute=False, fused="never")),
        "genft_dense_fused": Method("genft_dense_fused", "genft", genft=genft_config(args, fused="always")),
        "genft_lowrank": Method("genft_lowrank", "genft", genft=genft_config(args, act_out="identity")),
        "wegeft": Method("wegeft", "wegeft", wegeft=WeGeFTConfig(rank=args.wegeft_rank, alpha=2.0 * args.wegeft_rank)),
    }
    return {k: methods[k] for k in args.variants.split(",")}


def build(shape, method, attn_modules, apply_to_mlp, device, dtype, seed):
    torch.manual_seed(seed)
    with set_default_dtype(dtype), device:
        model = build_base(shape)
        trainable = apply_method(model, method, attn_modules=attn_modules, apply_to_mlp=apply_to_mlp)
    return model, trainable


def _require_input_grad(module, inputs, output):
    # base floor: make the activations need grad so backward runs through every layer
    return output.requires_grad_()


def bench_train(args, shape, name, method, attn_modules, apply_to_mlp, device, dtype):
    model, trainable = build(shape, method, attn_modules, apply_to_mlp, device, dtype, args.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if method.kind == "base":
        model.tok_embeddings.register_forward_hook(_require_input_grad)
    optimizer = torch.optim.AdamW(params, lr=args.lr, fused=device.type == "cuda") if params else None
    fwd = torch.compile(model) if args.compile else model
    batch = args.tokens // args.seq_len
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    tokens = torch.randint(0, shape.vocab_size, (batch, args.seq_len + 1), generator=gen).to(device)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]

    def step():
        logits = fwd(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    release_freed_memory()
    with PeakMemory(device) as mem:
        times = _timed(step, device, steps=args.steps, warmup=args.warmup)
    median = statistics.median(times)
    row = {
        "variant": name,
        "method": method.describe(),
        "trainable_params": trainable,
        "step_s_median": median,
        "step_s_all": times,
        "tokens_per_s": args.tokens / median,
        "peak_mem_bytes": mem.peak,
        "peak_mem_delta_bytes": mem.delta,
    }
    return row, model


@torch.no_grad()
def bench_inference(args, shape, genft_model, attn_modules, apply_to_mlp, device, dtype):
    """Eval forward and greedy decode: GenFT (cached merged weight) vs merged plain model."""
    genft_model.eval()
    config = next(iter(get_genft_modules(genft_model).values())).config
    merged_sd = merge_genft_state_dict(
        genft_model.state_dict(), config=config, target_modules=list(get_genft_modules(genft_model))
    )
    with set_default_dtype(dtype), device:
        plain = build_base(shape)
    plain.load_state_dict(merged_sd)
    plain.eval()
    del merged_sd

    batch = args.tokens // args.seq_len
    gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    tokens = torch.randint(0, shape.vocab_size, (batch, args.seq_len), generator=gen).to(device)
    prompt = tokens[:1, : args.prompt_len]
    models = {"genft_eval": genft_model, "merged_plain": plain}
    logits = {name: model(tokens[:1]).float() for name, model in models.items()}
    out: Dict[str, Dict] = {name: {} for name in models}
    # The two models are timed alternately, rep by rep, so that load on a shared
    # machine hits both alike.
    fwd = _timed_alternately(
        {name: (lambda m=model: m(tokens)) for name, model in models.items()},
        device, steps=args.eval_steps, warmup=1,
    )
    for name, times in fwd.items():
        out[name].update(
            forward_s_median=statistics.median(times),
            forward_tokens_per_s=args.tokens / statistics.median(times),
        )
    if args.decode_tokens > 0:
        for model in models.values():
            with device:  # torchtune allocates the caches on the default device
                model.setup_caches(batch_size=1, dtype=dtype, decoder_max_seq_len=args.prompt_len + args.decode_tokens)

        def decode(model):
            model.reset_caches()
            return generate(model, prompt, max_generated_tokens=args.decode_tokens, temperature=1.0, top_k=1)[0]

        dec = _timed_alternately(
            {name: (lambda m=model: decode(m)) for name, model in models.items()},
            device, steps=max(1, args.eval_steps), warmup=1,
        )
        for name, model in models.items():
            generated = decode(model)
            out[name].update(
                decode_s_median=statistics.median(dec[name]),
                decode_tokens_per_s=args.decode_tokens / statistics.median(dec[name]),
                decode_kv_cache=True,
                generated=generated[0, args.prompt_len :].tolist(),
            )
            delete_kv_caches(model)
    out["max_abs_logit_diff"] = (logits["genft_eval"] - logits["merged_plain"]).abs().max().item()
    if args.decode_tokens > 0:
        out["same_greedy_tokens"] = out["genft_eval"]["generated"] == out["merged_plain"]["generated"]
    del plain
    return out


# ---- report -------------------------------------------------------------------------


def format_table(rows: List[Dict], device: torch.device) -> str:
    ref = next((r for r in rows if r["variant"] == REFERENCE), None)
    mem_key = "peak_mem_bytes" if device.type == "cuda" else "peak_mem_delta_bytes"
    mem_label = "peak GiB" if device.type == "cuda" else "peak RSS delta MiB"
    scale = 2**30 if device.type == "cuda" else 2**20
    header = f"| variant | trainable | step ms | tokens/s | {mem_label} | time / LoRA r16 | mem / LoRA r16 |"
    lines = [header, "|" + "---|" * 7]
    for r in rows:
        t_ratio = f"{r['step_s_median'] / ref['step_s_median']:.2f}x" if ref else "-"
        m_ratio = f"{r[mem_key] / ref[mem_key]:.2f}x" if ref and ref[mem_key] > 0 else "-"
        lines.append(
            f"| {r['variant']} | {r['trainable_params']:,} | {1e3 * r['step_s_median']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r[mem_key] / scale:.2f} | {t_ratio} | {m_ratio} |"
        )
    return "\n".join(lines)


def format_inference(inf: Dict) -> str:
    lines = ["| model | forward tokens/s | decode tokens/s |", "|---|---|---|"]
    for name in ("genft_eval", "merged_plain"):
        r = inf[name]
        dec = f"{r['decode_tokens_per_s']:.1f}" if "decode_tokens_per_s" in r else "-"
        lines.append(f"| {name} | {r['forward_tokens_per_s']:,.0f} | {dec} |")
    lines.append(f"\nmax |logits(genft eval) - logits(merged plain)| = {inf['max_abs_logit_diff']:.3g}")
    if "same_greedy_tokens" in inf:
        lines.append(f"same greedy tokens: {inf['same_greedy_tokens']}")
    return "\n".join(lines)


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


@contextlib.contextmanager
def triton_interpreter(enabled: bool):
    """``TRITON_INTERPRET=1`` inside (the fused kernels' only way to run on CPU tensors)."""
    old = os.environ.get("TRITON_INTERPRET")
    if enabled:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if enabled and old is None:
            del os.environ["TRITON_INTERPRET"]
        elif enabled:
            os.environ["TRITON_INTERPRET"] = old


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    shape = get_shape(args.shape, layers=args.layers, max_seq_len=max(args.seq_len, args.prompt_len + args.decode_tokens))
    attn_modules, apply_to_mlp = parse_targets(args.targets)
    methods = make_methods(args, shape, attn_modules, apply_to_mlp)

    rows, inference = [], None
    for name, method in methods.items():
        with triton_interpreter(name == "genft_dense_fused" and device.type == "cpu"):
            row, model = bench_train(args, shape, name, method, attn_modules, apply_to_mlp, device, dtype)
        rows.append(row)
        print(
            f"{name}: {1e3 * row['step_s_median']:.1f} ms/step, trainable {row['trainable_params']:,}",
            flush=True,
        )
        if name == "genft_dense" and args.eval_steps > 0 and not args.compile:
            try:
                inference = bench_inference(args, shape, model, attn_modules, apply_to_mlp, device, dtype)
            except Exception as e:  # keep the training numbers; report the failure
                inference = {"error": f"{type(e).__name__}: {e}"}
                print(f"inference benchmark failed: {inference['error']}", flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        release_freed_memory()

    result = {
        "args": vars(args),
        "shape": dict(shape.__dict__),
        "targets": {"attn": attn_modules, "mlp": apply_to_mlp},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "memory_measure": "torch.cuda.max_memory_allocated (absolute)" if device.type == "cuda"
        else "sampled peak RSS above the post-build level (approximate)",
        "rows": rows,
        "inference": inference,
    }
    print()
    print(
        f"shape {args.shape} ({shape.num_layers} layers), targets {args.targets}, {args.tokens} tokens/step, "
        f"{args.dtype} on {result['device']}; median of {args.steps} steps after {args.warmup} warmup"
    )
    print(format_table(rows, device))
    if inference is not None and "error" not in inference:
        print()
        print(format_inference(inference))
    if args.out:
        write_json(args.out, result)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
