"""``genft-tune ls / cp / cat`` (genft_tune._cli.catalog) and the name registry."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genft_tune import _recipe_registry as registry
from genft_tune._cli.genft import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    args = build_parser(argv[0]).parse_args(argv)
    rc = args.func(args)
    return rc, capsys.readouterr()


@pytest.mark.parametrize("argv", [["ls"], ["cp", "smollm2/135M_genft_cpu", "{tmp}"],
                                  ["cat", "smollm2/135M_genft_cpu"], ["--help"], ["cp", "--help"]])
def test_catalog_and_help_do_not_load_torch(argv, tmp_path):
    """``genft-tune ls/cp/cat`` and ``--help`` import only the catalog's module (the
    other commands are help lines), so they start in a fraction of a second."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (f"import sys\nfrom genft_tune._cli.genft import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert 'genft_tune.checkpointing' not in sys.modules, 'checkpointing was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout


def _repo_configs():
    root = REPO_ROOT / "configs"
    return sorted(
        str(p.relative_to(root).with_suffix(""))
        for p in root.glob("*/*.yaml")
    )


def test_registry_lists_every_config_file_in_the_repo():
    registered = sorted(c.name for r in registry.get_all_recipes() for c in r.configs)
    assert registered == _repo_configs()
    for name in registered:
        assert registry.config_path(name).is_file(), name


def test_recipe_files_exist_and_are_installed_as_top_level_modules():
    for recipe in registry.get_all_recipes():
        assert (REPO_ROOT / "recipes" / recipe.file_path).is_file()
        assert registry.recipe_path(recipe.name).name == recipe.file_path
        # `tune run <name>` runs it with runpy.run_module(<name>): it must be findable
        spec = importlib.util.find_spec(recipe.name)
        assert spec is not None, f"{recipe.name} is not installed (pip install -e .)"
        assert Path(spec.origin).resolve() == (REPO_ROOT / "recipes" / recipe.file_path).resolve()
    assert not (REPO_ROOT / "recipes" / "__init__.py").exists()


def test_ls_lists_recipes_and_configs(capsys):
    rc, out = _run(["ls"], capsys)
    assert rc == 0
    rows = [line.split() for line in out.out.splitlines()[1:] if line.strip()]
    listed = {row[-1] for row in rows}
    for recipe in registry.get_all_recipes():
        assert recipe.name in out.out
        for config in recipe.configs:
            assert config.name in listed
    assert "llama3_2/1B_genft_single_device" in listed
    assert "llama3_1/8B_genft_distributed" in listed


def test_cp_config_and_recipe(tmp_path, capsys):
    rc, _ = _run(["cp", "llama3_2/1B_genft_single_device", str(tmp_path / "my")], capsys)
    assert rc == 0
    copied = tmp_path / "my.yaml"  # the suffix is added
    src = registry.config_path("llama3_2/1B_genft_single_device")
    assert copied.read_text() == src.read_text()

    rc, _ = _run(["cp", "genft_finetune_single_device", str(tmp_path)], capsys)
    assert rc == 0
    assert (tmp_path / "genft_finetune_single_device.py").read_text() == (
        REPO_ROOT / "recipes" / "genft_finetune_single_device.py"
    ).read_text()

    # -n keeps an existing file; a missing parent needs --make-parents
    copied.write_text("mine")
    _run(["cp", "-n", "llama3_2/1B_genft_single_device", str(copied)], capsys)
    assert copied.read_text() == "mine"
    with pytest.raises(SystemExit):
        _run(["cp", "llama3_2/1B_genft_single_device", str(tmp_path / "a" / "b.yaml")], capsys)
    _run(["cp", "--make-parents", "llama3_2/1B_genft_single_device", str(tmp_path / "a" / "b.yaml")], capsys)
    assert (tmp_path / "a" / "b.yaml").read_text() == src.read_text()


def test_cp_unknown_name_fails(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _run(["cp", "no_such_config", str(tmp_path)], capsys)
    assert "genft-tune ls" in capsys.readouterr().err


def test_cat_prints_config(capsys):
    rc, out = _run(["cat", "smollm2/135M_genft_cpu"], capsys)
    assert rc == 0
    src = registry.config_path("smollm2/135M_genft_cpu").read_text()
    assert out.out.rstrip("\n") == src.rstrip("\n")
    rc, out = _run(["cat", "smollm2/135M_genft_cpu", "--sort"], capsys)
    assert yaml.safe_load(out.out) == yaml.safe_load(src)


def test_cat_recipe_or_unknown(capsys):
    with pytest.raises(SystemExit) as e:
        _run(["cat", "genft_finetune_single_device"], capsys)
    assert e.value.code == 2 and "is a recipe, not a config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(["cat", "nope/none"], capsys)


def test_resolve_config_argv(tmp_path, capsys):
    argv = ["x.py", "--config", "llama3_2/1B_genft_single_device", "batch_size=2"]
    registry.resolve_config_argv(argv)
    assert Path(argv[2]) == registry.config_path("llama3_2/1B_genft_single_device")
    argv = ["x.py", "--config=smollm2/135M_genft_cpu.yaml"]
    registry.resolve_config_argv(argv)
    assert argv[1] == f"--config={registry.config_path('smollm2/135M_genft_cpu')}"
    own = tmp_path / "own.yaml"
    own.write_text("a: 1\n")
    argv = ["x.py", "--config", str(own)]
    assert registry.resolve_config_argv(argv)[2] == str(own)
    with pytest.raises(SystemExit) as exit_:
        registry.resolve_config_argv(["x.py", "--config", "nope/none"])
    assert exit_.value.code == 2 and "neither a yaml file nor a packaged config" in capsys.readouterr().err


def test_tilde_switches_off_an_optional_component_and_names_a_needed_one(tmp_path, capsys):
    """torchtune refuses ``~dataset_val`` ("Could not find key dataset_val", a traceback):
    an optional component becomes ``dataset_val=null`` (the pre-flight reads it as none);
    a needed one is one message, status 2."""
    own = tmp_path / "own.yaml"
    own.write_text("model:\n  _component_: a.b\ndataset_val:\n  _component_: c.d\n  split: train\nseed: 1\n")
    argv = ["x.py", "--config", str(own), "~dataset_val", "~seed"]
    assert registry.resolve_config_argv(argv)[3:] == ["dataset_val=null", "~seed"]
    with pytest.raises(SystemExit) as exit_:
        registry.resolve_config_argv(["genft_finetune_single_device.py", "--config", str(own), "~model"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "~model: model is a component the recipe needs" in err


def test_configs_use_the_measured_defaults():
    """Every LLM config: GenFT on q,v with GenFTConfig's defaults and the lr measured for
    them (RECOMMENDED_LR), or the authors' preset, or WeGeFT's; and a tune command in the header."""
    from genft_tune.modules import GenFTConfig
    from genft_tune.modules.genft.config import RECOMMENDED_LR

    d = GenFTConfig()
    for name in _repo_configs():
        if name.startswith("vit/"):
            continue
        path = registry.config_path(name)
        text = path.read_text()
        cfg = yaml.safe_load(text)
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        assert f"--config {name}" in header, name
        assert "tune run" in header and "tune download" in header or "smollm2" in name, name
        m = cfg["model"]
        if "wegeft" in name:  # the WeGeFT authors' r=64, alpha=128, tied factors, lr 2e-4
            assert (m["wegeft_rank"], m["wegeft_alpha"], m["wegeft_shared"]) == (64, 128.0, True), name
            assert list(m["wegeft_attn_modules"]) == ["q_proj", "v_proj"], name
            assert float(cfg["optimizer"]["lr"]) == pytest.approx(2e-4), name
        elif name.endswith("_authors"):
            continue  # test_authors_presets_hold_their_script_settings
        else:
            fields = (m["shared_dim"], m["specific_dim"], m["act_in"], m["act_out"], m["ratio"], m["scaling"])
            assert fields == (d.shared_dim, d.specific_dim, d.act_in, d.act_out, d.ratio, d.scaling), name
            assert list(m.get("genft_attn_modules", m.get("targets"))) == ["q_proj", "v_proj"], name
            assert float(cfg["optimizer"]["lr"]) == pytest.approx(RECOMMENDED_LR), name
        recipe = "genft_finetune_distributed" if "distributed" in name else "genft_finetune_single_device"
        assert any(c.name == name for c in registry.get_recipe(recipe).configs), name


def test_family_configs_are_derived_from_torchtunes_lora_configs():
    """configs/derive_family_configs.py --check: every family config is exactly what the
    script writes from torchtune's installed LoRA config (so they cannot drift)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO_ROOT / "configs" / "derive_family_configs.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_packaged_configs_build_their_models():
    """Every LLM config's model section instantiates (on the meta device: no memory),
    passes the recipes' pre-flight model checks, and has GenFT on q and v only."""
    import torch
    from omegaconf import OmegaConf
    from torchtune import config as tt_config

    from genft_tune.training import get_model_adapter
    from genft_tune.training._config import validate_components

    for name in _repo_configs():
        if name.startswith("vit/"):
            continue
        cfg = OmegaConf.load(registry.config_path(name))
        validate_components(cfg)  # every _component_ imports
        with torch.device("meta"):
            model = tt_config.instantiate(cfg.model)
        adapter = get_model_adapter(model)
        adapter.check_targets(cfg.model, model)
        assert adapter.name == ("wegeft" if "wegeft" in name else "genft"), name
        leaves = {n.rsplit(".", 1)[-1] for n in adapter.target_modules}
        assert leaves == {"q_proj", "v_proj"}, name
        c = adapter.config
        if adapter.name == "genft":
            assert (c.shared_dim, c.specific_dim, c.act_in, c.act_out) == (4, 4, "gelu", "gelu"), name
            assert c.convention == ("authors_peft" if name.endswith("_authors") else "ours"), name
        else:
            assert (c.rank, c.alpha, c.shared) == (64, 128.0, True), name
        if "qgenft" in name:
            assert cfg.model._component_.split(".")[-1].startswith("qgenft_"), name


def test_authors_presets_hold_their_script_settings():
    """The packaged presets of the GenFT authors' runs (their train_llama.py defaults and
    VTAB/FGVC scripts, as listed in GENFT_SPEC.md and the issue), in our config keys."""
    import torch
    from omegaconf import OmegaConf
    from torchtune import config as tt_config

    llama = OmegaConf.load(registry.config_path("llama2/7B_genft_authors"))
    m = llama.model
    assert (m.shared_dim, m.specific_dim, m.act_in, m.act_out, m.ratio, m.scaling) == (4, 4, "gelu", "gelu", 1.0, 1.0)
    assert (m.init_a, m.init_b, m.generator_bias, m.zero_init, m.convention) == (
        "kaiming_uniform", "kaiming_uniform", True, False, "authors_peft")
    assert list(m.genft_attn_modules) == ["q_proj", "v_proj"]
    assert llama.optimizer.lr == pytest.approx(3e-4) and llama.optimizer.weight_decay == 0.0
    assert llama.batch_size * llama.gradient_accumulation_steps == 128 and llama.epochs == 3
    assert llama.tokenizer.max_seq_len == 256 and llama.dataset.train_on_input is False
    assert llama.lr_scheduler.num_warmup_steps == 100
    with torch.device("meta"):
        model = tt_config.instantiate(m)
    assert model.genft_generators.config.convention == "authors_peft"
    # the Hugging Face Trainer's linear warmup + linear decay
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = tt_config.instantiate(llama.lr_scheduler, opt, num_training_steps=300)
    lrs = []
    for _ in range(301):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[50] == pytest.approx(0.5) and lrs[100] == pytest.approx(1.0)
    assert lrs[200] == pytest.approx(0.5) and lrs[300] == 0.0

    for task in ("vtab", "fgvc"):
        cfg = OmegaConf.load(registry.config_path(f"vit/b16_genft_authors_{task}"))
        m = cfg.model
        assert (m.shared_dim, m.specific_dim, m.act_in, m.act_out, m.ratio, m.scaling) == (32, 5, "identity", "leaky_relu", 1.4, 1.0)
        assert (m.init_a, m.init_b, m.zero_init, m.convention, m.share_qv_specific) == ("zeros", "zeros", False, "authors_vit", True)
        assert m.dropout == m.drop_path == 0.1  # their generator dropout is the drop-path rate
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.batch_size, cfg.epochs) == (1e-3, 1e-4, 64, 100)
        with torch.device("meta"):
            model = tt_config.instantiate(OmegaConf.merge(m, {"num_classes": 10, "image_size": 224}))
        attn = model.layers[3].attn
        assert attn.q_proj.A1 is attn.v_proj.A1 and attn.q_proj.B1 is attn.v_proj.B1


@pytest.mark.parametrize("typo,suggestion", [("smollm2/135M_genft_cpuu", "smollm2/135M_genft_cpu"),
                                             ("smolm2/135M_genft_cpu", "smollm2/135M_genft_cpu"),
                                             ("qwen2_5/1.5B_genft_single", "qwen2_5/1.5B_genft_single_device")])
def test_config_typos_get_the_closest_names(typo, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_:
        registry.resolve_config_argv(["x.py", "--config", typo])
    assert exit_.value.code == 2 and f"did you mean '{suggestion}'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(["cat", typo], capsys)
    assert f"'{suggestion}'" in capsys.readouterr().err
