"""The ``genft-tune`` command line: one subcommand per module in ``SUBCOMMANDS``.

Each module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to the callable that runs it with the parsed ``argparse.Namespace``.

The subcommand modules import only the standard library and ``genft_tune._cli`` at their
top; what a subcommand runs (torch, checkpointing, hub) is imported inside the function
that runs it, so that ``genft-tune ls`` and ``--help`` do not load torch. These are the
package's only imports inside functions besides optional dependencies.
"""

import argparse
import importlib
import sys
from typing import List, Optional

SUBCOMMANDS = [
    "genft_tune._cli.catalog",  # ls, cp, cat: our recipes and configs
    "genft_tune._cli.merge",  # merge an adapter into a base checkpoint
    "genft_tune._cli.import_authors",  # convert an adapter saved by the authors' PEFT
    "genft_tune._cli.export_peft",  # write Hugging Face PEFT's files for an adapter
    "genft_tune._cli.export_lora",  # an adapter as a plain LoRA, for vLLM/SGLang
    "genft_tune._cli.publish",  # upload a merged model to the Hugging Face Hub
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genft-tune",
        description="GenFT for torchtune: list/copy recipes and configs, merge adapters, publish models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
