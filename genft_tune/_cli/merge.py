"""``genft-tune merge``: fold a saved GenFT adapter into its base checkpoint.

::

    genft-tune merge --base ./Llama-3.2-1B --adapter ./out/epoch_0 --output ./merged \\
        --dtype bf16 --max-shard-size 2GB --verify --prompt "Hello"

The output has the base's format (sharded Hugging Face safetensors with an index, or
``consolidated.00.pth`` / ``*.pt``), its ``config.json`` (``torch_dtype`` updated),
tokenizer and every other non-weight file but its model card, plus the adapter's
``genft_config.json``, the run's config and metric log, and a model card of its own.
Mistakes in the command line are one message and exit status 2; a failed ``--verify``
exits with 1.
"""

import argparse
import logging
import sys
import textwrap

from genft_tune._cli._checks import (
    existing_folder, fail, merged_not_adapter, new_output, output_apart_from, UsageError,
)
from genft_tune._file_names import ADAPTER_CONFIG_FILE
from genft_tune.checkpointing import DTYPES, merge_adapter_checkpoint, parse_size, verify_merge
from genft_tune.models._families import FAMILIES

log = logging.getLogger(__name__)


def _check_args(args: argparse.Namespace) -> None:
    """The command line's folders and numbers, before anything is read or written.

    Raises:
        UsageError: one message naming the flag.
    """
    base = existing_folder(args.base, "--base", "the base checkpoint folder, with config.json and its weights")
    adapter = existing_folder(args.adapter, "--adapter", "a recipe's epoch_N/step_N folder or a PEFT adapter folder")
    if (base / ADAPTER_CONFIG_FILE).is_file() and not (base / "config.json").is_file():
        raise UsageError(f"--base {args.base} holds an adapter, not a base model: did you swap --base and --adapter?")
    merged_not_adapter(adapter, "--adapter")
    if args.verify and not (base / "config.json").is_file():
        raise UsageError(f"--verify compares Hugging Face models, and --base {args.base} has no config.json "
                         "(a torchtune/Meta checkpoint): merge without --verify")
    out = new_output(args.output, "--output", overwrite=args.overwrite)
    output_apart_from(out, "--output", {"--base": base, "--adapter": adapter})
    if args.tolerance is not None and not args.tolerance >= 0:
        raise UsageError(f"--tolerance must be a number >= 0, got {args.tolerance}")
    try:
        parse_size(args.max_shard_size)
    except ValueError as e:
        raise UsageError(f"--max-shard-size: {e}") from None


def _merge(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        _check_args(args)
    except UsageError as e:
        return fail("genft-tune merge", str(e))
    try:
        out = merge_adapter_checkpoint(
            base_dir=args.base,
            adapter_dir=args.adapter,
            output_dir=args.output,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # the inputs do not fit: nothing written
        return fail("genft-tune merge", str(e))
    print(f"Merged model written to {out}")
    if args.verify:
        try:
            diff = verify_merge(
                base_dir=args.base, adapter_dir=args.adapter, merged_dir=out, prompt=args.prompt
            )
        except ValueError as e:
            return fail("genft-tune merge", f"--verify: {e}")
        print(f"verify: max |logit diff| between the adapted model and the merged model: {diff:.3e}")
        if diff > args.tolerance:  # a failed check, not a mistake in the command line
            print(f"genft-tune merge: --verify failed: {diff:.3e} > tolerance {args.tolerance}", file=sys.stderr)
            return 1
    return 0


def register(subparsers: argparse._SubParsersAction, command: str, help_line: str) -> None:
    """Add the ``merge`` subcommand (``command``), with ``help_line`` as its line in ``genft-tune --help``."""
    decoders = [name for name, family in FAMILIES.items() if family.is_decoder]  # what --verify builds
    parser = subparsers.add_parser(
        command,
        help=help_line,
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
    parser.add_argument("--dtype", default="auto", choices=sorted(DTYPES), help="dtype of the output (default: auto, the base's)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--verify", action="store_true", help="compare the logits of the adapted (base + adapter) and merged models, in fp32, whole models on "
                        "the CPU: decoders of every packaged family (config.json model_type " + ", ".join(decoders)
                        + ") on --prompt, ViT (vit) on a seeded random image batch; Hugging Face bases only")
    parser.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog", help="prompt for --verify (decoders)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted |logit diff| for --verify (default: 1e-3)")
    parser.set_defaults(func=_merge, parser=parser)
