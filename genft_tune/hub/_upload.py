"""Publish a merged GenFT model folder, or a PEFT-format adapter alone, to the Hugging
Face Hub.

The folder is staged (links to its files, plus the generated ``README.md`` model card
and ``loss_curve.png``) and sent with ``HfApi.create_repo`` + ``HfApi.upload_folder``
in one commit; the folder itself is never modified. ``dry_run_dir`` writes exactly the
staged files instead. The token comes from the usual ``huggingface_hub`` sources
(``token`` argument, ``HF_TOKEN``, the cached ``hf auth login``), the endpoint from
``HF_ENDPOINT``.
"""

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Union

from huggingface_hub import get_token, HfApi

from genft_tune._fs import new_folder
from genft_tune.checkpointing._hf_checkpointer import write_config_dtype, written_dtype
from genft_tune._file_names import (
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PEFT_CONFIG_FILE, PEFT_SUBDIR, PEFT_WEIGHTS_FILE,
)
from genft_tune.checkpointing._read_adapter import peft_folder
from genft_tune.cards._base import base_card, front_matter, HUB_ID
from genft_tune.cards._model_card import (
    adapter_base_model,
    build_adapter_card,
    build_model_card,
    CARD_FILE,
    find_adapter_json,
    find_run_files,
    folder_base_card,
    LOSS_CURVE_FILE,
    plot_loss_curve,
    RunFiles,
    TRAINING_CONFIG_FILE,
    TRAINING_LOG_FILE,
)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
WEIGHT_PATTERNS = ("*.safetensors", "*.pth", "*.pt", "*.bin")


def _files(folder: Path) -> List[Path]:
    """Files to publish, relative to ``folder``: hidden files/dirs and leftovers of
    interrupted writes (``*.tmp*``) are skipped."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or ".tmp" in path.name:
            continue
        if path.is_file():
            out.append(rel)
    return out


# Our adapter pair and PEFT's: not part of a merged model's upload unless asked (a
# top-level adapter_config.json would even make transformers load the folder as an adapter).
ADAPTER_FILES = (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE)


def _is_adapter_file(rel: Path) -> bool:
    return rel.parts[0] == PEFT_SUBDIR or (len(rel.parts) == 1 and rel.name in ADAPTER_FILES)


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(src, dst)
        return
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _loss_curve(run_files: RunFiles, staging: Path) -> Optional[Path]:
    metrics = run_files.metrics()
    return plot_loss_curve(metrics, staging / LOSS_CURVE_FILE) if metrics else None


def _stage_run_files(run_files: RunFiles, staging: Path, copy: bool) -> None:
    """The run's config and its whole metric log (every log of the run joined, resumed
    steps replacing the overlapped ones), under their usual names, unless the folder had
    its own."""
    if run_files.config is not None and not (staging / TRAINING_CONFIG_FILE).exists():
        _place(run_files.config, staging / TRAINING_CONFIG_FILE, copy)
    if run_files.logs and not (staging / TRAINING_LOG_FILE).exists():
        (staging / TRAINING_LOG_FILE).write_text(run_files.log_text())


def _stage_true_dtype(folder: Path, staging: Path) -> None:
    """A ``config.json`` whose dtype is that of the weights, for a folder written before
    recipes set it (a bf16 run on an fp32 base wrote bf16 tensors under the base's config)."""
    staged = staging / "config.json"
    dtype = written_dtype(folder)
    if dtype is None or not staged.exists():
        return
    text = staged.read_text()
    said = {json.loads(text).get(k) for k in ("torch_dtype", "dtype")} - {None}
    if said == {dtype}:
        return
    staged.unlink()  # a link to the folder's own file, which stays untouched
    staged.write_text(text)
    write_config_dtype(staging, dtype)
    log.info(f"config.json: dtype set to {dtype}, the dtype of the weights in {folder}")


def _safetensors_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a complete safetensors file (None when its header and data
    are all there): what an interrupted write leaves."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return "its header is cut off"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return "its header is not readable"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + n + max(ends, default=0) > size:
        return f"it holds {size} bytes of {8 + n + max(ends)}"
    return None


def check_merged_folder(folder: Path) -> None:
    """Refuse a folder that would not load as what its model card says: a merged GenFT or
    WeGeFT model (transformers' format: ``config.json`` and complete weights; or
    torchtune's ``.pt``/``.pth``) with the adapter json that the card's claims come from.

    Raises:
        FileNotFoundError: naming what is missing and the fix (``--adapter-only`` for an
            adapter checkpoint).
    """
    if not folder.exists():
        raise FileNotFoundError(f"--folder {folder} does not exist")
    if not folder.is_dir():
        raise FileNotFoundError(f"--folder {folder} is a file, not a folder")
    weights = [rel for rel in _files(folder) if rel.suffix in (".safetensors", ".bin", ".pt", ".pth")
               and not _is_adapter_file(rel) and len(rel.parts) == 1]
    has_adapter = (folder / ADAPTER_CONFIG_FILE).is_file() or (folder / PEFT_SUBDIR / PEFT_CONFIG_FILE).is_file() \
        or (folder / PEFT_CONFIG_FILE).is_file()
    if not weights and has_adapter:
        raise FileNotFoundError(
            f"{folder} holds an adapter only, no merged weights: publish the adapter with --adapter-only, or merge it "
            f"first (genft-tune merge --base BASE --adapter {folder} --output DIR) and publish DIR"
        )
    epochs = sorted((p for p in folder.glob("epoch_*") if p.is_dir() and p.name[6:].isdigit()),
                    key=lambda p: int(p.name[6:]))
    if not weights and epochs:
        raise FileNotFoundError(
            f"{folder} is a run's output_dir, not a checkpoint: publish its last epoch folder, --folder {epochs[-1]}"
        )
    if not weights:
        raise FileNotFoundError(
            f"no weights in {folder} (expected {', '.join(WEIGHT_PATTERNS)}): run `genft-tune merge` first"
        )
    hf_weights = [w for w in weights if w.suffix in (".safetensors", ".bin")]
    config = folder / "config.json"
    if hf_weights and not config.is_file():
        raise FileNotFoundError(
            f"{folder} has weights but no config.json, so transformers cannot load it (a checkpoint interrupted "
            "while it was written?): merge again with `genft-tune merge` (or run the training again)"
        )
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (ValueError, AttributeError, UnicodeDecodeError):
            model_type = None
        if not model_type:
            raise FileNotFoundError(f"{config} is not a transformers config (no model_type): transformers cannot load it")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FileNotFoundError(f"{index} is not a readable safetensors index") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names missing shard(s) {missing[:3]}: the checkpoint is incomplete")
    for rel in (w for w in weights if w.suffix == ".safetensors"):
        problem = _safetensors_problem(folder / rel)
        if problem:
            raise FileNotFoundError(f"{folder / rel} is incomplete ({problem}): an interrupted write? merge again")
    if not find_adapter_json(folder):
        raise FileNotFoundError(
            f"no genft_config.json in {folder}: the card describes a GenFT/WeGeFT fine-tune from the adapter's "
            "hyperparameters, and this folder records none (it is not `genft-tune merge` output or a recipe's "
            "last epoch_N); upload other models with `hf upload`"
        )


def stage_folder(
    folder: PathLike,
    staging: PathLike,
    *,
    repo_id: str,
    license: Optional[str] = None,
    copy: bool = False,
    base_model: Optional[str] = None,
    include_adapter: bool = False,
) -> List[str]:
    """Fill ``staging`` with what is published for a merged model: the folder's files
    (symlinked, or copied with ``copy``) but its adapter files (unless
    ``include_adapter``), the run's config and metric log when the folder is a recipe's
    ``epoch_N`` (they live in its parent), a generated ``README.md`` and ``loss_curve.png``.

    Returns:
        List[str]: the staged paths, relative, sorted.

    Raises:
        FileNotFoundError: if ``folder`` would not load as a merged GenFT model
            (:func:`check_merged_folder`).
        BaseModelUnknown: if the base is recorded only as a local path (pass ``base_model``).
    """
    folder, staging = Path(folder), Path(staging)
    check_merged_folder(folder)
    run_files = find_run_files(folder, find_adapter_json(folder))
    staging.mkdir(parents=True, exist_ok=True)
    for rel in _files(folder):
        if rel.as_posix() in (CARD_FILE, LOSS_CURVE_FILE):
            continue  # regenerated below (the folder's card is read for the base's license)
        if _is_adapter_file(rel) and not include_adapter:
            continue
        if rel.as_posix() == TRAINING_LOG_FILE:
            continue  # the run's whole log, below
        _place(folder / rel, staging / rel, copy)
    _stage_run_files(run_files, staging, copy)
    _stage_true_dtype(folder, staging)
    curve = _loss_curve(run_files, staging)
    card = build_model_card(folder, repo_id=repo_id, license=license, loss_curve=curve.name if curve else None,
                            base_model=base_model, run_files=run_files)
    (staging / CARD_FILE).write_text(card, encoding="utf8")
    return sorted(p.as_posix() for p in _files(staging))


def stage_adapter(
    folder: PathLike,
    staging: PathLike,
    *,
    repo_id: str,
    license: Optional[str] = None,
    copy: bool = False,
    base_model: Optional[str] = None,
) -> List[str]:
    """Fill ``staging`` with a PEFT-format adapter alone (``publish --adapter-only``):
    ``adapter_config.json`` + ``adapter_model.safetensors`` from ``folder`` or its
    ``peft/`` subfolder, a ``README.md`` for PEFT and ``loss_curve.png``.

    Raises:
        FileNotFoundError: if there is no PEFT adapter of ours (naming the fix).
        BaseModelUnknown: if the base's Hub id is unknown (pass ``base_model``).
    """
    folder, staging = Path(folder), Path(staging)
    if not folder.is_dir():
        raise FileNotFoundError(f"--folder {folder} {'is a file, not a folder' if folder.exists() else 'does not exist'}")
    peft_dir = peft_folder(folder)
    if peft_dir is None or not (peft_dir / PEFT_WEIGHTS_FILE).is_file():
        hint = f"write one with `genft-tune export-peft {folder}`" if (folder / ADAPTER_CONFIG_FILE).is_file() else \
            "expected a recipe's checkpoint folder or the output of `genft-tune export-peft`"
        raise FileNotFoundError(f"no PEFT GenFT/WeGeFT adapter in {folder} or {folder / PEFT_SUBDIR}: {hint}")
    adapter_config_path = folder / ADAPTER_CONFIG_FILE
    adapter_meta = json.loads(adapter_config_path.read_text()) if adapter_config_path.is_file() else {}
    recorded = ((adapter_meta.get("extra") or {}).get("base_model_path"), adapter_meta.get("base_model"))
    base_dir = next((p for p in recorded if p and Path(p).is_dir()), None)
    run_files = find_run_files(folder, adapter_meta)
    card = base_card(base_dir) or folder_base_card(folder)
    peft_config = json.loads((peft_dir / PEFT_CONFIG_FILE).read_text())
    # the published config names the base by its Hub id (not the trainer's local path)
    peft_config["base_model_name_or_path"] = adapter_base_model(
        peft_config, adapter_meta=adapter_meta, base_card=card, override=base_model
    )
    staging.mkdir(parents=True, exist_ok=True)
    hf_config_path = Path(base_dir) / "config.json" if base_dir else None
    hf_config = json.loads(hf_config_path.read_text()) if hf_config_path and hf_config_path.is_file() else {}
    build = dict(repo_id=repo_id, adapter_meta=adapter_meta, base_card=card, license=license,
                 base_model=peft_config["base_model_name_or_path"], run_files=run_files, hf_config=hf_config)
    (staging / PEFT_CONFIG_FILE).write_text(json.dumps(peft_config, indent=2) + "\n")
    _place(peft_dir / PEFT_WEIGHTS_FILE, staging / PEFT_WEIGHTS_FILE, copy)
    curve = _loss_curve(run_files, staging)
    card = build_adapter_card(peft_dir, loss_curve=curve.name if curve else None, **build)
    (staging / CARD_FILE).write_text(card, encoding="utf8")
    return sorted(p.as_posix() for p in _files(staging))


LICENSE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")


def card_warnings(staging: PathLike) -> List[str]:
    """What a staged card lacks that the user can add: its license (the Hub shows a model
    without one as unlicensed)."""
    card = front_matter((Path(staging) / CARD_FILE).read_text(encoding="utf8"))
    if not card.get("license"):
        return ["no license found (the base's card names none): the card has no license; pass --license ID "
                "(the base's license, e.g. apache-2.0)"]
    return []


def publish_folder(
    folder: PathLike,
    *,
    repo_id: str,
    private: bool = False,
    token: Optional[str] = None,
    dry_run_dir: Optional[PathLike] = None,
    license: Optional[str] = None,
    commit_message: str = "Upload GenFT model with genft-tune",
    base_model: Optional[str] = None,
    adapter_only: bool = False,
    include_adapter: bool = False,
) -> Dict[str, object]:
    """Create ``repo_id`` (if needed) and upload ``folder`` with its model card.

    Args:
        folder (PathLike): a merged model folder (``genft-tune merge`` output or a
            recipe's last ``epoch_N``), or with ``adapter_only`` any adapter checkpoint.
        repo_id (str): ``USER/NAME``.
        private (bool): create the repo private.
        token (Optional[str]): Hub token; default: ``HF_TOKEN`` or the cached login.
        dry_run_dir (Optional[PathLike]): write the files that would be uploaded
            there (must not exist) instead of uploading.
        license (Optional[str]): license for the card (default: the base's).
        commit_message (str): message of the commit.
        base_model (Optional[str]): the base's Hub id, where the folder does not say it.
        adapter_only (bool): upload the PEFT-format adapter alone (:func:`stage_adapter`).
        include_adapter (bool): also upload the adapter files found next to merged weights.

    Returns:
        Dict[str, object]: ``files`` (uploaded paths), ``url`` (repo URL, or the
        dry-run directory) and ``warnings`` (what the card lacks, e.g. a license).

    Raises:
        ValueError: for a malformed ``repo_id`` or when no token is found.
        FileNotFoundError: if ``folder`` holds no weights.
        FileExistsError: if ``dry_run_dir`` exists.
    """
    if not HUB_ID.match(repo_id) or repo_id.count("/") != 1:
        raise ValueError(f"--repo-id must look like USER/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}")
    if license is not None and not LICENSE_ID.match(license):
        raise ValueError(f"--license must be a license id like apache-2.0 or mit (no spaces), got {license!r}")
    if base_model is not None and not HUB_ID.match(base_model):
        raise ValueError(f"--base-model must be a Hub id like ORG/NAME, got {base_model!r}")
    if adapter_only and include_adapter:
        raise ValueError("adapter_only and include_adapter exclude each other")
    folder = Path(folder)

    def stage(staging, copy=False):
        if adapter_only:
            return stage_adapter(folder, staging, repo_id=repo_id, license=license, copy=copy, base_model=base_model)
        return stage_folder(folder, staging, repo_id=repo_id, license=license, copy=copy, base_model=base_model,
                            include_adapter=include_adapter)

    if not adapter_only:
        check_merged_folder(folder)  # before anything is written
    if dry_run_dir is not None:
        dry_run_dir = Path(dry_run_dir)
        if dry_run_dir.exists():
            raise FileExistsError(f"--dry-run {dry_run_dir} exists: give a new folder")
        with new_folder(dry_run_dir, fsync=False) as tmp:
            files = stage(tmp, copy=True)
            notes = card_warnings(tmp)
        log.info(f"Dry run: {len(files)} files that would be uploaded to {repo_id} written to {dry_run_dir}")
        return {"files": files, "url": str(dry_run_dir), "warnings": notes}

    token = token or get_token()
    if not token:
        raise ValueError(
            "no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login`"
        )
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="genft-publish-") as staging:
        files = stage(staging)
        notes = card_warnings(staging)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        log.info(f"Uploading {len(files)} files to {url}")
        api.upload_folder(
            repo_id=repo_id, folder_path=staging, repo_type="model", commit_message=commit_message
        )
    return {"files": files, "url": str(url), "warnings": notes}


__all__ = ["publish_folder", "stage_adapter", "stage_folder"]
