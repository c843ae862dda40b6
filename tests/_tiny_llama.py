"""The tiny Llama every Llama test uses (no tests here): its architecture, its Hugging
Face checkpoint written by ``transformers`` itself, a byte-level tokenizer with Llama 3's
special tokens, a small instruct data set, the recipe config that trains it, and a GenFT
adapter trained on it in-process.

2 layers, embed 64, 4 heads, 2 KV heads, vocab 272 (256 bytes + Llama 3's special tokens).
"""

import base64
import json
import random
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file

from genft_tune.checkpointing import save_adapter
from genft_tune.models._families import get_family
from genft_tune.modules import apply_adapter, genft_linear, GenFTConfig, GenFTGenerators
from genft_tune.modules._method import adapter_kind_for_config
from genft_tune.modules.genft import get_genft_adapter_state_dict, get_genft_modules

# 256 byte tokens, then Llama 3's special tokens.
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
    "<|video|>",
]
VOCAB_SIZE = 272  # 256 bytes + 11 special tokens, rounded up

# The tiny model in torchtune's terms (``hf_config`` gives Hugging Face's).
TINY: Dict[str, Any] = dict(
    vocab_size=VOCAB_SIZE,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=64,
    intermediate_dim=128,
    max_seq_len=256,
    norm_eps=1e-5,
    rope_base=10000,
)

ALL_ATTN = ["q_proj", "k_proj", "v_proj", "output_proj"]


# ---- the Hugging Face checkpoint ----------------------------------------------------


def hf_config(*, tie_word_embeddings: bool = False, scale_factor: Optional[float] = None):
    """``LlamaConfig`` of the tiny model; ``scale_factor`` adds Llama 3.1 RoPE scaling
    with the constants torchtune's ``Llama3ScaledRoPE`` uses."""
    from transformers import LlamaConfig

    rope_scaling = None
    if scale_factor is not None:
        rope_scaling = {
            "rope_type": "llama3",
            "factor": float(scale_factor),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    return LlamaConfig(
        vocab_size=TINY["vocab_size"],
        hidden_size=TINY["embed_dim"],
        intermediate_size=TINY["intermediate_dim"],
        num_hidden_layers=TINY["num_layers"],
        num_attention_heads=TINY["num_heads"],
        num_key_value_heads=TINY["num_kv_heads"],
        # scaled RoPE is defined beyond its original 8192 positions
        max_position_embeddings=16384 if scale_factor is not None else TINY["max_seq_len"],
        rms_norm_eps=TINY["norm_eps"],
        rope_theta=float(TINY["rope_base"]),
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=256,
        eos_token_id=257,
    )


def write_tiny_checkpoint(
    path: Path,
    *,
    tie_word_embeddings: bool = False,
    scale_factor: Optional[float] = None,
    seed: int = 0,
    random_norms: bool = False,
) -> Path:
    """A randomly initialised tiny ``LlamaForCausalLM`` saved with ``save_pretrained``
    (``model.safetensors`` + ``config.json``), its matrices scaled to ``N(0, 1/fan_in)``
    so that the model is far from trivial. ``random_norms`` draws the RMSNorm scales from
    U(0.5, 1.5) too, so that equality tests see them."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(tie_word_embeddings=tie_word_embeddings, scale_factor=scale_factor))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
            elif random_norms:
                p.uniform_(0.5, 1.5)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


def load_hf_model(path: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def hf_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    return load_hf_model(path)(tokens).logits


def read_tune_state_dict(path: Path, out_dir: Path, *, tie_word_embeddings: bool = False):
    """The checkpoint in torchtune's key format, read by ``FullModelHFCheckpointer``."""
    from torchtune.training import FullModelHFCheckpointer

    checkpointer = FullModelHFCheckpointer(
        checkpoint_dir=str(path),
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3_2" if tie_word_embeddings else "LLAMA3",
        output_dir=str(out_dir),
    )
    return checkpointer.load_checkpoint()["model"]


def hf_base_to_tune(base_dir: Path) -> Dict[str, torch.Tensor]:
    """The checkpoint in torchtune's key format, converted by ``hf_to_tune`` alone."""
    from torchtune.models.convert_weights import hf_to_tune

    sd = load_file(str(base_dir / "model.safetensors"))
    return hf_to_tune(
        sd, num_heads=TINY["num_heads"], num_kv_heads=TINY["num_kv_heads"], dim=TINY["embed_dim"]
    )


def tokens(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (batch, seq), generator=g)


# ---- GenFT models of it -------------------------------------------------------------


def genft_model(**overrides: Any):
    """``llama_genft`` on the tiny architecture; GenFT on q, k, v, o and the MLP by default."""
    from genft_tune.models.llama import llama_genft

    kwargs: Dict[str, Any] = dict(
        genft_attn_modules=ALL_ATTN,
        apply_genft_to_mlp=True,
        **TINY,
    )
    kwargs.update(overrides)
    return llama_genft(**kwargs)


MERGE_TARGETS = ("q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2")


def build_genft_llama(config: GenFTConfig, *, targets=MERGE_TARGETS):
    """torchtune's llama3 with ``targets`` replaced by GenFT layers (one generator set)."""
    from torchtune.models.llama3 import llama3

    model = llama3(**TINY)
    generators = GenFTGenerators(config)
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear):
            parent_name, _, child = name.rpartition(".")
            new = genft_linear(module.in_features, module.out_features, generators=generators)
            setattr(model.get_submodule(parent_name), child, new)
    model.genft_generators = generators
    return model


def trained_adapter(base_dir: Path, adapter_dir: Path, *, targets=MERGE_TARGETS, seed: int = 0):
    """Train a GenFT model on the base for 2 steps; save its adapter; return the model."""
    torch.manual_seed(seed)
    config = GenFTConfig(shared_dim=2, specific_dim=2, scaling=0.5, zero_init=True)
    model = build_genft_llama(config, targets=targets)
    for m in model.modules():
        if hasattr(m, "initialize_parameters"):
            m.initialize_parameters()
    missing, unexpected = model.load_state_dict(hf_base_to_tune(base_dir), strict=False)
    assert not unexpected
    params = [p for n, p in model.named_parameters() if "genft" in n or n.rsplit(".", 1)[-1] in ("A1", "B1", "A2", "B2")]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=0.05)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 12))
    for _ in range(2):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    modules = get_genft_modules(model)
    assert all(m.delta_weight().abs().max() > 0 for m in modules.values())
    save_adapter(
        adapter_dir,
        adapter_state_dict=get_genft_adapter_state_dict(model.state_dict()),
        config=config,
        target_modules=list(modules),
        base_model=str(base_dir),
    )
    return model


def adapted_model(base_dir: Path, config, targets=MERGE_TARGETS):
    """Our torchtune model of the HF checkpoint with ``config``'s adapter (any method) on
    ``targets``, every adapter tensor random (so that each one matters).

    Returns:
        the model (in eval mode) and the checkpoint's ``config.json`` as a dict.
    """
    hf_config = json.loads((base_dir / "config.json").read_text())
    family = get_family(hf_config)
    model = family.build(hf_config)
    model.load_state_dict(family.to_tune(load_file(str(base_dir / "model.safetensors")), hf_config), strict=False)
    apply_adapter(model, config, list(targets))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(std=0.2)
    return model.eval(), hf_config


def save_model_adapter(model, config, adapter_dir: Path, base_dir: Path) -> None:
    """``model``'s adapter saved in our format, with the target shapes the recipes record."""
    kind = adapter_kind_for_config(config)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, kind.layer_cls)}
    save_adapter(
        adapter_dir,
        adapter_state_dict={k: v for k, v in model.state_dict().items() if kind.is_key(k)},
        config=config,
        target_modules=kind.target_modules(layers),
        target_shapes={n: (m.out_dim, m.in_dim) for n, m in layers.items()},  # as the recipes record
        base_model=str(base_dir),
    )


# ---- tokenizer and data -------------------------------------------------------------


def write_tiny_tokenizer(path: Path) -> Dict[str, str]:
    """A byte-level tiktoken file and a ``tokenizer.json``-style special-token file.

    Returns:
        Dict[str, str]: ``path`` and ``special_tokens_path`` for ``llama3_tokenizer``.
    """
    path.mkdir(parents=True, exist_ok=True)
    model = path / "tokenizer.model"
    model.write_text(
        "".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
    )
    special = path / "special_tokens.json"
    special.write_text(
        json.dumps(
            {"added_tokens": [{"id": 256 + i, "content": t} for i, t in enumerate(SPECIAL_TOKENS)]}
        )
    )
    return {"path": str(model), "special_tokens_path": str(special)}


_WORDS = "red green blue cat dog sun moon tree fish bird rock wind star rain snow leaf".split()


def write_instruct_dataset(path: Path, *, n: int = 64, seed: int = 0) -> Path:
    """A JSON list of ``{"input", "output"}`` pairs: reverse a short list of words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 4))]
        rows.append({"input": "reverse: " + " ".join(words), "output": " ".join(reversed(words))})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


# ---- recipe configs -----------------------------------------------------------------

DELETE = object()  # an override value: remove the key


def _update(cfg: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """Apply ``{"a.b": value}`` style overrides (``DELETE`` removes ``a.b``)."""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value


def base_config(tmp_path: Path, *, ckpt_dir: Optional[Path] = None, **overrides: Any) -> Dict[str, Any]:
    """A complete GenFT recipe config for the tiny model (a plain dict; see ``write_config``)."""
    data = tmp_path / "data"
    ckpt_dir = ckpt_dir or write_tiny_checkpoint(tmp_path / "base")
    tok = write_tiny_tokenizer(data / "tok")
    train = write_instruct_dataset(data / "train.json", n=64, seed=0)
    cfg: Dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "model": {
            "_component_": "genft_tune.models.llama.llama_genft",
            "genft_attn_modules": ["q_proj", "v_proj"],
            "apply_genft_to_mlp": False,
            "apply_genft_to_output": False,
            **TINY,
            "tie_word_embeddings": False,
            "shared_dim": 4,
            "specific_dim": 4,
            "ratio": 0.5,
            "scaling": 0.05,
            "act_in": "gelu",
            "act_out": "gelu",
            "dropout": 0.0,
        },
        "tokenizer": {
            "_component_": "torchtune.models.llama3.llama3_tokenizer",
            **tok,
            "max_seq_len": 64,
        },
        "checkpointer": {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(ckpt_dir),
            "checkpoint_files": ["model.safetensors"],
            "model_type": "LLAMA3",
            "output_dir": "${output_dir}",
        },
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": False,
        "dataset": {
            "_component_": "torchtune.datasets.instruct_dataset",
            "source": "json",
            "data_files": str(train),
            "split": "train",
            "cache_dir": str(tmp_path / "hf_cache"),
        },
        "seed": 1234,
        "shuffle": True,
        "batch_size": 4,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3, "weight_decay": 0.0},
        "lr_scheduler": {
            "_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": 2,
        },
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "epochs": 1,
        "max_steps_per_epoch": None,
        "gradient_accumulation_steps": 1,
        "clip_grad_norm": None,
        "compile": False,
        "device": "cpu",
        "dtype": "fp32",
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "metric_logger": {
            "_component_": "torchtune.training.metric_logging.DiskLogger",
            "log_dir": "${output_dir}/logs",
            "filename": "log.txt",
        },
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,
    }
    _update(cfg, overrides)
    return cfg


WEGEFT_RANK = 4
WEGEFT_MODEL = {
    "_component_": "genft_tune.models.llama.llama_wegeft",
    "wegeft_attn_modules": ["q_proj", "v_proj"],
    **TINY,
    "tie_word_embeddings": False,
    "wegeft_rank": WEGEFT_RANK,
    "wegeft_alpha": 2.0 * WEGEFT_RANK,
    "wegeft_dropout": 0.1,  # exercises the RNG state on resume
    "wegeft_shared": True,
}


def wegeft_config(tmp_path: Path, **overrides: Any) -> Dict[str, Any]:
    """:func:`base_config` with the tiny WeGeFT model (``model.*`` overrides apply to it)."""
    cfg = base_config(tmp_path, **overrides)
    cfg["model"] = dict(WEGEFT_MODEL)
    for key, value in overrides.items():
        if key.startswith("model."):
            cfg["model"][key.split(".", 1)[1]] = value
    return cfg


# per registered method: its recipe config (the tests parametrised over methods use it)
METHOD_CONFIGS = {"genft": base_config, "wegeft": wegeft_config}
