"""The model families this package can merge and verify, read off a Hugging Face
``config.json``: one entry per family answers everything that differs between them, for
``genft-tune merge`` (key conversion both ways, the merged ``config.json``), ``--verify``
(the plain torchtune model of the checkpoint and an example input), the PEFT export
(the Hugging Face module names), the model cards (pipeline tag, transformers class) and
:class:`~genft_tune.checkpointing.HFCheckpointer` (torchtune's code path a family shares).
Nothing outside :mod:`genft_tune.models` asks a ``model_type``.

Each family uses torchtune's own converter and component builder; Qwen3, which torchtune
0.6.1 lacks, and Gemma 2, whose torchtune builder soft-caps differently from the
checkpoints, use ours (:mod:`genft_tune.models.qwen3`, :mod:`genft_tune.models.gemma2`).
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torchtune.models import convert_weights
from torchtune.models.llama3 import llama3
from torchtune.models.llama3_2 import llama3_2
from torchtune.models.phi3 import phi3
from torchtune.models.phi3._convert_weights import phi3_hf_to_tune, phi3_tune_to_hf
from torchtune.models.qwen2 import qwen2
from torchtune.models.qwen2._convert_weights import qwen2_hf_to_tune, qwen2_tune_to_hf
from torchtune.modules import TiedLinear

from genft_tune.models.gemma2 import gemma2, gemma2_hf_to_tune, gemma2_tune_to_hf
from genft_tune.models.qwen3 import qwen3, qwen3_hf_to_tune, qwen3_tune_to_hf
from genft_tune.models.vit import load_hf_vit_state_dict, vit, vit_hf_module_name, vit_hf_to_tune, vit_tune_to_hf
from genft_tune.models.vit._convert_weights import _HF_IGNORED as _VIT_IGNORED

log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
NameMap = Callable[[str], Optional[str]]


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
    """A torchtune decoder builder's sizes (``vocab_size``, ``num_layers``, ``embed_dim``...)
    from a Hugging Face ``config.json``."""
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


def decoder_sizes(config: Dict[str, Any]) -> Dict[str, Any]:
    """What a torchtune decoder builder takes to build the size of a Hugging Face
    ``config.json`` (the pre-flight's advice): :func:`_decoder_dims` less ``norm_eps`` (not
    a size), plus ``head_dim`` and ``tie_word_embeddings`` where the config gives them."""
    kwargs = _decoder_dims(config)
    kwargs.pop("norm_eps", None)
    if config.get("head_dim"):
        kwargs["head_dim"] = config["head_dim"]
    if config.get("tie_word_embeddings") is not None:
        kwargs["tie_word_embeddings"] = bool(config["tie_word_embeddings"])
    return kwargs


def prompt_input(base_dir: Path, config: Dict[str, Any], prompt: str) -> torch.Tensor:
    """A decoder's ``--verify`` input: ``prompt`` tokenized with the checkpoint's tokenizer
    when it has one, else its bytes."""
    return torch.tensor([_prompt_tokens(base_dir, prompt, config["vocab_size"])])


def _prompt_tokens(directory: Path, prompt: str, vocab_size: int) -> List[int]:
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer.model").is_file():
        try:
            from transformers import AutoTokenizer  # optional here: bytes without it

            ids = AutoTokenizer.from_pretrained(str(directory)).encode(prompt)
            if ids:
                return [int(i) for i in ids]
        except Exception as e:  # a broken tokenizer must not hide the logits check
            log.warning(f"Could not tokenize the prompt with {directory}'s tokenizer ({e}); using bytes")
    return [b % vocab_size for b in prompt.encode("utf-8")] or [1]


def _same(key: str) -> str:
    return key


def same_names(keys: Iterable[str], replacements: Mapping[str, torch.Tensor]) -> Tuple[NameMap, NameMap]:
    """Merge's output key of each checkpoint key, and the spelling of ``from_tune``'s
    keys: unchanged (every family but ViT)."""
    return _same, _same


@dataclass(frozen=True)
class TorchtuneCheckpointer:
    """How :class:`~genft_tune.checkpointing.HFCheckpointer` reads and writes a family
    through torchtune's ``FullModelHFCheckpointer``: on the code path of torchtune's
    ``model_type`` with our converters swapped in for ``<prefix>_hf_to_tune`` /
    ``<prefix>_tune_to_hf`` of ``converter_module``."""

    model_type: str
    converter_module: str
    prefix: str
    hf_to_tune: Callable[..., StateDict]
    tune_to_hf: Callable[..., StateDict]


@dataclass(frozen=True)
class Family:
    """One model family: how its HF checkpoint maps to torchtune's layout and model.

    Attributes:
        name (str): the ``config.json`` ``model_type``.
        to_tune (Callable): ``(state dict, config) -> torchtune state dict`` (RoPE rows in
            torchtune's order; fused tensors such as Phi-3's ``qkv_proj`` sliced).
        from_tune (Callable): the inverse.
        build (Callable): ``config -> plain torchtune model`` of the checkpoint.
        pipeline_tag (str): the Hub's task of the family's models (model cards).
        auto_class (str): the transformers class that loads them (adapter cards).
        module_name (Callable): the Hugging Face model's module of a torchtune module, for
            a family whose module names differ from its checkpoint keys (transformers 5's
            ViT); None: the checkpoint's key without ``.weight``.
        example_input (Callable): ``(checkpoint dir, config, prompt) -> --verify input``.
        plain_model (Callable): ``(checkpoint dir, config, head) -> model`` with its weights,
            for a family that loads itself (ViT: ``head`` is a trained classifier that
            replaces the checkpoint's); None: ``build`` + ``to_tune`` of the checkpoint.
        merged_config (Callable): ``(config, replaced tensors, adapter extra) -> config.json
            updates`` of a merged checkpoint (ViT: labels of a trained head).
        output_names (Callable): ``(checkpoint keys, replaced tensors) -> (out_name,
            back_name)``: merge's output key of each key (None: dropped) and the spelling
            of ``from_tune``'s keys (:func:`same_names`).
        torchtune_checkpointer (TorchtuneCheckpointer): set for a family whose torchtune
            converters are missing or wrong.
        checkpointer_types (Tuple[str, ...]): the ``checkpointer.model_type`` values of
            torchtune's checkpointers that read the family's checkpoints, the one to
            suggest first; empty: read by the family's own code only (ViT).
        checkpointer_for (Callable): ``config -> checkpointer.model_type`` to suggest for
            one checkpoint of the family (Llama: ``LLAMA3_2`` for tied embeddings); None:
            the first of ``checkpointer_types``.
        sizes (Callable): ``config -> keyword arguments`` of the family's builder that give
            the checkpoint's size (:func:`decoder_sizes`; the pre-flight's advice).
        classifier_key (str): the torchtune key of a classifier's output weight, which an
            adapter may train and save (ViT's ``head.weight``); None for decoders.
    """

    name: str
    to_tune: Callable[[StateDict, Dict[str, Any]], StateDict]
    from_tune: Callable[[StateDict, Dict[str, Any]], StateDict]
    build: Callable[[Dict[str, Any]], nn.Module]
    pipeline_tag: str = "text-generation"
    auto_class: str = "AutoModelForCausalLM"
    module_name: Optional[NameMap] = None
    example_input: Callable[[Path, Dict[str, Any], str], torch.Tensor] = prompt_input
    plain_model: Optional[Callable[[Path, Dict[str, Any], Optional[torch.Tensor]], nn.Module]] = None
    merged_config: Callable[[Dict[str, Any], Mapping[str, torch.Tensor], Dict[str, Any]], Dict[str, Any]] = (
        lambda config, replacements, extra: {}
    )
    output_names: Callable[[Iterable[str], Mapping[str, torch.Tensor]], Tuple[NameMap, NameMap]] = same_names
    torchtune_checkpointer: Optional[TorchtuneCheckpointer] = None
    checkpointer_types: Tuple[str, ...] = ()
    checkpointer_for: Optional[Callable[[Dict[str, Any]], str]] = None
    sizes: Callable[[Dict[str, Any]], Dict[str, Any]] = decoder_sizes
    classifier_key: Optional[str] = None

    @property
    def is_decoder(self) -> bool:
        return self.pipeline_tag == "text-generation"

    def checkpointer_type(self, config: Dict[str, Any]) -> Optional[str]:
        """The ``checkpointer.model_type`` that reads this ``config.json``'s checkpoint,
        None for a family read by its own code only."""
        if self.checkpointer_for is not None:
            return self.checkpointer_for(config)
        return self.checkpointer_types[0] if self.checkpointer_types else None


def _llama_convert(sd, config, *, back=False):
    fn = convert_weights.tune_to_hf if back else convert_weights.hf_to_tune
    return fn(sd, **_heads(config), head_dim=config.get("head_dim"))


def _llama_checkpointer(config):
    # tied embeddings (SmolLM2, Llama 3.2) are LLAMA3_2 in torchtune's configs: the type
    # that knows there is no separate output.weight
    return "LLAMA3_2" if config.get("tie_word_embeddings", False) else "LLAMA3"


def _build_llama(config):
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
    fn = qwen2_tune_to_hf if back else qwen2_hf_to_tune
    return fn(sd, **_heads(config), tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))


def _build_qwen2(config):
    return qwen2(
        **_decoder_dims(config),
        rope_base=rope_theta(config, 1_000_000.0),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _gemma2_convert(sd, config, *, back=False):
    fn = gemma2_tune_to_hf if back else gemma2_hf_to_tune
    return fn(sd, **_heads(config), head_dim=config.get("head_dim"))


def _build_gemma2(config):
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
    if back:
        return phi3_tune_to_hf(sd)
    heads = _heads(config)
    if heads["num_heads"] == heads["num_kv_heads"]:  # as torchtune's checkpointer: GQA only
        heads = dict(num_heads=None, num_kv_heads=None, dim=None)
    return phi3_hf_to_tune(sd, **heads)


def _build_phi3(config):
    return phi3(**_decoder_dims(config), rope_base=rope_theta(config, 10_000))


def _qwen3_convert(sd, config, *, back=False):
    fn = qwen3_tune_to_hf if back else qwen3_hf_to_tune
    return fn(sd, **_heads(config), head_dim=config.get("head_dim"),
              tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))


def _build_qwen3(config):
    return qwen3(
        **_decoder_dims(config),
        head_dim=config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
        rope_base=rope_theta(config, 1_000_000.0),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _vit_sizes(config: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`~genft_tune.models.vit.vit`'s sizes of a ``config.json``."""
    return dict(
        image_size=config["image_size"],
        patch_size=config["patch_size"],
        num_channels=config.get("num_channels", 3),
        embed_dim=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_dim=config["intermediate_size"],
    )


def _build_vit(config: Dict[str, Any], num_classes: Optional[int] = None) -> nn.Module:
    return vit(
        **_vit_sizes(config),
        num_classes=num_classes or len(config.get("id2label") or {}) or 2,
        norm_eps=config.get("layer_norm_eps", 1e-12),
    )


def _vit_plain_model(directory: Path, config: Dict[str, Any], head: Optional[torch.Tensor]) -> nn.Module:
    model = _build_vit(config, num_classes=head.shape[0] if head is not None else None)
    loaded = load_hf_vit_state_dict(model, directory, interpolate_pos_embed=False)
    if loaded["head_reset"] and head is None:
        raise ValueError(f"verify needs a ViT checkpoint with its classifier head, {directory} has none that fits")
    return model


def _vit_example_input(base_dir: Path, config: Dict[str, Any], prompt: str) -> torch.Tensor:
    """A seeded random image batch (a classifier has no prompt)."""
    size, channels = config["image_size"], config.get("num_channels", 3)
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


def _vit_merged_config(
    config: Dict[str, Any], replacements: Mapping[str, torch.Tensor], extra: Dict[str, Any]
) -> Dict[str, Any]:
    """A replaced classifier: labels and architecture follow the trained head (labels
    from the adapter's ``extra.id2label``)."""
    head = replacements.get("classifier.weight")
    if head is None:
        return {}
    n = int(head.shape[0])
    id2label = extra.get("id2label")
    if not id2label or len(id2label) != n:
        old = config.get("id2label") or {}
        id2label = old if len(old) == n else {str(i): f"LABEL_{i}" for i in range(n)}
    id2label = {str(k): str(v) for k, v in id2label.items()}
    return {
        "architectures": ["ViTForImageClassification"],
        "id2label": id2label,
        "label2id": {v: int(k) for k, v in id2label.items()},
    }


def _vit_output_names(keys: Iterable[str], replacements: Mapping[str, torch.Tensor]) -> Tuple[NameMap, NameMap]:
    """Only a Hugging Face ``ViTModel`` base (keys without ``vit.``) changes anything: with the
    adapter's classifier head the merged model is a ``ViTForImageClassification`` (every
    backbone key gains ``vit.``, the pooler is dropped); without one it stays a ``ViTModel``."""
    if any(k.startswith(("vit.", "classifier.")) for k in keys):
        return same_names(keys, replacements)
    if "classifier.weight" in replacements:
        return (lambda key: None if _VIT_IGNORED.match(key) else f"vit.{key}"), _same
    return _same, (lambda key: key[len("vit."):] if key.startswith("vit.") else key)


def _family(name, convert, build, **more) -> Family:
    return Family(
        name=name,
        to_tune=lambda sd, config: convert(sd, config),
        from_tune=lambda sd, config: convert(sd, config, back=True),
        build=build,
        **more,
    )


FAMILIES: Dict[str, Family] = {
    f.name: f
    for f in (
        _family(
            "llama", _llama_convert, _build_llama, checkpointer_types=("LLAMA3", "LLAMA2", "LLAMA3_2"),
            checkpointer_for=_llama_checkpointer,
        ),
        _family("mistral", _llama_convert, _build_llama, checkpointer_types=("MISTRAL",)),
        _family("qwen2", _qwen2_convert, _build_qwen2, checkpointer_types=("QWEN2",)),
        _family(
            "qwen3", _qwen3_convert, _build_qwen3, checkpointer_types=("QWEN3",),
            # Qwen3's layout is Qwen2's plus the per-head q_norm/k_norm (and no q/k/v biases)
            torchtune_checkpointer=TorchtuneCheckpointer(
                "QWEN2", "torchtune.models.qwen2._convert_weights", "qwen2", qwen3_hf_to_tune, qwen3_tune_to_hf
            ),
        ),
        _family(
            "gemma2", _gemma2_convert, _build_gemma2, checkpointer_types=("GEMMA2",),
            # torchtune's own GEMMA2 converter swaps the two MLP norms (see genft_tune.models.gemma2)
            torchtune_checkpointer=TorchtuneCheckpointer(
                "GEMMA2", "torchtune.models.gemma2._convert_weights", "gemma2", gemma2_hf_to_tune, gemma2_tune_to_hf
            ),
        ),
        _family("phi3", _phi3_convert, _build_phi3, checkpointer_types=("PHI3_MINI", "PHI4")),
        Family(
            name="vit",
            to_tune=lambda sd, config: vit_hf_to_tune(sd),
            from_tune=lambda sd, config: vit_tune_to_hf(sd),
            build=_build_vit,
            pipeline_tag="image-classification",
            auto_class="AutoModelForImageClassification",
            module_name=vit_hf_module_name,
            example_input=_vit_example_input,
            plain_model=_vit_plain_model,
            merged_config=_vit_merged_config,
            output_names=_vit_output_names,
            sizes=_vit_sizes,
            classifier_key="head.weight",
        ),
    )
}


def family_read_by(checkpointer_type: str) -> Optional[Family]:
    """The family whose checkpoints torchtune's checkpointer reads with
    ``model_type=checkpointer_type`` (``LLAMA3_2`` -> llama), or None."""
    return next((f for f in FAMILIES.values() if checkpointer_type in f.checkpointer_types), None)


def find_family(config: Optional[Dict[str, Any]]) -> Optional[Family]:
    """The family of a ``config.json``, or None (no config, or a model type no family
    converts)."""
    return FAMILIES.get((config or {}).get("model_type"))


def get_family(config: Dict[str, Any]) -> Family:
    """The family of a ``config.json``.

    Raises:
        ValueError: naming the supported ``model_type`` values.
    """
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"config.json model_type must be one of {sorted(FAMILIES)}, got {model_type!r}")
    return FAMILIES[model_type]


__all__ = [
    "decoder_sizes",
    "FAMILIES",
    "Family",
    "family_read_by",
    "find_family",
    "get_family",
    "prompt_input",
    "rope_theta",
    "same_names",
    "TorchtuneCheckpointer",
]
