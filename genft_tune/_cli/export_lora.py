"""``genft-tune export-lora``: a GenFT/WeGeFT adapter as a standard PEFT LoRA, for servers
that take LoRA adapters only (vLLM, SGLang).

::

    genft-tune export-lora ./out/epoch_0 --rank 64 --base ./SmolLM2-135M --output ./lora-r64
    genft-tune export-lora ./out/epoch_0 --energy 0.99 --base ./SmolLM2-135M --output ./lora

WeGeFT converts exactly at its rank r, GenFT's low-rank path (act_out identity) at a+b+1;
the dense GenFT default is truncated, and the command prints what that costs (energy kept
per layer, the relative error of the worst one). The output loads with
``peft.PeftModel.from_pretrained`` and ``vllm serve BASE --enable-lora --lora-modules
NAME=OUT --max-lora-rank R`` (R: the printed value).
"""

import argparse
import sys
import textwrap
from pathlib import Path

from genft_tune._cli._checks import merged_not_adapter, new_output, output_apart_from, UsageError
from genft_tune._file_names import (
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PEFT_CONFIG_FILE, PEFT_SUBDIR, PEFT_WEIGHTS_FILE,
)
from genft_tune.cards._base import base_hub_id, HUB_ID
from genft_tune.checkpointing._lora_export import check_rank_choice, export_lora_adapter, LORA_DTYPES
from genft_tune.checkpointing._peft_format import PeftFormatError
from genft_tune.checkpointing._read_adapter import adapter_format

PROG = "genft-tune export-lora"


def _user_error(args: argparse.Namespace):
    """The first mistake in the arguments (one line), found before anything is loaded."""
    try:
        check_rank_choice(args.rank, args.energy)
    except ValueError as e:
        return f"--rank/--energy: {e}"
    adapter = Path(args.adapter)
    if not adapter.is_dir():
        return f"adapter directory {adapter} does not exist"
    if adapter_format(adapter) is None:  # ours, PEFT's pair or the GenFT authors': the library reads all three
        return (f"{adapter} holds no GenFT/WeGeFT adapter: expected {ADAPTER_WEIGHTS_FILE} + {ADAPTER_CONFIG_FILE} "
                f"or {PEFT_WEIGHTS_FILE} + {PEFT_CONFIG_FILE} (GenFT or WeGeFT; in the folder or its {PEFT_SUBDIR}/; "
                "or the GenFT authors' adapter_config.json + adapter_model.safetensors/.bin)")
    if args.base is None:
        return ("--base is required: the LoRA is computed from the base weights (GenFT's dW is generated from W0, "
                "WeGeFT's is W0 phi^T psi); pass the Hugging Face base checkpoint directory")
    if not (Path(args.base) / "config.json").is_file():
        return f"--base {args.base}: no config.json there (expected a Hugging Face checkpoint directory)"
    if args.base_model is not None and not HUB_ID.match(args.base_model):
        return f"--base-model must be a Hub id like ORG/NAME, got {args.base_model!r}"
    output = str(Path(args.output) if args.output else adapter / "lora")
    try:
        merged_not_adapter(adapter, "ADAPTER")
        new_output(output, "--output", overwrite=args.overwrite)
        output_apart_from(Path(output), "--output", {"ADAPTER": adapter, "--base": args.base})
    except UsageError as e:
        return str(e)
    return None


def _export(args: argparse.Namespace) -> int:
    problem = _user_error(args)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else Path(args.adapter) / "lora"
    try:
        result = export_lora_adapter(
            args.adapter, base_dir=args.base, output_dir=output, rank=args.rank, energy=args.energy,
            dtype=args.dtype, base_model_name_or_path=args.base_model or base_hub_id(args.base),
            overwrite=args.overwrite,
        )
    except (PeftFormatError, ValueError, OSError) as e:
        # an adapter that does not fit the base, a corrupt file, a base of no known family:
        # the user's inputs (found before anything is written)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for line in result.summary(per_layer=args.per_layer):
        print(line)
    print(f"LoRA written to {result.output_dir}: load it with peft.PeftModel.from_pretrained(<base model>, "
          f"{str(result.output_dir)!r})")
    return 0


def register(subparsers: argparse._SubParsersAction, command: str, help_line: str) -> None:
    """Add the ``export-lora`` subcommand (``command``), with ``help_line`` as its line in ``genft-tune --help``."""
    parser = subparsers.add_parser(
        command,
        # --base is checked in _user_error (one line saying why it is needed), so argparse
        # would show it optional: the usage says it is required, as are --rank or --energy
        usage=f"{PROG} [-h] (--rank RANK | --energy ENERGY) --base BASE [--output OUTPUT]\n"
              "       [--dtype {auto,fp32,bf16,fp16}] [--base-model BASE_MODEL] [--per-layer] [--overwrite]\n"
              "       adapter",
        help=help_line,
        description="Convert a GenFT/WeGeFT adapter (ours, its PEFT files or the GenFT authors') into a LoRA "
        "(adapter_config.json + adapter_model.safetensors): truncated SVD of each layer's dW, "
        "one rank for every layer, scaling 1. Prints the energy of dW kept per layer.",
        epilog=textwrap.dedent(
            """\
            examples:
                $ genft-tune export-lora ./out/epoch_0 --rank 64 --base ./SmolLM2-135M --output ./lora-r64
                $ genft-tune export-lora ./out/epoch_0 --energy 0.99 --base ./SmolLM2-135M
                $ vllm serve ./SmolLM2-135M --enable-lora --lora-modules mine=./out/epoch_0/lora --max-lora-rank 64
            """
        ),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("adapter", help="adapter directory (genft_adapter.*, PEFT's GenFT/WeGeFT files or the GenFT "
                        "authors' adapter_config.json + adapter_model.*)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (every layer)")
    parser.add_argument("--energy", type=float, default=None,
                        help="instead of --rank: keep at least this fraction of each layer's squared singular values")
    parser.add_argument("--base", default=None, help="Hugging Face base checkpoint directory (required, whatever the "
                        "adapter records: the LoRA is computed from its weights)")
    parser.add_argument("--output", default=None, help="output directory (default: ADAPTER/lora)")
    parser.add_argument("--dtype", default="auto", choices=list(LORA_DTYPES),
                        help="dtype of the LoRA factors (default: the base's)")
    parser.add_argument("--base-model", default=None, help="Hub id of the base for base_model_name_or_path (default: "
                        "the base directory's original_repo_id.json or card, else what the adapter records)")
    parser.add_argument("--per-layer", action="store_true", help="print every layer's energy and error")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.set_defaults(func=_export, parser=parser)
