"""Checks of a recipe config that run before anything is loaded, so that a bad config
fails in seconds with a message naming the field, not minutes into a run."""

import contextlib
import importlib.util
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import torch
from omegaconf import DictConfig, ListConfig
from torchtune.config._utils import _get_component_from_path
from torchtune.training import FormattedCheckpointFiles

from genft_tune._recipe_registry import OPTIONAL_COMPONENTS
from genft_tune.modules import adapter_kinds
from genft_tune.training._ckpt_check import checkpoint_problems
from genft_tune.training._data_check import data_problems
from genft_tune.training._keys import unknown_key_problems
from genft_tune.training._targets import validate_model_config


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
    names = _checkpoint_files(cfg_checkpointer)
    for name in names:
        if not (ckpt_dir / name).is_file():
            raise FileNotFoundError(
                f"checkpointer.checkpoint_files: {name!r} not found in checkpointer.checkpoint_dir "
                f"{str(ckpt_dir)!r}"
            )
    # a sharded checkpoint: every shard its index names must be listed
    index = ckpt_dir / "model.safetensors.index.json"
    if names and all(n.endswith(".safetensors") for n in names) and index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            shards = []
        missing = [f for f in shards if f not in names]
        if missing:
            raise ValueError(
                f"checkpointer.checkpoint_files lists {len(shards) - len(missing)} of the {len(shards)} shards "
                f"that {index.name} names; add {missing[:3]}{'...' if len(missing) > 3 else ''} "
                f"(checkpointer.checkpoint_files=[{','.join(shards)}])"
            )


class ConfigError(ValueError):
    """Several mistakes in a recipe config, one per line (each names its field)."""

    def __init__(self, problems: List[BaseException]):
        self.problems = problems
        super().__init__(
            f"the config has {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _user_error(e: BaseException) -> BaseException:
    e.user_error = True  # printed without a traceback by user_errors()
    return e


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def adapter_config_problems(cfg_model: DictConfig) -> List[ValueError]:
    """The adapter hyperparameters of a model config, through the method's own config
    class, field by field (so that every bad field is reported), before anything is built.

    The method is the registered one whose config fields the model section names most
    (``shared_dim``..., or ``wegeft_rank``...); a section naming none is left to its builder.
    """
    keys = set(cfg_model.keys()) - {"_component_"}
    best, best_hits = None, 0
    for kind in adapter_kinds():
        names = [f.name for f in fields(kind.config_cls)]
        hits = {n: k for n in names for k in (n, f"{kind.name}_{n}") if k in keys}
        if len(hits) > best_hits:
            best, best_hits = (kind, hits), len(hits)
    if best is None:
        return []
    kind, hits = best
    problems: List[ValueError] = []
    values = {}
    for name, key in hits.items():
        try:
            value = cfg_model.get(key)
        except Exception as e:  # noqa: BLE001  (an interpolation that does not resolve)
            problems.append(ValueError(f"model.{key}: {e}"))
            continue
        try:
            kind.config_cls(**{name: value})
            values[name] = value
        except (TypeError, ValueError) as e:
            problems.append(ValueError(f"model.{key}: {e}"))
    if not problems:
        try:
            kind.config_cls(**values)
        except (TypeError, ValueError) as e:
            problems.append(ValueError(f"model: {e}"))
    return problems


def _field_problems(cfg: DictConfig) -> List[ValueError]:
    """Numbers the recipes need, checked by type and range."""
    problems = []

    def check(path: str, ok, allowed: str, required: bool = False):
        node, *rest = path.split(".")
        value = cfg.get(node, None)
        for part in rest:
            value = value.get(part, None) if isinstance(value, DictConfig) else None
        if value is None:
            if required:
                problems.append(ValueError(f"{path} is not set; it must be {allowed}"))
            return
        if not ok(value):
            problems.append(ValueError(f"{path} must be {allowed}, got {value!r}"))

    check("batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1", required=True)
    check("epochs", lambda v: _is_int(v) and v >= 1, "an integer >= 1", required=True)
    check("max_steps_per_epoch", lambda v: _is_int(v) and v >= 1, "null or an integer >= 1")
    check("gradient_accumulation_steps", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
    for key in ("save_every_n_steps", "run_val_every_n_steps", "max_validation_steps", "log_every_n_steps"):
        check(key, lambda v: _is_int(v) and v >= 1, "null or an integer >= 1")
    check("optimizer.lr", lambda v: _is_number(v) and v > 0, "a number > 0", required=True)
    check("optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    check("optimizer.eps", lambda v: _is_number(v) and v > 0, "a number > 0")
    check("lr_scheduler.num_warmup_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    check("clip_grad_norm", lambda v: _is_number(v) and v > 0, "null or a number > 0")
    check("seed", _is_int, "null or an integer")
    check("tokenizer.max_seq_len", lambda v: _is_int(v) and v >= 1, "null or an integer >= 1")
    for key in ("shuffle", "compile", "resume_from_checkpoint", "save_adapter_weights_only",
                "enable_activation_checkpointing", "enable_activation_offloading",
                "log_peak_memory_stats", "enable_fp8_training", "dataset.packed",
                "dataset.train_on_input", "dataset_val.train_on_input"):
        check(key, lambda v: isinstance(v, bool), "True or False")
    collate = cfg.get("collate_fn", None)
    if collate is not None:
        try:
            _get_component_from_path(str(collate))
        except Exception as e:  # noqa: BLE001
            problems.append(ValueError(f"collate_fn: cannot import {collate!r}: {e}"))
    model = cfg.get("model", None)
    kwargs = model.get("base_kwargs", None) if isinstance(model, DictConfig) else None
    if kwargs is not None and not isinstance(kwargs, DictConfig):
        problems.append(ValueError(
            f"model.base_kwargs must be a mapping, got {kwargs!r}; on the command line give each "
            "key: model.base_kwargs.embed_dim=64 model.base_kwargs.num_layers=2 ..."
        ))
    return problems


def device_problems(cfg: DictConfig) -> List[ValueError]:
    """``device`` and ``dtype`` must exist on this machine (torchtune would quietly fall
    back to the CPU for a missing CUDA)."""
    problems = []
    device = str(cfg.get("device", "cpu") or "cpu")
    kind = device.split(":")[0]
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "xpu": hasattr(torch, "xpu") and torch.xpu.is_available(),
        "npu": hasattr(torch, "npu") and torch.npu.is_available(),
    }
    if kind not in available:
        problems.append(ValueError(f"device must be one of {list(available)} (optionally with :index), got {device!r}"))
    elif not available[kind]:
        problems.append(ValueError(f"device: {device!r} is not available on this machine; use device=cpu"))
    dtype = cfg.get("dtype", "fp32")
    if dtype not in ("fp32", "bf16", "fp16"):
        problems.append(ValueError(f"dtype must be one of ['fp32', 'bf16'], got {dtype!r}"))
    elif dtype == "fp16":
        problems.append(ValueError("dtype: fp16 is not supported by the GenFT recipes; use fp32 or bf16"))
    elif dtype == "bf16" and kind == "cuda" and available["cuda"] and not torch.cuda.is_bf16_supported():
        problems.append(ValueError("dtype: bf16 is not supported by this GPU; use dtype=fp32"))
    return problems


# torchtune metric loggers -> (the module they import when created, its pip package)
_LOGGER_PACKAGES = {
    "WandBLogger": ("wandb", "wandb"),
    "TensorBoardLogger": ("torch.utils.tensorboard", "tensorboard"),
    "CometLogger": ("comet_ml", "comet_ml"),
    "MLFlowLogger": ("mlflow", "mlflow"),
}


def metric_logger_problems(cfg: DictConfig) -> List[ValueError]:
    """A metric logger whose package is not installed (torchtune finds out when it creates
    the logger, after the model has loaded)."""
    node = cfg.get("metric_logger", None)
    name = str(node.get("_component_", "")).rsplit(".", 1)[-1] if isinstance(node, DictConfig) else ""
    if name not in _LOGGER_PACKAGES:
        return []
    module, package = _LOGGER_PACKAGES[name]
    try:
        found = importlib.util.find_spec(module) is not None
        if found and module == "torch.utils.tensorboard":
            found = importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return []
    return [ValueError(
        f"metric_logger: {name} needs the {package!r} package (pip install {package}); or log to files with "
        "metric_logger._component_=torchtune.training.metric_logging.DiskLogger"
    )]


def memory_switch_problems(cfg: DictConfig) -> List[ValueError]:
    """Activation offloading needs CUDA and activation checkpointing; a packed data set
    needs ``tokenizer.max_seq_len`` (the length of a pack)."""
    problems = []
    device = str(cfg.get("device", "cpu") or "cpu").split(":")[0]
    if cfg.get("enable_activation_offloading", False):
        if device != "cuda":
            problems.append(ValueError(
                f"enable_activation_offloading=True needs CUDA (device=cuda; this run uses {device!r}); "
                "set enable_activation_offloading=False"
            ))
        elif not cfg.get("enable_activation_checkpointing", False):
            problems.append(ValueError(
                "enable_activation_offloading=True needs enable_activation_checkpointing=True"
            ))
    tokenizer = cfg.get("tokenizer", None)
    datasets = cfg.get("dataset", None)
    datasets = list(datasets) if isinstance(datasets, ListConfig) else [datasets]
    for i, node in enumerate(datasets):
        if isinstance(node, DictConfig) and node.get("packed", False) and isinstance(tokenizer, DictConfig) \
                and tokenizer.get("max_seq_len", None) is None:
            field = "dataset" if len(datasets) == 1 else f"dataset[{i}]"
            problems.append(ValueError(
                f"{field}.packed=True needs tokenizer.max_seq_len (the length of a pack), e.g. "
                f"tokenizer.max_seq_len=2048; or set {field}.packed=False"
            ))
    return problems


def output_dir_problems(cfg: DictConfig) -> List[ValueError]:
    """``output_dir`` must be (or become) a writable folder, outside the base checkpoint's
    folder (torchtune's checkpointer refuses that only once the run has started)."""
    out = Path(str(cfg.get("output_dir")))
    ckpt = (cfg.get("checkpointer") or {}).get("checkpoint_dir", None) if isinstance(cfg.get("checkpointer", None), DictConfig) else None
    if ckpt is not None:
        a, b = out.resolve(), Path(str(ckpt)).resolve()
        if a == b or b in a.parents:
            return [ValueError(
                f"output_dir {str(out)!r} is inside checkpointer.checkpoint_dir {str(ckpt)!r}: the run would "
                "write next to the base model's files; choose an output_dir outside it"
            )]
    if out.exists() and not out.is_dir():
        return [ValueError(f"output_dir {str(out)!r} exists and is not a folder")]
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [ValueError(f"output_dir {str(out)!r} cannot be created: {str(existing)!r} is not a folder")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [ValueError(f"output_dir {str(out)!r} is not writable ({str(existing)!r})")]
    return []


def switch_off_null_components(cfg: DictConfig) -> None:
    """``dataset_val=null`` (torchtune's CLI sets ``dataset_val._component_`` to null; a
    ``~dataset_val`` is rewritten so) means no such component: the entry becomes None, and
    with no validation data ``run_val_every_n_steps`` is dropped too."""
    for key in OPTIONAL_COMPONENTS:
        value = cfg.get(key, None)
        if isinstance(value, DictConfig) and "_component_" in value and value["_component_"] is None:
            cfg[key] = None
            if key == "dataset_val" and "run_val_every_n_steps" in cfg:
                cfg["run_val_every_n_steps"] = None


def validate_recipe_config(cfg: DictConfig) -> None:
    """All pre-flight checks shared by the GenFT recipes, run before any logger, file or
    checkpoint is touched; every problem is reported, not only the first.

    Raises:
        ValueError / FileNotFoundError: the one problem found, naming its field; or
            :class:`ConfigError` (a ValueError) listing several. Either is marked
            ``user_error`` (see :func:`user_errors`).
    """
    switch_off_null_components(cfg)
    problems: List[BaseException] = []
    for key in ("model", "checkpointer", "tokenizer", "dataset", "optimizer", "loss", "output_dir"):
        if cfg.get(key, None) is None:
            problems.append(ValueError(f"the config has no {key!r} section; the GenFT recipes need it"))
    problems += unknown_key_problems(cfg)
    if problems:  # a misspelt key can make every later check misleading
        raise _user_error(problems[0] if len(problems) == 1 else ConfigError(problems))
    for check in (validate_components, lambda c: validate_model_config(c.model),
                  lambda c: validate_checkpoint_files(c.checkpointer)):
        try:
            check(cfg)
        except (ValueError, FileNotFoundError) as e:
            problems.append(e)
    problems += adapter_config_problems(cfg.model)
    problems += _field_problems(cfg)
    if cfg.get("run_val_every_n_steps", None) is not None and cfg.get("dataset_val", None) is None:
        problems.append(ValueError("run_val_every_n_steps is set, but there is no dataset_val to validate on"))
    problems += device_problems(cfg)
    problems += memory_switch_problems(cfg)
    problems += metric_logger_problems(cfg)
    problems += output_dir_problems(cfg)
    if problems:
        raise _user_error(problems[0] if len(problems) == 1 else ConfigError(problems))


def preflight(cfg: DictConfig) -> None:
    """Everything a recipe checks before it loads a weight or writes a file: the config
    (:func:`validate_recipe_config`), then the checkpoint against the model config
    (built on the meta device; shapes from the safetensors headers) and, for a resumed
    run, the checkpoint to resume; then the tokenizer and the data (opens, has the
    columns, not empty, tokenizes, not all truncated).

    Raises:
        ValueError / ConfigError: marked ``user_error`` (see :func:`user_errors`).
    """
    validate_recipe_config(cfg)
    problems: List[BaseException] = checkpoint_problems(cfg, _checkpoint_files(cfg.checkpointer))
    ignore_index = cfg.loss.get("ignore_index", -100) if isinstance(cfg.loss, DictConfig) else -100
    problems += data_problems(cfg, ignore_index=ignore_index)
    if problems:
        raise _user_error(problems[0] if len(problems) == 1 else ConfigError(problems))


def validate_image_recipe_config(cfg: DictConfig) -> None:
    """The image recipe's pre-flight checks (as :func:`validate_recipe_config`): sections,
    components, adapter hyperparameters, numbers, device and dtype, output_dir, the data
    folders and ``image_size`` against ``patch_size``; every problem reported at once.

    Raises:
        ValueError / FileNotFoundError / ConfigError: marked ``user_error``.
    """
    switch_off_null_components(cfg)
    problems: List[BaseException] = []
    for key in ("model", "dataset", "optimizer", "output_dir"):
        if cfg.get(key, None) is None:
            problems.append(ValueError(f"the config has no {key!r} section; the image recipe needs it"))
    if problems:
        raise _user_error(problems[0] if len(problems) == 1 else ConfigError(problems))
    try:
        validate_components(cfg)
    except ValueError as e:
        problems.append(e)
    problems += adapter_config_problems(cfg.model)
    problems += _field_problems(cfg)
    problems += device_problems(cfg)
    problems += output_dir_problems(cfg)
    for field in ("dataset", "eval_dataset"):
        data_dir = (cfg.get(field) or {}).get("data_dir", None) if cfg.get(field, None) is not None else None
        if data_dir is not None and not Path(str(data_dir)).is_dir():
            problems.append(FileNotFoundError(f"{field}.data_dir {str(data_dir)!r} does not exist"))
    size, patch = cfg.model.get("image_size", None), cfg.model.get("patch_size", None)
    if _is_int(size) and _is_int(patch) and patch > 0 and size % patch:
        problems.append(ValueError(
            f"model.image_size ({size}) must be a multiple of model.patch_size ({patch}): the last "
            f"{size % patch} pixels of each side would never be seen; use {size - size % patch} or "
            f"{size + patch - size % patch}"
        ))
    if problems:
        raise _user_error(problems[0] if len(problems) == 1 else ConfigError(problems))


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Print a user's mistake (an error marked ``user_error``) as one clear message and
    exit with status 2, without a traceback; ``GENFT_TUNE_DEBUG=1`` shows the traceback.
    Programming errors keep theirs."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        if not getattr(e, "user_error", False) or os.environ.get("GENFT_TUNE_DEBUG") == "1":
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
