"""The checkpoint's pre-flight: before the weights load, the model config is built on the
meta device (no memory, no weights) and compared with the checkpoint's tensor shapes,
read from the safetensors headers only; a mismatch names the numbers on both sides and
the ``model.base_kwargs`` (or model fields) that would fit. A resumed run's checkpoint
must exist and have been trained with the same adapter config.
"""

import inspect
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torchtune.config import instantiate
from torchtune import training
from torchtune.config._utils import _get_component_from_path
from torchtune.training import ModelType

from genft_tune._file_names import ADAPTER_CONFIG_FILE
from genft_tune._weights import is_safetensors, tensor_shapes
from genft_tune.checkpointing._base_checkpoint import hf_converter
from genft_tune.models._families import decoder_sizes, family_read_by, find_family
from genft_tune.training._model_adapter import find_model_adapter
from genft_tune.training._state import ADAPTER_DIR_KEY, load_recipe_state, recipe_state_path

_DIM_NAMES = {
    "vocab_size": "vocabulary", "embed_dim": "hidden size", "num_layers": "layers",
    "q_out": "q_proj outputs", "kv_out": "k_proj outputs", "intermediate_dim": "MLP size",
}


def _header_shapes(ckpt_dir: Path, files: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` from the safetensors headers; empty for torch files (reading one
    would cost a load)."""
    paths = [ckpt_dir / name for name in files]
    return tensor_shapes(paths) if all(is_safetensors(p) for p in paths) else {}


def _tune_shapes(shapes: Dict[str, Tuple[int, ...]], config: Optional[Dict[str, Any]]) -> Dict[str, Tuple[int, ...]]:
    """The checkpoint's shapes under torchtune's keys: through its family's key converter
    (Hugging Face names; fused tensors such as Phi-3's ``gate_up_proj`` split); as they
    are without a family (torchtune's own names)."""
    if find_family(config) is None:
        return shapes
    converter = hf_converter(config)
    return {t: s for k, v in shapes.items() for t, s in converter.tune_shapes(k, v).items()}


def _dims(shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, int]:
    """The decoder's sizes from its torchtune tensor names (a checkpoint's or a model's)."""
    dims: Dict[str, int] = {}
    layers = {int(m.group(1)) for k in shapes for m in [re.match(r"layers\.(\d+)\.", k)] if m}
    if layers:
        dims["num_layers"] = max(layers) + 1
    if "tok_embeddings.weight" in shapes:
        dims["vocab_size"], dims["embed_dim"] = shapes["tok_embeddings.weight"]
    q, k = shapes.get("layers.0.attn.q_proj.weight"), shapes.get("layers.0.attn.k_proj.weight")
    if q and k:
        dims["q_out"], dims["kv_out"] = q[0], k[0]
    if "layers.0.mlp.w1.weight" in shapes:
        dims["intermediate_dim"] = shapes["layers.0.mlp.w1.weight"][0]
    return dims


def _model_dims(model: torch.nn.Module) -> Dict[str, int]:
    return _dims({k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()})


def _suggestion(cfg_model: DictConfig, config: Optional[Dict[str, Any]], ckpt_dir: Path) -> str:
    if not config or "hidden_size" not in config:
        return "use the model config of the checkpoint's family and size (genft-tune ls)"
    family = find_family(config)
    kwargs = (family.sizes if family else decoder_sizes)(config)

    def accepted(fn_path: str) -> Optional[set]:
        try:
            return set(inspect.signature(_get_component_from_path(fn_path)).parameters)
        except Exception:  # noqa: BLE001
            return None

    def render(prefix: str, d: Dict[str, Any]) -> str:  # as command-line overrides
        return " ".join(f"{prefix}{k}={v}" for k, v in d.items())

    base = cfg_model.get("base", None)
    from_config = "genft_tune.models.checkpoint_decoder"
    if isinstance(base, str):
        params = accepted(base)
        if params and "embed_dim" in params:
            fit = {k: v for k, v in kwargs.items() if k in params}
            return f"set {render('model.base_kwargs.', fit)} (from the checkpoint's config.json)"
        return (
            f"set model.base={from_config} model.base_kwargs.checkpoint_dir={ckpt_dir} (builds the size "
            "its config.json gives) and remove other model.base_kwargs"
        )
    params = accepted(str(cfg_model.get("_component_")))
    if params and "embed_dim" in params:
        fit = {k: v for k, v in kwargs.items() if k in params}
        return f"set {render('model.', fit)} (from the checkpoint's config.json)"
    return (
        f"{cfg_model.get('_component_')} builds one fixed size; for the checkpoint's, use "
        f"model._component_=genft_tune.models.genft_model model.base={from_config} "
        f"model.base_kwargs.checkpoint_dir={ckpt_dir} model.targets=[q_proj,v_proj] (docs/own_data.md)"
    )


def _read_config_json(ckpt_dir: Path) -> Optional[Dict[str, Any]]:
    path = ckpt_dir / "config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _model_type_problems(model_type: str, config: Optional[Dict[str, Any]]) -> List[ValueError]:
    """``checkpointer.model_type`` against the checkpoint's ``config.json``: a checkpointer
    type (torchtune's or a family's) that does not read the family's checkpoints
    (``GEMMA`` for Gemma 2, ``QWEN2`` for Llama) is refused with the one that does."""
    family = find_family(config)
    wanted = model_type.upper()
    known = wanted in ModelType.__members__ or family_read_by(wanted) is not None
    if family is None or not family.checkpointer_types or wanted in family.checkpointer_types or not known:
        return []
    have = config.get("model_type")
    return [ValueError(
        f"checkpointer.model_type is {model_type}, but the checkpoint's config.json says model_type "
        f"{have!r}: set checkpointer.model_type={family.checkpointer_type(config)} (and a {have} model config)"
    )]


def build_on_meta(cfg_model: DictConfig) -> torch.nn.Module:
    """The model config's model on the meta device (sizes only, no memory)."""
    with torch.device("meta"):
        return instantiate(cfg_model)


def checkpoint_problems(cfg: DictConfig, checkpoint_files: Sequence[str]) -> List[ValueError]:
    """The checkpoint against the model config (see the module docstring).

    Args:
        cfg (DictConfig): the recipe config (its checkpoint files exist).
        checkpoint_files (Sequence[str]): the file names in ``checkpointer.checkpoint_dir``.

    Returns:
        List[ValueError]: the problems found.
    """
    ckpt_dir = Path(str(cfg.checkpointer.checkpoint_dir))
    config = _read_config_json(ckpt_dir)
    problems: List[ValueError] = []
    problems.extend(_model_type_problems(str(cfg.checkpointer.get("model_type", "") or ""), config))
    try:
        model = build_on_meta(cfg.model)
    except (ValueError, TypeError) as e:
        return [ValueError(f"model: {e}")]
    except Exception:  # noqa: BLE001  (a builder that cannot run on meta: the load will tell)
        return []
    model_max = getattr(model, "max_seq_len", None)
    tok_max = cfg.tokenizer.get("max_seq_len", None) if isinstance(cfg.get("tokenizer", None), DictConfig) else None
    if isinstance(model_max, int) and isinstance(tok_max, int) and tok_max > model_max:
        problems.append(ValueError(
            f"tokenizer.max_seq_len={tok_max} is longer than the model's max_seq_len={model_max}: an example "
            f"longer than {model_max} tokens would stop the run; set tokenizer.max_seq_len={model_max} (or less)"
        ))
    try:
        shapes = _header_shapes(ckpt_dir, checkpoint_files)
    except Exception as e:  # noqa: BLE001
        return [ValueError(f"checkpointer.checkpoint_files: cannot read the safetensors header of {ckpt_dir}: {e}")]
    got, built = _dims(_tune_shapes(shapes, config)), _model_dims(model)
    diff = {k: (got[k], built[k]) for k in _DIM_NAMES if k in got and k in built and got[k] != built[k]}
    if diff:
        text = ", ".join(f"{_DIM_NAMES[k]} {a} (the model config builds {b})" for k, (a, b) in diff.items())
        problems.append(ValueError(
            f"the checkpoint in {ckpt_dir} does not fit the model config: it has {text}; "
            + _suggestion(cfg.model, config, ckpt_dir)
        ))
    if not problems and cfg.get("resume_from_checkpoint", False):
        problems += _resume_problems(cfg, model)
    return problems


def _resume_problems(cfg: DictConfig, model: torch.nn.Module) -> List[ValueError]:
    out = Path(str(cfg.output_dir))
    if not recipe_state_path(out).is_file():
        return [ValueError(
            f"resume_from_checkpoint=True, but output_dir {str(out)!r} holds no checkpoint to resume "
            f"({recipe_state_path(out).relative_to(out)} is missing); start without resume_from_checkpoint, "
            "or set output_dir to the interrupted run's folder"
        )]
    try:
        state = load_recipe_state(out)
        saved_dir = out / state[ADAPTER_DIR_KEY]
    except Exception as e:  # noqa: BLE001
        return [ValueError(f"resume_from_checkpoint: cannot read {recipe_state_path(out)}: {type(e).__name__}: {e}")]
    adapter = find_model_adapter(model)
    saved_config = saved_dir / ADAPTER_CONFIG_FILE
    if adapter is None or not saved_config.is_file():
        return _finished(state, cfg, out)
    advice = "resume with the interrupted run's model settings, or start a new output_dir"
    try:
        saved = json.loads(saved_config.read_text())
        adapter.check_resume_config(saved)
    except ValueError as e:
        return [ValueError(f"{e}; {advice}")]
    saved_targets, targets = set(saved.get("target_modules") or []), set(adapter.target_modules)
    if saved_targets and saved_targets != targets:
        added, dropped = sorted(targets - saved_targets), sorted(saved_targets - targets)
        return [ValueError(
            f"resume_from_checkpoint: the model config adapts other layers than the saved adapter "
            f"(new: {added[:4]}{'...' if len(added) > 4 else ''}, gone: {dropped[:4]}"
            f"{'...' if len(dropped) > 4 else ''}); {advice}"
        )]
    return _finished(state, cfg, out)


def _finished(state, cfg: DictConfig, out: Path) -> List[ValueError]:
    """A run that has done all its epochs: torchtune's loop would load everything and stop
    at once, saying nothing."""
    done, epochs = state.get(training.EPOCHS_KEY), cfg.get("epochs", None)
    if isinstance(done, int) and isinstance(epochs, int) and done >= epochs:
        return [ValueError(
            f"resume_from_checkpoint: the run in {str(out)!r} has already finished its {done} epoch(s) "
            f"and epochs={epochs}; raise epochs (e.g. epochs={done + 1}) to train further"
        )]
    return []


__all__ = ["build_on_meta", "checkpoint_problems"]
