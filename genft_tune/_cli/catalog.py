"""``genft-tune ls``, ``cp`` and ``cat``: our recipes and configs, like ``tune ls/cp/cat``.

``tune ls`` only knows torchtune's own recipes; these commands list, copy and print the
ones this package ships (see :mod:`genft_tune._recipe_registry`). The copies are what
``tune run`` takes::

    genft-tune cp genft_finetune_single_device .           # ./genft_finetune_single_device.py
    genft-tune cp llama3_2/1B_genft_single_device my.yaml  # then edit and
    tune run genft_finetune_single_device --config my.yaml
"""

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

import yaml

from genft_tune._recipe_registry import (
    config_path,
    did_you_mean,
    get_all_recipes,
    get_config,
    get_recipe,
    recipe_path,
)

_NULL = "<>"


def _ls(args: argparse.Namespace) -> int:
    """Print a RECIPE / CONFIG table (the recipe name only on its first row)."""
    print(f"{'RECIPE':<40} {'CONFIG':<40}")
    for recipe in get_all_recipes():
        if not recipe.configs:
            print(f"{recipe.name:<40} {_NULL:<40}")
        for i, config in enumerate(recipe.configs):
            print(f"{recipe.name if i == 0 else '':<40} {config.name:<40}")
    return 0


def _cp(args: argparse.Namespace) -> int:
    """Copy a recipe (``.py``) or config (``.yaml``) to ``destination``."""
    name: str = args.file
    if get_recipe(name) is not None:
        src, suffix = recipe_path(name), ".py"
    elif get_config(name) is not None:
        src, suffix = config_path(name), ".yaml"
    else:
        args.parser.error(
            f"Invalid file name: {name}. Try `genft-tune ls` to see all available files to copy."
        )
    destination: Path = args.destination
    if destination.is_dir():
        destination = destination / src.name
    elif destination.suffix != suffix:
        destination = destination.with_suffix(suffix)
    if args.no_clobber and destination.exists():
        print(f"File already exists at {destination.absolute()}, not overwriting.")
        return 0
    if args.make_parents:
        destination.parent.mkdir(parents=True, exist_ok=True)
    elif not destination.parent.is_dir():
        args.parser.error(
            f"Cannot create regular file: '{destination}'. No such file or directory. "
            "If the specified destination's parent directory does not exist and you would "
            "like to create it on-the-fly, use the --make-parents flag."
        )
    output = shutil.copyfile(src, destination)
    print(f"Copied file to {output}")
    return 0


def _cat(args: argparse.Namespace) -> int:
    """Print a packaged config (or a yaml file) as written, comments included;
    ``--sort`` prints its parsed content with sorted keys instead."""
    name: str = args.config_name
    if get_recipe(name) is not None:
        args.parser.error(f"'{name}' is a recipe, not a config: `genft-tune cp {name} .` copies it; "
                          "`genft-tune ls` lists the configs")
    if get_config(name) is not None:
        path = config_path(name)
    else:
        path = Path(name)
        if path.suffix.lower() not in (".yaml", ".yml"):
            args.parser.error(
                f"Config '{name}' not found{did_you_mean(name)}. Try `genft-tune ls` to see all available configs."
            )
    if path.is_dir():
        args.parser.error(f"Config '{name}' is a folder, not a yaml file.")
    if not path.is_file():
        args.parser.error(f"Config '{name}' not found.")
    text = path.read_text()
    if args.sort:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            args.parser.error(f"Error parsing YAML file: {e}")
        text = yaml.safe_dump(data, default_flow_style=False, sort_keys=True, indent=4, width=80)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _add_ls(subparsers: argparse._SubParsersAction, help_line: str) -> None:
    ls = subparsers.add_parser(
        "ls",
        help=help_line,
        description="List the GenFT recipes and their configs.",
        epilog=textwrap.dedent(
            """\
            To run one of these recipes:
                $ tune run genft_finetune_single_device --config llama3_2/1B_genft_single_device
            """
        ),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ls.set_defaults(func=_ls, parser=ls)


def _add_cp(subparsers: argparse._SubParsersAction, help_line: str) -> None:
    cp = subparsers.add_parser(
        "cp",
        usage="genft-tune cp <recipe|config> destination [OPTIONS]",
        help=help_line,
        description="Copy a GenFT recipe or config to a local path.",
        epilog=textwrap.dedent(
            """\
            examples:
                $ genft-tune cp genft_finetune_single_device .
                $ genft-tune cp llama3_2/1B_genft_single_device ./my_configs/1B.yaml --make-parents
            """
        ),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    cp.add_argument("file", help="recipe or config to copy (see `genft-tune ls`)")
    cp.add_argument("destination", type=Path, help="file or existing folder to copy to")
    cp.add_argument(
        "-n", "--no-clobber", action="store_true", help="do not overwrite an existing destination"
    )
    cp.add_argument(
        "--make-parents", action="store_true", help="create the destination's parent folders"
    )
    cp.set_defaults(func=_cp, parser=cp)


def _add_cat(subparsers: argparse._SubParsersAction, help_line: str) -> None:
    cat = subparsers.add_parser(
        "cat",
        help=help_line,
        description="Print a GenFT config (by name, or a yaml path) to see what can be overridden.",
        epilog=textwrap.dedent(
            """\
            examples:
                $ genft-tune cat llama3_2/1B_genft_single_device
                $ genft-tune cat llama3_2/1B_genft_single_device --sort
            """
        ),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    cat.add_argument("config_name", help="config name (see `genft-tune ls`) or yaml file")
    cat.add_argument("--sort", action="store_true", help="print the parsed config with sorted keys")
    cat.set_defaults(func=_cat, parser=cat)


_PARSERS = {"ls": _add_ls, "cp": _add_cp, "cat": _add_cat}


def register(subparsers: argparse._SubParsersAction, command: str, help_line: str) -> None:
    """Add the parser of ``command`` (``ls``, ``cp`` or ``cat``), with ``help_line`` as its
    line in ``genft-tune --help``; it sets ``func``."""
    _PARSERS[command](subparsers, help_line)
