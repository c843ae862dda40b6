"""Checks of a recipe config that run before anything is loaded, so that a bad config
fails in seconds with a message naming the field, not minutes into a run."""

from pathlib import Path
from typing import Any, Iterator, List, Tuple

from omegaconf import DictConfig, ListConfig
from torchtune.config._utils import _get_component_from_path

from genft_tune.training._genft import validate_genft_model_config


def _walk_components(node: Any, path: str) -> Iterator[Tuple[str, str]]:
    """Yield ``(dotpath, component)`` for every ``_component_`` in a config tree."""
    if isinstance(node, DictConfig):
        if "_component_" in node:
            yield path, node.get("_component_")
        for key in node.keys():
            if key == "_component_":
                continue
            # interpolations that do not resolve are torchtune's business, not ours
            try:
                child = node.get(key)
            except Exception:  # noqa: BLE001
                continue
            yield from _walk_components(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            yield from _walk_components(child, f"{path}[{i}]")


def validate_components(cfg: DictConfig) -> None:
    """Import every ``_component_`` of the config.

    Raises:
        ValueError: naming the field and the dotted path that does not import.
    """
    for path, component in _walk_components(cfg, ""):
        where = f"{path}._component_" if path else "_component_"
        if not isinstance(component, str) or not component:
            raise ValueError(f"{where} must be a dotted import path, got {component!r}")
        try:
            _get_component_from_path(component)
        except Exception as e:  # noqa: BLE001  (InstantiationError, ImportError, ...)
            raise ValueError(f"{where}: cannot import {component!r}: {e}") from None


def _checkpoint_files(cfg_checkpointer: DictConfig) -> List[str]:
    files = cfg_checkpointer.get("checkpoint_files", None)
    if files is None:
        return []
    if isinstance(files, (ListConfig, list, tuple)):
        return [str(f) for f in files]
    if isinstance(files, (DictConfig, dict)) and "filename_format" in files:
        from torchtune.training import FormattedCheckpointFiles

        return FormattedCheckpointFiles.from_dict(files).build_checkpoint_filenames()
    return [str(files)]


def validate_checkpoint_files(cfg_checkpointer: DictConfig) -> None:
    """Check that the base checkpoint's folder and files exist.

    Raises:
        FileNotFoundError: naming ``checkpointer.checkpoint_dir`` or the missing file.
    """
    ckpt_dir = cfg_checkpointer.get("checkpoint_dir", None)
    if ckpt_dir is None:
        raise ValueError("checkpointer.checkpoint_dir is not set")
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(
            f"checkpointer.checkpoint_dir {str(ckpt_dir)!r} does not exist; download the base "
            "model there first (e.g. `tune download <repo> --output-dir <dir>`)"
        )
    for name in _checkpoint_files(cfg_checkpointer):
        if not (ckpt_dir / name).is_file():
            raise FileNotFoundError(
                f"checkpointer.checkpoint_files: {name!r} not found in checkpointer.checkpoint_dir "
                f"{str(ckpt_dir)!r}"
            )


def validate_recipe_config(cfg: DictConfig) -> None:
    """All pre-flight checks shared by the GenFT recipes.

    Raises:
        ValueError / FileNotFoundError: with a message naming the offending field.
    """
    for key in ("model", "checkpointer", "tokenizer", "dataset", "optimizer", "loss", "output_dir"):
        if cfg.get(key, None) is None:
            raise ValueError(f"the config has no {key!r} section; the GenFT recipes need it")
    validate_components(cfg)
    validate_genft_model_config(cfg.model)
    validate_checkpoint_files(cfg.checkpointer)
    accum = cfg.get("gradient_accumulation_steps", 1)
    if not isinstance(accum, int) or accum < 1:
        raise ValueError(f"gradient_accumulation_steps must be an integer >= 1, got {accum!r}")
    for key in ("save_every_n_steps", "run_val_every_n_steps", "max_validation_steps"):
        value = cfg.get(key, None)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be null or an integer >= 1, got {value!r}")
    if cfg.get("run_val_every_n_steps", None) is not None and cfg.get("dataset_val", None) is None:
        raise ValueError("run_val_every_n_steps is set, but there is no dataset_val to validate on")
