"""Our adapter files <-> Hugging Face PEFT's (``adapter_config.json`` +
``adapter_model.safetensors``), for GenFT and WeGeFT.

PEFT's files name tensors by the Hugging Face model's modules
(``base_model.model.model.layers.0.self_attn.q_proj.genft_A1``) and keep a method's
shared tensors once, on the tuner (``base_model.genft_generators.2048x2048.P1``,
``base_model.wegeft_factors.q_proj.phi``); :mod:`genft_tune.peft` loads them. Ours name
them in torchtune's naming. The module names are converted with the model family's own
converter (the one ``genft-tune merge`` uses), read off the base's ``config.json``.

Rows: Llama-style checkpoints order ``q_proj``/``k_proj`` rows differently in torchtune
and in Hugging Face (RoPE). A recipe-trained GenFT adapter generated ``dW`` from
torchtune's rows; the PEFT file records ``torchtune_rope_heads`` for those modules so
that the PEFT layer generates in the same order (WeGeFT's ``dW = s W0 phi^T psi`` follows
any row order of ``W0``: nothing to record). Going back, a PEFT GenFT adapter trained in
Hugging Face's rows (by PEFT itself) becomes ours with ``weight_layout: hf``, which
``genft-tune merge`` folds into the Hugging Face checkpoint as it is.

Trained whole modules (a ViT's new classifier head, ``head.*`` in our files) are PEFT's
``modules_to_save`` (``classifier``). PEFT names the modules of the transformers model, which
for transformers 5's ViT differ from its checkpoint keys: the family's converter says so
(``KeyConverter.module_name``).

Neither direction needs ``peft`` installed.
"""

import json
import logging
import os
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from safetensors.torch import load_file

from genft_tune._file_names import (
    PEFT_CONFIG_FILE,
    PEFT_SUBDIR,
    PEFT_WEIGHTS_FILE,
)
from genft_tune.checkpointing._adapter import (
    _dump_json,
    AdapterFileError,
    AdapterFileConfig,
    load_adapter,
    save_adapter,
    write_file_pair,
)
from genft_tune.checkpointing._authors import is_authors_config
from genft_tune.checkpointing._base_checkpoint import find_base_checkpoint, hf_converter
from genft_tune.modules import get_adapter_kind
from genft_tune.modules._method import adapter_kind_for_peft_type, peft_adapter_kinds
from genft_tune.modules._rope import tune_rows_in_hf_order

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

TUNER = "base_model."  # PEFT's prefix of the tuner's own tensors (shared ones)
MODEL = "base_model.model."  # ... and of the wrapped model's


class PeftFormatError(ValueError):
    """An adapter cannot be written in (or read from) PEFT's format; the message says why."""


def _converter(hf_config: Mapping[str, Any]):
    try:
        return hf_converter(dict(hf_config))
    except (KeyError, ValueError) as e:
        raise PeftFormatError(f"the base's config.json names no model family this package converts: {e}") from None


def _hf_module(converter, target: str, shape: Tuple[int, int]) -> str:
    """The Hugging Face module of a torchtune target (``layers.0.attn.q_proj`` ->
    ``model.layers.0.self_attn.q_proj``); a target that the family fuses with others
    into one Hugging Face tensor (Phi-3's ``qkv_proj``) has none."""
    try:
        out = converter.from_tune({f"{target}.weight": torch.empty(shape, device="meta")})
    except Exception:
        out = {}
    if len(out) != 1 or not next(iter(out)).endswith(".weight") or tuple(next(iter(out.values())).shape) != tuple(shape):
        raise PeftFormatError(
            f"the {converter.name} family's Hugging Face model has no linear of its own for {target!r} "
            f"(it fuses it with others into one tensor): PEFT's format cannot hold this adapter; "
            "merge it (genft-tune merge) and share the merged model instead"
        )
    if converter.module_name is not None:  # module names that differ from the checkpoint's keys
        name = converter.module_name(target)
        if name is None:
            raise PeftFormatError(f"the {converter.name} family's Hugging Face model has no module for {target!r}")
        return name
    return next(iter(out))[: -len(".weight")]


def _saved_modules(converter, keys: List[str], shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, str]:
    """Our ``modules_to_save`` tensors (``head.weight``) under PEFT's names
    (``classifier.weight``: the Hugging Face model's module and the parameter)."""
    out = {}
    for key in keys:
        module, _, param = key.rpartition(".")
        out[key] = f"{_hf_module(converter, module, tuple(shapes[key]))}.{param}"
    return out


def _row_order(converter, target: str, shape: Tuple[int, int]) -> Optional[torch.Tensor]:
    """``idx`` with ``W_hf = W_tune[idx]`` when the family reorders the rows of
    ``target`` between torchtune and Hugging Face, else None (found by converting
    probe tensors, so it holds whatever the family's converter does)."""
    out_dim, in_dim = shape
    key = f"{target}.weight"
    rows = torch.arange(out_dim, dtype=torch.int32)[:, None].repeat(1, in_dim)
    cols = torch.arange(in_dim, dtype=torch.int32)[None, :].repeat(out_dim, 1)
    rows_hf, cols_hf = (next(iter(converter.from_tune({key: t}).values())) for t in (rows, cols))
    if not torch.equal(cols_hf, cols) or not torch.equal(rows_hf, rows_hf[:, :1].expand_as(rows_hf)):
        raise PeftFormatError(f"the {converter.name} family converts {target!r} by more than a row order")
    idx = rows_hf[:, 0].long()
    return None if torch.equal(idx, torch.arange(out_dim)) else idx


def _rope_heads(idx: torch.Tensor, hf_config: Mapping[str, Any], module: str) -> int:
    """The number of heads whose RoPE permutation ``idx`` is."""
    heads = {hf_config.get("num_attention_heads"), hf_config.get("num_key_value_heads")} - {None}
    for h in sorted(heads) + list(range(1, len(idx) // 2 + 1)):
        if len(idx) % h == 0 and (len(idx) // h) % 2 == 0 and torch.equal(tune_rows_in_hf_order(len(idx), h), idx):
            return h
    raise PeftFormatError(f"{module}: its rows are reordered, but not as torchtune's RoPE permutation")


def _short_targets(hf_modules: List[str], hf_config: Mapping[str, Any]) -> Union[List[str], str]:
    """PEFT's ``target_modules``: module types (``["q_proj", "v_proj"]``) when the
    adapter covers that type in every layer, else a regex of the full names."""
    layers = hf_config.get("num_hidden_layers")
    by_type: Dict[str, List[str]] = {}
    for m in hf_modules:
        by_type.setdefault(_short(m), []).append(m)
    if layers and all(len(set(ms)) == layers for ms in by_type.values()):
        return sorted(by_type)
    return "^(" + "|".join(re.escape(m) for m in sorted(hf_modules)) + ")$"


def _short(module: str) -> str:
    """A module's type: the last part of its name (``q_proj``)."""
    return module.rsplit(".", 1)[-1]


def _task_type(hf_config: Mapping[str, Any]) -> Optional[str]:
    archs = hf_config.get("architectures") or []
    return "CAUSAL_LM" if any(str(a).endswith("ForCausalLM") for a in archs) else None


def peft_files_from_adapter(
    adapter_sd: Mapping[str, torch.Tensor],
    adapter_cfg: AdapterFileConfig,
    *,
    hf_config: Mapping[str, Any],
    base_model_name_or_path: Optional[str],
    tune_shapes: Optional[Mapping[str, Tuple[int, ...]]] = None,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Our adapter (tensors and json) as PEFT's ``(tensors, adapter_config.json)``.

    Args:
        adapter_sd (Mapping[str, torch.Tensor]): our tensors (torchtune naming).
        adapter_cfg (AdapterFileConfig): our json.
        hf_config (Mapping[str, Any]): the base's Hugging Face ``config.json``.
        base_model_name_or_path (Optional[str]): the base's Hub id (or path) for PEFT.
        tune_shapes (Optional[Mapping[str, Tuple[int, ...]]]): the base's weight shapes
            by torchtune key, for targets whose shape the adapter does not record.

    Raises:
        PeftFormatError: if the family fuses a target into a shared Hugging Face tensor,
            or the adapter holds tensors that PEFT's format has no place for.
    """
    method = adapter_cfg.method
    names = get_adapter_kind(method).peft_names
    if names is None:
        writable = sorted(k.name for k in peft_adapter_kinds().values())
        raise PeftFormatError(
            f"the {method!r} method has no PEFT format here (PEFT's files are written for {writable})"
        )
    converter = _converter(hf_config)
    targets = list(adapter_cfg["target_modules"])
    shapes = {t: s or (tune_shapes or {}).get(f"{t}.weight") for t, s in adapter_cfg.target_shapes.items()}
    missing = [t for t in targets if not shapes.get(t)]
    if missing:
        raise PeftFormatError(f"the adapter does not record the weight shapes of {missing[:3]}")
    hf_of = {t: _hf_module(converter, t, shapes[t]) for t in targets}
    # trained whole modules (a ViT's new head): PEFT's modules_to_save
    saved = _saved_modules(converter, list(adapter_cfg.get("modules_to_save") or []), adapter_cfg["tensor_shapes"])

    extra: Dict[str, Any] = {}
    if names.row_order_matters and adapter_cfg.weight_layout == "torchtune":
        heads: Dict[str, int] = {}
        for t in targets:
            idx = _row_order(converter, t, shapes[t])
            if idx is not None:
                short = _short(hf_of[t])
                h = _rope_heads(idx, hf_config, hf_of[t])
                if heads.setdefault(short, h) != h:
                    raise PeftFormatError(f"{short} modules have differently ordered rows ({heads[short]} vs {h} heads)")
        extra["torchtune_rope_heads"] = heads or None
    elif names.row_order_matters:
        extra["torchtune_rope_heads"] = None
    key_to_peft: Dict[str, str] = {}
    if names.shares_by_module_type:
        shared_keys: Dict[str, str] = {}
        if adapter_cfg.config.shared:  # a target without a recorded key shares by its module type
            key_of = {t: k or _short(t) for t, k in adapter_cfg.target_modules.items()}
            key_to_peft = names.rename_shared_keys(key_of, hf_of)
            for t, k in key_of.items():
                hf_type, peft_key = _short(hf_of[t]), key_to_peft[k]
                if shared_keys.setdefault(hf_type, peft_key) != peft_key:
                    raise PeftFormatError(
                        f"{hf_type} modules share different WeGeFT pairs ({shared_keys[hf_type]!r}, {peft_key!r}): "
                        "PEFT's shared_keys maps a module type to one pair"
                    )
        extra["shared_keys"] = {t: k for t, k in shared_keys.items() if k != t} or None

    tensors: Dict[str, torch.Tensor] = {}
    root = names.root + "."
    for key, value in adapter_sd.items():
        if key in saved:
            tensors[f"{MODEL}{saved[key]}"] = value
            continue
        if key.startswith(root):
            group, rest = key[len(root):].split(".", 1)
            tensors[f"{TUNER}{names.root}.{key_to_peft.get(group, group)}.{rest}"] = value
            continue
        owner = max((t for t in targets if key.startswith(t + ".")), key=len, default=None)
        if owner is None:
            raise PeftFormatError(f"adapter tensor {key!r} belongs to no target: PEFT's format has no place for it")
        tensors[f"{MODEL}{hf_of[owner]}.{names.to_peft(key[len(owner) + 1:])}"] = value

    config: Dict[str, Any] = dict(
        peft_type=names.peft_type,
        task_type=_task_type(hf_config),
        base_model_name_or_path=base_model_name_or_path,
        revision=None,
        inference_mode=True,
        auto_mapping=None,
        **adapter_cfg.config.to_dict(),
        **extra,
        target_modules=_short_targets(list(hf_of.values()), hf_config),
        exclude_modules=None,
        modules_to_save=sorted({k.rpartition(".")[0] for k in saved.values()}) or None,
        layers_to_transform=None,
        layers_pattern=None,
    )
    return tensors, config


def read_hf_config(base_dir: PathLike) -> Dict[str, Any]:
    """The ``config.json`` of a Hugging Face checkpoint directory.

    Raises:
        FileNotFoundError: naming the file when it is missing.
    """
    path = Path(base_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the PEFT format needs the Hugging Face base's config.json")
    return json.loads(path.read_text())


def export_peft_adapter(
    adapter_dir: PathLike,
    *,
    base_dir: PathLike,
    base_model_name_or_path: Optional[str] = None,
    output_dir: Optional[PathLike] = None,
) -> Path:
    """Write PEFT's ``adapter_config.json`` + ``adapter_model.safetensors`` for our
    adapter in ``adapter_dir`` (into ``output_dir``, default: next to it), atomically.

    Args:
        adapter_dir (PathLike): holds ``genft_adapter.safetensors`` + ``genft_config.json``.
        base_dir (PathLike): the Hugging Face base checkpoint (its ``config.json`` and,
            for targets whose shape the adapter does not record, its weights' shapes).
        base_model_name_or_path (Optional[str]): the base's Hub id (default: the
            adapter's recorded ``base_model``).
        output_dir (Optional[PathLike]): where to write (default: ``adapter_dir``).

    Returns:
        Path: the directory written.

    Raises:
        FileNotFoundError: for a missing file.
        PeftFormatError: when PEFT's format cannot hold the adapter (the reason).
    """
    adapter_sd, adapter_cfg = load_adapter(adapter_dir)
    hf_config = read_hf_config(base_dir)
    tune_shapes = None
    if not all(adapter_cfg.target_shapes.values()):
        converter = _converter(hf_config)
        tune_shapes = {t: s for k, v in _base_shapes(base_dir).items() for t, s in converter.tune_shapes(k, v).items()}
    tensors, config = peft_files_from_adapter(
        adapter_sd, adapter_cfg, hf_config=hf_config, tune_shapes=tune_shapes,
        base_model_name_or_path=base_model_name_or_path or adapter_cfg.base_model,
    )
    out = Path(output_dir) if output_dir is not None else Path(adapter_dir)
    write_file_pair(
        out,
        tensors={k: v.contiguous() for k, v in sorted(tensors.items())},
        tensor_metadata={"format": "pt"},
        weights_name=PEFT_WEIGHTS_FILE,
        config_name=PEFT_CONFIG_FILE,
        config_text=lambda _: _dump_json(config),
    )
    return out


# ---- PEFT -> ours --------------------------------------------------------------------


def peft_adapter_method(adapter_dir: PathLike) -> Optional[str]:
    """``genft`` / ``wegeft`` when ``adapter_dir`` holds a PEFT adapter of ours, else None
    (no ``adapter_config.json``, another PEFT method, or the GenFT authors' own format)."""
    path = Path(adapter_dir) / PEFT_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    kind = peft_adapter_kinds().get(str(raw.get("peft_type")))
    if kind is None or is_authors_config(raw):  # the authors' GENFT: import-authors
        return None
    return kind.name


def _base_linears(converter, base_shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """The base's linears as PEFT names them: ``{module: (torchtune module, (out, in))}``
    (a checkpoint tensor that the family splits into several of ours, Phi-3's
    ``qkv_proj``, is none of them)."""
    out: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
    for key, shape in base_shapes.items():
        parts = converter.tune_shapes(key, shape)
        if len(parts) != 1:
            continue
        (tune_key, tune_shape), = parts.items()
        if not tune_key.endswith(".weight") or len(tune_shape) != 2:
            continue
        module = tune_key[: -len(".weight")]
        name = converter.module_name(module) if converter.module_name else key[: -len(".weight")]
        if name:
            out[name] = (module, tuple(tune_shape))
    return out


def _targets_in(target_modules: Union[str, List[str]], modules: List[str]) -> List[str]:
    """PEFT's rule: a regex matches the full name; a list entry equals it or ends it."""
    if isinstance(target_modules, str):
        return [m for m in modules if re.fullmatch(target_modules, m)]
    wanted = set(target_modules)
    return [m for m in modules if m in wanted or any(m.endswith("." + t) for t in wanted)]


def adapter_from_peft_files(
    tensors: Mapping[str, torch.Tensor],
    peft_config: Mapping[str, Any],
    *,
    hf_config: Mapping[str, Any],
    base_shapes: Mapping[str, Tuple[int, ...]],
) -> Dict[str, Any]:
    """PEFT's files of a GenFT/WeGeFT adapter as the arguments of
    :func:`save_adapter` (torchtune naming).

    Args:
        tensors (Mapping[str, torch.Tensor]): ``adapter_model.safetensors``.
        peft_config (Mapping[str, Any]): ``adapter_config.json``.
        hf_config (Mapping[str, Any]): the base's ``config.json``.
        base_shapes (Mapping[str, Tuple[int, ...]]): the base's tensor shapes by
            Hugging Face key (to resolve ``target_modules`` as PEFT does).

    Raises:
        PeftFormatError: if it is not such an adapter or does not fit the base.
    """
    try:
        kind = adapter_kind_for_peft_type(peft_config.get("peft_type"))
    except ValueError as e:
        raise PeftFormatError(str(e)) from None
    names = kind.peft_names
    known = {f.name for f in fields(kind.config_cls)}
    try:
        config = kind.config_cls(**{k: v for k, v in peft_config.items() if k in known})
    except (TypeError, ValueError) as e:
        raise PeftFormatError(f"{PEFT_CONFIG_FILE}: {e}") from None
    for name in ("layers_to_transform", "layers_pattern", "exclude_modules"):
        if peft_config.get(name):
            raise PeftFormatError(f"{PEFT_CONFIG_FILE}: {name} {peft_config[name]!r} is not supported here "
                                  "(name the targets in target_modules instead)")
    converter = _converter(hf_config)
    linears = _base_linears(converter, base_shapes)  # PEFT's module name -> (torchtune module, shape)
    hf_targets = _targets_in(peft_config.get("target_modules") or [], list(linears))
    if not hf_targets:
        raise PeftFormatError(f"{PEFT_CONFIG_FILE}: target_modules {peft_config.get('target_modules')!r} match no linear of the base")
    tune_of = {m: linears[m][0] for m in hf_targets}
    target_shapes = {linears[m][0]: linears[m][1] for m in hf_targets}
    saved_modules = set(peft_config.get("modules_to_save") or [])

    weight_layout = "torchtune"
    if names.row_order_matters:
        heads = peft_config.get("torchtune_rope_heads") or {}
        orders = {m: _row_order(converter, tune_of[m], target_shapes[tune_of[m]]) for m in hf_targets}
        reordered = [m for m, idx in orders.items() if idx is not None]
        recorded = [m for m in reordered if _short(m) in heads]
        if recorded and len(recorded) != len(reordered):
            raise PeftFormatError(f"torchtune_rope_heads covers {sorted(heads)} but not every reordered target")
        for m in recorded:  # the layer would generate in another row order than this base's
            if heads[_short(m)] != _rope_heads(orders[m], hf_config, m):
                raise PeftFormatError(f"torchtune_rope_heads[{_short(m)!r}] = {heads[_short(m)]} does not match the "
                                      f"base ({_rope_heads(orders[m], hf_config, m)} heads for {m})")
        if reordered and not recorded:  # trained by PEFT on Hugging Face's rows
            weight_layout = "hf"

    # shared tensors keyed by module type (WeGeFT's pairs): ours by torchtune's type
    # (output_proj), PEFT's by Hugging Face's (o_proj)
    shared_keys = peft_config.get("shared_keys") or {}
    peft_key_of = {m: shared_keys.get(_short(m), _short(m)) for m in hf_targets}
    ours_key = names.rename_shared_keys(peft_key_of, tune_of) if names.shares_by_module_type else {}
    root = f"{TUNER}{names.root}."
    state: Dict[str, torch.Tensor] = {}
    modules_to_save: Dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith(MODEL) and key[len(MODEL):].rpartition(".")[0] in saved_modules:
            # PEFT's modules_to_save (a ViT's classifier) back to our keys (head.weight)
            try:
                (ours, value), = converter.to_tune({key[len(MODEL):]: value}).items()
            except Exception:
                raise PeftFormatError(f"{PEFT_WEIGHTS_FILE}: {key!r} of modules_to_save has no torchtune key") from None
            modules_to_save[ours] = value
            continue
        if key.startswith(root):
            group, rest = key[len(root):].split(".", 1)
            state[f"{names.root}.{ours_key.get(group, group)}.{rest}"] = value
            continue
        module = max((m for m in hf_targets if key.startswith(f"{MODEL}{m}.")), key=len, default=None)
        rest = names.from_peft(key[len(MODEL) + len(module) + 1:]) if module else None
        if rest is None:
            raise PeftFormatError(f"{PEFT_WEIGHTS_FILE}: tensor {key!r} belongs to no target of {PEFT_CONFIG_FILE}")
        state[f"{tune_of[module]}.{rest}"] = value
    per_layer = [n for n in state if not n.startswith(names.root + ".")]
    bare = [tune_of[m] for m in hf_targets if not any(n.startswith(tune_of[m] + ".") for n in per_layer)]
    if per_layer and bare:  # an adapter with per-layer tensors has them for every target
        raise PeftFormatError(f"{PEFT_WEIGHTS_FILE} has no tensors for the targets {bare[:3]}")
    targets: Union[List[str], Dict[str, Optional[str]]] = [tune_of[m] for m in hf_targets]
    if names.shares_by_module_type:
        targets = {tune_of[m]: (ours_key[peft_key_of[m]] if config.shared else None) for m in hf_targets}
    return dict(
        adapter_state_dict=state,
        config=config,
        target_modules=targets,
        target_shapes=target_shapes,
        base_model=peft_config.get("base_model_name_or_path"),
        weight_layout=weight_layout,
        extra={"imported_from": "peft"},
        modules_to_save=modules_to_save or None,
    )


def _base_shapes(base_dir: PathLike) -> Dict[str, Tuple[int, ...]]:
    source = find_base_checkpoint(base_dir)
    if source.format != "hf":
        raise PeftFormatError(f"{base_dir}: a PEFT adapter is read against its Hugging Face base (safetensors)")
    return source.shapes()


def import_peft_adapter(src_dir: PathLike, output_dir: PathLike, *, base_dir: PathLike) -> Path:
    """Convert a PEFT GenFT/WeGeFT adapter (``src_dir``) into ours (``output_dir``),
    resolving its targets against the Hugging Face base in ``base_dir``.

    Raises:
        FileNotFoundError: if a file is missing.
        PeftFormatError: if it is not such an adapter or does not fit the base.
    """
    src_dir = Path(src_dir)
    for name in (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE):
        if not (src_dir / name).is_file():
            raise FileNotFoundError(f"{src_dir / name} not found: {src_dir} is not a complete PEFT adapter")
    try:
        peft_config = json.loads((src_dir / PEFT_CONFIG_FILE).read_text())
        tensors = load_file(str(src_dir / PEFT_WEIGHTS_FILE))
    except Exception as e:
        raise AdapterFileError(f"{src_dir}: unreadable PEFT adapter: {e}") from e
    args = adapter_from_peft_files(
        tensors, peft_config, hf_config=read_hf_config(base_dir), base_shapes=_base_shapes(base_dir)
    )
    return save_adapter(output_dir, **args)


def write_peft_files(
    adapter_dir: PathLike, *, base_dir: Optional[PathLike], base_model_name_or_path: Optional[str]
) -> Optional[Path]:
    """PEFT's pair for our adapter in ``adapter_dir``, into its ``peft/`` subfolder, when
    the base is a Hugging Face checkpoint of a family whose modules PEFT's format can
    name; otherwise None, with the reason logged (our adapter is complete either way)."""
    out = Path(adapter_dir) / PEFT_SUBDIR
    config_path = Path(base_dir) / "config.json" if base_dir else None
    try:
        if config_path is None or not config_path.is_file():
            raise PeftFormatError("the base is not a Hugging Face checkpoint (no config.json)")
        return export_peft_adapter(
            adapter_dir, base_dir=base_dir, base_model_name_or_path=base_model_name_or_path, output_dir=out
        )
    except Exception as e:  # optional files: a failure here must not stop a training run
        shutil.rmtree(out, ignore_errors=True)  # no pair of an earlier save left to be taken for this one
        level = logging.INFO if isinstance(e, PeftFormatError) else logging.WARNING
        log.log(level, f"No PEFT adapter files in {adapter_dir}: {e}")
        return None


__all__ = [
    "export_peft_adapter",
    "import_peft_adapter",
    "peft_adapter_method",
    "PEFT_CONFIG_FILE",
    "peft_files_from_adapter",
    "PEFT_SUBDIR",
    "PEFT_WEIGHTS_FILE",
    "PeftFormatError",
    "read_hf_config",
    "write_peft_files",
]
