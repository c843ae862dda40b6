"""``genft-tune merge``: fold a saved GenFT adapter into its base checkpoint.

::

    genft-tune merge --base ./Llama-3.2-1B --adapter ./out/epoch_0 --output ./merged \\
        --dtype bf16 --max-shard-size 2GB --verify --prompt "Hello"

The output has the base's format (sharded Hugging Face safetensors with an index, or
``consolidated.00.pth`` / ``*.pt``), its ``config.json`` (``torch_dtype`` updated),
tokenizer and every other non-weight file, plus the adapter's ``genft_config.json``.
"""

import argparse
import logging
import sys
import textwrap

log = logging.getLogger(__name__)

# genft_tune.checkpointing.DTYPES; not imported here so that `genft-tune ls` stays fast
DTYPE_CHOICES = ["auto", "bf16", "fp16", "fp32"]


def _merge(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from genft_tune.checkpointing import merge_adapter_checkpoint, verify_merge

    try:
        out = merge_adapter_checkpoint(
            base_dir=args.base,
            adapter_dir=args.adapter,
            output_dir=args.output,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"genft-tune merge: error: {e}", file=sys.stderr)
        return 1
    print(f"Merged model written to {out}")
    if args.verify:
        try:
            diff = verify_merge(
                base_dir=args.base, adapter_dir=args.adapter, merged_dir=out, prompt=args.prompt
            )
        except ValueError as e:
            print(f"genft-tune merge: --verify: {e}", file=sys.stderr)
            return 1
        print(f"verify: max |logit diff| between the adapted model and the merged model: {diff:.3e}")
        if diff > args.tolerance:
            print(f"genft-tune merge: --verify failed: {diff:.3e} > tolerance {args.tolerance}", file=sys.stderr)
            return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``merge`` subcommand."""
    parser = subparsers.add_parser(
        "merge",
        help="Merge a GenFT adapter into its base checkpoint",
        description="Merge a GenFT adapter (genft_adapter.safetensors + genft_config.json) into "
        "its base checkpoint: W = W0 + dW, computed in fp32, written in the base's format.",
        epilog=textwrap.dedent(
            """\
            examples:
                $ genft-tune merge --base ./Llama-3.2-1B --adapter ./out/epoch_0 --output ./merged
                $ genft-tune merge --base ./base --adapter ./out/epoch_2 --output ./merged \\
                      --dtype bf16 --max-shard-size 2GB --verify --prompt "Hello"
            """
        ),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--base", required=True, help="base checkpoint directory (HF safetensors or torchtune/Meta .pth)")
    parser.add_argument("--adapter", required=True, help="adapter directory written by a GenFT recipe")
    parser.add_argument("--output", required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="dtype of the output (default: auto, the base's)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--verify", action="store_true", help="compare the logits of the adapted (base + adapter) and merged models, in fp32 (Llama family: on --prompt; ViT: on a seeded random image batch)")
    parser.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog", help="prompt for --verify (decoders)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted |logit diff| for --verify (default: 1e-3)")
    parser.set_defaults(func=_merge, parser=parser)
