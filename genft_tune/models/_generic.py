"""GenFT or WeGeFT on any torchtune model: a builder that wraps another builder.

::

    model:
      _component_: genft_tune.models.genft_model
      base: torchtune.models.qwen2_5.qwen2_5_1_5b_instruct
      targets: [q_proj, v_proj]

``base`` is any torchtune model builder (its import path, or the function itself),
called with ``base_kwargs``; :func:`genft_tune.apply_adapter` then puts the adapter on
every linear whose name ends with one of ``targets``. Qwen2/2.5 (q/k/v biases carried
as frozen biases), Gemma 2, Mistral, Phi-3/4, Llama and Qwen3 (``genft_tune.models.qwen3``)
all work this way; the adapter's hyperparameters are validated before the base is built.
"""

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

from torch import nn
from torchtune.config._utils import _get_component_from_path

from genft_tune.models._families import FAMILIES, get_family
from genft_tune.modules import apply_adapter, GenFTConfig, WeGeFTConfig
from genft_tune.modules._builder_args import takes_config_fields

DEFAULT_TARGETS = ("q_proj", "v_proj")  # the GenFT authors' LLaMA setup

Builder = Union[str, Callable[..., nn.Module]]


def _builder(base: Builder) -> Callable[..., nn.Module]:
    if callable(base):
        return base
    try:
        return _get_component_from_path(str(base))
    except Exception as e:
        raise ValueError(f"model.base: cannot import the model builder {base!r} ({e})") from None


def checkpoint_decoder(*, checkpoint_dir: str) -> nn.Module:
    """The plain torchtune decoder of a Hugging Face checkpoint, its family and size read
    off the checkpoint's ``config.json`` (Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 2,
    Phi-3/4): a ``base`` for :func:`genft_model` that fits any size of these families.

    ::

        model:
          _component_: genft_tune.models.genft_model
          base: genft_tune.models.checkpoint_decoder
          base_kwargs: {checkpoint_dir: ./my_model}

    Args:
        checkpoint_dir (str): the folder with the checkpoint's ``config.json``.

    Returns:
        nn.Module: the torchtune model (same modules and names as the family's builder).

    Raises:
        ValueError: if there is no readable ``config.json`` or its ``model_type`` is none
            of the families above.
    """
    path = Path(str(checkpoint_dir)) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"model.base_kwargs.checkpoint_dir: cannot read {path} ({e})") from None
    family = get_family(config)
    if not family.is_decoder:
        decoders = [name for name, f in FAMILIES.items() if f.is_decoder]
        raise ValueError(f"config.json model_type must be one of {sorted(decoders)}, got {family.name!r}")
    return family.build(config)


def adapter_model(
    *, base: Builder, config: Any, targets: Sequence[str] = DEFAULT_TARGETS, base_kwargs: Optional[Dict[str, Any]] = None
) -> nn.Module:
    """``base(**base_kwargs)`` with ``config``'s adapter on ``targets`` (see the module doc).

    Raises:
        ValueError: if ``base`` cannot be imported or ``targets`` match no linear.
    """
    model = _builder(base)(**dict(base_kwargs or {}))
    return apply_adapter(model, config, list(targets))


@takes_config_fields(GenFTConfig)
def genft_model(
    *,
    base: Builder,
    targets: Sequence[str] = DEFAULT_TARGETS,
    base_kwargs: Optional[Dict[str, Any]] = None,
    config: GenFTConfig,
) -> nn.Module:
    """Any torchtune model with GenFT on ``targets``; the GenFT hyperparameters are
    :class:`~genft_tune.modules.GenFTConfig`'s fields.

    Args:
        base (Builder): a torchtune model builder or its import path
            (``torchtune.models.qwen2_5.qwen2_5_1_5b_instruct``).
        targets (Sequence[str]): module-name suffixes to adapt. Default: q_proj, v_proj
        base_kwargs (Optional[Dict[str, Any]]): arguments of ``base``. Default: None

    Returns:
        nn.Module: the model, adapted in place, base frozen, ``genft_generators`` registered.

    Raises:
        ValueError: on an invalid hyperparameter (before the base is built), a base that
            cannot be imported, or targets that match no linear.
    """
    return adapter_model(base=base, config=config, targets=targets, base_kwargs=base_kwargs)


@takes_config_fields(WeGeFTConfig)
def wegeft_model(
    *,
    base: Builder,
    targets: Sequence[str] = DEFAULT_TARGETS,
    base_kwargs: Optional[Dict[str, Any]] = None,
    config: WeGeFTConfig,
) -> nn.Module:
    """Any torchtune model with WeGeFT on ``targets``; the WeGeFT hyperparameters are
    :class:`~genft_tune.modules.WeGeFTConfig`'s fields.

    Args:
        base (Builder): a torchtune model builder or its import path.
        targets (Sequence[str]): module-name suffixes to adapt. Default: q_proj, v_proj
        base_kwargs (Optional[Dict[str, Any]]): arguments of ``base``. Default: None

    Returns:
        nn.Module: the model, adapted in place, base frozen, ``wegeft_factors`` registered.
    """
    return adapter_model(base=base, config=config, targets=targets, base_kwargs=base_kwargs)


__all__ = ["adapter_model", "checkpoint_decoder", "genft_model", "wegeft_model"]
