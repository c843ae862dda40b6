"""``genft_adapter.safetensors`` + ``genft_config.json``: round trip, recorded
metadata, atomic saves, clear errors (missing files, corrupt tensors, missing json
fields, shape disagreements, wrong base), and WeGeFT adapters in the same pair."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import genft_tune
from genft_tune.checkpointing import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    AdapterFileError,
    load_adapter,
    save_adapter,
)
from genft_tune.checkpointing._adapter import check_adapter_matches_model, FORMAT_VERSION
from genft_tune.modules import (
    genft_linear,
    GenFTConfig,
    GenFTGenerators,
    merge_genft_state_dict,
)
from genft_tune.modules.genft import get_genft_adapter_state_dict, get_genft_modules

CONFIG = GenFTConfig(shared_dim=2, specific_dim=3, ratio=0.25, scaling=0.5, act_in="tanh", zero_init=False)


def tiny_genft(config=CONFIG, dims=((16, 16), (8, 16), (8, 16), (16, 24))):
    """Layers ``l{i}`` of (out, in) ``dims`` sharing one ``GenFTGenerators`` at the root."""
    torch.manual_seed(0)
    model = nn.Module()
    model.genft_generators = GenFTGenerators(config)
    for i, (out_dim, in_dim) in enumerate(dims):
        layer = genft_linear(in_dim, out_dim, generators=model.genft_generators)
        setattr(model, f"l{i}", layer)
    for m in model.modules():
        if hasattr(m, "initialize_parameters"):
            m.initialize_parameters()
    return model


def save(model, path, **kwargs):
    return save_adapter(
        path,
        adapter_state_dict=get_genft_adapter_state_dict(model.state_dict()),
        config=model.genft_generators.config,
        target_modules=list(get_genft_modules(model)),
        **kwargs,
    )


def test_round_trip_and_metadata(tmp_path):
    model = tiny_genft()
    save(model, tmp_path / "a", base_model="org/base", extra={"epoch": 3})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE]
    sd, cfg = load_adapter(tmp_path / "a")
    ref = get_genft_adapter_state_dict(model.state_dict())
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    # each shared generator once, under the model's keys
    assert {k.split(".")[1] for k in sd if k.startswith("genft_generators.")} == {"16x16", "8x16", "16x24"}
    raw = json.loads((tmp_path / "a" / ADAPTER_CONFIG_FILE).read_text())
    assert raw["method"] == "genft" and raw["format_version"] == FORMAT_VERSION
    assert raw["genft_config"] == {f.name: getattr(CONFIG, f.name) for f in fields(GenFTConfig)}
    assert cfg.config == CONFIG
    assert raw["target_modules"] == ["l0", "l1", "l2", "l3"]
    assert raw["target_shapes"] == {f"l{i}": list(getattr(model, f"l{i}").weight.shape) for i in range(4)}
    assert raw["tensor_shapes"] == {k: list(v.shape) for k, v in ref.items()}
    assert raw["base_model"] == "org/base" and raw["extra"] == {"epoch": 3}
    assert raw["genft_tune_version"] == genft_tune.__version__
    # the loaded adapter reproduces the model's merge
    merged = merge_genft_state_dict({**model.state_dict(), **sd}, config=cfg.config, target_modules=cfg.target_modules)
    for name, layer in get_genft_modules(model).items():
        torch.testing.assert_close(merged[f"{name}.weight"], layer.weight + layer.delta_weight())
    # the recipe's resume check reads the GenFT fields this way
    assert cfg.get("genft_config")["ratio"] == 0.25
    check_adapter_matches_model(cfg, model)


def test_overwrite_replaces_the_pair(tmp_path):
    save(tiny_genft(), tmp_path / "a")
    other = tiny_genft(GenFTConfig(shared_dim=1, specific_dim=1))
    save(other, tmp_path / "a")
    sd, cfg = load_adapter(tmp_path / "a")
    assert cfg.config.shared_dim == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE]


def test_interrupted_save_never_leaves_a_complete_looking_pair(tmp_path):
    """A process killed right after the tensors are renamed into place (the json is
    renamed last) leaves a directory that does not load as an adapter."""
    save(tiny_genft(), tmp_path / "a")  # an old, complete pair is replaced
    script = textwrap.dedent(
        f"""
        import os
        import genft_tune.checkpointing._adapter as A
        from genft_tune.modules import GenFTConfig
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith({ADAPTER_WEIGHTS_FILE!r}):
                os._exit(7)
        A.os.replace = replace
        import torch
        A.save_adapter({str(tmp_path / 'a')!r}, adapter_state_dict={{"l0.A1": torch.ones(2, 4)}},
                             config=GenFTConfig(), target_modules=["l0"])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 7, proc.stderr[-2000:]
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG_FILE):
        load_adapter(tmp_path / "a")


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapter(tmp_path / "nope")
    save(tiny_genft(), tmp_path / "a")
    os.remove(tmp_path / "a" / ADAPTER_WEIGHTS_FILE)
    with pytest.raises(FileNotFoundError, match=ADAPTER_WEIGHTS_FILE):
        load_adapter(tmp_path / "a")


def test_corrupt_safetensors_names_the_file(tmp_path):
    save(tiny_genft(), tmp_path / "a")
    path = tmp_path / "a" / ADAPTER_WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match=ADAPTER_WEIGHTS_FILE):
        load_adapter(tmp_path / "a")
    # without the checksum the safetensors reader itself reports the corrupt file
    raw = json.loads((tmp_path / "a" / ADAPTER_CONFIG_FILE).read_text())
    del raw["weights_sha256"]
    (tmp_path / "a" / ADAPTER_CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(AdapterFileError, match=f"{ADAPTER_WEIGHTS_FILE} is not a valid safetensors"):
        load_adapter(tmp_path / "a")


@pytest.mark.parametrize("field", ["method", "target_modules", "tensor_shapes", "genft_config"])
def test_json_missing_field(tmp_path, field):
    save(tiny_genft(), tmp_path / "a")
    path = tmp_path / "a" / ADAPTER_CONFIG_FILE
    raw = json.loads(path.read_text())
    del raw[field]
    path.write_text(json.dumps(raw))
    with pytest.raises(AdapterFileError, match=field):
        load_adapter(tmp_path / "a")


def test_invalid_json_and_bad_config_value(tmp_path):
    save(tiny_genft(), tmp_path / "a")
    path = tmp_path / "a" / ADAPTER_CONFIG_FILE
    raw = json.loads(path.read_text())
    raw["genft_config"]["act_in"] = "swish"
    path.write_text(json.dumps(raw))
    with pytest.raises(AdapterFileError, match="act_in"):
        load_adapter(tmp_path / "a")
    path.write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid json"):
        load_adapter(tmp_path / "a")


def test_tensors_disagreeing_with_recorded_shapes(tmp_path):
    save(tiny_genft(), tmp_path / "a")
    path = tmp_path / "a" / ADAPTER_CONFIG_FILE
    raw = json.loads(path.read_text())
    raw["tensor_shapes"]["l0.A1"] = [3, 99]
    raw.pop("weights_sha256")
    path.write_text(json.dumps(raw))
    with pytest.raises(AdapterFileError, match=r"l0\.A1 has shape \[3, 16\].*\[3, 99\]"):
        load_adapter(tmp_path / "a")


def test_wrong_base_names_target_and_shapes(tmp_path):
    save(tiny_genft(), tmp_path / "a")
    _, cfg = load_adapter(tmp_path / "a")
    other = tiny_genft(dims=((16, 16), (8, 16), (12, 16), (16, 24)))
    with pytest.raises(ValueError, match=r"target 'l2'.*\[12, 16\].*\[8, 16\]"):
        check_adapter_matches_model(cfg, other)
    base_sd = {k: v for k, v in tiny_genft().state_dict().items() if k.endswith("weight") and k != "l3.weight"}
    with pytest.raises(ValueError, match=r"target 'l3'.*no weight 'l3.weight'"):
        check_adapter_matches_model(cfg, base_sd)
    check_adapter_matches_model(cfg, {f"l{i}.weight": s for i, s in enumerate([(16, 16), (8, 16), (8, 16), (16, 24)])})


def test_save_rejects_bad_input(tmp_path):
    model = tiny_genft()
    with pytest.raises(ValueError, match="non-genft keys"):
        save_adapter(tmp_path / "a", adapter_state_dict=model.state_dict(), config=CONFIG, target_modules=["l0"])
    with pytest.raises(TypeError, match="GenFTConfig or WeGeFTConfig"):
        save_adapter(tmp_path / "a", adapter_state_dict={"l0.A1": torch.ones(1)}, config={}, target_modules=["l0"])
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_wegeft_adapter_in_the_same_pair(tmp_path):
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

    config = WeGeFTConfig(rank=2, alpha=4.0)
    model = nn.Module()
    model.wegeft_factors = WeGeFTSharedFactors(config)
    model.q_proj = wegeft_linear(8, 8, factors=model.wegeft_factors.factors_for("q_proj", 8))
    for m in model.modules():
        if hasattr(m, "initialize_parameters") and m is not model:
            m.initialize_parameters()
    with torch.no_grad():
        for p in model.wegeft_factors.parameters():
            p.normal_()
    sd = get_wegeft_adapter_state_dict(model.state_dict())
    targets = get_wegeft_target_modules(model)
    save_adapter(tmp_path / "w", adapter_state_dict=sd, config=get_wegeft_config(model), target_modules=targets)
    loaded, cfg = load_adapter(tmp_path / "w")
    assert cfg.method == "wegeft" and cfg.config == config and cfg.target_modules == targets
    merged = merge_wegeft_state_dict({**model.state_dict(), **loaded}, config=cfg.config, target_modules=cfg.target_modules)
    ref = merge_wegeft_state_dict(model.state_dict(), config=config, target_modules=targets)
    torch.testing.assert_close(merged["q_proj.weight"], ref["q_proj.weight"])
    assert load_file(str(tmp_path / "w" / ADAPTER_WEIGHTS_FILE)).keys() == sd.keys()


def test_modules_to_save_round_trip(tmp_path):
    model = tiny_genft()
    head = {"head.weight": torch.randn(3, 16), "head.bias": torch.randn(3)}
    save(model, tmp_path / "a", modules_to_save=head)
    sd, cfg = load_adapter(tmp_path / "a")
    assert cfg["modules_to_save"] == ["head.bias", "head.weight"]
    assert all(torch.equal(sd[k], v) for k, v in head.items())
    raw_text = (tmp_path / "a" / ADAPTER_CONFIG_FILE).read_text()
    assert '"l0.A1": [3, 16]' in raw_text  # shapes on one line
    adapter = get_genft_adapter_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="repeats adapter keys"):
        save(model, tmp_path / "b", modules_to_save={"l0.A1": adapter["l0.A1"]})
    with pytest.raises(ValueError, match="holds adapter keys"):
        save(model, tmp_path / "b", modules_to_save={"x.B2": torch.ones(1)})
