"""Llama/SmolLM2 GenFT builders: structure, parameters, NF4, errors, the tokenizer.

References: torchtune's own base builders (architecture, built on the meta device),
the GenFT parameter count formula of GENFT_SPEC.md (written out here), torchao's NF4
dequantisation, and transformers' ``apply_chat_template`` for the tokenizer.
"""

import json
from functools import partial

import pytest
import torch
from torch import nn
from torchao.dtypes.nf4tensor import NF4Tensor
from torchtune.models.llama2 import llama2_7b
from torchtune.models.llama3_1 import llama3_1_405b, llama3_1_70b, llama3_1_8b
from torchtune.models.llama3_1._position_embeddings import Llama3ScaledRoPE
from torchtune.models.llama3_2 import llama3_2, llama3_2_1b, llama3_2_3b
from torchtune.modules import RotaryPositionalEmbeddings, TiedLinear
from torchtune.modules.peft import get_adapter_params, set_trainable_params

from _tiny_llama import ALL_ATTN, genft_model, TINY, tokens
from genft_tune.models import llama as llama_pkg
from genft_tune.models.llama import (
    genft_llama2_7b,
    genft_llama3_1_405b,
    genft_llama3_1_70b,
    genft_llama3_1_8b,
    genft_llama3_2_1b,
    genft_llama3_2_3b,
    llama,
    llama_genft,
    qgenft_llama3_2_1b,
)
from genft_tune.models.llama._component_builders import nf4_kwargs
from genft_tune.models.smollm2 import (
    genft_smollm2_135m,
    qgenft_smollm2_135m,
    smollm2_135m,
    smollm2_tokenizer,
)
from genft_tune.modules import GenFTLinear
from genft_tune.modules.genft import is_genft_key


def _count(params) -> int:
    return sum(p.numel() for p in params)


def genft_param_count(model: nn.Module, a: int, b: int) -> int:
    """GENFT_SPEC.md, biases off: per shape group ``2a*in + 2a*out``; per layer
    ``2b*in`` when square (tied factors), ``2b*in + 2b*out`` otherwise."""
    shapes = set()
    total = 0
    for m in model.modules():
        if isinstance(m, GenFTLinear):
            out_dim, in_dim = m.weight.shape
            shapes.add((out_dim, in_dim))
            total += 2 * b * in_dim if out_dim == in_dim else 2 * b * (in_dim + out_dim)
    return total + sum(2 * a * (i + o) for o, i in shapes)


# ---- structure ------------------------------------------------------------------


def test_selected_linears_are_genft():
    model = genft_model(genft_attn_modules=["q_proj", "v_proj"], apply_genft_to_mlp=False,
                        apply_genft_to_output=True)
    for layer in model.layers:
        attn, mlp = layer.attn, layer.mlp
        assert isinstance(attn.q_proj, GenFTLinear) and isinstance(attn.v_proj, GenFTLinear)
        for lin in (attn.k_proj, attn.output_proj, mlp.w1, mlp.w2, mlp.w3):
            assert type(lin) is nn.Linear
    assert isinstance(model.output, GenFTLinear)
    assert isinstance(model.genft_generators, nn.ModuleDict)


def test_gqa_shapes_give_one_generator_per_shape_and_state_dict_holds_each_once():
    model = genft_model(genft_attn_modules=ALL_ATTN, apply_genft_to_mlp=False)
    head_dim = TINY["embed_dim"] // TINY["num_heads"]
    kv = TINY["num_kv_heads"] * head_dim
    d = TINY["embed_dim"]
    assert sorted(model.genft_generators) == sorted([f"{d}x{d}", f"{kv}x{d}"])
    for layer in model.layers:
        attn = layer.attn
        assert attn.q_proj.generator is model.genft_generators[f"{d}x{d}"]
        assert attn.output_proj.generator is model.genft_generators[f"{d}x{d}"]
        assert attn.k_proj.generator is attn.v_proj.generator is model.genft_generators[f"{kv}x{d}"]
    sd = model.state_dict()
    shared = [k for k in sd if k.startswith("genft_generators.")]
    assert sorted(shared) == sorted(
        f"genft_generators.{s}.{n}" for s in (f"{d}x{d}", f"{kv}x{d}") for n in ("P1", "Q1", "P2", "Q2")
    )
    # no layer carries a copy of a generator
    assert not any(k.rsplit(".", 1)[-1] in ("P1", "Q1", "P2", "Q2") for k in sd if k not in shared)
    # square layers tie A2/B2 to A1/B1; non-square ones have both pairs
    assert "layers.0.attn.q_proj.A1" in sd and "layers.0.attn.q_proj.A2" not in sd
    assert {"layers.0.attn.k_proj.A2", "layers.0.attn.k_proj.B2"} <= set(sd)


def test_adapter_params_and_trainable():
    model = genft_model()
    adapter = get_adapter_params(model)
    expected = {f"genft_generators.{k}.{n}" for k, g in model.genft_generators.items()
                for n, _ in g.named_parameters()}
    for name, m in model.named_modules():
        if isinstance(m, GenFTLinear):
            expected |= {f"{name}.{n}" for n in m.adapter_params()}
    assert set(adapter) == expected
    assert all(is_genft_key(k) for k in adapter)
    params = list(adapter.values())
    assert len({id(p) for p in params}) == len(params)
    opt = torch.optim.AdamW(params, lr=1e-3)
    opt_params = [p for g in opt.param_groups for p in g["params"]]
    assert len({id(p) for p in opt_params}) == len(opt_params) == len(params)
    assert _count(params) == genft_param_count(model, a=4, b=4)

    set_trainable_params(model, adapter)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter)
    x = tokens()
    model(x).sum().backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in adapter)


def test_plain_llama_matches_torchtune_llama3_2():
    torch.manual_seed(0)
    ref = llama3_2(**TINY, scale_factor=32, tie_word_embeddings=True)
    ours = llama(**TINY, scale_factor=32, tie_word_embeddings=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=0)


def test_meta_device_construction_and_init():
    with torch.device("meta"):
        model = genft_model(zero_init=True)
    assert all(p.is_meta for p in model.parameters())
    for m in list(model.genft_generators.values()) + [
        m for m in model.modules() if isinstance(m, GenFTLinear)
    ]:
        m.to_empty(device="cpu")
        m.initialize_parameters()
    for name, p in get_adapter_params(model).items():
        assert p.device.type == "cpu" and torch.isfinite(p).all(), name
    for g in model.genft_generators.values():
        assert torch.count_nonzero(g.Q2) == 0 and torch.count_nonzero(g.P1) > 0
    k = model.layers[0].attn.k_proj
    assert torch.count_nonzero(k.B2) == 0 and torch.count_nonzero(k.A1) > 0
    # the base stays on meta: it comes from the checkpoint
    assert model.layers[0].attn.q_proj.weight.is_meta


# ---- NF4 ------------------------------------------------------------------------

NF4_TINY = dict(TINY, embed_dim=128, intermediate_dim=256)


def test_qgenft_forward_backward_and_matches_dequantized_base():
    torch.manual_seed(0)
    model = llama_genft(genft_attn_modules=ALL_ATTN, apply_genft_to_mlp=True, **NF4_TINY,
                        quantize_base=True)
    for layer in model.layers:
        for lin in (layer.attn.q_proj, layer.attn.k_proj, layer.mlp.w2):
            assert isinstance(lin.weight, NF4Tensor) and not lin.weight.requires_grad
    assert not isinstance(model.output.weight, NF4Tensor)  # lm head unquantized

    # step 0 (zero_init) equals a plain model holding the dequantized weights
    sd = model.state_dict()  # torchtune's hook: NF4 -> bf16; rebuild fp32 ourselves
    assert sd["layers.0.attn.q_proj.weight"].dtype == torch.bfloat16
    plain_sd = {}
    for name, p in model.named_parameters():
        if not is_genft_key(name):
            plain_sd[name] = p.get_original_weight() if isinstance(p, NF4Tensor) else p.detach()
    plain = llama(**NF4_TINY)
    plain.load_state_dict(plain_sd, strict=True)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=0)

    adapter = get_adapter_params(model)
    set_trainable_params(model, adapter)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter.values())


def test_qgenft_non_adapted_linears_are_nf4():
    model = llama_genft(genft_attn_modules=["q_proj"], **NF4_TINY, quantize_base=True)
    layer = model.layers[0]
    assert isinstance(layer.attn.v_proj.weight, NF4Tensor)
    assert isinstance(layer.mlp.w1.weight, NF4Tensor)
    assert type(layer.attn.v_proj).__name__ == "FrozenNF4Linear"


def test_nf4_kwargs():
    assert nf4_kwargs("q", 4096, 4096) == {"block_size": 64, "scaler_block_size": 256}
    for out_dim, in_dim in ((192, 576), (576, 576), (1536, 576), (64, 128)):
        kw = nf4_kwargs("x", out_dim, in_dim)
        n_blocks = out_dim * in_dim // kw["block_size"]
        assert n_blocks % kw["scaler_block_size"] == 0
        assert n_blocks % (2 * kw["scaler_block_size"]) != 0 or kw["scaler_block_size"] == 256
    with pytest.raises(ValueError, match=r"w1 \(3, 5\).*64"):
        nf4_kwargs("w1", 3, 5)


# ---- errors ---------------------------------------------------------------------


def test_unknown_attn_module():
    with pytest.raises(ValueError, match=r"genft_attn_modules.*'query'.*'q_proj', 'k_proj', 'v_proj', 'output_proj'"):
        genft_model(genft_attn_modules=["query"])
    with pytest.raises(ValueError, match="genft_attn_modules"):
        genft_model(genft_attn_modules="q_proj")
    with pytest.raises(ValueError, match="no layer"):
        genft_model(genft_attn_modules=[], apply_genft_to_mlp=False)


def test_output_with_tied_embeddings():
    with pytest.raises(ValueError, match="apply_genft_to_output.*tie_word_embeddings"):
        genft_model(apply_genft_to_output=True, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="apply_genft_to_output.*tie_word_embeddings"):
        genft_llama3_2_1b(apply_genft_to_output=True)


def test_bad_hyperparameter_fails_before_allocation():
    # a model this size cannot be allocated: the config must fail first
    huge = dict(TINY, vocab_size=10**12, embed_dim=2**20, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="shared_dim"):
        llama_genft(genft_attn_modules=["q_proj"], **huge, shared_dim=-1)
    with pytest.raises(ValueError, match="act_in"):
        llama_genft(genft_attn_modules=["q_proj"], **huge, act_in="swish")


def test_bad_dims():
    with pytest.raises(ValueError, match="num_kv_heads"):
        genft_model(num_kv_heads=3)


# ---- the real architectures, on the meta device -------------------------------------

BUILDERS = [
    (genft_llama3_2_1b, llama3_2_1b, 32),
    (genft_llama3_2_3b, llama3_2_3b, 32),
    (genft_llama3_1_8b, llama3_1_8b, 8),
    (genft_llama3_1_70b, llama3_1_70b, 8),
    (genft_llama3_1_405b, llama3_1_405b, 8),
    (genft_llama2_7b, llama2_7b, None),
]


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("ours,theirs,scale", BUILDERS, ids=[b[0].__name__ for b in BUILDERS])
def test_builder_architecture_on_meta(ours, theirs, scale):
    a, b = 16, 2
    with torch.device("meta"):
        ref = theirs()
        model = ours(genft_attn_modules=ALL_ATTN, apply_genft_to_mlp=True, shared_dim=a, specific_dim=b)
    base = {k: v for k, v in _shapes(model).items() if not is_genft_key(k)}
    assert base == _shapes(ref)
    assert _count(model.parameters()) == _count(ref.parameters()) + genft_param_count(model, a, b)
    rope, ref_rope = model.layers[0].attn.pos_embeddings, ref.layers[0].attn.pos_embeddings
    assert type(rope) is type(ref_rope)
    assert rope.base == ref_rope.base and model.max_seq_len == ref.max_seq_len
    if scale is None:
        assert isinstance(rope, RotaryPositionalEmbeddings)
    else:
        assert isinstance(rope, Llama3ScaledRoPE) and rope.scale_factor == ref_rope.scale_factor == scale
    assert isinstance(model.output, TiedLinear) == isinstance(ref.output, TiedLinear)
    ref_norm = ref.layers[0].sa_norm
    assert model.layers[0].sa_norm.eps == ref_norm.eps
    # GenFT kwargs reach the config
    assert next(iter(model.genft_generators.values())).config.shared_dim == a


def test_builder_defaults_adapt_q_and_v():
    with torch.device("meta"):
        model = genft_llama3_2_1b()
    attn = model.layers[0].attn
    assert isinstance(attn.q_proj, GenFTLinear) and isinstance(attn.v_proj, GenFTLinear)
    assert type(attn.k_proj) is nn.Linear and type(model.layers[0].mlp.w1) is nn.Linear


def test_qgenft_builders_are_partials():
    assert isinstance(qgenft_llama3_2_1b, partial) and qgenft_llama3_2_1b.keywords == {"quantize_base": True}
    for name in llama_pkg.__all__:
        if name.startswith("qgenft_"):
            fn = getattr(llama_pkg, name)
            assert fn.keywords == {"quantize_base": True}
            assert fn.func is getattr(llama_pkg, name[1:])


def test_smollm2_architecture_on_meta():
    with torch.device("meta"):
        plain = smollm2_135m()
        model = genft_smollm2_135m(genft_attn_modules=ALL_ATTN, apply_genft_to_mlp=True)
        ref = llama3_2(  # torchtune's tied Llama; SmolLM2 differs only in RoPE scaling
            vocab_size=49152, num_layers=30, num_heads=9, num_kv_heads=3, embed_dim=576,
            max_seq_len=8192, intermediate_dim=1536, rope_base=100_000, norm_eps=1e-5,
            tie_word_embeddings=True,
        )
    assert _shapes(plain) == _shapes(ref)
    assert {k: v for k, v in _shapes(model).items() if not is_genft_key(k)} == _shapes(ref)
    rope = plain.layers[0].attn.pos_embeddings
    assert type(rope) is RotaryPositionalEmbeddings and rope.base == 100_000
    assert isinstance(plain.output, TiedLinear) and not hasattr(plain, "genft_generators")
    assert _count(plain.parameters()) == _count(ref.parameters())
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        genft_smollm2_135m(apply_genft_to_output=True)


def test_qgenft_smollm2_layers_quantize():
    # SmolLM2's (192, 576) k/v weights need a smaller NF4 scaler block: build one layer's worth
    with torch.device("meta"):
        model = qgenft_smollm2_135m(genft_attn_modules=ALL_ATTN)
    attn = model.layers[0].attn
    assert isinstance(attn.k_proj.weight, NF4Tensor) and isinstance(attn.q_proj.weight, NF4Tensor)
    assert attn.k_proj.weight.scaler_block_size == nf4_kwargs("k", 192, 576)["scaler_block_size"]


# ---- the SmolLM2 tokenizer --------------------------------------------------------

SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE trained here, with SmolLM2's special tokens and chat template."""
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["The quick brown fox jumps over the lazy dog.", "What does ephemeral mean?",
            "Lasting a very short time.", "system user assistant helpful"] * 20
    tok.train_from_iterator(text, trainer)
    d = tmp_path_factory.mktemp("tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "chat_template": SMOLLM2_CHAT_TEMPLATE,
    }))
    return d


def _hf_ids(d, conv, **kw):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"), bos_token="<|im_start|>",
        eos_token="<|im_end|>", pad_token="<|im_end|>",
    )
    text = hf.apply_chat_template(conv, tokenize=False, chat_template=SMOLLM2_CHAT_TEMPLATE, **kw)
    return hf(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_matches_chat_template(tiny_tokenizer_dir):
    from torchtune.data import Message

    tok = smollm2_tokenizer(str(tiny_tokenizer_dir / "tokenizer.json"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2) and tok.stop_tokens == [2]
    conv = [{"role": "user", "content": "What does ephemeral mean?\n ok"},
            {"role": "assistant", "content": "Lasting a very short time."}]
    msgs = [Message(role="user", content=conv[0]["content"], masked=True),
            Message(role="assistant", content=conv[1]["content"])]
    ids, mask = tok.tokenize_messages(msgs)
    assert ids == _hf_ids(tiny_tokenizer_dir, conv)
    # loss only on the assistant turn: its header, content and <|im_end|>\n
    trained = [t for t, m in zip(ids, mask) if not m]
    assert trained[0] == tok.im_start_id and trained[-2:] == [tok.eos_id] + tok.encode("\n", False, False)
    assert tok.decode(trained) == "assistant\nLasting a very short time.\n"
    # generation prompt
    gen, _ = tok.tokenize_messages(msgs[:1], add_end_tokens=False)
    assert gen == _hf_ids(tiny_tokenizer_dir, conv[:1], add_generation_prompt=True)
    # explicit system message: no default one
    sys_conv = [{"role": "system", "content": "Be brief."}] + conv
    ids2, _ = tok.tokenize_messages([Message(role="system", content="Be brief.", masked=True)] + msgs)
    assert ids2 == _hf_ids(tiny_tokenizer_dir, sys_conv)
    # truncation ends on eos
    short = smollm2_tokenizer(str(tiny_tokenizer_dir), max_seq_len=10)
    ids3, mask3 = short.tokenize_messages(msgs)
    assert len(ids3) == len(mask3) == 10 and ids3[-1] == short.eos_id


def test_tokenizer_with_torchtune_instruct_dataset(tiny_tokenizer_dir, tmp_path):
    from torchtune.datasets import instruct_dataset

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"input": "What does ephemeral mean?", "output": "Lasting a very short time."}] * 3))
    tok = smollm2_tokenizer(str(tiny_tokenizer_dir / "tokenizer.json"), max_seq_len=512)
    ds = instruct_dataset(tok, source="json", data_files=str(data), split="train",
                          cache_dir=str(tmp_path / "cache"))
    sample = ds[0]
    assert len(sample["tokens"]) == len(sample["labels"]) and sample["tokens"][-2] == tok.eos_id
    kept = [t for t in sample["labels"] if t != -100]
    assert tok.decode(kept) == "assistant\nLasting a very short time.\n"


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        smollm2_tokenizer(str(tmp_path / "tokenizer.json"))


# ---- WeGeFT builders ----------------------------------------------------------------


def test_wegeft_builders_on_meta():
    from genft_tune.models.llama import wegeft_llama3_1_8b, wegeft_llama3_2_1b
    from genft_tune.models.smollm2 import wegeft_smollm2_135m
    from genft_tune.modules import WeGeFTLinear
    from genft_tune.modules.wegeft import is_wegeft_key

    for ours, theirs in (
        (wegeft_llama3_2_1b, llama3_2_1b),
        (wegeft_llama3_1_8b, llama3_1_8b),
        (wegeft_smollm2_135m, smollm2_135m),
    ):
        with torch.device("meta"):
            ref = theirs()
            model = ours(wegeft_attn_modules=ALL_ATTN, apply_wegeft_to_mlp=True, wegeft_rank=8)
        assert {k: v for k, v in _shapes(model).items() if not is_wegeft_key(k)} == _shapes(ref)
        assert isinstance(model.layers[0].attn.k_proj, WeGeFTLinear)
        assert sorted(model.wegeft_factors) == sorted(ALL_ATTN + ["w1", "w2", "w3"])
    with pytest.raises(ValueError, match="apply_wegeft_to_output.*tie_word_embeddings"):
        wegeft_llama3_2_1b(apply_wegeft_to_output=True)
    with pytest.raises(ValueError, match="wegeft_attn_modules"):
        wegeft_llama3_1_8b(wegeft_attn_modules=["wq"])
    with pytest.raises(ValueError, match="rank"):
        wegeft_llama3_1_8b(wegeft_rank=0)


def test_every_genft_builder_takes_every_genft_config_field():
    """A GenFTConfig field that a builder lacks cannot be set from a recipe config."""
    import dataclasses
    import inspect

    from genft_tune import models
    from genft_tune.models.llama import _model_builders as llama_builders
    from genft_tune.models.smollm2 import genft_smollm2_135m
    from genft_tune.models.vit import vit_genft
    from genft_tune.modules import GenFTConfig

    builders = [models.genft_model, models.llama.llama_genft, genft_smollm2_135m, vit_genft]
    builders += [f for n, f in vars(llama_builders).items() if n.startswith("genft_") and callable(f)]
    fields = {f.name for f in dataclasses.fields(GenFTConfig)}
    for builder in builders:
        missing = fields - set(inspect.signature(builder).parameters)
        assert not missing, f"{builder.__name__} lacks {sorted(missing)}"
