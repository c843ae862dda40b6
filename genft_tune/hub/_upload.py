"""Publish a merged GenFT model folder to the Hugging Face Hub.

The folder is staged (links to its files, plus the generated ``README.md`` model card
and ``loss_curve.png``) and sent with ``HfApi.create_repo`` + ``HfApi.upload_folder``
in one commit; the folder itself is never modified. ``dry_run_dir`` writes exactly the
staged files instead. The token comes from the usual ``huggingface_hub`` sources
(``token`` argument, ``HF_TOKEN``, the cached ``hf auth login``), the endpoint from
``HF_ENDPOINT``.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Union

from genft_tune._fs import temp_dir
from genft_tune.hub._model_card import (
    build_model_card,
    CARD_FILE,
    LOSS_CURVE_FILE,
    parse_metric_log,
    plot_loss_curve,
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


def stage_folder(
    folder: PathLike, staging: PathLike, *, repo_id: str, license: Optional[str] = None, copy: bool = False
) -> List[str]:
    """Fill ``staging`` with what is published: the folder's files (symlinked, or
    copied with ``copy``), a generated ``README.md`` and ``loss_curve.png``.

    Returns:
        List[str]: the staged paths, relative, sorted.

    Raises:
        FileNotFoundError: if ``folder`` does not exist or holds no weights.
    """
    folder, staging = Path(folder), Path(staging)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        raise FileNotFoundError(
            f"no weights in {folder} (expected {', '.join(WEIGHT_PATTERNS)}): run `genft-tune merge` first"
        )
    staging.mkdir(parents=True, exist_ok=True)
    for rel in _files(folder):
        if rel.as_posix() in (CARD_FILE, LOSS_CURVE_FILE):
            continue  # regenerated below (the base's card is read for its license)
        dst = staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copy2(folder / rel, dst)
        else:
            try:
                os.symlink((folder / rel).resolve(), dst)
            except OSError:
                shutil.copy2(folder / rel, dst)
    curve = None
    if (folder / TRAINING_LOG_FILE).is_file():
        curve = plot_loss_curve(parse_metric_log(folder / TRAINING_LOG_FILE), staging / LOSS_CURVE_FILE)
    card = build_model_card(folder, repo_id=repo_id, license=license, loss_curve=curve.name if curve else None)
    (staging / CARD_FILE).write_text(card, encoding="utf8")
    return sorted(p.as_posix() for p in _files(staging))


def publish_folder(
    folder: PathLike,
    *,
    repo_id: str,
    private: bool = False,
    token: Optional[str] = None,
    dry_run_dir: Optional[PathLike] = None,
    license: Optional[str] = None,
    commit_message: str = "Upload GenFT model with genft-tune",
) -> Dict[str, object]:
    """Create ``repo_id`` (if needed) and upload ``folder`` with its model card.

    Args:
        folder (PathLike): a merged model folder (``genft-tune merge`` output).
        repo_id (str): ``USER/NAME``.
        private (bool): create the repo private.
        token (Optional[str]): Hub token; default: ``HF_TOKEN`` or the cached login.
        dry_run_dir (Optional[PathLike]): write the files that would be uploaded
            there (must not exist) instead of uploading.
        license (Optional[str]): license for the card (default: the base's).
        commit_message (str): message of the commit.

    Returns:
        Dict[str, object]: ``files`` (uploaded paths) and ``url`` (repo URL, or the
        dry-run directory).

    Raises:
        ValueError: for a malformed ``repo_id`` or when no token is found.
        FileNotFoundError: if ``folder`` holds no weights.
        FileExistsError: if ``dry_run_dir`` exists.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like USER/NAME, got {repo_id!r}")
    folder = Path(folder)
    if dry_run_dir is not None:
        dry_run_dir = Path(dry_run_dir)
        if dry_run_dir.exists():
            raise FileExistsError(f"dry-run directory {dry_run_dir} exists")
        dry_run_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(dry_run_dir.parent, prefix=f"{dry_run_dir.name}.tmp-")
        try:
            files = stage_folder(folder, tmp, repo_id=repo_id, license=license, copy=True)
            os.replace(tmp, dry_run_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info(f"Dry run: {len(files)} files that would be uploaded to {repo_id} written to {dry_run_dir}")
        return {"files": files, "url": str(dry_run_dir)}

    from huggingface_hub import get_token, HfApi

    token = token or get_token()
    if not token:
        raise ValueError(
            "no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login`"
        )
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="genft-publish-") as staging:
        files = stage_folder(folder, staging, repo_id=repo_id, license=license)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        log.info(f"Uploading {len(files)} files to {url}")
        api.upload_folder(
            repo_id=repo_id, folder_path=staging, repo_type="model", commit_message=commit_message
        )
    return {"files": files, "url": str(url)}


__all__ = ["publish_folder", "stage_folder"]
