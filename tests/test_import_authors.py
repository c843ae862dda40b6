"""``genft-tune import-authors``: an adapter laid out exactly as the GenFT authors' patched
PEFT saves it, merged by ``genft-tune merge``, equals the model their code computes.

The files are made with safetensors (``_authors_files.py``), with their key names, shapes and dtypes and
the shared generator stored once on the tuner and once more in every adapted linear.
The expected merged weights are a float64 transcription of their equations (PEFT path):

    H1 = act_in(ratio W0 [P1; A]^T + c1),  F_row = act_out(H1 [Q1 | B]^T + d1)
    H2 = act_in(F_row^T [P2; A]^T + c2),   F_col = act_out(H2 [Q2 | B]^T + d2)
    W  = W0 + scaling F_col          (no transpose; W0 in Hugging Face's layout)
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from _authors_files import A, B, D, LAYERS, TARGETS, write_authors_adapter, write_base

from genft_tune._cli.genft import main as cli_main
from genft_tune.checkpointing import load_adapter, read_adapter
from genft_tune.checkpointing._authors import read_authors_adapter

ACT = {
    "identity": lambda t: t,
    "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2.0))),
    "tanh": torch.tanh,
}


def expected_weight(W0, shared, specific, *, act, ratio, scaling):
    s = {k: v.double() for k, v in shared.items()}
    act_in, act_out = ACT[act[0]], ACT[act[1]]
    Aw, Bw = (specific[0].double(), specific[1].double()) if specific else (None, None)

    def cat(x, y, dim):
        return x if y is None else torch.cat([x, y], dim=dim)

    def bias(name):
        return s.get(f"{name}.linear.bias", 0.0)

    H1 = act_in((ratio * W0) @ cat(s["genft_share_1_a.linear.weight"], Aw, 0).T + bias("genft_share_1_a"))
    F_row = act_out(H1 @ cat(s["genft_share_1_b.linear.weight"], Bw, 1).T + bias("genft_share_1_b"))
    H2 = act_in(F_row.T @ cat(s["genft_share_2_a.linear.weight"], Aw, 0).T + bias("genft_share_2_a"))
    F_col = act_out(H2 @ cat(s["genft_share_2_b.linear.weight"], Bw, 1).T + bias("genft_share_2_b"))
    return W0 + scaling * F_col


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_base(tmp_path_factory.mktemp("authors_base"))


@pytest.mark.parametrize(
    "act,bias,b",
    [(("gelu", "gelu"), "none", B), (("tanh", "None"), False, B), (("identity", "gelu"), "none", 0)],
)
def test_imported_adapter_merges_into_the_model_they_trained(base, tmp_path, act, bias, b):
    theirs = tmp_path / "theirs"
    ratio = 0.8
    shared, specific = write_authors_adapter(theirs, act=act, bias=bias, b=b, ratio=ratio)
    ours, merged = tmp_path / "ours", tmp_path / "merged"
    assert cli_main(["import-authors", str(theirs), "--output", str(ours)]) == 0
    assert cli_main(["merge", "--base", str(base), "--adapter", str(ours), "--output", str(merged)]) == 0

    _, cfg = load_adapter(ours)
    assert cfg["weight_layout"] == "hf" and cfg.config.convention == "authors_peft"
    assert cfg.config.generator_bias is (bias is not False)  # their "none" turns the biases on
    assert sorted(cfg["target_modules"]) == sorted(f"layers.{i}.attn.{m}" for i in range(LAYERS) for m in TARGETS)

    base_sd, out_sd = load_file(str(base / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    assert out_sd.keys() == base_sd.keys()
    used_ratio = ratio if b else 1.0  # their b = 0 path ignores ratio_W0
    act_run = tuple(a if a in ACT else "identity" for a in act)  # "None" ran as identity
    for key, value in base_sd.items():
        module = key[: -len(".weight")]
        owner = f"base_model.model.{module}"
        if any(key.endswith(f"self_attn.{m}.weight") for m in TARGETS):
            want = expected_weight(
                value.double(), shared, specific.get(owner), act=act_run, ratio=used_ratio, scaling=1.5
            )
            torch.testing.assert_close(out_sd[key].double(), want, rtol=1e-5, atol=1e-5)
            assert not torch.equal(out_sd[key], value)
        else:
            assert torch.equal(out_sd[key], value), key

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)  # a plain Llama
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_import_reads_their_keys_into_ours(tmp_path):
    shared, specific = write_authors_adapter(tmp_path / "theirs")
    config, state, targets, _ = read_authors_adapter(tmp_path / "theirs")
    assert (config.shared_dim, config.specific_dim, config.act_in, config.act_out) == (A, B, "gelu", "gelu")
    assert torch.equal(state[f"genft_generators.{D}x{D}.Q2"], shared["genft_share_2_b.linear.weight"])
    assert torch.equal(state[f"genft_generators.{D}x{D}.c1"], shared["genft_share_1_a.linear.bias"])
    A_, B_ = specific["base_model.model.model.layers.1.self_attn.v_proj"]
    assert torch.equal(state["layers.1.attn.v_proj.A1"], A_) and torch.equal(state["layers.1.attn.v_proj.B1"], B_)
    assert sum(k.startswith("genft_generators.") for k in state) == 8  # the generator once, not 5 times


def test_read_adapter_reads_their_folder_as_import_authors_converts_it(tmp_path):
    write_authors_adapter(tmp_path / "theirs")
    assert cli_main(["import-authors", str(tmp_path / "theirs"), "--output", str(tmp_path / "ours")]) == 0
    sd0, cfg0 = load_adapter(tmp_path / "ours")
    for folder in ("theirs", "ours"):
        sd, cfg = read_adapter(tmp_path / folder)
        assert sorted(sd) == sorted(sd0) and all(torch.equal(sd[k], sd0[k]) for k in sd0), folder
        assert cfg.config == cfg0.config and cfg.weight_layout == "hf" and cfg.target_shapes == cfg0.target_shapes


def test_their_folder_merges_as_the_imported_one(base, tmp_path):
    write_authors_adapter(tmp_path / "theirs")
    assert cli_main(["import-authors", str(tmp_path / "theirs"), "--output", str(tmp_path / "ours")]) == 0
    for folder in ("theirs", "ours"):
        assert cli_main(["merge", "--base", str(base), "--adapter", str(tmp_path / folder),
                         "--output", str(tmp_path / f"m_{folder}")]) == 0
    a, b = (load_file(str(tmp_path / f"m_{f}" / "model.safetensors")) for f in ("theirs", "ours"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_activation_names_become_identity_as_in_their_code(tmp_path, caplog):
    write_authors_adapter(tmp_path / "theirs", act=("leaky_relu", "LeakyReLU"))
    with caplog.at_level("WARNING"):
        config, *_ = read_authors_adapter(tmp_path / "theirs")
    assert (config.act_in, config.act_out) == ("identity", "leaky_relu")
    assert "inner_activation='leaky_relu'" in caplog.text and "identity" in caplog.text


def test_refusals(base, tmp_path, capsys):
    write_authors_adapter(tmp_path / "theirs")
    cfg_path = tmp_path / "theirs" / "adapter_config.json"
    good = json.loads(cfg_path.read_text())

    cfg_path.write_text(json.dumps({**good, "peft_type": "LORA"}))
    assert cli_main(["import-authors", str(tmp_path / "theirs"), "--output", str(tmp_path / "o1")]) == 2
    assert "peft_type 'LORA'; expected 'GENFT'" in capsys.readouterr().err

    cfg_path.write_text(json.dumps({**good, "generator_share_dim": 0}))
    assert cli_main(["import-authors", str(tmp_path / "theirs"), "--output", str(tmp_path / "o2")]) == 2
    assert "generator_share_dim is 0" in capsys.readouterr().err

    # copies of the shared generator that differ: not something their code writes
    cfg_path.write_text(json.dumps(good))
    weights = load_file(str(tmp_path / "theirs" / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj.generator.genft_share_1_a.linear.weight"
    weights[key] = weights[key] + 1
    save_file(weights, str(tmp_path / "theirs" / "adapter_model.safetensors"))
    assert cli_main(["import-authors", str(tmp_path / "theirs"), "--output", str(tmp_path / "o3")]) == 2
    assert "differs from the one under" in capsys.readouterr().err


def test_imported_adapter_is_not_verified_or_merged_in_torchtune_layout(base, tmp_path, capsys):
    write_authors_adapter(tmp_path / "theirs")
    assert cli_main(["import-authors", str(tmp_path / "theirs"), "--output", str(tmp_path / "ours")]) == 0
    rc = cli_main(["merge", "--base", str(base), "--adapter", str(tmp_path / "ours"), "--output",
                   str(tmp_path / "m"), "--verify"])
    assert rc == 2 and "weight layout" in capsys.readouterr().err
    # a torchtune-format base: the q rows are in another order there
    tt = tmp_path / "tt"
    tt.mkdir()
    from torchtune.models.convert_weights import hf_to_tune

    sd = hf_to_tune(load_file(str(base / "model.safetensors")), num_heads=4, num_kv_heads=4, dim=D)
    torch.save(sd, tt / "model.pt")
    rc = cli_main(["merge", "--base", str(tt), "--adapter", str(tmp_path / "ours"), "--output", str(tmp_path / "m2")])
    assert rc == 2 and "Hugging Face's weight layout" in capsys.readouterr().err
