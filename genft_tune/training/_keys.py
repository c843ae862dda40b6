"""Unknown config keys, at any depth, refused before anything loads: a typo such as
``max_step_per_epoch`` would otherwise be ignored (a "short test run" trains a whole
epoch), and ``optimizer.lrr`` would be a ``TypeError`` traceback after start-up.

Top-level keys are compared with the keys the LLM recipes read; the keys of a section
with a ``_component_`` with the parameters of that component (``inspect.signature``),
those of ``model.base_kwargs`` with the parameters of ``model.base``, and the extra keys
of a Hugging Face data set (``instruct_dataset(..., **load_dataset_kwargs)``) with
``datasets.load_dataset``'s and the file format's own options.
"""

import dataclasses
import difflib
import inspect
from typing import Any, Callable, Iterable, List, Optional, Set

import datasets
from omegaconf import DictConfig, ListConfig
from torchtune.config._utils import _get_component_from_path

from genft_tune.modules import adapter_kinds

# Every top-level key that genft_finetune_single_device / _distributed read.
RECIPE_KEYS = frozenset({
    "output_dir", "model", "tokenizer", "checkpointer", "resume_from_checkpoint",
    "save_adapter_weights_only", "dataset", "dataset_val", "seed", "shuffle", "batch_size",
    "batch_size_val", "optimizer", "lr_scheduler", "loss", "epochs", "max_steps_per_epoch",
    "gradient_accumulation_steps", "clip_grad_norm", "compile", "device", "dtype",
    "enable_activation_checkpointing", "enable_activation_offloading", "metric_logger",
    "log_every_n_steps", "log_peak_memory_stats", "profiler", "save_every_n_steps",
    "run_val_every_n_steps", "max_validation_steps", "cudnn_deterministic_mode", "low_cpu_ram",
    "collate_fn", "enable_fp8_training", "fp8_recipe_name", "custom_sharded_layers",
    "fsdp_cpu_offload", "fsdp_reshard_after_forward",
})

# Keys of the profiler section that the recipes read besides setup_torch_profiler's.
_PROFILER_EXTRA = {"_component_"}

# Hugging Face packaged formats whose builder options a data set section may carry.
_HF_FORMATS = {
    "json": "datasets.packaged_modules.json.json.JsonConfig",
    "csv": "datasets.packaged_modules.csv.csv.CsvConfig",
    "parquet": "datasets.packaged_modules.parquet.parquet.ParquetConfig",
    "text": "datasets.packaged_modules.text.text.TextConfig",
    "arrow": "datasets.packaged_modules.arrow.arrow.ArrowConfig",
}


# Names from other libraries' configs (PEFT, torchtune's LoRA, transformers) -> ours.
_SYNONYMS = {
    "learning_rate": ("lr",),
    "num_epochs": ("epochs",),
    "num_train_epochs": ("epochs",),
    "max_steps": ("max_steps_per_epoch",),
    "per_device_train_batch_size": ("batch_size",),
}
_TARGET_SYNONYMS = ("targets", "target_modules", "lora_attn_modules")


def _synonyms(key: str) -> tuple:
    """Our names for another library's ``key``; target keys are every registered method's."""
    if key in _TARGET_SYNONYMS:
        return ("targets",) + tuple(f"{kind.name}_attn_modules" for kind in adapter_kinds())
    return _SYNONYMS.get(key, ())


def _closest(path: str, key: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    match = [s for s in _synonyms(key) if s in valid][:1]
    match = match or difflib.get_close_matches(key, valid, n=1, cutoff=0.7)
    return f"; did you mean {(f'{path}.{match[0]}' if path else match[0])!r}?" if match else ""


def _unknown(path: str, key: str, valid: Set[str], what: str) -> ValueError:
    where = f"{path}.{key}" if path else key
    hint = _closest(path, key, valid)
    if hint:
        return ValueError(f"unknown config key {where!r}{hint}")
    shown = sorted(v for v in valid if not v.startswith("_"))
    listing = ", ".join(shown) if len(shown) <= 40 else ", ".join(shown[:40]) + ", ..."
    return ValueError(f"unknown config key {where!r} ({what}: {listing})")


def _parameters(fn: Callable) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _load_dataset_keys(source: Any) -> Optional[Set[str]]:
    """``datasets.load_dataset``'s parameters plus the format's builder options, or None
    when the source is not a packaged format (a Hub data set takes its own options)."""
    fmt = _HF_FORMATS.get(str(source))
    if fmt is None:
        return None
    keys = set(inspect.signature(datasets.load_dataset).parameters) - {"path", "config_kwargs"}
    try:
        keys |= {f.name for f in dataclasses.fields(_get_component_from_path(fmt))}
    except Exception:  # noqa: BLE001  (another datasets version: no format options known)
        return None
    return keys


def _component_problems(node: DictConfig, path: str) -> List[ValueError]:
    try:
        fn = _get_component_from_path(node.get("_component_"))
    except Exception:  # noqa: BLE001  (validate_components reports it)
        return []
    sig = _parameters(fn)
    if sig is None:
        return []
    params = sig.parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = next((n for n, p in params.items() if p.kind == p.VAR_KEYWORD), None)
    valid = named | {"_component_"}
    if path == "profiler":
        valid |= _PROFILER_EXTRA
    if var_kw is not None:
        if var_kw != "load_dataset_kwargs":
            return []  # the component takes anything
        extra = _load_dataset_keys(node.get("source", None))
        if extra is None:
            return []
        valid |= extra
    name = getattr(fn, "__qualname__", str(fn))
    return [_unknown(path, k, valid, f"{name} takes") for k in node.keys() if k not in valid]


def _base_kwargs_problems(model: DictConfig) -> List[ValueError]:
    base, kwargs = model.get("base", None), model.get("base_kwargs", None)
    if not isinstance(base, str) or not isinstance(kwargs, DictConfig):
        return []
    try:
        sig = _parameters(_get_component_from_path(base))
    except Exception:  # noqa: BLE001  (genft_model reports a base that does not import)
        return []
    if sig is None or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return []
    valid = set(sig.parameters)
    unknown = [k for k in kwargs.keys() if k not in valid]
    if len(unknown) > 1 and "embed_dim" not in valid:  # sizes given to a fixed-size builder
        takes = f"takes only {sorted(valid)}" if valid else "takes no arguments"
        return [ValueError(
            f"model.base_kwargs: {base} builds one fixed size and {takes}, not {unknown}; remove "
            "them, or build the checkpoint's own size with model.base=genft_tune.models.checkpoint_decoder "
            "model.base_kwargs.checkpoint_dir=<checkpoint folder> (docs/own_data.md)"
        )]
    return [_unknown("model.base_kwargs", k, valid, f"{base} takes") for k in kwargs.keys() if k not in valid]


def _walk(node: Any, path: str) -> List[ValueError]:
    problems: List[ValueError] = []
    if isinstance(node, DictConfig):
        if "_component_" in node:
            problems += _component_problems(node, path)
        for key in node.keys():
            if key == "_component_":
                continue
            try:
                child = node.get(key)
            except Exception:  # noqa: BLE001  (an interpolation that does not resolve)
                continue
            problems += _walk(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            problems += _walk(child, f"{path}[{i}]")
    return problems


def unknown_key_problems(cfg: DictConfig, *, recipe_keys: Iterable[str] = RECIPE_KEYS) -> List[ValueError]:
    """Every key of ``cfg`` that nothing reads, each with the closest valid name.

    Args:
        cfg (DictConfig): the recipe config.
        recipe_keys (Iterable[str]): the top-level keys the recipe reads.

    Returns:
        List[ValueError]: one per unknown key ("unknown config key 'optimizer.lrr'; did
        you mean 'lr'? (AdamW.__init__ takes: ...)").
    """
    valid = set(recipe_keys)
    problems = [
        ValueError(f"unknown config key {k!r}: torchtune's command line sets new keys without '+' "
                   f"(write {k[1:]}.<key>=<value>)") if str(k).startswith("+") and k[1:] in valid
        else _unknown("", k, valid, "the recipe reads")
        for k in cfg.keys() if k not in valid
    ]
    for key in cfg.keys():
        if key in valid:
            try:
                child = cfg.get(key)
            except Exception:  # noqa: BLE001
                continue
            problems += _walk(child, str(key))
    model = cfg.get("model", None)
    if isinstance(model, DictConfig):
        problems += _base_kwargs_problems(model)
    return problems


__all__ = ["RECIPE_KEYS", "unknown_key_problems"]
