"""``genft-tune export-peft``: write Hugging Face PEFT's files for a saved adapter.

::

    genft-tune export-peft ./out/epoch_0                     # -> ./out/epoch_0/peft/
    genft-tune export-peft ./out/epoch_0 --base ./Llama-3.2-1B --base-model meta-llama/Llama-3.2-1B

The output (``adapter_config.json`` + ``adapter_model.safetensors``) loads with
``import genft_tune.peft`` and ``peft.PeftModel.from_pretrained`` onto the Hugging Face base.
"""

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from genft_tune._cli._checks import (
    existing_folder, fail, merged_not_adapter, new_output, output_apart_from, UsageError,
)
from genft_tune._file_names import ADAPTER_CONFIG_FILE, PEFT_CONFIG_FILE, PEFT_SUBDIR
from genft_tune.cards._base import base_hub_id, HUB_ID
from genft_tune.checkpointing import export_peft_adapter, load_adapter_config
from genft_tune.checkpointing._merge import check_adapter_fits_base


def _base_dir(args: argparse.Namespace):
    """``--base``, else the base directory the adapter recorded (when it still exists)."""
    if args.base:
        return Path(args.base)
    cfg = load_adapter_config(args.adapter)
    for candidate in ((cfg.get("extra") or {}).get("base_model_path"), cfg.base_model):
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    raise ValueError(
        f"--base: the adapter in {args.adapter} records no Hugging Face base directory that exists here; "
        "pass --base DIR (the base checkpoint with its config.json)"
    )


def _export(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    prog = "genft-tune export-peft"
    if args.base_model is not None and not HUB_ID.match(args.base_model):
        return fail(prog, f"--base-model must be a Hub id like ORG/NAME, got {args.base_model!r}")
    try:
        adapter = existing_folder(args.adapter, "ADAPTER", "a recipe's epoch_N/step_N folder")
        merged_not_adapter(adapter, "ADAPTER")
        if not (adapter / ADAPTER_CONFIG_FILE).is_file():
            hint = (" (it is a PEFT adapter already)" if (adapter / PEFT_CONFIG_FILE).is_file()
                    else ": pass a recipe's epoch_N or step_N folder")
            raise UsageError(f"ADAPTER {args.adapter} holds no {ADAPTER_CONFIG_FILE}{hint}")
        if args.base:
            base = existing_folder(args.base, "--base", "the Hugging Face base checkpoint, with its config.json")
            if not (base / "config.json").is_file():
                raise UsageError(f"--base {args.base} has no config.json: PEFT's format needs a Hugging Face base")
        if args.output:
            new_output(args.output, "--output", overwrite=True)
            output_apart_from(Path(args.output), "--output", {"ADAPTER": adapter, "--base": args.base})
    except UsageError as e:
        return fail(prog, str(e))
    try:
        base = _base_dir(args)
        check_adapter_fits_base(args.adapter, base)  # PEFT would only fail when the user loads it
        out = Path(args.output) if args.output else Path(args.adapter) / PEFT_SUBDIR
        hub_id = args.base_model or base_hub_id(base)
        written = export_peft_adapter(args.adapter, base_dir=base, base_model_name_or_path=hub_id, output_dir=out)
    except (ValueError, FileNotFoundError) as e:  # the adapter does not fit the base, or cannot be read
        return fail(prog, str(e))
    print(f"PEFT adapter written to {written}: load it with `import genft_tune.peft` and "
          f"peft.PeftModel.from_pretrained(<base model>, {str(written)!r})")
    if hub_id is None:
        print("genft-tune export-peft: warning: the base's Hub id is unknown, so base_model_name_or_path is what "
              "the adapter recorded (a local path?); pass --base-model ORG/NAME to name it", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction, command: str, help_line: str) -> None:
    """Add the ``export-peft`` subcommand (``command``), with ``help_line`` as its line in ``genft-tune --help``."""
    parser = subparsers.add_parser(
        command,
        help=help_line,
        description="Convert genft_adapter.safetensors + genft_config.json (torchtune naming) into "
        "adapter_config.json + adapter_model.safetensors (PEFT, Hugging Face naming) for "
        "peft.PeftModel.from_pretrained after `import genft_tune.peft`.",
        epilog=textwrap.dedent(
            """\
            examples:
                $ genft-tune export-peft ./out/epoch_0
                $ genft-tune export-peft ./out/epoch_0 --base ./Llama-3.2-1B --base-model meta-llama/Llama-3.2-1B
            """
        ),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("adapter", help="adapter directory written by a genft-tune recipe")
    parser.add_argument("--base", default=None, help="Hugging Face base checkpoint directory (default: the one the adapter records)")
    parser.add_argument("--base-model", default=None, help="Hub id of the base for base_model_name_or_path (default: the base directory's original_repo_id.json or card)")
    parser.add_argument("--output", default=None, help="output directory (default: ADAPTER/peft)")
    parser.set_defaults(func=_export, parser=parser)
