"""One reader of weight files (``genft_tune._weights``, issue 24): which files a folder
has, their tensors and shapes, and the state dict a training script's ``torch.save``
nests. The base checkpoint (merge, verify, exports), ViT checkpoints and the recipes'
pre-flight read the same folders the same way; where they used to differ (``.bin``
files, weights under ``state_dict``/``module``, ``model.safetensors`` next to an index)
every reader now follows one rule.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from genft_tune._fs import write_pair_atomically
from genft_tune._weights import tensor_shapes, weight_files
from genft_tune.checkpointing import merge_adapter_checkpoint
from genft_tune.checkpointing._base_checkpoint import find_base_checkpoint
from genft_tune.models.vit import read_state_dict
from genft_tune.training._ckpt_check import _dims, _header_shapes, _tune_shapes

SD = {"a.weight": torch.arange(6.0).reshape(3, 2), "b.bias": torch.ones(3)}


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weight_files_first_match_wins(tmp_path):
    assert weight_files(tmp_path) == []
    torch.save(SD, tmp_path / "consolidated.00.pth")
    torch.save(SD, tmp_path / "last.ckpt")
    assert weight_files(tmp_path) == [tmp_path / "consolidated.00.pth", tmp_path / "last.ckpt"]
    torch.save(SD, tmp_path / "pytorch_model.bin")
    assert weight_files(tmp_path) == [tmp_path / "pytorch_model.bin"]
    save_file(SD, tmp_path / "b.safetensors")
    save_file(SD, tmp_path / "a.safetensors")
    assert weight_files(tmp_path) == [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]  # shards, no index
    index = {"metadata": {}, "weight_map": {"a.weight": "a.safetensors", "b.bias": "a.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert weight_files(tmp_path) == [tmp_path / "a.safetensors"]
    save_file(SD, tmp_path / "model.safetensors")  # transformers' first choice, before the index
    assert weight_files(tmp_path) == [tmp_path / "model.safetensors"]
    for reader in (lambda d: find_base_checkpoint(d).files, weight_files):
        assert reader(tmp_path) == [tmp_path / "model.safetensors"]
    assert _equal(read_state_dict(tmp_path), SD)


def test_index_naming_a_missing_shard(tmp_path):
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for reader in (weight_files, find_base_checkpoint, read_state_dict):
        with pytest.raises(FileNotFoundError, match="missing shard"):
            reader(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "consolidated.00.pth", "model.pt", "last.ckpt"])
@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd, "step": 3},
    lambda sd: {"state_dict": sd, "epoch": 1},
    lambda sd: {"module": sd},
    lambda sd: {"state_dict": {"model": sd}},
], ids=["flat", "model", "state_dict", "module", "nested"])
def test_torch_files_are_read_alike_by_every_reader(tmp_path, name, wrap):
    torch.save(wrap(SD), tmp_path / name)
    assert _equal(read_state_dict(tmp_path / name), SD)
    assert _equal(read_state_dict(tmp_path), SD)
    base = find_base_checkpoint(tmp_path)
    assert base.format == ("hf" if name == "pytorch_model.bin" else "torch")  # Hugging Face's layout or torchtune/Meta's
    assert _equal(dict(base.iter_file(base.files[0])), SD)
    assert base.shapes() == {"a.weight": (3, 2), "b.bias": (3,)}


def _save_bin_shards(folder, sd=SD):
    """``sd`` as Hugging Face's ``.bin`` checkpoint in two shards with their index, next
    to the Trainer's ``training_args.bin``."""
    names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    keys = list(sd)
    parts = [keys[: (len(keys) + 1) // 2], keys[(len(keys) + 1) // 2:]]
    for name, part in zip(names, parts):
        torch.save({k: sd[k] for k in part}, folder / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in zip(names, parts) for k in part}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    torch.save({"lr": 0.1}, folder / "training_args.bin")
    return [folder / name for name in names]


def test_sharded_bin_checkpoint_is_read_through_its_index(tmp_path):
    """Before: all three ``.bin`` read as torchtune's layout, which failed later."""
    shards = _save_bin_shards(tmp_path)
    assert weight_files(tmp_path) == shards
    base = find_base_checkpoint(tmp_path)
    assert base.format == "hf" and base.files == shards
    assert base.shapes() == {"a.weight": (3, 2), "b.bias": (3,)}
    assert _equal(read_state_dict(tmp_path), SD)
    (tmp_path / "pytorch_model.bin.index.json").unlink()  # shards without their index
    for reader in (weight_files, find_base_checkpoint, read_state_dict):
        with pytest.raises(FileNotFoundError, match=r"shards .*pytorch_model-00001-of-00002\.bin.* no pytorch_model\.bin\.index\.json"):
            reader(tmp_path)


def test_trainer_files_are_not_weights(tmp_path):
    for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state.pth"):
        torch.save({"lr": torch.ones(1)}, tmp_path / name)
    assert weight_files(tmp_path) == []
    with pytest.raises(FileNotFoundError, match=r"no base weights in .*\.pt / \.pth / \.ckpt / \.bin"):
        find_base_checkpoint(tmp_path)
    torch.save(SD, tmp_path / "model.pt")
    assert weight_files(tmp_path) == [tmp_path / "model.pt"]
    assert find_base_checkpoint(tmp_path).format == "torch"


def test_loose_safetensors_must_hold_disjoint_keys(tmp_path):
    """Shards without an index are read together; two copies of a model are refused
    (before: the last file's tensors won silently)."""
    save_file(SD, tmp_path / "copy_a.safetensors")
    save_file(SD, tmp_path / "copy_b.safetensors")
    for read in (read_state_dict, lambda d: find_base_checkpoint(d).shapes()):
        with pytest.raises(ValueError, match=r"copy_b\.safetensors and copy_a\.safetensors both hold 'a\.weight'"):
            read(tmp_path)


def test_a_file_without_a_state_dict_is_named(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        read_state_dict(tmp_path)
    base = find_base_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"model\.pt.*does not hold a state dict of tensors"):
        base.shapes()


def test_safetensors_shapes_come_from_the_headers_for_every_reader(tmp_path):
    save_file({"a.weight": SD["a.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b.bias": SD["b.bias"]}, tmp_path / "model-00002-of-00002.safetensors")
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    want = {"a.weight": (3, 2), "b.bias": (3,)}
    assert _header_shapes(tmp_path, names) == find_base_checkpoint(tmp_path).shapes() == want
    assert tensor_shapes(tmp_path / n for n in names) == want
    assert _equal(read_state_dict(tmp_path), SD)  # ViT: shards without an index, as the base reader
    torch.save(SD, tmp_path / "model.pt")
    assert _header_shapes(tmp_path, ["model.pt"]) == {}  # the pre-flight reads headers only


def _phi3_config(**more):
    return dict(model_type="phi3", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, intermediate_size=48, **more)


def test_preflight_sizes_come_through_the_family_converter():
    """Phi-3's fused qkv_proj and gate_up_proj are split by its converter (the MLP size is
    half the fused rows); without a family the keys are torchtune's own."""
    shapes = {
        "model.embed_tokens.weight": (100, 32),
        "model.layers.0.self_attn.qkv_proj.weight": (96, 32),
        "model.layers.0.mlp.gate_up_proj.weight": (96, 32),
        "model.layers.1.mlp.down_proj.weight": (32, 48),
    }
    want = dict(num_layers=2, vocab_size=100, embed_dim=32, q_out=32, kv_out=32, intermediate_dim=48)
    assert _dims(_tune_shapes(shapes, _phi3_config())) == want
    llama = dict(_phi3_config(), model_type="llama", num_key_value_heads=2)
    shapes = {
        "model.embed_tokens.weight": (100, 32),
        "model.layers.0.self_attn.q_proj.weight": (32, 32),
        "model.layers.0.self_attn.k_proj.weight": (16, 32),
        "model.layers.0.mlp.gate_proj.weight": (48, 32),
        "model.layers.1.mlp.down_proj.weight": (32, 48),
    }
    assert _dims(_tune_shapes(shapes, llama)) == dict(want, kv_out=16)
    tune = {"tok_embeddings.weight": (100, 32), "layers.0.mlp.w1.weight": (48, 32)}
    assert _dims(_tune_shapes(tune, None)) == dict(num_layers=1, vocab_size=100, embed_dim=32, intermediate_dim=48)


@pytest.mark.parametrize("sharded", [False, True], ids=["pytorch_model.bin", "bin_shards"])
def test_merge_of_a_pytorch_model_bin_base_equals_the_safetensors_one(genft_run, tmp_path, sharded):
    """A Hugging Face base saved as ``pytorch_model.bin`` (before: "no base weights"), or
    as ``.bin`` shards with their index and the Trainer's ``training_args.bin``, merges
    into the same tensors as its safetensors twin; no ``.bin`` file or index is copied."""
    base = tmp_path / "bin_base"
    shutil.copytree(genft_run["base"], base)
    sd = load_file(str(base / "model.safetensors"))
    if sharded:
        _save_bin_shards(base, sd)
    else:
        torch.save(sd, base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    want = merge_adapter_checkpoint(base_dir=genft_run["base"], adapter_dir=genft_run["adapter"], output_dir=tmp_path / "a")
    got = merge_adapter_checkpoint(base_dir=base, adapter_dir=genft_run["adapter"], output_dir=tmp_path / "b")
    assert not list(got.glob("*.bin")) and not (got / "pytorch_model.bin.index.json").exists()
    assert _equal(load_file(str(got / "model.safetensors")), load_file(str(want / "model.safetensors")))


def test_write_pair_atomically_keeps_the_old_pair_when_the_write_fails(tmp_path):
    write_pair_atomically(tmp_path, data_name="d.bin", write_data=lambda p: open(p, "w").write("old"),
                          meta_name="d.json", meta_text=lambda p: f'{{"size": {p.stat().st_size}}}')
    assert (tmp_path / "d.bin").read_text() == "old" and (tmp_path / "d.json").read_text() == '{"size": 3}'

    def fail(path):
        open(path, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_pair_atomically(tmp_path, data_name="d.bin", write_data=fail, meta_name="d.json", meta_text=str)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.json"]  # no temporary file left
    assert (tmp_path / "d.bin").read_text() == "old" and (tmp_path / "d.json").read_text() == '{"size": 3}'
