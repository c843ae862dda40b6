"""Loading a base (adapter-free) checkpoint into a model with adapters of any method and
family, with clear errors (what torchtune's LoRA recipes do with ``load_state_dict(strict=False)``
and ``validate_missing_and_unexpected_for_lora``)."""

from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from genft_tune.modules._method import is_adapter_key, validate_missing_and_unexpected


def expected_state_dict_shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """The keys and shapes ``model.state_dict()`` would have, without running its
    state-dict hooks (which, for NF4 models, would dequantize every weight).

    Args:
        model (nn.Module): the model.

    Returns:
        Dict[str, Tuple[int, ...]]: state-dict key -> shape (NF4 weights report their
        original shape).
    """
    shapes: Dict[str, Tuple[int, ...]] = {}
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, param in module._parameters.items():
            if param is not None:
                shapes[dot + name] = tuple(param.shape)
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                shapes[dot + name] = tuple(buf.shape)
    return shapes


def check_base_state_dict(model: nn.Module, state_dict: Dict[str, Any]) -> None:
    """Check that ``state_dict`` holds every base (non-adapter) key of ``model`` with the
    model's shape, and nothing the model does not have.

    Args:
        model (nn.Module): a model built with GenFT or WeGeFT layers (or a plain one).
        state_dict (Dict[str, Any]): the checkpoint, in torchtune's key format (e.g. the
            ``"model"`` entry of ``FullModelHFCheckpointer.load_checkpoint()``).

    Raises:
        ValueError: for a missing base key, a key whose shape differs from the model's
            (naming the key, the checkpoint shape and the model shape), or a key the
            model does not have.
    """
    expected = expected_state_dict_shapes(model)
    missing: List[str] = [k for k in expected if not is_adapter_key(k) and k not in state_dict]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(
            f"the base checkpoint is missing {len(missing)} key(s) the model needs: "
            f"{missing[:5]}{more}. Check checkpointer.model_type and the model builder "
            f"(e.g. tie_word_embeddings: a tied checkpoint has no output.weight)"
        )
    for key, value in state_dict.items():
        if key not in expected:
            raise ValueError(
                f"the checkpoint has key {key!r}, which the model does not have. Check "
                f"checkpointer.model_type and the model builder (e.g. tie_word_embeddings)"
            )
        shape = tuple(value.shape)
        if shape != expected[key]:
            raise ValueError(
                f"checkpoint key {key!r} has shape {shape}, but the model expects "
                f"{expected[key]}: the checkpoint is for a different architecture than "
                f"the model builder"
            )


def load_base_checkpoint(model: nn.Module, state_dict: Dict[str, Any]) -> None:
    """Load a base model checkpoint into a GenFT (or WeGeFT) model.

    The checkpoint must hold every base key; adapter keys (GenFT's shared generators
    and per-layer factors, WeGeFT's factors) may be absent, and then keep their
    initialisation. Problems are
    reported before anything is loaded.

    Args:
        model (nn.Module): the model.
        state_dict (Dict[str, Any]): the checkpoint, torchtune key format.

    Raises:
        ValueError: see :func:`check_base_state_dict`.
    """
    check_base_state_dict(model, state_dict)
    with torch.no_grad():
        result = model.load_state_dict(state_dict, strict=False)
    validate_missing_and_unexpected(
        missing_keys=result.missing_keys,
        unexpected_keys=result.unexpected_keys,
        base_loaded=True,
        adapter_loaded=False,
    )
