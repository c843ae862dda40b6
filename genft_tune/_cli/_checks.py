"""Checks of the command line's paths and names, before anything is loaded or written:
each mistake is one message (the flag, the value, what is expected) and exit status 2."""

import os
import sys
from pathlib import Path
from typing import Dict, Optional, Union

from genft_tune._file_names import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE

PathLike = Union[str, os.PathLike]

USER_ERROR = 2  # as argparse exits for a bad command line


class UsageError(ValueError):
    """A mistake in the command line, reported as one message with exit status 2."""


def fail(prog: str, message: str) -> int:
    """Print ``PROG: error: MESSAGE`` to stderr; returns the exit status of a user mistake."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USER_ERROR


def existing_folder(value: Optional[str], flag: str, what: str) -> Path:
    """``value`` as a folder that exists.

    Raises:
        UsageError: when it does not exist or is a file.
    """
    path = Path(value)
    if not path.exists():
        raise UsageError(f"{flag} {value}: no such folder (expected {what})")
    if not path.is_dir():
        raise UsageError(f"{flag} {value} is a file, not a folder (expected {what})")
    return path


def merged_not_adapter(path: Path, flag: str) -> None:
    """Refuse a merged model folder where an adapter checkpoint is expected.

    Raises:
        UsageError: naming the folder to pass instead.
    """
    if (path / ADAPTER_CONFIG_FILE).is_file() and not (path / ADAPTER_WEIGHTS_FILE).is_file() \
            and (path / "config.json").is_file():
        raise UsageError(f"{flag} {path} is a merged model (genft-tune merge output), not an adapter: pass the "
                         "recipe's epoch_N or step_N folder it was merged from")


def new_output(value: str, flag: str, *, overwrite: bool = False, overwrite_flag: str = "--overwrite") -> Path:
    """``value`` as an output folder to create: its nearest existing ancestor must be a
    writable folder; an existing file is refused, an existing folder unless ``overwrite``.

    Raises:
        UsageError: naming the problem.
    """
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {value} is a file; give a folder to create")
    if path.exists() and not overwrite:
        raise UsageError(f"{flag} {value} exists (pass {overwrite_flag} to replace it)")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {value}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {value}: {parent} is not writable")
    return path


def output_apart_from(output: Path, flag: str, inputs: Dict[str, Optional[PathLike]]) -> None:
    """Refuse an output folder that is one of the inputs or holds one: replacing it (a new
    folder is swapped in, the old one removed) would delete what is being read.

    Raises:
        UsageError: naming the input it would destroy.
    """
    out = Path(output).resolve()
    for input_flag, path in inputs.items():
        if path is None:
            continue
        path = Path(path).resolve()
        if out == path or out in path.parents:
            what = "is" if out == path else "holds"
            raise UsageError(f"{flag} {output} {what} the {input_flag} folder {path}: replacing it would delete "
                             "what it reads; give a new folder")


__all__ = [
    "existing_folder", "fail", "merged_not_adapter", "new_output", "output_apart_from", "USER_ERROR", "UsageError",
]
