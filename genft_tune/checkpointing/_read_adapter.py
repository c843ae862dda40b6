"""The one reader of an adapter folder: which format it holds (ours, Hugging Face PEFT's,
the GenFT authors') and its tensors and config in our layout, whatever the format. Merge,
``--verify``, the LoRA export and the recipes read adapters through it (publish only uses
:func:`peft_folder`, to find PEFT's pair)."""

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import torch

from genft_tune._file_names import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    AUTHORS_CONFIG_FILE,
    PEFT_CONFIG_FILE,
    PEFT_SUBDIR,
    PEFT_WEIGHTS_FILE,
    TRAINED_MODULES_CONFIG_FILE,
    TRAINED_MODULES_WEIGHTS_FILE,
)
from genft_tune.checkpointing._adapter import AdapterFileConfig, load_adapter
from genft_tune.checkpointing._authors import import_authors_adapter, is_authors_config
from genft_tune.checkpointing._peft_format import import_peft_adapter, peft_adapter_method, PeftFormatError

PathLike = Union[str, Path]


def _is_authors_adapter(adapter_dir: Path) -> bool:
    try:
        return is_authors_config(json.loads((adapter_dir / AUTHORS_CONFIG_FILE).read_text()))
    except (OSError, ValueError):
        return False


def has_our_adapter(adapter_dir: PathLike) -> bool:
    return (Path(adapter_dir) / ADAPTER_CONFIG_FILE).is_file()


def peft_folder(adapter_dir: PathLike) -> Optional[Path]:
    """Where PEFT's pair of a GenFT/WeGeFT adapter is: ``adapter_dir`` or its ``peft/``
    subfolder (a recipe's checkpoint), or None."""
    adapter_dir = Path(adapter_dir)
    return next((d for d in (adapter_dir, adapter_dir / PEFT_SUBDIR) if peft_adapter_method(d)), None)


def adapter_format(adapter_dir: PathLike) -> Optional[str]:
    """Which adapter a folder holds, in the order every reader prefers them: ``ours``
    (``genft_config.json``), ``peft`` (PEFT's pair, also in ``peft/``), ``authors`` (the
    GenFT authors' own PEFT format: ``genft-tune import-authors`` reads it), or None."""
    if has_our_adapter(adapter_dir):
        return "ours"
    if peft_folder(adapter_dir) is not None:
        return "peft"
    if _is_authors_adapter(Path(adapter_dir)):
        return "authors"
    return None


def _refuse_other_files(adapter_dir: Path) -> None:
    """A folder with files that look like an adapter but are not one of ours: say what it is."""
    if (adapter_dir / PEFT_CONFIG_FILE).is_file():
        try:
            peft_type = json.loads((adapter_dir / PEFT_CONFIG_FILE).read_text()).get("peft_type")
        except (OSError, ValueError, AttributeError):
            peft_type = None
        raise FileNotFoundError(
            f"{adapter_dir} holds a PEFT {peft_type or 'adapter of another method'} adapter, not a GenFT or "
            "WeGeFT one: load it with PEFT (PeftModel.from_pretrained, then merge_and_unload)"
        )
    if (adapter_dir / TRAINED_MODULES_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{adapter_dir} holds the trained modules of a run without a GenFT or WeGeFT adapter "
            f"({TRAINED_MODULES_WEIGHTS_FILE}): nothing to merge; the run's merged model is its "
            "hf_model/ folder (save_merged=True)"
        )


@contextlib.contextmanager
def adapter_in_our_format(adapter_dir: PathLike, *, base_dir: Optional[PathLike]) -> Iterator[Path]:
    """``adapter_dir`` itself when it holds our files, else a temporary directory with
    its adapter converted to ours: PEFT's (in the folder itself or its ``peft/``
    subfolder, against the Hugging Face base in ``base_dir``) or the GenFT authors' (as
    ``genft-tune import-authors`` converts it).

    Raises:
        FileNotFoundError: when the directory holds no adapter format (naming ours and PEFT's).
        PeftFormatError: as :func:`import_peft_adapter`.
        ValueError: as :func:`~genft_tune.checkpointing.import_authors_adapter`.
    """
    adapter_dir = Path(adapter_dir)
    found = adapter_format(adapter_dir)
    if found == "authors":
        with tempfile.TemporaryDirectory(prefix="genft-authors-") as tmp:
            yield import_authors_adapter(adapter_dir, Path(tmp) / "adapter")
        return
    if found != "peft":
        if found is None and adapter_dir.is_dir():
            _refuse_other_files(adapter_dir)
            raise FileNotFoundError(
                f"{adapter_dir} holds no adapter: expected {ADAPTER_WEIGHTS_FILE} + {ADAPTER_CONFIG_FILE} "
                f"(this package's) or {PEFT_WEIGHTS_FILE} + {PEFT_CONFIG_FILE} (PEFT's, GenFT or WeGeFT)"
            )
        yield adapter_dir
        return
    peft_dir = peft_folder(adapter_dir)
    if base_dir is None:
        raise PeftFormatError(f"{peft_dir} holds a PEFT adapter: reading it needs its Hugging Face base directory")
    with tempfile.TemporaryDirectory(prefix="genft-peft-") as tmp:
        yield import_peft_adapter(peft_dir, Path(tmp) / "adapter", base_dir=base_dir)


def read_adapter(
    adapter_dir: PathLike, *, base_dir: Optional[PathLike] = None
) -> Tuple[Dict[str, torch.Tensor], AdapterFileConfig]:
    """The one reader of an adapter folder, for merge, verify, LoRA export and the recipes:
    ``(state dict, config)`` in our layout (:func:`load_adapter`) from any format
    (:func:`adapter_format`): ours, PEFT's (in the folder or its ``peft/`` subfolder,
    converted against the Hugging Face base in ``base_dir``, which it needs) or the GenFT
    authors' (converted as ``genft-tune import-authors`` does).

    Raises:
        FileNotFoundError: for a folder with no adapter or a missing file.
        PeftFormatError: for a PEFT adapter without ``base_dir`` or one that does not fit it.
        ValueError: for an authors' adapter that their code does not write.
        AdapterFileError: for unreadable or inconsistent files.
    """
    with adapter_in_our_format(adapter_dir, base_dir=base_dir) as ours:
        return load_adapter(ours)


__all__ = ["adapter_format", "adapter_in_our_format", "has_our_adapter", "peft_folder", "read_adapter"]
