"""One environment for torchtune 0.6.1 and PEFT's own methods (issue 22, point 8).

PEFT 0.21.2 refuses torchao < 0.16 whenever it builds a LoRA or VeRA layer, and torchtune
0.6.1 imports names that torchao 0.16-0.18 renamed. ``genft_tune._torchao_compat`` serves
torchtune those names before its first import, in every entry point: ``tune`` itself (the
``.pth`` file the install puts in site-packages), the recipes, ``genft-tune`` and
``import genft_tune``. Each test here runs what a user runs, in a fresh interpreter.
"""

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter of the test venv, outside the checkout
    (so nothing is imported from the working directory by accident)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
        env={**os.environ, **env}, timeout=300,
    )


def test_the_pinned_torchao_is_one_peft_accepts():
    assert Version(metadata.version("torchao")) >= Version("0.16.0")
    from peft.import_utils import is_torchao_available

    assert is_torchao_available()  # raises "incompatible version of torchao" below 0.16


def test_peft_lora_and_vera_build_and_train_next_to_torchtune():
    """PEFT's own LoRA and VeRA in the same interpreter as torchtune's training stack."""
    proc = _python(
        "import torch, torchtune.training\n"
        "from peft import LoraConfig, VeraConfig, get_peft_model\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "torch.manual_seed(0)\n"
        "for cfg in (LoraConfig(target_modules=['q_proj', 'v_proj'], r=4, init_lora_weights=False),\n"
        "            VeraConfig(target_modules=['q_proj', 'v_proj'], r=4)):\n"
        "    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,\n"
        "        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))\n"
        "    model = get_peft_model(base, cfg)\n"
        "    ids = torch.randint(0, 64, (2, 8))\n"
        "    model(input_ids=ids, labels=ids).loss.backward()\n"
        "    grads = [p.grad for p in model.parameters() if p.requires_grad]\n"
        "    assert grads and all(g is not None for g in grads), type(cfg).__name__\n"
        "    print(type(cfg).__name__, 'ok')\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["LoraConfig", "ok", "VeraConfig", "ok"]


def test_qgenft_and_qlora_on_an_nf4_base_through_torchtune():
    """torchtune's NF4 path (QLoRA's LoRALinear, our QGenFT builder) runs on the pinned torchao."""
    proc = _python(
        "import torch\n"
        "from torchtune.modules.peft import LoRALinear\n"
        "from torchao.dtypes.nf4tensor import NF4Tensor\n"
        "from genft_tune.models.llama import llama_genft\n"
        "torch.manual_seed(0)\n"
        "lora = LoRALinear(256, 256, rank=4, alpha=8, quantize_base=True)\n"
        "assert isinstance(lora.weight, NF4Tensor)\n"
        "lora(torch.randn(2, 256)).sum().backward()\n"
        "model = llama_genft(vocab_size=64, num_layers=1, num_heads=4, num_kv_heads=4, embed_dim=256,\n"
        "    max_seq_len=16, intermediate_dim=256, genft_attn_modules=['q_proj', 'v_proj'], quantize_base=True)\n"
        "q = model.layers[0].attn.q_proj\n"
        "assert isinstance(q.weight, NF4Tensor), type(q.weight)\n"
        "ids = torch.randint(0, 64, (2, 8))\n"
        "model(ids).float().pow(2).mean().backward()\n"
        "trained = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]\n"
        "assert trained, 'no adapter gradient'\n"
        "print('ok', len(trained))\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_tune_cli_imports_torchtune_through_the_installed_hook():
    """``tune`` imports torchtune before any recipe of ours runs: only the ``.pth`` file
    in site-packages can put the hook in place; without the hook torchtune fails to import
    on this torchao (which is what makes this test fail when the hook is broken)."""
    proc = subprocess.run([str(BIN / "tune"), "ls"], capture_output=True, text=True, cwd="/", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lora_finetune_single_device" in proc.stdout
    assert "Failed to load" not in proc.stderr  # torchao's CUDA-only kernels on a CPU torch: not news

    off = _python("import torchtune", GENFT_TUNE_NO_TORCHAO_COMPAT="1")
    if Version(metadata.version("torchao")) >= Version("0.16.0"):
        assert off.returncode != 0 and "torchao" in off.stderr


@pytest.mark.parametrize("entry", ["genft-tune", "recipe"])
def test_our_entry_points_put_the_hook_in_place_without_the_pth(entry, tmp_path):
    """With no ``.pth`` (a checkout on ``PYTHONPATH``, say), ``genft-tune`` and the recipes
    still import genft_tune before torchtune. Run with ``-S`` so no ``.pth`` file is read."""
    site = [p for p in sys.path if p.endswith("site-packages")][0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "recipes"), site])}
    if entry == "genft-tune":
        code = "import sys; sys.argv = ['genft-tune', 'ls']; from genft_tune._cli.genft import main; main()"
        expect = "genft_finetune_single_device"
    else:
        code = "import genft_finetune_single_device, torchtune.training; print('recipe imported')"
        expect = "recipe imported"
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout


def test_patching_again_adds_nothing_and_int4_weight_only_makes_the_new_config():
    """A second patch (the hook runs once per process, ``install`` may run again) finds every
    name in place; torchtune's ``int4_weight_only(group_size)`` gives torchao's config."""
    import torchao.quantization

    from genft_tune import _torchao_compat

    config_class = torchao.quantization.Int4WeightOnlyConfig
    assert _torchao_compat.patch_torchao() == []  # already patched, or nothing to add
    assert torchao.quantization.int4_weight_only(group_size=32).__class__ is config_class
    assert torchao.quantization.int4_weight_only(group_size=32).group_size == 32


def test_the_old_nf4_path_gives_torchaos_own_class_whatever_is_imported_first():
    """``torchao.dtypes.nf4tensor`` (torchtune's path) and torchao's own module hand out
    one NF4Tensor class, so isinstance checks agree (imported first here, before torchtune)."""
    proc = _python(
        "from torchao.dtypes.nf4tensor import NF4Tensor, to_nf4\n"
        "import torch, torchao.quantization, torchtune.modules.common_utils as cu\n"
        "from genft_tune.modules._base import NF4Tensor as ours\n"
        "w = to_nf4(torch.randn(256, 256))\n"
        "assert NF4Tensor is torchao.quantization.NF4Tensor is cu.NF4Tensor is ours is type(w)\n"
        "print('one class')\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "one class"
