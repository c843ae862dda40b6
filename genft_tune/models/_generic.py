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

from typing import Any, Callable, Dict, Optional, Sequence, Union

from torch import nn

from genft_tune.modules import apply_adapter, GenFTConfig, WeGeFTConfig

DEFAULT_TARGETS = ("q_proj", "v_proj")  # the GenFT authors' LLaMA setup

Builder = Union[str, Callable[..., nn.Module]]


def _builder(base: Builder) -> Callable[..., nn.Module]:
    if callable(base):
        return base
    from torchtune.config._utils import _get_component_from_path

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
    import json
    from pathlib import Path

    from genft_tune.models._families import get_family

    path = Path(str(checkpoint_dir)) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"model.base_kwargs.checkpoint_dir: cannot read {path} ({e})") from None
    return get_family(config).build(config)


def adapter_model(
    *, base: Builder, config: Any, targets: Sequence[str] = DEFAULT_TARGETS, base_kwargs: Optional[Dict[str, Any]] = None
) -> nn.Module:
    """``base(**base_kwargs)`` with ``config``'s adapter on ``targets`` (see the module doc).

    Raises:
        ValueError: if ``base`` cannot be imported or ``targets`` match no linear.
    """
    model = _builder(base)(**dict(base_kwargs or {}))
    return apply_adapter(model, config, list(targets))


def genft_model(
    *,
    base: Builder,
    targets: Sequence[str] = DEFAULT_TARGETS,
    base_kwargs: Optional[Dict[str, Any]] = None,
    shared_dim: int = GenFTConfig.shared_dim,
    specific_dim: int = GenFTConfig.specific_dim,
    ratio: float = GenFTConfig.ratio,
    scaling: float = GenFTConfig.scaling,
    act_in: str = GenFTConfig.act_in,
    act_out: str = GenFTConfig.act_out,
    dropout: float = GenFTConfig.dropout,
    init_a: str = GenFTConfig.init_a,
    init_b: str = GenFTConfig.init_b,
    generator_bias: bool = GenFTConfig.generator_bias,
    zero_init: bool = GenFTConfig.zero_init,
    recompute: bool = GenFTConfig.recompute,
    stages: str = GenFTConfig.stages,
    convention: str = GenFTConfig.convention,
    fused: str = GenFTConfig.fused,
) -> nn.Module:
    """Any torchtune model with GenFT on ``targets``.

    Args:
        base (Builder): a torchtune model builder or its import path
            (``torchtune.models.qwen2_5.qwen2_5_1_5b_instruct``).
        targets (Sequence[str]): module-name suffixes to adapt. Default: q_proj, v_proj
        base_kwargs (Optional[Dict[str, Any]]): arguments of ``base``. Default: None
        shared_dim (int): GenFT ``a``. Default: ``GenFTConfig.shared_dim``
        specific_dim (int): GenFT ``b``. Default: ``GenFTConfig.specific_dim``
        ratio (float): scale of ``W0`` inside the generator. Default: ``GenFTConfig.ratio``
        scaling (float): scale of ``dW``. Default: ``GenFTConfig.scaling``
        act_in (str): generator activation after ``D``. Default: ``GenFTConfig.act_in``
        act_out (str): generator activation after ``E``. Default: ``GenFTConfig.act_out``
        dropout (float): dropout on ``F_row``/``F_col``. Default: 0.0
        init_a (str): init of the ``A`` factors. Default: "kaiming_uniform"
        init_b (str): init of the ``B`` factors. Default: "kaiming_uniform"
        generator_bias (bool): learn the generator's biases. Default: False
        zero_init (bool): ``dW = 0`` at step 0. Default: True
        recompute (bool): recompute the generator in backward. Default: True
        stages (str): "both", "row" or "column". Default: "both"
        convention (str): "ours", "authors_peft" or "authors_vit". Default: "ours"
        fused (str): "never", "auto" or "always": the fused Triton kernels for the dense training forward (see ``GenFTConfig``). Default: "never"

    Returns:
        nn.Module: the model, adapted in place, base frozen, ``genft_generators`` registered.

    Raises:
        ValueError: on an invalid hyperparameter (before the base is built), a base that
            cannot be imported, or targets that match no linear.
    """
    config = GenFTConfig(
        shared_dim=shared_dim,
        specific_dim=specific_dim,
        ratio=ratio,
        scaling=scaling,
        act_in=act_in,
        act_out=act_out,
        dropout=dropout,
        init_a=init_a,
        init_b=init_b,
        generator_bias=generator_bias,
        zero_init=zero_init,
        recompute=recompute,
        stages=stages,
        convention=convention,
        fused=fused,
    )
    return adapter_model(base=base, config=config, targets=targets, base_kwargs=base_kwargs)


def wegeft_model(
    *,
    base: Builder,
    targets: Sequence[str] = DEFAULT_TARGETS,
    base_kwargs: Optional[Dict[str, Any]] = None,
    rank: int = WeGeFTConfig.rank,
    alpha: float = WeGeFTConfig.alpha,
    dropout: float = WeGeFTConfig.dropout,
    shared: bool = WeGeFTConfig.shared,
    recompute: bool = WeGeFTConfig.recompute,
) -> nn.Module:
    """Any torchtune model with WeGeFT on ``targets``.

    Args:
        base (Builder): a torchtune model builder or its import path.
        targets (Sequence[str]): module-name suffixes to adapt. Default: q_proj, v_proj
        base_kwargs (Optional[Dict[str, Any]]): arguments of ``base``. Default: None
        rank (int): ``r``. Default: 64
        alpha (float): ``dW`` is scaled by ``alpha / r``. Default: 128.0
        dropout (float): dropout on ``W0`` before ``phi``. Default: 0.0
        shared (bool): one ``(phi, psi)`` per module type across layers. Default: True
        recompute (bool): recompute ``(out, in)`` intermediates in backward. Default: True

    Returns:
        nn.Module: the model, adapted in place, base frozen, ``wegeft_factors`` registered.
    """
    config = WeGeFTConfig(rank=rank, alpha=alpha, dropout=dropout, shared=shared, recompute=recompute)
    return adapter_model(base=base, config=config, targets=targets, base_kwargs=base_kwargs)


__all__ = ["adapter_model", "checkpoint_decoder", "genft_model", "wegeft_model"]
