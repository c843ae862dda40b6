"""``genft-tune import-authors``: read an adapter saved by the GenFT authors' patched PEFT.

::

    genft-tune import-authors ./their_llama_adapter --output ./imported
    genft-tune merge --base ./Llama-2-7b-hf --adapter ./imported --output ./merged

The output is our adapter pair (``genft_adapter.safetensors`` + ``genft_config.json``)
with ``convention: authors_peft`` and ``weight_layout: hf``, so that ``genft-tune merge``
writes the model the authors trained.
"""

import argparse
import logging
import textwrap
from pathlib import Path

from genft_tune._cli._checks import existing_folder, fail, UsageError
from genft_tune._file_names import ADAPTER_CONFIG_FILE, AUTHORS_CONFIG_FILE
from genft_tune.checkpointing import import_authors_adapter


def _import(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    prog = "genft-tune import-authors"
    out = Path(args.output)
    try:
        src = existing_folder(args.src, "SRC", "the folder their model.save_pretrained wrote")
        if not (src / AUTHORS_CONFIG_FILE).is_file():
            ours = (src / ADAPTER_CONFIG_FILE).is_file()
            raise UsageError(f"SRC {args.src} has no {AUTHORS_CONFIG_FILE} " + (
                "(it is a genft-tune adapter already: merge it as it is)" if ours
                else "(expected the folder their model.save_pretrained wrote)"))
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output {args.output} is a file; give a folder")
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise UsageError(f"--output {args.output} exists and is not empty (pass --overwrite)")
        if out.exists() and out.resolve() == src.resolve():
            raise UsageError(f"--output {args.output} is SRC: give a new folder")
    except UsageError as e:
        return fail(prog, str(e))
    try:
        import_authors_adapter(args.src, out, base_model=args.base_model)
    except (ValueError, FileNotFoundError) as e:  # their files are not what their code writes
        return fail(prog, str(e))
    print(f"Imported adapter written to {out}; merge it with: genft-tune merge --base <HF base> --adapter {out} --output <dir>")
    return 0


def register(subparsers: argparse._SubParsersAction, command: str, help_line: str) -> None:
    """Add the ``import-authors`` subcommand (``command``), with ``help_line`` as its line in ``genft-tune --help``."""
    parser = subparsers.add_parser(
        command,
        help=help_line,
        description="Read adapter_config.json (peft_type GENFT) + adapter_model.safetensors/.bin written by "
        "the GenFT authors' patched PEFT and write genft_adapter.safetensors + genft_config.json "
        "(convention authors_peft, Hugging Face weight layout) for genft-tune merge.",
        epilog=textwrap.dedent(
            """\
            examples:
                $ genft-tune import-authors ./their_adapter --output ./imported
                $ genft-tune merge --base ./Llama-2-7b-hf --adapter ./imported --output ./merged
            """
        ),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("src", help="directory written by their model.save_pretrained")
    parser.add_argument("--output", required=True, help="directory for the genft-tune adapter")
    parser.add_argument("--base-model", default=None, help="base model id/path to record (default: theirs)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    parser.set_defaults(func=_import, parser=parser)
