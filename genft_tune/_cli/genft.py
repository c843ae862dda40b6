"""The ``genft-tune`` command line: one subcommand per row of ``COMMANDS``.

Only the module of the command being run is imported (its ``register(subparsers,
command, help_line)`` adds the command's full parser and sets ``func`` to the callable that
runs it with the parsed ``argparse.Namespace``); every other command is a stub parser
holding its help line, for ``genft-tune --help``. So ``genft-tune ls`` and ``--help``
do not load torch, and each subcommand module imports what it runs at its top.
"""

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Tuple

# command: (the module that registers and runs it, its line in `genft-tune --help`)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "ls": ("genft_tune._cli.catalog", "List the GenFT recipes and their configs"),
    "cp": ("genft_tune._cli.catalog", "Copy a GenFT recipe or config to a local path"),
    "cat": ("genft_tune._cli.catalog", "Print a GenFT config"),
    "merge": ("genft_tune._cli.merge", "Merge a GenFT adapter into its base checkpoint"),
    "import-authors": (
        "genft_tune._cli.import_authors",
        "Convert an adapter saved by the GenFT authors' PEFT into a genft-tune adapter",
    ),
    "export-peft": ("genft_tune._cli.export_peft", "Write Hugging Face PEFT's adapter files for a genft-tune adapter"),
    "export-lora": (
        "genft_tune._cli.export_lora",
        "Write a GenFT/WeGeFT adapter as a standard PEFT LoRA (for vLLM, SGLang)",
    ),
    "publish": (
        "genft_tune._cli.publish",
        "Upload a merged model, or the adapter alone, to the Hugging Face Hub with a model card",
    ),
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``genft-tune`` parser with ``command``'s full parser (its module imported) and
    stubs for the other commands (None: stubs only, enough for ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="genft-tune",
        description="GenFT for torchtune: list/copy recipes and configs, merge adapters, publish models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_line) in COMMANDS.items():
        if name == command:
            importlib.import_module(module_name).register(subparsers, name, help_line)
        else:
            subparsers.add_parser(name, help=help_line)
    return parser


def _command(argv: List[str]) -> Optional[str]:
    """The subcommand named on the command line: its first positional argument (the
    top-level parser has no option that takes a value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
