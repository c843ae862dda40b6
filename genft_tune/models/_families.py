"""The model families this package can merge and verify, read off a Hugging Face
``config.json``: one table for ``genft-tune merge`` (weight conversion) and
``--verify`` (the plain torchtune model of the checkpoint).

Each family uses torchtune's own converter and component builder; Qwen3, which torchtune
0.6.1 lacks, and Gemma 2, whose torchtune builder soft-caps differently from the
checkpoints, use ours (:mod:`genft_tune.models.qwen3`, :mod:`genft_tune.models.gemma2`).
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]


def rope_theta(config: Dict[str, Any], default: float) -> float:
    """``rope_theta`` (transformers 5 may keep it under ``rope_parameters``)."""
    return float(config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", default)))


def _heads(config: Dict[str, Any]) -> Dict[str, Any]:
    return dict(
        num_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        dim=config["hidden_size"],
    )


def _decoder_dims(config: Dict[str, Any]) -> Dict[str, Any]:
    return dict(
        vocab_size=config["vocab_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        embed_dim=config["hidden_size"],
        intermediate_dim=config["intermediate_size"],
        max_seq_len=config.get("max_position_embeddings", 2048),
        norm_eps=config.get("rms_norm_eps", 1e-5),
    )


@dataclass(frozen=True)
class Family:
    """One decoder family: how its HF checkpoint maps to torchtune's layout and model.

    Attributes:
        name (str): the ``config.json`` ``model_type``.
        to_tune (Callable): ``(state dict, config) -> torchtune state dict``.
        from_tune (Callable): the inverse.
        build (Callable): ``config -> plain torchtune model`` of the checkpoint.
    """

    name: str
    to_tune: Callable[[StateDict, Dict[str, Any]], StateDict]
    from_tune: Callable[[StateDict, Dict[str, Any]], StateDict]
    build: Callable[[Dict[str, Any]], nn.Module]


def _llama_convert(sd, config, *, back=False):
    from torchtune.models import convert_weights

    fn = convert_weights.tune_to_hf if back else convert_weights.hf_to_tune
    return fn(sd, **_heads(config), head_dim=config.get("head_dim"))


def _build_llama(config):
    from torchtune.models.llama3 import llama3
    from torchtune.models.llama3_2 import llama3_2
    from torchtune.modules import TiedLinear

    kwargs = _decoder_dims(config)
    kwargs["rope_base"] = int(rope_theta(config, 10000))
    tied = bool(config.get("tie_word_embeddings", False))
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        return llama3_2(**kwargs, scale_factor=int(scaling["factor"]), tie_word_embeddings=tied)
    model = llama3(**kwargs)
    if tied:  # plain RoPE with tied embeddings (SmolLM2): TiedLinear is no nn.Module
        del model.output
        model.output = TiedLinear(model.tok_embeddings)
    return model


def _qwen2_convert(sd, config, *, back=False):
    from torchtune.models.qwen2._convert_weights import qwen2_hf_to_tune, qwen2_tune_to_hf

    fn = qwen2_tune_to_hf if back else qwen2_hf_to_tune
    return fn(sd, **_heads(config), tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))


def _build_qwen2(config):
    from torchtune.models.qwen2 import qwen2

    return qwen2(
        **_decoder_dims(config),
        rope_base=rope_theta(config, 1_000_000.0),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _gemma2_convert(sd, config, *, back=False):
    from genft_tune.models.gemma2 import gemma2_hf_to_tune, gemma2_tune_to_hf

    fn = gemma2_tune_to_hf if back else gemma2_hf_to_tune
    return fn(sd, **_heads(config), head_dim=config.get("head_dim"))


def _build_gemma2(config):
    from genft_tune.models.gemma2 import gemma2

    dims = _decoder_dims(config)
    dims["norm_eps"] = config.get("rms_norm_eps", 1e-6)
    return gemma2(
        **dims,
        head_dim=config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
        rope_base=rope_theta(config, 10_000),
        attn_logit_softcapping=config.get("attn_logit_softcapping", 50.0),
        final_logit_softcapping=config.get("final_logit_softcapping", 30.0),
        sliding_window_size=config.get("sliding_window", 4096),
        query_pre_attn_scalar=config.get("query_pre_attn_scalar"),
    )


def _phi3_convert(sd, config, *, back=False):
    from torchtune.models.phi3._convert_weights import phi3_hf_to_tune, phi3_tune_to_hf

    if back:
        return phi3_tune_to_hf(sd)
    heads = _heads(config)
    if heads["num_heads"] == heads["num_kv_heads"]:  # as torchtune's checkpointer: GQA only
        heads = dict(num_heads=None, num_kv_heads=None, dim=None)
    return phi3_hf_to_tune(sd, **heads)


def _build_phi3(config):
    from torchtune.models.phi3 import phi3

    return phi3(**_decoder_dims(config), rope_base=rope_theta(config, 10_000))


def _qwen3_convert(sd, config, *, back=False):
    from genft_tune.models.qwen3 import qwen3_hf_to_tune, qwen3_tune_to_hf

    fn = qwen3_tune_to_hf if back else qwen3_hf_to_tune
    return fn(sd, **_heads(config), head_dim=config.get("head_dim"),
              tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))


def _build_qwen3(config):
    from genft_tune.models.qwen3 import qwen3

    return qwen3(
        **_decoder_dims(config),
        head_dim=config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
        rope_base=rope_theta(config, 1_000_000.0),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _family(name, convert, build) -> Family:
    return Family(
        name=name,
        to_tune=lambda sd, config: convert(sd, config),
        from_tune=lambda sd, config: convert(sd, config, back=True),
        build=build,
    )


FAMILIES: Dict[str, Family] = {
    f.name: f
    for f in (
        _family("llama", _llama_convert, _build_llama),
        _family("mistral", _llama_convert, _build_llama),
        _family("qwen2", _qwen2_convert, _build_qwen2),
        _family("qwen3", _qwen3_convert, _build_qwen3),
        _family("gemma2", _gemma2_convert, _build_gemma2),
        _family("phi3", _phi3_convert, _build_phi3),
    )
}


def get_family(config: Dict[str, Any]) -> Family:
    """The family of a ``config.json``.

    Raises:
        ValueError: naming the supported ``model_type`` values.
    """
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"config.json model_type must be one of {sorted(FAMILIES) + ['vit']}, got {model_type!r}")
    return FAMILIES[model_type]


__all__ = ["FAMILIES", "Family", "get_family", "rope_theta"]
