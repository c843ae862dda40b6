"""The data set's pre-flight (before the model loads) and the guard that keeps a bad row
from stopping a run.

Pre-flight (:func:`data_problems`): the data set opens, is not empty, its rows have the
columns the message transform reads (file and row named, with the ``column_map`` to set),
its first rows tokenize, and not every example loses all its labels to truncation
(a prompt longer than ``tokenizer.max_seq_len``).

During the run (:class:`CheckedRows`, :func:`skip_none_collate`): a row that fails to
tokenize, or whose labels are all masked by truncation, is skipped with a warning and
counted, so neither a late bad row nor a batch without label tokens (``0 / 0``: a
``ZeroDivisionError`` or a ``nan`` loss) ends a run.
"""

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import Dataset
from torchtune import config

log = logging.getLogger(__name__)

# Rows tokenized by the pre-flight: the first few must all load; the truncation scan goes
# on until it finds an example with a label token (or gives up at the limits).
FIRST_ROWS = 8
TRUNCATION_SCAN_ROWS = 1000
TRUNCATION_SCAN_SECONDS = 10.0


def dataset_label(cfg_dataset: DictConfig, field: str) -> str:
    """``dataset (my_data.jsonl)``: the field and what it reads."""
    files = cfg_dataset.get("data_files", None) if isinstance(cfg_dataset, DictConfig) else None
    if isinstance(files, (ListConfig, list)):
        files = ", ".join(map(str, files))
    elif isinstance(files, (DictConfig, dict)):
        files = ", ".join(f"{k}: {v}" for k, v in files.items())
    what = files or (cfg_dataset.get("source", None) if isinstance(cfg_dataset, DictConfig) else None)
    return f"{field} ({what})" if what else field


def _dataset_fields(cfg: DictConfig) -> List[tuple]:
    out = []
    for field in ("dataset", "dataset_val"):
        node = cfg.get(field, None)
        if isinstance(node, ListConfig):
            out += [(f"{field}[{i}]", n) for i, n in enumerate(node)]
        elif node is not None:
            out.append((field, node))
    return out


def _required_columns(transform: Any) -> Dict[str, str]:
    """``{what the transform calls it: the column it reads}`` for torchtune's transforms."""
    name = type(transform).__name__
    if name == "InputOutputToMessages":
        cmap = transform.column_map
        return {k: cmap[k] for k in ("input", "output") if k in cmap}
    if name == "ShareGPTToMessages":
        return {"conversations": transform._column_map["conversations"]}
    if name == "OpenAIToMessages":
        return {"messages": transform._column_map["messages"]}
    if name == "AlpacaToMessages":
        cmap = transform.column_map or {}
        return {k: cmap.get(k, k) for k in ("instruction", "output")}
    return {}


def _column_hint(field: str, transform: Any, required: Dict[str, str], columns: Sequence[str]) -> str:
    name = type(transform).__name__
    if name in ("ShareGPTToMessages", "OpenAIToMessages"):
        return f"set {field}.conversation_column to the column that holds the conversations"
    # a column_map names every column the transform reads, e.g. the file's in order
    guess = dict(zip(required, list(columns) + ["<column>"] * len(required)))
    return "map yours with " + " ".join(f"{field}.column_map.{k}={v}" for k, v in guess.items())


def _all_masked(sample: Dict[str, Any], ignore_index: int) -> bool:
    labels = sample.get("labels", None) if isinstance(sample, dict) else None
    if labels is None:
        return False
    if isinstance(labels, torch.Tensor):
        return bool((labels == ignore_index).all())
    return all(label == ignore_index for label in labels)


LOCAL_FORMATS = ("json", "csv", "parquet", "text", "arrow")


def _open(cfg_dataset: DictConfig, tokenizer: Any, field: str, label: str) -> Any:
    """Instantiate the data set unpacked (packing would tokenize every row first)."""
    source = cfg_dataset.get("source", None)
    files = cfg_dataset.get("data_files", None)
    if isinstance(files, str) and Path(files).is_dir():
        raise ValueError(
            f"{field}.data_files {files!r} is a folder; name the files in it, e.g. "
            f"{field}.data_files={files.rstrip('/')}/*.jsonl (a folder saved by datasets' save_to_disk "
            f"is read with {field}.source=arrow {field}.data_files={files.rstrip('/')}/*.arrow)"
        )
    listed = [files] if isinstance(files, str) else list(files) if isinstance(files, (ListConfig, list)) else []
    empty = [str(f) for f in listed if Path(str(f)).is_file() and Path(str(f)).stat().st_size == 0]
    if empty:
        raise ValueError(f"{label}: {empty[0]} is empty (0 bytes): nothing to train on")
    if files is not None and source is not None and source not in LOCAL_FORMATS and not Path(str(source)).exists():
        hint = " (JSON Lines files are read with source=json)" if str(source).lower() in ("jsonl", "ndjson") else ""
        raise ValueError(
            f"{field}.source={source!r} with {field}.data_files: local files are read with source set to "
            f"their format, one of {list(LOCAL_FORMATS)}{hint}"
        )

    node = OmegaConf.create(OmegaConf.to_container(cfg_dataset, resolve=True))
    if "packed" in node:
        node.packed = False
    try:
        return config.instantiate(node, tokenizer)
    except FileNotFoundError as e:
        raise ValueError(f"{label}: {e}") from None
    except Exception as e:  # noqa: BLE001  (datasets' and torchtune's own errors)
        cause = e.__cause__ or e.__context__
        text = f"{e}" + (f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) not in str(e) else "")
        if isinstance(cause, UnicodeDecodeError):
            text += f"; save the file as UTF-8, or name its encoding: {field}.encoding=latin-1 (for example)"
        if "corresponds to no data" in text:  # datasets: the file gave no split
            text = f"no rows could be read from it as {cfg_dataset.get('source', '?')} (an empty file, or another format?)"
        raise ValueError(f"{label}: cannot open the data set: {type(e).__name__}: {text}") from None


def _check_opened(
    ds: Any, field: str, label: str, ignore_index: int, max_seq_len: Optional[int], packed: bool = False
) -> List[ValueError]:
    problems: List[ValueError] = []
    n = len(ds)
    if n == 0:
        return [ValueError(f"{label} has no rows: nothing to train on")]
    transform = getattr(ds, "_message_transform", None)
    data = getattr(ds, "_data", None)
    null_rows: set = set()
    if data is not None and transform is not None:
        columns = list(getattr(data, "column_names", []) or [])
        required = _required_columns(transform)
        absent = {key: column for key, column in required.items() if columns and column not in columns}
        if absent:
            names = ", ".join(repr(c) for c in absent.values())
            return [ValueError(
                f"{label}: row 0 has no column {names} (its columns: {columns}); "
                + _column_hint(field, transform, required, columns)
            )]
        for key, column in required.items():
            try:
                values = data[column] if n <= 200_000 else []
            except Exception:  # noqa: BLE001
                values = []
            missing = [i for i, v in enumerate(values) if v is None]
            if missing and len(missing) == n:
                problems.append(ValueError(f"{label}: no row has a value in column {column!r}"))
            elif missing and packed:  # packing tokenizes every row up front: no skipping
                problems.append(ValueError(
                    f"{label}: {len(missing)} of {n} rows have no {column!r} (rows {missing[:5]}"
                    f"{'...' if len(missing) > 5 else ''}); packing stops on them: drop them, or set "
                    f"{field}.packed=False (an unpacked run skips them)"
                ))
            elif missing:
                null_rows.update(missing)
                log.warning(
                    f"{label}: {len(missing)} of {n} rows have no {column!r} "
                    f"(rows {missing[:5]}{'...' if len(missing) > 5 else ''}); they will be skipped"
                )
    if problems:
        return problems
    # the first rows must tokenize (a wrong conversation format, a bad template...)
    for i in range(min(n, FIRST_ROWS)):
        if i in null_rows:
            continue
        try:
            ds[i]
        except Exception as e:  # noqa: BLE001
            return [ValueError(f"{label}: row {i} cannot be read: {type(e).__name__}: {e}")]
    # truncation: is there any example with a label token left?
    truncated, scanned, start = 0, 0, time.perf_counter()
    for i in range(n):
        if i in null_rows:
            continue
        try:
            sample = ds[i]
        except Exception:  # noqa: BLE001  (skipped at run time, with a warning)
            continue
        scanned += 1
        if not _all_masked(sample, ignore_index):
            break
        truncated += 1
        if scanned >= TRUNCATION_SCAN_ROWS or time.perf_counter() - start > TRUNCATION_SCAN_SECONDS:
            break
    else:
        if truncated:
            return [ValueError(
                f"{label}: every example ({truncated} rows) is longer than tokenizer.max_seq_len="
                f"{max_seq_len}: truncation masks all of its labels, so nothing would be trained; "
                "raise tokenizer.max_seq_len or shorten the prompts"
            )]
    if truncated and truncated == scanned:
        return [ValueError(
            f"{label}: the first {scanned} examples are all longer than tokenizer.max_seq_len="
            f"{max_seq_len}: truncation masks all of their labels; raise tokenizer.max_seq_len"
        )]
    if truncated:
        log.warning(
            f"{label}: {truncated} of the first {scanned} examples are longer than tokenizer.max_seq_len="
            f"{max_seq_len} (all labels truncated away); such examples are skipped"
        )
    return problems


def _batch_problems(cfg: DictConfig, ds: Any, label: str) -> List[ValueError]:
    batch_size, accum = cfg.get("batch_size", 1), cfg.get("gradient_accumulation_steps", 1) or 1
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if len(ds) // world // batch_size // accum == 0:
        per = f" per process ({world} processes)" if world > 1 else ""
        return [ValueError(
            f"{label} has {len(ds)} rows{per}, fewer than batch_size={batch_size} x "
            f"gradient_accumulation_steps={accum}: no optimizer step would run; use a smaller batch_size"
        )]
    return []


def data_problems(cfg: DictConfig, *, ignore_index: int = -100) -> List[ValueError]:
    """Open the tokenizer and every data set of a recipe config and check them (see the
    module docstring); every problem names its field and file (and row).

    Returns:
        List[ValueError]: the problems found (empty when the data is fine).
    """
    problems: List[ValueError] = []
    try:
        tokenizer = config.instantiate(cfg.tokenizer)
    except FileNotFoundError as e:
        return [ValueError(f"tokenizer: file not found: {e.filename or e}; check tokenizer.path")]
    except Exception as e:  # noqa: BLE001
        return [ValueError(f"tokenizer: cannot load it ({cfg.tokenizer.get('_component_')}): {type(e).__name__}: {e}")]
    max_seq_len = getattr(tokenizer, "max_seq_len", None)
    for field, node in _dataset_fields(cfg):
        label = dataset_label(node, field)
        try:
            ds = _open(node, tokenizer, field, label)
        except ValueError as e:
            problems.append(e)
            continue
        packed = bool(node.get("packed", False)) if isinstance(node, DictConfig) else False
        found = _check_opened(ds, field, label, ignore_index, max_seq_len, packed=packed)
        if not found and field == "dataset" and not node.get("packed", False):
            found = _batch_problems(cfg, ds, label)
        problems += found
    return problems


class CheckedRows(Dataset):
    """A map-style data set that skips its failing rows and fully truncated examples:
    each is counted (the first few logged with their row number) and its place taken by
    the next row that loads; ``None`` only when no row loads (dropped by
    :func:`skip_none_collate`).

    Args:
        dataset (Dataset): the torchtune data set (unpacked).
        label (str): how messages name it (``dataset (train.jsonl)``).
        ignore_index (int): the loss's ignore index (masked labels).
    """

    WARN_FIRST = 3

    def __init__(self, dataset: Dataset, *, label: str, ignore_index: int):
        self.dataset = dataset
        self.label = label
        self.ignore_index = ignore_index
        self.failed: Dict[int, str] = {}
        self.truncated: set = set()
        self._reported = (0, 0)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        # a skipped row's place is taken by the next row that loads, so batches keep
        # their size (and a whole batch of skipped rows needs no special case)
        n = len(self.dataset)
        for offset in range(n):
            sample = self._load((index + offset) % n)
            if sample is not None:
                return sample
        return None

    def _load(self, index: int) -> Optional[Dict[str, Any]]:
        if index in self.failed or index in self.truncated:
            return None
        try:
            sample = self.dataset[index]
        except Exception as e:  # noqa: BLE001  (one bad row must not end the run)
            if index not in self.failed:
                self.failed[index] = f"{type(e).__name__}: {e}"
                if len(self.failed) <= self.WARN_FIRST:
                    log.warning(f"{self.label}: skipping row {index}: {self.failed[index]}")
            return None
        if _all_masked(sample, self.ignore_index):
            if index not in self.truncated:
                self.truncated.add(index)
                if len(self.truncated) <= self.WARN_FIRST:
                    log.warning(
                        f"{self.label}: skipping row {index}: longer than tokenizer.max_seq_len, "
                        "truncation left no label to train on"
                    )
            return None
        return sample

    def report(self) -> Optional[str]:
        """What was skipped since the last report (None if nothing)."""
        now = (len(self.failed), len(self.truncated))
        if now == self._reported:
            return None
        self._reported = now
        parts = []
        if self.failed:
            first = min(self.failed)
            parts.append(f"{len(self.failed)} rows that failed to load (first: row {first}: {self.failed[first]})")
        if self.truncated:
            parts.append(f"{len(self.truncated)} fully truncated examples (first: row {min(self.truncated)})")
        return f"{self.label}: skipped " + " and ".join(parts)


def skip_none_collate(collate: Callable, *, pad_id: int, ignore_index: int) -> Callable:
    """``collate`` without the ``None`` examples of :class:`CheckedRows`; a batch whose
    examples were all skipped becomes one padding token without a label (its loss is 0,
    see :func:`loss_or_zero`), so every process still takes the step together."""

    def wrapped(batch: List[Optional[Dict[str, Any]]]):
        kept = [b for b in batch if b is not None]
        if not kept:
            kept = [{"tokens": [pad_id], "labels": [ignore_index]}]
        return collate(kept)

    return wrapped


def loss_or_zero(loss_fn: Callable, logits: Any, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``loss_fn(logits, labels)``, or a zero connected to the logits when no label is
    left (the token-normalised loss would be ``0 / 0``: ``nan`` weights)."""
    if bool((labels != ignore_index).any()):
        return loss_fn(logits, labels)
    chunks = logits if isinstance(logits, list) else [logits]
    return sum(c.float().sum() for c in chunks) * 0.0


def data_reports(datasets: Sequence[Any]) -> List[str]:
    """The new :meth:`CheckedRows.report` lines of ``datasets`` (others are ignored)."""
    out = []
    for ds in datasets:
        for part in getattr(ds, "_datasets", None) or [ds]:  # torchtune's ConcatDataset
            if isinstance(part, CheckedRows):
                line = part.report()
                if line:
                    out.append(line)
    return out


__all__ = [
    "CheckedRows",
    "data_problems",
    "data_reports",
    "dataset_label",
    "loss_or_zero",
    "skip_none_collate",
]
