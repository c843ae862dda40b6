"""GenFT/WeGeFT adapters as standard PEFT LoRAs: ``genft-tune export-lora`` (ours) and
PEFT's own ``convert_to_lora``/``save_as_lora`` on our PEFT layers.

References are independent of the conversion: the checkpoint that ``genft-tune merge``
writes (loaded by transformers alone) and PEFT's ``PeftModel`` with our adapter. The LoRA
is loaded by PEFT's ``PeftModel.from_pretrained`` onto a plain transformers model. q/k
rows of recipe-trained GenFT adapters are in torchtune's RoPE order, so every GenFT test
also checks the row handling (the adapters target q, k, v, o and the MLP).
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from _authors_files import D as AUTHORS_DIM, write_authors_adapter, write_base
from _tiny_llama import adapted_model, save_model_adapter, TINY, write_tiny_checkpoint
from _tiny_llama import tokens as tiny_tokens

from genft_tune.checkpointing import merge_adapter_checkpoint
from genft_tune.checkpointing._lora_export import export_lora_adapter, VLLM_MAX_LORA_RANKS
from genft_tune.checkpointing._peft_format import export_peft_adapter, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE
from genft_tune.modules import GenFTConfig, WeGeFTConfig

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
import genft_tune.peft as genft_peft  # noqa: E402  (registers GENFT and WEGEFT)

EXACT = 5e-5  # fp32 round-off on the tiny model's logits (|logits| ~ 1); one rank too few gives > 1e-3
WEGEFT = WeGeFTConfig(rank=3, alpha=6.0)
GENFT_LOWRANK = GenFTConfig(shared_dim=3, specific_dim=2, act_out="identity", generator_bias=True,
                            zero_init=False, scaling=0.5)  # dW rank <= a+b+1 = 6
GENFT_DENSE = GenFTConfig(shared_dim=2, specific_dim=2, zero_init=False, scaling=0.5)  # gelu out: full rank


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokens():
    return tiny_tokens(seq=10)


def _adapter(tmp_path, config, fmt="ours"):
    """``(base, adapter dir, merged logits)``: a recipe-style adapter with random tensors,
    in our files or (``fmt="peft"``) only PEFT's pair in the folder's ``peft/``."""
    base = write_tiny_checkpoint(tmp_path / "base")
    model, _ = adapted_model(base, config)
    adapter = tmp_path / "adapter"
    save_model_adapter(model, config, adapter, base)
    merged = merge_adapter_checkpoint(base_dir=base, adapter_dir=adapter, output_dir=tmp_path / "merged")
    if fmt == "peft":
        export_peft_adapter(adapter, base_dir=base, output_dir=tmp_path / "peft_only" / "peft")
        adapter = tmp_path / "peft_only"
    with torch.no_grad():
        reference = _hf(merged)(tiny_tokens(seq=10)).logits
        assert (reference - _hf(base)(tiny_tokens(seq=10)).logits).abs().max() > 1e-2  # the adapter acts
    return base, adapter, reference


def _lora_logits(base, lora_dir, tokens):
    with torch.no_grad():
        return peft.PeftModel.from_pretrained(_hf(base), str(lora_dir)).eval()(tokens).logits


def _max_err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("fmt", ["ours", "peft"])
def test_wegeft_is_exact_at_its_rank(tmp_path, tokens, fmt):
    """WeGeFT's dW = (alpha/r) W0 phi^T psi has rank <= r: the rank-r LoRA has the merged
    model's logits; rank r-1 does not (so the comparison can tell)."""
    base, adapter, reference = _adapter(tmp_path, WEGEFT, fmt)
    result = export_lora_adapter(adapter, base_dir=base, output_dir=tmp_path / "lora", rank=WEGEFT.rank)
    assert _max_err(_lora_logits(base, tmp_path / "lora", tokens), reference) < EXACT
    assert all(c.exact and c.numerical_rank == WEGEFT.rank for c in result.layers)
    export_lora_adapter(adapter, base_dir=base, output_dir=tmp_path / "lora_low", rank=WEGEFT.rank - 1)
    assert _max_err(_lora_logits(base, tmp_path / "lora_low", tokens), reference) > 1e-3


@pytest.mark.parametrize("fmt", ["ours", "peft"])
def test_genft_low_rank_path_is_exact_at_a_plus_b_plus_1(tmp_path, tokens, fmt):
    cfg = GENFT_LOWRANK
    rank = cfg.shared_dim + cfg.specific_dim + 1
    base, adapter, reference = _adapter(tmp_path, cfg, fmt)
    result = export_lora_adapter(adapter, base_dir=base, output_dir=tmp_path / "lora", rank=rank)
    assert _max_err(_lora_logits(base, tmp_path / "lora", tokens), reference) < EXACT
    assert max(c.numerical_rank for c in result.layers) == rank and all(c.exact for c in result.layers)
    export_lora_adapter(adapter, base_dir=base, output_dir=tmp_path / "lora_low", rank=rank - 1)
    assert _max_err(_lora_logits(base, tmp_path / "lora_low", tokens), reference) > 1e-3


def test_dense_genft_is_exact_at_full_rank_and_its_error_falls_with_the_rank(tmp_path, tokens):
    base, adapter, reference = _adapter(tmp_path, GENFT_DENSE)
    full = TINY["embed_dim"]  # min(out, in) of every target (k/v: 32 rows, padded with zeros)
    errors, energies = [], []
    for rank in (1, 2, 4, 8, full):
        result = export_lora_adapter(adapter, base_dir=base, output_dir=tmp_path / f"r{rank}", rank=rank)
        errors.append(_max_err(_lora_logits(base, tmp_path / f"r{rank}", tokens), reference))
        energies.append(min(c.energy for c in result.layers))
    assert errors[-1] < EXACT and energies[-1] == pytest.approx(1.0, abs=1e-9)
    assert errors[0] > 1e-2  # dense: a low rank costs something ...
    truncated = errors[:-1]  # (at rank 24 this tiny adapter is already within round-off)
    assert all(a > b for a, b in zip(truncated, truncated[1:])), errors  # ... and less at every higher rank
    assert all(a < b for a, b in zip(energies, energies[1:])), energies


def test_energy_picks_the_smallest_rank_that_keeps_it_in_every_layer(tmp_path):
    base, adapter, _ = _adapter(tmp_path, GENFT_DENSE)
    result = export_lora_adapter(adapter, base_dir=base, output_dir=tmp_path / "lora", energy=0.9)
    assert min(c.energy for c in result.layers) >= 0.9
    below = export_lora_adapter(adapter, base_dir=base, output_dir=tmp_path / "below", rank=result.rank - 1)
    assert min(c.energy for c in below.layers) < 0.9
    assert json.loads((tmp_path / "lora" / PEFT_CONFIG_FILE).read_text())["r"] == result.rank


def test_the_lora_follows_vllms_and_sglangs_rules(tmp_path):
    """The rules of vLLM's LoRA loader and SGLang's memory pool, as written in their code:

    * vllm/lora/lora_model.py (``from_local_checkpoint``): tensors named
      ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``
      (vllm/lora/utils.py ``parse_fine_tuned_lora_name``), each module's last name one the
      model supports (Llama: q/k/v/o_proj, gate/up/down_proj; qkv and gate_up packed);
    * vllm/lora/peft_helper.py: ``modules_to_save`` None, no DoRA, bias "none"; one scaling
      ``lora_alpha / r`` for every layer (``rank_pattern``/``alpha_pattern`` ignored), so
      alpha = r (scaling 1) and no patterns;
    * vllm/config/lora.py: r <= max_lora_rank, one of 1, 8, ..., 512; lora_dtype auto
      (the model's), float16 or bfloat16: the file's float dtype is cast;
    * sglang/srt/lora/mem_pool.py (``load_lora_weight_to_buffer``): every layer's factors
      fill ``buffer[:, :config.r]`` exactly: one rank for all layers.
    """
    base, adapter, _ = _adapter(tmp_path, GENFT_DENSE)
    export_lora_adapter(adapter, base_dir=base, output_dir=tmp_path / "lora", rank=8, dtype="bf16")
    config = json.loads((tmp_path / "lora" / PEFT_CONFIG_FILE).read_text())
    tensors = load_file(str(tmp_path / "lora" / PEFT_WEIGHTS_FILE))
    llama_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == config["r"]
    assert config["r"] <= max(VLLM_MAX_LORA_RANKS)
    assert not config["modules_to_save"] and not config["use_dora"] and not config["use_rslora"]
    assert config["bias"] == "none" and not config["rank_pattern"] and not config["alpha_pattern"]
    assert set(config["target_modules"]) <= llama_modules  # module types, as old vLLM and SGLang check them
    modules = set()
    for key, t in tensors.items():
        assert key.startswith("base_model.model.") and key.endswith((".lora_A.weight", ".lora_B.weight")), key
        module = key[len("base_model.model."): -len(".lora_A.weight")]
        assert module.rsplit(".", 1)[-1] in llama_modules, key
        assert t.dtype == torch.bfloat16
        assert t.shape[0 if key.endswith("lora_A.weight") else 1] == config["r"], key  # SGLang: uniform rank
        modules.add(module)
    hf_targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"}  # TARGETS of test_peft_format
    assert {m.rsplit(".", 1)[-1] for m in modules} == hf_targets == set(config["target_modules"])
    assert len(modules) == TINY["num_layers"] * len(hf_targets)
    peft.LoraConfig.from_pretrained(str(tmp_path / "lora"))  # PEFT's own config class takes it


def test_peft_convert_to_lora_works_on_our_peft_layers(tmp_path, tokens):
    """PEFT's ``save_as_lora`` / ``convert_to_lora`` on a GenFT and a WeGeFT ``PeftModel``:
    exact where the update's rank allows, the LoRA loaded by PEFT itself."""
    from peft import get_peft_model, PeftModel
    from peft.tuners.lora.conversion import convert_to_lora, save_as_lora

    base = write_tiny_checkpoint(tmp_path / "base")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    lowrank = {k: getattr(GENFT_LOWRANK, k) for k in ("shared_dim", "specific_dim", "act_out", "generator_bias",
                                                      "zero_init", "scaling")}
    cases = {
        "wegeft": (genft_peft.WeGeFTPeftConfig(target_modules=targets, rank=3, alpha=6.0), 3),
        "genft_lowrank": (genft_peft.GenFTPeftConfig(target_modules=targets, **lowrank), 6),
        # dense: full rank (PEFT takes one rank <= min(out, in) of every layer: the square ones)
        "genft_dense": (genft_peft.GenFTPeftConfig(target_modules=["q_proj", "o_proj"], zero_init=False),
                        TINY["embed_dim"]),
    }
    for name, (config, rank) in cases.items():
        model = get_peft_model(_hf(base), config)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(std=0.2)
        model.eval()
        assert model.supports_lora_conversion()
        with torch.no_grad():
            ours = model(tokens).logits
        save_as_lora(tmp_path / name, model, rank=rank)
        loaded = PeftModel.from_pretrained(_hf(base), str(tmp_path / name)).eval()
        assert loaded.peft_config["default"].peft_type == peft.PeftType.LORA
        with torch.no_grad():
            assert _max_err(loaded(tokens).logits, ours) < EXACT, name
        low = 2 if name == "genft_dense" else rank - 1  # below the update's rank: not exact
        lora_config, sd = convert_to_lora(model, rank=low)
        assert all(t.shape[0] == low for k, t in sd.items() if k.endswith("lora_A.weight"))
        lower = PeftModel(_hf(base), lora_config).eval()
        peft.set_peft_model_state_dict(lower, sd)
        with torch.no_grad():
            assert _max_err(lower(tokens).logits, ours) > 1e-4, name


def test_export_lora_cli(tmp_path, capsys):
    from genft_tune._cli.genft import main as cli_main

    base, adapter, reference = _adapter(tmp_path, GENFT_DENSE)
    out = tmp_path / "lora"
    assert cli_main(["export-lora", str(adapter), "--rank", "16", "--base", str(base), "--output", str(out),
                     "--per-layer"]) == 0
    printed = capsys.readouterr().out
    assert "LoRA rank 16 for 12 layers" in printed and "energy lost (1 - fraction of ||dW||_F^2 kept): worst" in printed
    assert "model.layers.1.self_attn.q_proj: rank 16 of" in printed and "--max-lora-rank 16" in printed
    assert (out / PEFT_WEIGHTS_FILE).is_file()
    assert cli_main(["export-lora", str(adapter), "--rank", "4", "--base", str(base), "--output", str(out),
                     "--overwrite", "--base-model", "org/tiny"]) == 0
    assert json.loads((out / PEFT_CONFIG_FILE).read_text())["base_model_name_or_path"] == "org/tiny"
    # default output: ADAPTER/lora
    assert cli_main(["export-lora", str(adapter), "--energy", "0.5", "--base", str(base)]) == 0
    assert (adapter / "lora" / PEFT_CONFIG_FILE).is_file()
    capsys.readouterr()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rank", "8"], "--base is required"),
        (["--rank", "0", "--base", "{base}"], "rank must be an integer >= 1, got 0"),
        (["--energy", "1.5", "--base", "{base}"], "energy must be a fraction in (0, 1]"),
        (["--energy", "0", "--base", "{base}"], "energy must be a fraction in (0, 1]"),
        (["--base", "{base}"], "pass exactly one of rank"),
        (["--rank", "8", "--energy", "0.9", "--base", "{base}"], "pass exactly one of rank"),
        (["--rank", "8", "--base", "{tmp}"], "no config.json there"),
        (["--rank", "8", "--base", "{base}", "--output", "{base}"], "exists (pass --overwrite"),
        (["--rank", "8", "--base", "{base}", "--base-model", "not an id"], "--base-model must be a Hub id"),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    from genft_tune._cli.genft import main as cli_main

    base = write_tiny_checkpoint(tmp_path / "base")
    adapter = tmp_path / "adapter"
    model, _ = adapted_model(base, WEGEFT)
    save_model_adapter(model, WEGEFT, adapter, base)
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()  # what writing the fixtures printed
    argv = ["export-lora", str(adapter)] + [a.format(base=base, tmp=tmp_path) for a in args]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not (adapter / "lora").exists()


def test_a_folder_without_an_adapter_is_named(tmp_path, capsys):
    from genft_tune._cli.genft import main as cli_main

    base = write_tiny_checkpoint(tmp_path / "base")
    capsys.readouterr()
    assert cli_main(["export-lora", str(base), "--rank", "8", "--base", str(base)]) == 2
    err = capsys.readouterr().err
    assert "holds no GenFT/WeGeFT adapter" in err and "the GenFT authors'" in err
    assert len(err.strip().splitlines()) == 1
    assert cli_main(["export-lora", str(tmp_path / "nowhere"), "--rank", "8", "--base", str(base)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    import genft_tune.checkpointing._lora_export as lora_export

    base = write_tiny_checkpoint(tmp_path / "base")
    model, _ = adapted_model(base, WEGEFT)
    save_model_adapter(model, WEGEFT, tmp_path / "adapter", base)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out" / "lora"
    export_lora_adapter(tmp_path / "adapter", base_dir=base, output_dir=out, rank=3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(lora_export, "save_file", fail)
    with pytest.raises(KeyboardInterrupt):  # a new export, or one replacing the old, stopped half-way
        export_lora_adapter(tmp_path / "adapter", base_dir=base, output_dir=tmp_path / "out" / "new", rank=3)
    with pytest.raises(KeyboardInterrupt):
        export_lora_adapter(tmp_path / "adapter", base_dir=base, output_dir=out, rank=2, overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["lora"]  # no half-written folder
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old LoRA intact


def test_an_adapter_trained_with_peft_converts_in_its_own_rows(tmp_path, tokens):
    """A GenFT adapter saved by PEFT itself (Hugging Face's q/k rows, no
    ``torchtune_rope_heads``; the pair in the folder itself) gives PEFT's logits."""
    from peft import get_peft_model

    base = write_tiny_checkpoint(tmp_path / "base")
    cfg = GENFT_LOWRANK
    config = genft_peft.GenFTPeftConfig(target_modules=["q_proj", "k_proj", "v_proj"], **{
        k: getattr(cfg, k) for k in ("shared_dim", "specific_dim", "act_out", "generator_bias", "zero_init", "scaling")})
    model = get_peft_model(_hf(base), config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.2)
    model.eval().save_pretrained(tmp_path / "trained_by_peft")
    with torch.no_grad():
        ours = model(tokens).logits
    rank = cfg.shared_dim + cfg.specific_dim + 1
    export_lora_adapter(tmp_path / "trained_by_peft", base_dir=base, output_dir=tmp_path / "lora", rank=rank)
    assert _max_err(_lora_logits(base, tmp_path / "lora", tokens), ours) < EXACT


def test_an_authors_adapter_converts_and_names_the_base_it_records(tmp_path, tokens):
    """The GenFT authors' folder (read as ``genft-tune import-authors`` converts it) with no
    base id given (a local base without a card): full rank gives the merged model's
    logits, and ``base_model_name_or_path`` is the base their config records."""
    base = write_base(tmp_path / "base")
    write_authors_adapter(tmp_path / "theirs")
    export_lora_adapter(tmp_path / "theirs", base_dir=base, output_dir=tmp_path / "lora", rank=AUTHORS_DIM)  # full rank
    config = json.loads((tmp_path / "lora" / PEFT_CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == "yahma/llama-7b-hf"
    merged = merge_adapter_checkpoint(base_dir=base, adapter_dir=tmp_path / "theirs", output_dir=tmp_path / "merged")
    authors_tokens = tokens % 96  # write_base's vocabulary
    with torch.no_grad():
        reference = _hf(merged)(authors_tokens).logits
        lora = peft.PeftModel.from_pretrained(_hf(base), str(tmp_path / "lora")).eval()(authors_tokens).logits
    assert _max_err(lora, reference) < EXACT


def test_export_lora_cli_takes_an_authors_adapter(tmp_path, capsys):
    """The command accepts every format the library reads: the GenFT authors' folder too."""
    from genft_tune._cli.genft import main as cli_main

    base = write_base(tmp_path / "base")
    write_authors_adapter(tmp_path / "theirs")
    capsys.readouterr()
    out = tmp_path / "lora"
    assert cli_main(["export-lora", str(tmp_path / "theirs"), "--rank", "4", "--base", str(base),
                     "--output", str(out)]) == 0, capsys.readouterr().err
    assert "LoRA rank 4" in capsys.readouterr().out
    config = json.loads((out / PEFT_CONFIG_FILE).read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == "yahma/llama-7b-hf"


def test_export_lora_usage_shows_base_as_required(capsys):
    from genft_tune._cli.genft import main as cli_main

    with pytest.raises(SystemExit):
        cli_main(["export-lora", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert " --base BASE " in usage and "[--base BASE]" not in usage
    assert "(--rank RANK | --energy ENERGY)" in usage


def test_a_bf16_base_gets_bf16_factors_from_an_fp32_svd(tmp_path, tokens):
    """``dtype="auto"``: the factors in the base's dtype (what vLLM's ``--lora-dtype auto``
    serves), ``fp32`` on request; ``B @ A`` is WeGeFT's dW of the bf16 ``W0`` (fp64
    reference from the paper's formula); the bf16 LoRA loads with PEFT on the bf16 base."""
    fp32_base = write_tiny_checkpoint(tmp_path / "fp32_base")
    base = tmp_path / "base"
    _hf(fp32_base).to(torch.bfloat16).save_pretrained(base)
    model, _ = adapted_model(base, WEGEFT)
    save_model_adapter(model, WEGEFT, tmp_path / "adapter", base)
    export_lora_adapter(tmp_path / "adapter", base_dir=base, output_dir=tmp_path / "auto", rank=WEGEFT.rank)
    export_lora_adapter(tmp_path / "adapter", base_dir=base, output_dir=tmp_path / "fp32", rank=WEGEFT.rank,
                        dtype="fp32")
    auto = load_file(str(tmp_path / "auto" / PEFT_WEIGHTS_FILE))
    fp32 = load_file(str(tmp_path / "fp32" / PEFT_WEIGHTS_FILE))
    assert {t.dtype for t in auto.values()} == {torch.bfloat16} and {t.dtype for t in fp32.values()} == {torch.float32}

    adapter = load_file(str(tmp_path / "adapter" / "genft_adapter.safetensors"))
    phi, psi = (adapter[f"wegeft_factors.q_proj.{n}"].double() for n in ("phi", "psi"))
    module = "model.layers.1.self_attn.q_proj"
    W0 = load_file(str(base / "model.safetensors"))[f"{module}.weight"]
    assert W0.dtype == torch.bfloat16
    reference = WEGEFT.scaling * W0.double() @ phi.T @ psi
    A, B = (fp32[f"base_model.model.{module}.lora_{n}.weight"].double() for n in ("A", "B"))
    lora = B @ A
    torch.testing.assert_close(lora, reference, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        loaded = peft.PeftModel.from_pretrained(
            transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16), str(tmp_path / "auto"))
        assert torch.isfinite(loaded(tokens).logits).all()


def test_lora_conversion_benchmark_smoke(tmp_path, monkeypatch):
    """``benchmarks/lora_conversion.py`` end to end on a tiny stand-in of the quickstart's
    folder (the held-out batches are random tokens: the tiny model has no tokenizer)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import lora_conversion

    work = tmp_path / "work"
    base = write_tiny_checkpoint(work / "base")
    model, _ = adapted_model(base, GENFT_DENSE)
    save_model_adapter(model, GENFT_DENSE, tmp_path / "adapter", base)
    run = merge_adapter_checkpoint(base_dir=base, adapter_dir=tmp_path / "adapter", output_dir=work / "run" / "epoch_0")
    save_model_adapter(model, GENFT_DENSE, run, base)  # the recipe's epoch_N: merged weights and the adapter

    def batches(base_dir, examples, batch_size):
        ids = torch.randint(0, TINY["vocab_size"], (examples, 9), generator=torch.Generator().manual_seed(0))
        labels = ids.roll(-1, dims=1)
        labels[:, -1] = -100
        return [dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)]

    monkeypatch.setattr(lora_conversion, "held_out_batches", batches)
    out = tmp_path / "results" / "lora.json"
    result = lora_conversion.main(["--work-dir", str(work), "--ranks", "1,64", "--energy", "0.9", "--examples", "4",
                                   "--no-wegeft", "--out", str(out)])
    rows = {(r["model"], r.get("choice")): r for r in result["rows"]}
    assert rows[("genft -> LoRA", "rank 64")]["max_logit_diff"] < EXACT  # full rank: exact
    assert rows[("genft -> LoRA", "rank 1")]["max_logit_diff"] > 1e-3
    assert ("genft -> LoRA", "energy 0.9") in rows and ("base", None) in rows
    assert "| genft -> LoRA | rank 64 | 64 |" in out.with_suffix(".md").read_text()
