"""``genft-tune merge``: the merged checkpoint of a tiny Llama loads in transformers and
in torchtune's ``FullModelHFCheckpointer`` with the GenFT model's logits; sharding,
dtype, the torchtune/Meta format, wrong bases and interrupted merges.

The base is a tiny ``LlamaForCausalLM`` saved by transformers; the adapter (the session
fixture ``genft_run``, see ``conftest.py``) comes from a GenFT model built with torchtune's
``llama3`` component builder whose targets (q/k included, to exercise the RoPE permutation)
are swapped for ``genft_linear`` layers of one ``GenFTGenerators``, trained 2 steps so that
``dW != 0``.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from _tiny_llama import hf_base_to_tune, hf_config, TINY, trained_adapter, write_tiny_checkpoint

from genft_tune._cli.genft import main as cli_main
from genft_tune.checkpointing import (
    load_adapter,
    merge_adapter_checkpoint,
    parse_size,
    save_adapter,
    verify_merge,
)
from genft_tune.modules import genft_linear, GenFTConfig, GenFTGenerators

PYTHON = sys.executable


def hf_logits(model_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits


def test_merged_llama_loads_in_transformers_with_genft_logits(genft_run, tmp_path):
    out = tmp_path / "merged"
    assert cli_main(["merge", "--base", str(genft_run["base"]), "--adapter", str(genft_run["adapter"]), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "config.json", "generation_config.json", "genft_config.json", "model.safetensors",
         "tokenizer_config.json"]
    )
    assert (out / "tokenizer_config.json").read_text() == '{"note": "copied verbatim"}'
    merged = hf_logits(out, genft_run["tokens"])
    base = hf_logits(genft_run["base"], genft_run["tokens"])
    ref = genft_run["logits"]
    assert (base - ref).abs().max() > 1e-2  # the adapter changes the model
    torch.testing.assert_close(merged, ref, atol=2e-4, rtol=1e-4)
    # untouched tensors are copied bit for bit
    a, b = load_file(str(out / "model.safetensors")), load_file(str(genft_run["base"] / "model.safetensors"))
    assert torch.equal(a["model.layers.0.self_attn.o_proj.weight"], b["model.layers.0.self_attn.o_proj.weight"]) is False
    assert torch.equal(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])


def test_merge_matches_merge_in_torchtune_layout(genft_run, tmp_path):
    """Reference: the core ``merge_genft_state_dict`` on the torchtune state dict, then
    torchtune's ``tune_to_hf``: q/k go through the RoPE permutation both ways."""
    from torchtune.models.convert_weights import tune_to_hf

    from genft_tune.modules import merge_genft_state_dict

    out = merge_adapter_checkpoint(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=tmp_path / "m")
    adapter, cfg = load_adapter(genft_run["adapter"])
    ref = merge_genft_state_dict({**hf_base_to_tune(genft_run["base"]), **adapter}, config=cfg.config, target_modules=cfg["target_modules"])
    ref = tune_to_hf(ref, num_heads=TINY["num_heads"], num_kv_heads=TINY["num_kv_heads"], dim=TINY["embed_dim"])
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=0, rtol=0, msg=k)


def test_merged_llama_loads_in_torchtune_checkpointer_without_genft(genft_run, tmp_path):
    """torchtune's FullModelHFCheckpointer + llama3 builder, in a subprocess that never
    imports genft_tune's code (only the torchao compatibility hook that the install's
    .pth file loads at start-up, which torchtune 0.6.1 needs with this torchao),
    reproduce the GenFT model's logits."""
    out = merge_adapter_checkpoint(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=tmp_path / "m")
    torch.save(genft_run["tokens"], tmp_path / "tokens.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from torchtune.models.llama3 import llama3
        from torchtune.training import FullModelHFCheckpointer, MODEL_KEY
        ckpt = FullModelHFCheckpointer(checkpoint_dir={str(out)!r}, checkpoint_files=["model.safetensors"],
                                       model_type="LLAMA3", output_dir={str(tmp_path / "unused")!r})
        model = llama3(**{TINY!r})
        model.load_state_dict(ckpt.load_checkpoint()[MODEL_KEY], strict=True)
        model.eval()
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "tokens.pt")!r})), {str(tmp_path / "logits.pt")!r})
        hook = {{"genft_tune", "genft_tune._torchao_compat"}}
        assert not [m for m in sys.modules if m.startswith("genft_tune") and m not in hook], "genft_tune was imported"
        """
    )
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), genft_run["logits"], atol=2e-4, rtol=1e-4)


def test_sharded_round_trip_and_dtype(genft_run, tmp_path):
    """A small max shard size gives several shards + index; a sharded base is read
    back shard by shard; --dtype bf16 casts and updates config.json."""
    sharded = tmp_path / "sharded"
    merge_adapter_checkpoint(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=sharded, max_shard_size="40KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((sharded / s).is_file() for s in shards)
    assert all(os.path.getsize(sharded / s) < 40_000 + 70_000 for s in shards)  # one tensor may exceed
    assert not (sharded / "model.safetensors").exists()
    torch.testing.assert_close(hf_logits(sharded, genft_run["tokens"]), genft_run["logits"], atol=2e-4, rtol=1e-4)

    # merging the (already merged) sharded checkpoint as a base applies dW(W_merged):
    # compare against the single-file path to check the sharded reader
    a = merge_adapter_checkpoint(base_dir=sharded, adapter_dir=genft_run["adapter"], output_dir=tmp_path / "a")
    b_base = tmp_path / "single"
    merge_adapter_checkpoint(base_dir=sharded, adapter_dir=genft_run["adapter"], output_dir=tmp_path / "b", max_shard_size="1GB")
    assert (tmp_path / "b" / "model.safetensors").is_file()
    del b_base
    sa = {}
    for s in json.loads((a / "model.safetensors.index.json").read_text())["weight_map"].values() if (a / "model.safetensors.index.json").exists() else ["model.safetensors"]:
        sa.update(load_file(str(a / s)))
    sb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    bf = tmp_path / "bf16"
    assert cli_main(["merge", "--base", str(genft_run["base"]), "--adapter", str(genft_run["adapter"]), "--output", str(bf), "--dtype", "bf16"]) == 0
    assert json.loads((bf / "config.json").read_text())["torch_dtype"] == "bfloat16"
    sd = load_file(str(bf / "model.safetensors"))
    assert {v.dtype for v in sd.values()} == {torch.bfloat16}
    fp32 = load_file(str(tmp_path / "a" / "model.safetensors")) if False else load_file(str(merge_adapter_checkpoint(
        base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=tmp_path / "fp32") / "model.safetensors"))
    for k in sd:
        assert torch.equal(sd[k], fp32[k].to(torch.bfloat16)), k


def test_torchtune_and_meta_formats(genft_run, tmp_path):
    """A ``.pt`` in torchtune's layout and a ``consolidated.00.pth`` in Meta's are merged
    in place of the same keys, equal to the core merge."""
    from torchtune.models.convert_weights import tune_to_meta

    from genft_tune.modules import merge_genft_state_dict

    tune_sd = hf_base_to_tune(genft_run["base"])
    adapter, cfg = load_adapter(genft_run["adapter"])
    ref = merge_genft_state_dict({**tune_sd, **adapter}, config=cfg.config, target_modules=cfg["target_modules"])
    for name, sd, convert in (
        ("model.pt", tune_sd, lambda d: d),
        ("consolidated.00.pth", tune_to_meta(tune_sd), tune_to_meta),
    ):
        base = tmp_path / f"base_{name}"
        base.mkdir()
        torch.save(sd, base / name)
        (base / "params.json").write_text("{}")
        out = merge_adapter_checkpoint(base_dir=base, adapter_dir=genft_run["adapter"], output_dir=tmp_path / f"out_{name}")
        assert sorted(p.name for p in out.iterdir()) == sorted([name, "params.json", "genft_config.json", "README.md"])
        got = torch.load(out / name, weights_only=True)
        want = convert(ref)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), (name, k)


def test_verify_reports_logit_diff(genft_run, tmp_path, capsys):
    out = tmp_path / "v"
    rc = cli_main(["merge", "--base", str(genft_run["base"]), "--adapter", str(genft_run["adapter"]), "--output", str(out), "--verify", "--prompt", "hello"])
    assert rc == 0
    assert "max |logit diff|" in capsys.readouterr().out
    assert verify_merge(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], merged_dir=out) < 1e-3
    # against the unmerged base, the difference is the adapter's effect
    assert verify_merge(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], merged_dir=genft_run["base"]) > 1e-2


def test_wrong_base_is_a_clear_error(genft_run, tmp_path, capsys):
    from transformers import LlamaForCausalLM

    cfg = hf_config()
    cfg.intermediate_size = 96  # w1/w2 shapes differ
    other = tmp_path / "other"
    LlamaForCausalLM(cfg).save_pretrained(other)
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.w1.*\[96, 64\].*\[128, 64\]"):
        merge_adapter_checkpoint(base_dir=other, adapter_dir=genft_run["adapter"], output_dir=tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert cli_main(["merge", "--base", str(other), "--adapter", str(genft_run["adapter"]), "--output", str(tmp_path / "merged")]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not list(tmp_path.glob("merged*"))


def test_interrupted_merge_leaves_no_output(genft_run, tmp_path):
    def boom(i):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_adapter_checkpoint(
            base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=tmp_path / "out", _after_shard=boom
        )
    assert list(tmp_path.iterdir()) == []
    # a killed process (no cleanup at all) leaves only a .tmp- directory
    script = textwrap.dedent(
        f"""
        import os
        from genft_tune.checkpointing import merge_adapter_checkpoint
        merge_adapter_checkpoint(base_dir={str(genft_run['base'])!r}, adapter_dir={str(genft_run['adapter'])!r},
                                 output_dir={str(tmp_path / 'out')!r}, _after_shard=lambda i: os._exit(9))
        """
    )
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    assert all(".tmp-" in p.name for p in tmp_path.iterdir())


def test_existing_output_and_bad_arguments(genft_run, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        merge_adapter_checkpoint(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=tmp_path / "out")
    merge_adapter_checkpoint(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="dtype must be one of"):
        merge_adapter_checkpoint(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=tmp_path / "x", dtype="int8")
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("five")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_is_about_one_shard(tmp_path):
    """A ~200 MB checkpoint in 8 shards, merged with 25 MB output shards: the merge's
    peak RSS (VmHWM, reset just before) grows by far less than the checkpoint
    (measured in a subprocess; Linux only)."""
    from safetensors.torch import save_file

    base = tmp_path / "base"
    base.mkdir()
    dim, layers = 1024, 24  # 24 layers x 2 x 4 MB = 192 MB fp32
    config = dict(model_type="llama", num_attention_heads=8, num_key_value_heads=8, hidden_size=dim,
                  num_hidden_layers=layers, vocab_size=32, intermediate_size=dim)
    (base / "config.json").write_text(json.dumps(config))
    weight_map = {}
    per_shard = layers // 8
    for s in range(8):
        sd = {}
        for i in range(s * per_shard, (s + 1) * per_shard):
            sd[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(dim, dim)
            sd[f"model.layers.{i}.self_attn.o_proj.weight"] = torch.randn(dim, dim)
        name = f"model-{s + 1:05d}-of-00008.safetensors"
        save_file(sd, str(base / name))
        weight_map.update({k: name for k in sd})
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config_g = GenFTConfig(shared_dim=2, specific_dim=2)
    generators = GenFTGenerators(config_g)
    mods = {f"layers.{i}.attn.q_proj": genft_linear(dim, dim, generators=generators) for i in range(layers)}
    sd = {}
    for name, m in mods.items():
        m.initialize_parameters()
        sd.update({f"{name}.{k}": v for k, v in m.state_dict().items() if k in ("A1", "B1")})
    generators[next(iter(generators))].initialize_parameters()
    sd.update({f"genft_generators.{k}": v for k, v in generators.state_dict().items()})
    save_adapter(tmp_path / "adapter", adapter_state_dict=sd, config=config_g, target_modules=list(mods))
    script = textwrap.dedent(
        f"""
        import json
        import torch
        from genft_tune.checkpointing import merge_adapter_checkpoint
        import torchtune.models.convert_weights, torchtune.models.qwen2._convert_weights  # imports are not the merge
        def status(field):
            for line in open("/proc/self/status"):
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        before = status("VmRSS:")
        merge_adapter_checkpoint(base_dir={str(base)!r}, adapter_dir={str(tmp_path / 'adapter')!r},
                                 output_dir={str(tmp_path / 'out')!r}, max_shard_size="25MB")
        after = status("VmHWM:")
        print(json.dumps({{"before_mb": before, "after_mb": after}}))
        """
    )
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(stats)
    growth = stats["after_mb"] - stats["before_mb"]
    assert growth < 120, stats  # far below the 192 MB checkpoint
    assert len(json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]) == 2 * layers


def test_wegeft_adapter_merges_like_the_core(genft_run, tmp_path):
    """A WeGeFT adapter in the same file pair (``method: wegeft``) merges through the
    same path, q/k included; reference: ``merge_wegeft_state_dict`` in torchtune's
    layout, then ``tune_to_hf``."""
    from torchtune.models.convert_weights import tune_to_hf
    from torchtune.models.llama3 import llama3

    from genft_tune.modules import (
        merge_wegeft_state_dict,
        WeGeFTConfig,
        WeGeFTSharedFactors,
        wegeft_linear,
    )
    from genft_tune.modules.wegeft import (
        get_wegeft_adapter_state_dict,
        get_wegeft_config,
        get_wegeft_target_modules,
    )

    torch.manual_seed(0)
    model = llama3(**TINY)
    model.wegeft_factors = WeGeFTSharedFactors(WeGeFTConfig(rank=2, alpha=4.0))
    for name, module in list(model.named_modules()):
        kind = name.rsplit(".", 1)[-1]
        if kind in ("q_proj", "k_proj"):
            parent, _, child = name.rpartition(".")
            layer = wegeft_linear(module.in_features, module.out_features,
                                  factors=model.wegeft_factors.factors_for(kind, module.in_features))
            setattr(model.get_submodule(parent), child, layer)
    with torch.no_grad():
        for p in model.wegeft_factors.parameters():
            p.normal_()
    targets = get_wegeft_target_modules(model)
    adapter = get_wegeft_adapter_state_dict(model.state_dict())
    save_adapter(tmp_path / "w", adapter_state_dict=adapter, config=get_wegeft_config(model), target_modules=targets)
    out = merge_adapter_checkpoint(base_dir=genft_run["base"], adapter_dir=tmp_path / "w", output_dir=tmp_path / "m")
    ref = merge_wegeft_state_dict({**hf_base_to_tune(genft_run["base"]), **adapter}, config=get_wegeft_config(model), target_modules=targets)
    ref = tune_to_hf(ref, num_heads=TINY["num_heads"], num_kv_heads=TINY["num_kv_heads"], dim=TINY["embed_dim"])
    got = load_file(str(out / "model.safetensors"))
    base = load_file(str(genft_run["base"] / "model.safetensors"))
    assert not torch.equal(got["model.layers.1.self_attn.k_proj.weight"], base["model.layers.1.self_attn.k_proj.weight"])
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=0, rtol=0, msg=k)
    # --verify rebuilds the WeGeFT model (shared factors per key) from the adapter file alone
    assert verify_merge(base_dir=genft_run["base"], adapter_dir=tmp_path / "w", merged_dir=out) < 1e-4
    assert verify_merge(base_dir=genft_run["base"], adapter_dir=tmp_path / "w", merged_dir=genft_run["base"]) > 1e-2


def test_verify_on_a_tied_embedding_base(tmp_path, capsys):
    """SmolLM2 / Llama 3.2 style: tie_word_embeddings, no lm_head tensor in the checkpoint."""
    base = write_tiny_checkpoint(tmp_path / "tied_base", tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(str(base / "model.safetensors"))
    trained_adapter(base, tmp_path / "adapter", targets=("q_proj", "v_proj"))
    rc = cli_main(["merge", "--base", str(base), "--adapter", str(tmp_path / "adapter"), "--output",
                   str(tmp_path / "merged"), "--verify", "--tolerance", "1e-4"])
    assert rc == 0, capsys.readouterr().err
    assert verify_merge(base_dir=base, adapter_dir=tmp_path / "adapter", merged_dir=base) > 1e-3


def test_merged_folder_has_its_own_card_not_the_bases(genft_run, tmp_path, capsys):
    """A base whose card is a GGUF conversion's (``base_model_relation: quantized``): the
    merged folder's README.md is a card for the merged model (the base's Hub id and license,
    the quantized-copy note, a snippet loading the folder), and publish keeps what it says."""
    import shutil

    import yaml

    base = tmp_path / "base"
    shutil.copytree(genft_run["base"], base)
    base_card = "---\nlicense: apache-2.0\nbase_model: org/tiny-llama\nbase_model_relation: quantized\ntags: [gguf]\n---\n# GGUF\n"
    (base / "README.md").write_text(base_card)
    out = tmp_path / "merged"
    assert cli_main(["merge", "--base", str(base), "--adapter", str(genft_run["adapter"]), "--output", str(out)]) == 0
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert card != base_card and "# GGUF" not in card and "base_model_relation" not in meta
    assert meta["base_model"] == "org/tiny-llama" and meta["license"] == "apache-2.0" and meta["tags"][0] == "genft"
    assert "Trained on a quantized copy of [org/tiny-llama]" in card and f'from_pretrained("{out.resolve()}")' in card
    dry = tmp_path / "dry"
    assert cli_main(["publish", "--folder", str(out), "--repo-id", "me/tiny", "--dry-run", str(dry)]) == 0
    hub = (dry / "README.md").read_text()
    assert "license: apache-2.0" in hub and "Trained on a quantized copy of [org/tiny-llama]" in hub
    assert "warning" not in capsys.readouterr().err


def test_help_texts_say_what_the_commands_do():
    """merge --verify builds every packaged decoder family and ViT (not only Llama); the
    quickstart trains 60 steps without --max-steps (not the config's default)."""
    from genft_tune._cli.genft import build_parser
    from genft_tune.models._families import FAMILIES
    from genft_tune.quickstart import build_config, main as quickstart_main, QUICKSTART_OVERRIDES

    merge = build_parser("merge")._subparsers._group_actions[0].choices["merge"]
    verify = next(a for a in merge._actions if "--verify" in a.option_strings).help
    assert "Llama family" not in verify and all(t in verify for t in FAMILIES)  # the decoders and ViT

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        quickstart_main(["--help"])
    text = " ".join(buf.getvalue().split())
    steps = build_config(base_dir=Path("b"), output_dir=Path("o"), overrides=QUICKSTART_OVERRIDES).max_steps_per_epoch
    assert "config default" not in text and f"--max-steps MAX_STEPS optimizer steps (default: {steps}," in text
