"""Import an adapter saved by the GenFT authors' patched PEFT into our adapter format.

Their ``save_pretrained`` writes ``adapter_config.json`` (``peft_type: GENFT``; fields
``generator_share_dim`` = a, ``individual_features`` = b, ``ratio_W0``, ``scaling``,
``inner_activation``, ``outer_activation``, ``drop``, ``bias``, ``target_modules``,
``base_model_name_or_path``) and ``adapter_model.safetensors`` (or ``.bin``) with every
PEFT-model key that contains ``genft_``:

- per adapted linear (Hugging Face naming): ``<module>.genft_individual_weight_a``
  (``(b, D)``, our ``A1``) and ``<module>.genft_individual_weight_b`` (``(D, b)``, our
  ``B1``; their code ties both stages, as ours does for square weights);
- the one shared generator, once on the tuner (``base_model.generator.``) and once more
  inside every adapted linear (``<module>.generator.``): ``genft_share_{1,2}_{a,b}.linear.
  {weight,bias}``, i.e. ``P1, Q1, P2, Q2`` and the biases ``c1, d1, c2, d2``.

Their PEFT path applies ``F_col`` itself as ``dW`` (our ``dW`` transposed, square weights
only) and runs on Hugging Face's weight layout (``q_proj`` rows in HF's RoPE order), so
the imported adapter records ``convention: authors_peft`` and ``weight_layout: hf``:
``genft-tune merge`` applies it to the HF tensors as they are, giving the model they
trained. Where their code silently does something else than its settings say, the
import follows what the code did, and logs it: their ``bias`` setting turns the
generator biases on unless it is literally false (read here from the keys present);
activation names they do not know (``leaky_relu`` among them; theirs is
``leakyrelu``) ran as identity; with ``b = 0`` their ``ratio_W0`` had no effect.
"""

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from safetensors.torch import load_file
from torchtune.models.convert_weights import _FROM_HF, get_mapped_key

from genft_tune._file_names import AUTHORS_CONFIG_FILE, AUTHORS_WEIGHT_FILES
from genft_tune.checkpointing._adapter import save_adapter
from genft_tune.modules.genft import FACTOR_INITS, GENERATORS_ATTR, GenFTConfig, generator_key

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# their Generator's activation names (lower-cased) -> ours; anything else ran as identity
AUTHORS_ACTIVATIONS = {"relu": "relu", "leakyrelu": "leaky_relu", "gelu": "gelu", "tanh": "tanh"}
# genft_share_<stage>_<side>.linear.<kind> -> our shared tensor
_SHARED_NAMES = {
    ("1", "a", "weight"): "P1",
    ("1", "b", "weight"): "Q1",
    ("2", "a", "weight"): "P2",
    ("2", "b", "weight"): "Q2",
    ("1", "a", "bias"): "c1",
    ("1", "b", "bias"): "d1",
    ("2", "a", "bias"): "c2",
    ("2", "b", "bias"): "d2",
}
_SHARED_KEY = re.compile(r"^(?P<owner>.*?)\.?generator\.genft_share_(?P<stage>[12])_(?P<side>[ab])\.linear\.(?P<kind>weight|bias)$")
_SPECIFIC_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.genft_individual_weight_(?P<side>[ab])(?:\.[^.]+)?$")


def is_authors_config(config: Mapping[str, Any]) -> bool:
    """Whether an ``adapter_config.json``'s contents are the authors' (their GENFT has
    ``generator_share_dim``; PEFT's GENFT of this package, read by
    :mod:`~genft_tune.checkpointing._peft_format`, has ``shared_dim``)."""
    return "generator_share_dim" in config


def _read_weights(src: Path) -> Dict[str, torch.Tensor]:
    for name in AUTHORS_WEIGHT_FILES:
        path = src / name
        if path.is_file():
            if name.endswith(".safetensors"):
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no {' or '.join(AUTHORS_WEIGHT_FILES)} in {src}")


def _activation(field: str, value) -> str:
    name = AUTHORS_ACTIVATIONS.get(str(value).lower())
    if name is None:
        log.warning(f"import-authors: their {field}={value!r} is not a name their code knows: it ran as identity")
        return "identity"
    return name


def _factor_init(value) -> str:
    # recorded for completeness only: the imported tensors are trained values
    value = "zeros" if value == "zero" else value
    return value if value in FACTOR_INITS else "zeros"


def _tune_module(hf_module: str) -> str:
    """``model.layers.0.self_attn.q_proj`` -> ``layers.0.attn.q_proj`` (torchtune's own mapping)."""
    try:
        return get_mapped_key(f"{hf_module}.weight", _FROM_HF)[: -len(".weight")]
    except Exception:
        raise ValueError(
            f"import-authors: {hf_module!r} is not a Llama-family linear (model.layers.N.self_attn.q_proj, "
            "... as in Hugging Face's Llama); only those can be merged by genft-tune"
        ) from None


def _shared_generator(weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The shared generator's tensors (our names), checked equal across all its copies."""
    copies: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        m = _SHARED_KEY.match(key)
        if m:
            copies.setdefault(m["owner"] or "<root>", {})[_SHARED_NAMES[m["stage"], m["side"], m["kind"]]] = value
    if not copies:
        raise ValueError("import-authors: the adapter has no shared generator (genft_share_* tensors)")
    (first_owner, first), *rest = copies.items()
    for owner, tensors in rest:
        if tensors.keys() != first.keys() or any(not torch.equal(tensors[n], first[n]) for n in first):
            raise ValueError(
                f"import-authors: the shared generator stored under {owner!r} differs from the one under "
                f"{first_owner!r}; their code saves one generator many times, identical"
            )
    return first


def read_authors_adapter(src_dir: PathLike) -> Tuple[GenFTConfig, Dict[str, torch.Tensor], List[str], Dict]:
    """Read the authors' adapter as ``(config, our state dict, targets, their config)``.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: if it is not a GenFT adapter of theirs, or does not fit our layer.
    """
    src = Path(src_dir)
    config_path = src / AUTHORS_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no {AUTHORS_CONFIG_FILE} in {src}")
    theirs = json.loads(config_path.read_text())
    if str(theirs.get("peft_type", "")).upper() != "GENFT":
        raise ValueError(
            f"import-authors: {config_path} has peft_type {theirs.get('peft_type')!r}; expected 'GENFT' "
            "(an adapter saved by the GenFT authors' patched PEFT)"
        )
    a, b = int(theirs.get("generator_share_dim", 90)), int(theirs.get("individual_features", 10))
    if a <= 0:
        raise ValueError(
            "import-authors: generator_share_dim is 0: their code then trains a plain B @ A (with dropout "
            "also at evaluation), not a GenFT generator; there is nothing of ours to import it into"
        )
    weights = _read_weights(src)
    shared = _shared_generator(weights)
    dim = shared["P1"].shape[1]

    state: Dict[str, torch.Tensor] = {}
    targets: List[str] = []
    for key, value in weights.items():
        m = _SPECIFIC_KEY.match(key)
        if not m or ".generator." in key:
            continue
        module = _tune_module(m["module"])
        if module not in targets:
            targets.append(module)
        expected = (b, dim) if m["side"] == "a" else (dim, b)
        if tuple(value.shape) != expected:
            raise ValueError(f"import-authors: {key} has shape {tuple(value.shape)}, expected {expected} (b={b}, D={dim})")
        state[f"{module}.{'A1' if m['side'] == 'a' else 'B1'}"] = value
    if b > 0 and not targets:
        raise ValueError("import-authors: no genft_individual_weight_a/_b tensors: no adapted layer found")
    if b == 0:  # no specific factors: the targets are the modules that hold a generator copy
        owners = {m["owner"] for k in weights if (m := _SHARED_KEY.match(k))}
        targets = [_tune_module(o.removeprefix("base_model.model.")) for o in sorted(owners) if o != "base_model"]
    gkey = generator_key(dim, dim)
    for name, value in shared.items():
        state[f"{GENERATORS_ATTR}.{gkey}.{name}"] = value

    ratio = float(theirs.get("ratio_W0", 1.0))
    if b == 0 and ratio != 1.0:
        log.warning(f"import-authors: ratio_W0={ratio} had no effect in their code with b = 0: importing ratio 1.0")
        ratio = 1.0
    config = GenFTConfig(
        shared_dim=a,
        specific_dim=b,
        ratio=ratio,
        scaling=float(theirs.get("scaling", 1.0)),
        act_in=_activation("inner_activation", theirs.get("inner_activation")),
        act_out=_activation("outer_activation", theirs.get("outer_activation")),
        dropout=float(theirs.get("drop", 0.0)),
        init_a=_factor_init(theirs.get("individual_init_a")),
        init_b=_factor_init(theirs.get("individual_init_b")),
        generator_bias="c1" in shared,
        zero_init=False,
        convention="authors_peft",
    )
    return config, state, targets, theirs


def import_authors_adapter(src_dir: PathLike, output_dir: PathLike, *, base_model: Optional[str] = None) -> Path:
    """Convert the authors' GenFT adapter in ``src_dir`` into ours in ``output_dir``.

    The result has ``convention: authors_peft`` and ``weight_layout: hf``;
    ``genft-tune merge`` folds it into the Hugging Face base it was trained on.

    Args:
        src_dir (PathLike): their ``save_pretrained`` directory.
        output_dir (PathLike): where our ``genft_adapter.safetensors`` + ``genft_config.json`` go.
        base_model (Optional[str]): the base's id or path (default: their
            ``base_model_name_or_path``).

    Returns:
        Path: ``output_dir``.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: if it is not a GenFT adapter of theirs, or does not fit our layer.
    """
    config, state, targets, theirs = read_authors_adapter(src_dir)
    dim = next(v.shape[1] for k, v in state.items() if k.endswith(".P1"))
    out = save_adapter(
        output_dir,
        adapter_state_dict=state,
        config=config,
        target_modules=targets,
        target_shapes={t: (dim, dim) for t in targets},
        base_model=base_model or theirs.get("base_model_name_or_path"),
        extra={"imported_from": {"source": str(src_dir), "authors_config": theirs}},
        weight_layout="hf",
    )
    log.info(
        f"Imported the authors' GenFT adapter ({len(targets)} targets, a={config.shared_dim} b={config.specific_dim}, "
        f"{config.act_in}/{config.act_out}, biases {'on' if config.generator_bias else 'off'}) into {out}"
    )
    return out


__all__ = ["import_authors_adapter", "is_authors_config", "read_authors_adapter"]
