"""Per-token greedy decode time through Hugging Face PEFT: GenFT and WeGeFT (with and
without the eval cache of their PEFT layers) next to PEFT's own LoRA, on one
transformers Llama built from a config (no download), in one run.

::

    python benchmarks/peft_decode.py                                   # ~1 min on 2 CPU cores
    python benchmarks/peft_decode.py --hidden 1024 --layers 8 --decode-tokens 64 --device cuda

Each variant is ``get_peft_model`` on a copy of the same base (``q_proj``/``v_proj``
unless ``--targets``), its adapter tensors randomised so that it acts; then a greedy
decode of N tokens after the prompt with transformers' KV cache (what ``generate`` does
per step, without its logits processors), each one-token forward timed; a round's
per-token time is the median step. ``--repeats`` rounds, each timing every variant in
turn (a busy machine slows all alike); the table gives the best round (the least
disturbed) and the median round. The cached and uncached variants of a method must decode
the same tokens (the script checks it). Writes ``<out>.json`` and ``<out>.md``.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

VARIANTS = ("base", "lora_r16", "genft", "genft_uncached", "wegeft", "wegeft_uncached")


def _parse(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="benchmarks/results/peft_decode_cpu")
    args = parser.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    if args.decode_tokens < 2:
        parser.error(f"--decode-tokens must be >= 2, got {args.decode_tokens}")
    return args


def _base(args, dtype):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=args.prompt_len + args.decode_tokens + 8,
    )
    return transformers.LlamaForCausalLM(config).to(device=args.device, dtype=dtype).eval()


def _build(variant: str, args, dtype):
    """The PEFT model of ``variant`` (``base``: the plain model)."""
    import genft_tune.peft as genft_peft
    from peft import get_peft_model, LoraConfig

    base = _base(args, dtype)
    if variant == "base":
        return base
    targets = args.targets.split(",")
    method = variant.removesuffix("_uncached")
    config = {
        "lora_r16": lambda: LoraConfig(r=16, lora_alpha=16, target_modules=targets),
        "genft": lambda: genft_peft.GenFTPeftConfig(target_modules=targets),
        "wegeft": lambda: genft_peft.WeGeFTPeftConfig(target_modules=targets),
    }[method]()
    model = get_peft_model(base, config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every adapter acts (zero-initialised halves too)
        for name, p in model.named_parameters():
            if any(m in name for m in ("lora_", "genft_", "wegeft_")):
                p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.02)
    if variant.endswith("_uncached"):
        for module in model.modules():
            if hasattr(module, "cache_updates"):
                module.cache_updates = False
    return model


class _Decoder:
    """One variant's model, a prompt, and timed greedy decodes."""

    def __init__(self, variant: str, args, dtype):
        self.variant, self.args = variant, args
        self.model = _build(variant, args, dtype)
        prompt = torch.randint(0, args.vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(2))
        self.prompt = prompt.to(args.device)
        self.per_token: List[float] = []
        self.tokens: List[int] = []
        self.decode(2)  # warm-up (and the caches' first build, which a served model pays once)

    def decode(self, n: int) -> List[float]:
        """Greedy decode of ``n`` tokens after the prompt with the KV cache; each step's time."""
        sync = torch.cuda.synchronize if self.args.device.startswith("cuda") else (lambda: None)
        steps, tokens = [], []
        with torch.no_grad():
            out = self.model(input_ids=self.prompt, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            for _ in range(n):
                tokens.append(int(token))
                sync()
                start = time.perf_counter()
                out = self.model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                sync()
                steps.append(time.perf_counter() - start)
                token = out.logits[:, -1:].argmax(-1)
        self.tokens = tokens
        return steps

    def time_once(self) -> None:
        self.per_token.append(statistics.median(self.decode(self.args.decode_tokens)))

    def row(self) -> Dict:
        return {
            "variant": self.variant,
            "ms_per_token": 1e3 * min(self.per_token),
            "ms_per_token_median": 1e3 * statistics.median(self.per_token),
            "ms_per_token_all": [1e3 * t for t in self.per_token],
            "tokens": self.tokens,
        }


def _table(rows: List[Dict], args) -> str:
    base = next((r["ms_per_token"] for r in rows if r["variant"] == "base"), None)
    lines = [
        f"Greedy decode, transformers Llama hidden={args.hidden} layers={args.layers} heads={args.heads} "
        f"vocab={args.vocab}, targets {args.targets}, prompt {args.prompt_len}, {args.decode_tokens} new tokens, "
        f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}, {args.repeats} rounds "
        "(each round: every variant in turn, its median step; best and median of the rounds)",
        "",
        "| variant | ms / token (best) | median | best vs base |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ms_per_token'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['variant']} | {r['ms_per_token']:.2f} | {r['ms_per_token_median']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: List[str] = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    decoders = [_Decoder(variant, args, dtype) for variant in args.variants.split(",")]
    for round_ in range(args.repeats):  # rounds, so that a busy machine slows every variant alike
        for decoder in decoders:
            decoder.time_once()
        print(f"round {round_ + 1}: " + ", ".join(f"{d.variant} {1e3 * d.per_token[-1]:.2f}" for d in decoders),
              flush=True)
    rows = [decoder.row() for decoder in decoders]
    by_name = {r["variant"]: r for r in rows}
    for method in ("genft", "wegeft"):
        if method in by_name and f"{method}_uncached" in by_name:
            if by_name[method]["tokens"] != by_name[f"{method}_uncached"]["tokens"]:
                print(f"error: {method} decodes different tokens with and without the cache", file=sys.stderr)
                return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = _table(rows, args)
    for suffix, text in ((".json", json.dumps({"args": vars(args), "rows": rows}, indent=1)), (".md", table)):
        tmp = out.with_name(out.name + suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out.with_name(out.name + suffix))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
