"""Temporary names for atomic writes, with the permissions a plain ``open()`` gives.

Everything this package writes goes to a temporary name next to its destination and is
renamed into place when complete, so an interrupted write never leaves a file or folder
that looks finished. ``tempfile.mkstemp``/``mkdtemp`` create their files with mode 0600
and folders with 0700, which would make a merged model unreadable to a serving user or
on a shared filesystem; these helpers give the modes ``open()`` / ``mkdir()`` would
(``0666`` / ``0777`` minus the process umask).
"""

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Tuple, Union

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_file(dir: PathLike, prefix: str, suffix: str = ".tmp") -> Tuple[int, str]:
    """``tempfile.mkstemp`` in ``dir``, but with the mode ``open(path, "w")`` would give."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, path


def temp_dir(dir: PathLike, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``dir``, but with the mode ``mkdir`` would give."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(path, 0o777 & ~_umask())
    return path


def give_open_mode(path: PathLike) -> None:
    """Give a file that another library wrote (safetensors writes 0600) the mode
    ``open(path, "w")`` would have given it."""
    os.chmod(path, 0o666 & ~_umask())


def give_open_modes(folder: PathLike) -> None:
    """:func:`give_open_mode` for every file below ``folder`` (e.g. the merged checkpoint
    that torchtune's checkpointer wrote)."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            give_open_mode(path)


def fsync_file(path: PathLike) -> None:
    """Flush a written file to disk (before a rename makes it look finished)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: PathLike) -> None:
    """Flush a directory's entries (renames) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_tree(root: PathLike) -> None:
    """:func:`fsync_file` for every file below ``root``, then ``root`` itself."""
    for path in Path(root).rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_dir(root)


@contextlib.contextmanager
def new_folder(output_dir: PathLike, *, hidden: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Write a folder under a temporary name next to ``output_dir`` (yielded), then swap it
    in when the block completes: files fsynced, an existing ``output_dir`` moved aside first
    (the swap is two renames) and removed after. On any error the temporary folder is
    removed and ``output_dir`` stays as it was; what a killed earlier write left
    (``NAME.tmp-*``, ``NAME.old-*``) is removed, logged, before starting.

    Args:
        output_dir (PathLike): the folder to create or replace.
        hidden (bool): temporary names start with a dot (``.NAME.tmp-*``).
        fsync (bool): flush every file before the swap.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{'.' if hidden else ''}{output_dir.name}"
    remove_stale(output_dir.parent, [f"{prefix}.tmp-", f"{prefix}.old-"])
    tmp = temp_dir(output_dir.parent, prefix=f"{prefix}.tmp-")
    try:
        yield tmp
        if fsync:
            fsync_tree(tmp)
        if output_dir.exists():
            old = temp_dir(output_dir.parent, prefix=f"{prefix}.old-")
            os.replace(output_dir, old / "x")
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomically(path: PathLike, write: Callable[[str], None], *, fsync: bool = False) -> None:
    """Write a file with ``write(temporary_path)``, then rename it to ``path``: an interrupted
    write leaves no file that looks finished (the temporary one is removed on errors), and
    the file gets the mode ``open(path, "w")`` would give (whatever ``write`` used);
    ``fsync`` flushes it to disk before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        give_open_mode(tmp)  # writers such as safetensors create 0600 files
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_pair_atomically(
    folder: PathLike,
    *,
    data_name: str,
    write_data: Callable[[str], None],
    meta_name: str,
    meta_text: Callable[[Path], str],
) -> None:
    """Write a data file and the file that describes it (e.g. tensors and their json) as a
    pair: both go to temporary names in ``folder`` (created if needed) and are fsynced;
    then an existing ``meta_name`` is removed, the data renamed into place and the new
    ``meta_name`` renamed last, so an interrupted write never leaves a pair that looks
    complete (a reader that needs both files finds the description missing).

    Args:
        folder (PathLike): the folder.
        data_name (str): the data file's name.
        write_data (Callable[[str], None]): writes the data to the temporary path given
            (the file gets the mode ``open()`` would give, whatever the writer used).
        meta_name (str): the describing file's name.
        meta_text (Callable[[Path], str]): its text (utf-8), given the written temporary
            data file (e.g. to record its sha256).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_data = temp_file(folder, prefix=f".{data_name}.", suffix=".tmp")
    os.close(fd)
    fd, tmp_meta = temp_file(folder, prefix=f".{meta_name}.", suffix=".tmp")
    os.close(fd)
    tmp_data, tmp_meta = Path(tmp_data), Path(tmp_meta)
    try:
        write_data(str(tmp_data))
        give_open_mode(tmp_data)
        fsync_file(tmp_data)
        tmp_meta.write_text(meta_text(tmp_data), encoding="utf-8")
        fsync_file(tmp_meta)
        # the old pair stops looking complete before the new data replaces the old
        (folder / meta_name).unlink(missing_ok=True)
        fsync_dir(folder)
        os.replace(tmp_data, folder / data_name)
        fsync_dir(folder)
        os.replace(tmp_meta, folder / meta_name)
        fsync_dir(folder)
    finally:
        tmp_data.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)


def write_text_atomically(path: PathLike, text: str) -> None:
    """:func:`write_atomically` of a text file (utf-8)."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_stale(parent: PathLike, prefixes: Iterable[str]) -> List[Path]:
    """Delete what interrupted writes left in ``parent`` (entries whose name starts with one
    of ``prefixes``), logging each; returns what was removed."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        if any(entry.name.startswith(p) for p in prefixes):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            log.info(f"Removed {entry}, left behind by an interrupted earlier run")
            removed.append(entry)
    return removed


__all__ = [
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "give_open_mode",
    "give_open_modes",
    "new_folder",
    "remove_stale",
    "temp_dir",
    "temp_file",
    "write_atomically",
    "write_pair_atomically",
    "write_text_atomically",
]
