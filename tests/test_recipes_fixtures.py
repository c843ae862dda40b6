"""Shared fixtures for the recipe tests (no tests here).

Everything is written by the tests themselves: a tiny Hugging Face Llama checkpoint
(``LlamaForCausalLM(LlamaConfig(tiny)).save_pretrained``), a byte-level tiktoken
tokenizer with Llama 3's special tokens (torchtune's own ``llama3_tokenizer`` reads
it), and a small JSON instruct data set.
"""

import base64
import importlib.util
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO_ROOT / "recipes"
SINGLE_DEVICE_RECIPE = RECIPES_DIR / "genft_finetune_single_device.py"
DISTRIBUTED_RECIPE = RECIPES_DIR / "genft_finetune_distributed.py"

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

# The tiny model, in torchtune's and in Hugging Face's terms.
TINY = dict(
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


def hf_config(tie_word_embeddings: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=TINY["vocab_size"],
        hidden_size=TINY["embed_dim"],
        intermediate_size=TINY["intermediate_dim"],
        num_hidden_layers=TINY["num_layers"],
        num_attention_heads=TINY["num_heads"],
        num_key_value_heads=TINY["num_kv_heads"],
        max_position_embeddings=TINY["max_seq_len"],
        rms_norm_eps=TINY["norm_eps"],
        rope_theta=float(TINY["rope_base"]),
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=256,
        eos_token_id=257,
    )


def write_tiny_checkpoint(path: Path, *, tie_word_embeddings: bool = False, seed: int = 0) -> Path:
    """A randomly initialised tiny ``LlamaForCausalLM`` saved in HF format
    (``model.safetensors`` + ``config.json``), scaled up from HF's tiny init so that
    the base model's weights are not all near zero."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(tie_word_embeddings))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=1.0 / p.shape[1] ** 0.5)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path


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


def base_config(tmp_path: Path, *, ckpt_dir: Optional[Path] = None, **overrides: Any) -> Dict[str, Any]:
    """A complete recipe config for the tiny model (a plain dict; see ``write_config``)."""
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


def _update(cfg: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """Apply ``{"a.b": value}`` style overrides (value None deletes ``a.b``... use DELETE)."""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value


DELETE = object()


def write_config(cfg: Dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load_recipe_module(recipe_file: Path):
    """Import a recipe file as a fresh module (it is not importable by name)."""
    name = f"_genft_test_{recipe_file.stem}"
    spec = importlib.util.spec_from_file_location(name, recipe_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe_in_process(recipe_file: Path, config_path: Path, overrides: Sequence[str] = ()) -> None:
    """Run a recipe's ``recipe_main`` in this process, as ``tune run`` would."""
    module = load_recipe_module(recipe_file)
    argv = sys.argv
    sys.argv = [str(recipe_file), "--config", str(config_path), *overrides]
    try:
        module.recipe_main()
    except SystemExit as e:  # torchtune's config.parse ends with sys.exit(recipe_main(...))
        if e.code not in (None, 0):
            raise
    finally:
        sys.argv = argv


def run_single_device_with_snapshot(config_path: Path, *, crash_after_step: int, snapshot: Path) -> None:
    """Run the single-device recipe in this process; when it logs ``crash_after_step``
    its output folder is copied to ``snapshot``: what a run that crashed right there
    would have left on disk."""
    from omegaconf import OmegaConf

    module = load_recipe_module(SINGLE_DEVICE_RECIPE)
    cfg = OmegaConf.load(config_path)
    recipe = module.GenFTFinetuneRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    log_dict = recipe._metric_logger.log_dict

    def log_and_snapshot(payload, step):
        log_dict(payload, step)
        if step == crash_after_step and "loss" in payload:
            recipe._metric_logger._file.flush()
            shutil.copytree(recipe._output_dir, snapshot)

    recipe._metric_logger.log_dict = log_and_snapshot
    recipe.train()
    recipe.cleanup()


_STEP = re.compile(r"^Step (\d+) \| (.*)$")


def read_metrics(log_file: Path) -> Dict[str, Dict[int, float]]:
    """``{metric: {step: value}}`` from a torchtune ``DiskLogger`` file."""
    out: Dict[str, Dict[int, float]] = {}
    for line in Path(log_file).read_text().splitlines():
        m = _STEP.match(line.strip())
        if not m:
            continue
        step = int(m.group(1))
        for item in m.group(2).split():
            if ":" not in item:
                continue
            name, value = item.split(":", 1)
            try:
                out.setdefault(name, {})[step] = float(value)
            except ValueError:
                pass
    return out


def losses(log_file: Path) -> List[float]:
    m = read_metrics(log_file)["loss"]
    return [m[s] for s in sorted(m)]


def subprocess_env(extra_pythonpath: Sequence[str] = ()) -> Dict[str, str]:
    """Environment for recipe subprocesses: offline, quiet, few threads."""
    env = dict(os.environ)
    paths = [*map(str, extra_pythonpath)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    return env
