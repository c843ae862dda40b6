"""GenFT and WeGeFT as PEFT methods used the ways a PEFT or transformers user uses LoRA
(issue 22): transformers' ``load_adapter`` and PEFT's ``inject_adapter_in_model``, dtype
autocast, ``low_cpu_mem_usage``, frozen/trainable adapters, ``delete_adapter``, mixed
adapter batches, ``init_weights=False``, default targets, GPT-2 ``Conv1D`` and the eval
cache. Each is checked against PEFT/transformers themselves (their loaders, their LoRA,
running each sub-batch alone)."""

import copy
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import genft_tune.peft as genft_peft  # noqa: E402
from peft import (  # noqa: E402
    get_peft_model, inject_adapter_in_model, LoraConfig, PeftModel, set_peft_model_state_dict)
from safetensors.torch import load_file  # noqa: E402

CFG = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)
SHARED = ("genft_generators", "wegeft_factors")


def _base(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    return model.to(dtype)


def _genft(**kw):
    return genft_peft.GenFTPeftConfig(**{"target_modules": ["q_proj", "v_proj"], **kw})


def _wegeft(**kw):
    return genft_peft.WeGeFTPeftConfig(**{"target_modules": ["q_proj", "v_proj", "down_proj"], "rank": 4, **kw})


CONFIGS = {"genft": _genft, "wegeft": _wegeft, "wegeft_per_layer": lambda **kw: _wegeft(shared=False, **kw)}


def _tokens(n=2):
    return torch.randint(0, 96, (n, 9), generator=torch.Generator().manual_seed(1))


def _scramble(model, seed):
    """Every adapter tensor random (WeGeFT's phi and GenFT's zero stage included): the
    adapter acts, and differs from a freshly initialised one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(m in name for m in ("genft_", "wegeft_")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _adapter_params(model):
    return {n: p for n, p in model.named_parameters() if any(m in n for m in ("genft_", "wegeft_", "lora_"))}


def _shared_params(model):
    return {n: p for n, p in model.named_parameters() if any(s in n for s in SHARED)}


def _saved(tmp_path, make_config, seed=3):
    model = get_peft_model(_base(), make_config())
    _scramble(model, seed)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        return model(_tokens()).logits


def _logits(model, **kw):
    with torch.no_grad():
        return model(_tokens(), **kw).logits


# ---- 1. transformers' load_adapter and PEFT's inject_adapter_in_model --------------------

@pytest.mark.parametrize("method", list(CONFIGS))
def test_transformers_load_adapter_restores_the_shared_tensors(tmp_path, method):
    want = _saved(tmp_path, CONFIGS[method])
    peft_loaded = _logits(PeftModel.from_pretrained(_base(), tmp_path))
    torch.testing.assert_close(peft_loaded, want, rtol=0, atol=0)
    assert (want - _logits(_base())).abs().max() > 1e-2  # the adapter acts

    plain = _base()
    info = plain.load_adapter(str(tmp_path))  # transformers' own loader
    assert not info.unexpected_keys and not info.missing_keys
    torch.testing.assert_close(_logits(plain), peft_loaded, rtol=0, atol=0)
    shared = _shared_params(plain)
    if method != "wegeft_per_layer":
        assert shared and not any(p.requires_grad for p in shared.values())  # loaded for inference

    # PEFT's functional API, as diffusers/transformers integrations use it
    plain = inject_adapter_in_model(CONFIGS[method](), _base())
    result = set_peft_model_state_dict(plain, load_file(str(tmp_path / "adapter_model.safetensors")))
    assert not result.unexpected_keys
    torch.testing.assert_close(_logits(plain), peft_loaded, rtol=0, atol=0)


def test_transformers_save_and_delete_adapter_on_a_plain_model(tmp_path):
    _saved(tmp_path / "a", _genft)
    plain = _base()
    plain.load_adapter(str(tmp_path / "a"), adapter_name="x")
    saved = {k for k in load_file(str(tmp_path / "a" / "adapter_model.safetensors")) if "genft_generators" in k}
    assert saved and {k for k in plain.get_adapter_state_dict("x") if "genft_generators" in k} == saved
    plain.delete_adapter("x")
    assert not _shared_params(plain)  # transformers' delete_adapter drops the generators too
    torch.testing.assert_close(_logits(plain), _logits(_base()), rtol=0, atol=0)


# ---- 2. autocast_adapter_dtype ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_half_precision_base_gets_fp32_adapter_tensors_like_lora(tmp_path, method, dtype):
    lora = get_peft_model(_base(dtype=dtype), LoraConfig(target_modules=["q_proj", "v_proj"]))
    assert {p.dtype for p in _adapter_params(lora).values()} == {torch.float32}  # PEFT's rule, for reference
    model = get_peft_model(_base(dtype=dtype), CONFIGS[method]())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert _shared_params(model).keys() <= trainable.keys()
    assert {n: p.dtype for n, p in trainable.items() if p.dtype != torch.float32} == {}
    assert model.base_model.model.model.layers[0].self_attn.q_proj.get_base_layer().weight.dtype == dtype
    model(_tokens())  # runs: half base, fp32 adapter
    _scramble(model, 3)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_base(dtype=dtype), tmp_path, is_trainable=True)
    assert {p.dtype for p in _adapter_params(loaded).values()} == {torch.float32}
    kept = PeftModel.from_pretrained(_base(dtype=dtype), tmp_path, autocast_adapter_dtype=False)
    assert {p.dtype for p in _adapter_params(kept).values()} == {dtype}


@pytest.mark.parametrize("method", list(CONFIGS))
def test_get_delta_weight_on_a_half_base_is_fp32_like_lora(method):
    # dW itself in fp32 (as LoRA's get_delta_weight on a half base), not rounded through
    # the base's dtype; the reference: the same adapter on an fp64 copy of the model
    model = get_peft_model(_base(dtype=torch.bfloat16), CONFIGS[method]())
    _scramble(model, 3)
    reference = copy.deepcopy(model).to(torch.float64)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    dW = layer.get_delta_weight("default")
    assert dW.dtype == torch.float32
    if method != "genft":  # WeGeFT's formula, written out
        factors = layer._factors["default"]
        W0 = layer.get_base_layer().weight.double()
        ref = factors.config.scaling * W0 @ factors.phi.double().T @ factors.psi.double()
    else:
        ref = reference.base_model.model.model.layers[0].self_attn.q_proj.get_delta_weight("default")
    assert ref.dtype == torch.float64 and ref.abs().max() > 1e-3
    assert ((dW.double() - ref).norm() / ref.norm()).item() < 1e-5


# ---- 3. low_cpu_mem_usage --------------------------------------------------------------

@pytest.mark.parametrize("method", list(CONFIGS))
def test_low_cpu_mem_usage_loads_the_same_adapter(tmp_path, method):
    want = _saved(tmp_path, CONFIGS[method])
    model = PeftModel.from_pretrained(_base(), tmp_path, low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(_logits(model), want, rtol=0, atol=0)
    model.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in model.parameters())
    model.set_adapter("other")
    torch.testing.assert_close(_logits(model), want, rtol=0, atol=0)
    plain = _base()
    plain.load_adapter(str(tmp_path), low_cpu_mem_usage=True)  # transformers' loader
    assert not any(p.is_meta for p in plain.parameters())
    torch.testing.assert_close(_logits(plain), want, rtol=0, atol=0)


# ---- 4. frozen and trainable adapters ---------------------------------------------------

def _grad_by_adapter(model, adapter):
    return {n: p.requires_grad for n, p in _adapter_params(model).items()
            if f".{adapter}." in n or n.endswith(f".{adapter}")}


@pytest.mark.parametrize("method", list(CONFIGS))
def test_adapters_are_frozen_and_trainable_as_peft_sets_them(tmp_path, method):
    _saved(tmp_path, CONFIGS[method])
    inference = PeftModel.from_pretrained(_base(), tmp_path)
    assert _adapter_params(inference) and not any(p.requires_grad for p in _adapter_params(inference).values())
    trainable = PeftModel.from_pretrained(_base(), tmp_path, is_trainable=True)
    assert all(p.requires_grad for p in _adapter_params(trainable).values())

    trainable.load_adapter(tmp_path, adapter_name="frozen", is_trainable=False)
    assert not any(_grad_by_adapter(trainable, "frozen").values())
    assert all(_grad_by_adapter(trainable, "default").values())

    # add_adapter / set_adapter: PEFT's LoRA makes only the active adapter trainable; so do we
    lora = get_peft_model(_base(), LoraConfig(target_modules=["q_proj", "v_proj"]))
    model = get_peft_model(_base(), CONFIGS[method]())
    for m in (lora, model):
        m.add_adapter("b", lora.peft_config["default"] if m is lora else CONFIGS[method]())
    for m in (lora, model):
        assert all(_grad_by_adapter(m, "default").values()) and not any(_grad_by_adapter(m, "b").values())
        assert _grad_by_adapter(m, "b")
        m.set_adapter("b")
        assert not any(_grad_by_adapter(m, "default").values()) and all(_grad_by_adapter(m, "b").values())
    shared = _shared_params(model)
    if method != "wegeft_per_layer":
        assert any(".b." in n for n in shared) and any(".default." in n for n in shared)
    for n, p in shared.items():
        assert p.requires_grad == (".b." in n), n


# ---- 5. delete_adapter -----------------------------------------------------------------

@pytest.mark.parametrize("method", list(CONFIGS))
def test_delete_adapter_drops_its_shared_tensors_and_falls_back_like_lora(tmp_path, method):
    want_b = _saved(tmp_path / "b", CONFIGS[method], seed=5)
    lora = get_peft_model(_base(), LoraConfig(target_modules=["q_proj", "v_proj"]))
    lora.add_adapter("b", LoraConfig(target_modules=["q_proj", "v_proj"]))
    model = get_peft_model(_base(), CONFIGS[method]())
    model.load_adapter(tmp_path / "b", adapter_name="b")
    for m in (lora, model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.delete_adapter("default")  # the active one
        assert m.active_adapters == ["b"]  # LoRA's fallback: the remaining adapter
        assert m.active_adapter == "b"
    assert not any(".default." in n for n in model.state_dict())
    torch.testing.assert_close(_logits(model), want_b, rtol=0, atol=0)
    model.add_adapter("c", CONFIGS[method]())
    model.delete_adapter("c")
    assert not any(".c." in n for n in model.state_dict())
    assert model.active_adapters == ["b"]


# ---- 6. mixed adapter batches ----------------------------------------------------------

def _assert_rows_match_their_adapter(model, x, names):
    """A mixed batch (``adapter_names=``) gives each row what its adapter alone gives it
    (``__base__``: the adapter disabled); the two adapters differ."""
    with torch.no_grad():
        mixed = model(x, adapter_names=names).logits
        alone = {}
        for adapter in ("default", "b"):
            model.set_adapter(adapter)
            alone[adapter] = model(x).logits
        with model.disable_adapter():
            alone["__base__"] = model(x).logits
    assert (alone["default"] - alone["b"]).abs().max() > 1e-2
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], alone[name][i], rtol=1e-5, atol=1e-5, msg=f"row {i} ({name})")


@pytest.mark.parametrize("method", list(CONFIGS))
def test_mixed_adapter_batch_equals_each_sub_batch_alone(tmp_path, method):
    _saved(tmp_path / "a", CONFIGS[method], seed=3)
    _saved(tmp_path / "b", CONFIGS[method], seed=5)
    model = PeftModel.from_pretrained(_base(), tmp_path / "a")
    model.load_adapter(tmp_path / "b", adapter_name="b")
    x = torch.randint(0, 96, (5, 9), generator=torch.Generator().manual_seed(4))
    names = ["default", "b", "__base__", "b", "default"]
    _assert_rows_match_their_adapter(model, x, names)
    with pytest.raises(ValueError, match="non-existing adapter"):
        model(x, adapter_names=["default", "nope", "b", "b", "b"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(x, adapter_names=names)
    model.eval()
    beams = dict(min_new_tokens=3, max_new_tokens=3, do_sample=False, num_beams=2)  # names repeat per beam
    out = model.generate(input_ids=x[:2], adapter_names=["b", "default"], **beams)
    model.set_adapter("b")
    torch.testing.assert_close(out[0], model.generate(input_ids=x[:1], **beams)[0])
    model.set_adapter("default")
    torch.testing.assert_close(out[1], model.generate(input_ids=x[1:2], **beams)[0])


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_mixed_adapter_batch_uses_each_adapters_classification_head(method):
    # SEQ_CLS: PEFT keeps a copy of the head per adapter (modules_to_save); each row must
    # get its own adapter's head too, as LoRA's hooks give it
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**CFG, num_labels=3, pad_token_id=0)
    model = get_peft_model(transformers.LlamaForSequenceClassification(config).eval(),
                           CONFIGS[method](task_type="SEQ_CLS"))
    model.add_adapter("b", CONFIGS[method](task_type="SEQ_CLS"))
    assert model.peft_config["b"].modules_to_save  # PEFT's SEQ_CLS default: the head
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".b." in name or name.endswith(".b.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.eval()
    x = torch.randint(1, 96, (3, 5), generator=torch.Generator().manual_seed(4))
    names = ["default", "b", "__base__"]
    _assert_rows_match_their_adapter(model, x, names)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_unload_gives_back_the_base_model(method):
    base_logits = _logits(_base())
    model = get_peft_model(_base(), CONFIGS[method]())
    _scramble(model, 3)
    assert (_logits(model) - base_logits).abs().max() > 1e-3
    plain = model.unload()
    assert type(plain) is transformers.LlamaForCausalLM
    assert not any(hasattr(plain, attr) for attr in SHARED)
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in plain.modules())
    assert plain.state_dict().keys() == _base().state_dict().keys()
    torch.testing.assert_close(_logits(plain), base_logits, rtol=0, atol=0)


# ---- 7. PEFT's usual arguments ---------------------------------------------------------

@pytest.mark.parametrize("method", list(CONFIGS))
def test_init_weights_false_acts_at_initialisation(method):
    base = _logits(_base())
    assert (_logits(get_peft_model(_base(), CONFIGS[method]())) - base).abs().max() == 0
    acting = get_peft_model(_base(), CONFIGS[method](init_weights=False))
    assert (_logits(acting) - base).abs().max() > 1e-3
    if method == "genft":
        assert acting.peft_config["default"].method_config().zero_init is False


def _hf_base():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG)).eval()  # transformers' init: std 0.02


@pytest.mark.parametrize("method", list(CONFIGS))
def test_init_weights_false_acts_clearly_on_small_weights(method):
    """PEFT's own tests take ``init_weights=False`` for an adapter that moves a
    transformers-initialised model (``W0`` std 0.02, as their tiny models) clearly
    (``test_merge_layers_multi``: two such adapters are not allclose at 1e-3) and whose
    every tensor gets a gradient at once. GenFT generates ``dW`` from ``W0``: with
    ``nn.Linear``'s init of its matrices it moved PEFT's tiny decoders by ~3e-4."""
    base = _logits(_hf_base())
    logits = []
    for seed in (1, 2):
        model = _hf_base()
        torch.manual_seed(seed)
        model = get_peft_model(model, CONFIGS[method](init_weights=False))
        logits.append(_logits(model))
    assert (logits[0] - base).abs().max() > 1e-2
    assert not torch.allclose(logits[0], logits[1], atol=1e-2, rtol=1e-2)
    model.train()
    model(_tokens()).logits.sum().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().max() > 0 for p in trainable)


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_target_modules_none_uses_peft_defaults_like_lora(method):
    lora = get_peft_model(_base(), LoraConfig())
    make = genft_peft.GenFTPeftConfig if method == "genft" else genft_peft.WeGeFTPeftConfig
    model = get_peft_model(_base(), make())
    assert sorted(model.targeted_module_names) == sorted(lora.targeted_module_names)
    targets = model.peft_config["default"].target_modules
    assert targets == lora.peft_config["default"].target_modules == {"q_proj", "v_proj"}


def _gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("method", list(CONFIGS))
def test_gpt2_conv1d_targets(tmp_path, method):
    """GPT-2's Conv1D stores W0^T (in, out): the adapter reads W0 = weight.T, merges back
    transposed; against transformers' own GPT-2 with the merged weight."""
    make = CONFIGS[method]
    config = make(target_modules=["c_attn", "c_fc"]) if method != "genft" else _genft(target_modules=["c_attn"])
    model = get_peft_model(_gpt2(), config)
    _scramble(model, 3)
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert layer.fan_in_fan_out and (layer.in_features, layer.out_features) == (32, 96)
    x = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).logits
        assert (want - _gpt2()(x).logits).abs().max() > 1e-3
        # the layer's output is x @ (W0 + dW).T + b, with dW from W0 = weight.T
        h = torch.randn(3, 32)
        W0 = layer.get_base_layer().weight.T
        dW = layer.get_delta_weight("default")  # LoRA's layout: (in, out) for Conv1D
        assert dW.shape == (32, 96)
        torch.testing.assert_close(layer(h), h @ (W0 + dW.T).T + layer.get_base_layer().bias, rtol=1e-5, atol=1e-5)
        model.save_pretrained(tmp_path)
        loaded = PeftModel.from_pretrained(_gpt2(), tmp_path)
        torch.testing.assert_close(loaded(x).logits, want, rtol=0, atol=0)
        merged = loaded.merge_and_unload()
        assert type(merged) is transformers.GPT2LMHeadModel and not _adapter_params(merged)
        torch.testing.assert_close(merged(x).logits, want, rtol=1e-4, atol=1e-4)


def test_unsupported_layer_is_refused_clearly():
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG))
    with pytest.raises(TypeError, match="adapts torch.nn.Linear and transformers' Conv1D layers; .*Embedding"):
        get_peft_model(model, _genft(target_modules=["embed_tokens"]))


# ---- 9. the eval cache -----------------------------------------------------------------

@pytest.mark.parametrize("method", list(CONFIGS))
def test_eval_cache_equals_the_uncached_forward_and_follows_changes(method, monkeypatch):
    model = get_peft_model(_base(), CONFIGS[method]())
    _scramble(model, 3)
    layers = [m for m in model.modules() if isinstance(m, genft_peft.GenFTPeftLinear | genft_peft.WeGeFTPeftLinear)]
    builds = []
    cls = type(layers[0])
    original = cls._eval_state
    monkeypatch.setattr(cls, "_eval_state", lambda self, *a: builds.append(1) or original(self, *a))
    model.eval()
    cached = _logits(model)
    assert len(builds) == len(layers)
    again = _logits(model)
    assert len(builds) == len(layers)  # the second forward reuses every layer's cache
    torch.testing.assert_close(again, cached, rtol=0, atol=0)
    for layer in layers:
        layer.cache_updates = False
    torch.testing.assert_close(_logits(model), cached, rtol=0, atol=0)  # bit for bit the uncached forward
    for layer in layers:
        layer.cache_updates = True

    # an in-place change of a shared tensor (an optimizer step) invalidates it
    with torch.no_grad():
        next(iter(_shared_params(model).values()) if method != "wegeft_per_layer" else
             (p for n, p in model.named_parameters() if n.endswith("phi"))).add_(0.5)
    changed = _logits(model)
    for layer in layers:
        layer.cache_updates = False
    torch.testing.assert_close(changed, _logits(model), rtol=0, atol=0)
    assert (changed - cached).abs().max() > 1e-4
    for layer in layers:
        layer.cache_updates = True
    # training drops the caches; merge/unmerge/set_adapter see the right weights
    model.train()
    assert all(not layer._caches for layer in layers)
    model.eval()
    model.merge_adapter()
    torch.testing.assert_close(_logits(model), changed, rtol=1e-4, atol=1e-4)
    model.unmerge_adapter()
    torch.testing.assert_close(_logits(model), changed, rtol=0, atol=0)
    # a gradient still flows in eval when one is wanted (no cached, graph-less dW)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model(_tokens()).logits.sum().backward()
    assert all(p.grad is not None for p in trainable)


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_set_adapter_keeps_the_active_adapters_caches(method, monkeypatch):
    model = get_peft_model(_base(), CONFIGS[method]())
    model.add_adapter("b", CONFIGS[method]())
    _scramble(model, 3)
    layers = [m for m in model.modules() if isinstance(m, genft_peft.GenFTPeftLinear | genft_peft.WeGeFTPeftLinear)]
    builds = []
    cls = type(layers[0])
    original = cls._eval_state
    monkeypatch.setattr(cls, "_eval_state", lambda self, *a: builds.append(1) or original(self, *a))
    model.eval()
    before = _logits(model)
    model.set_adapter("default")  # (e.g. a UI re-selecting the adapter between requests)
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)
    assert len(builds) == len(layers)  # built once
    model.set_adapter("b")
    assert all("default" not in layer._caches for layer in layers)  # the inactive one's memory freed
    assert (_logits(model) - before).abs().max() > 1e-3


@pytest.mark.parametrize("method", list(CONFIGS))
def test_eval_cache_follows_model_to_another_dtype(method):
    # Module.to keeps the Parameter objects and their version counters: the cache must
    # still see the new data
    model = get_peft_model(_base(), CONFIGS[method]())
    _scramble(model, 3)
    model.eval()
    _logits(model)  # fills the caches in fp32
    model.to(torch.float64)
    cached = _logits(model)
    for layer in model.modules():
        if isinstance(layer, genft_peft.GenFTPeftLinear | genft_peft.WeGeFTPeftLinear):
            layer.cache_updates = False
    torch.testing.assert_close(cached, _logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_eval_cache_filled_in_inference_mode_serves_a_forward_with_gradients(method):
    model = get_peft_model(_base(), CONFIGS[method]())
    _scramble(model, 3)
    model.requires_grad_(False)
    model.eval()
    with torch.inference_mode():
        model(_tokens())
    embeds = model.get_input_embeddings()(_tokens()).detach().requires_grad_(True)
    model(inputs_embeds=embeds).logits.sum().backward()  # (saliency: a gradient w.r.t. the input)
    assert embeds.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_several_active_adapters_add_up_like_their_merge(tmp_path, method):
    _saved(tmp_path / "a", CONFIGS[method], seed=3)
    _saved(tmp_path / "b", CONFIGS[method], seed=5)
    model = PeftModel.from_pretrained(_base(), tmp_path / "a")
    model.load_adapter(tmp_path / "b", adapter_name="b")
    model.base_model.set_adapter(["default", "b"])
    both = _logits(model)
    assert (both - _logits(PeftModel.from_pretrained(_base(), tmp_path / "a"))).abs().max() > 1e-3
    model.merge_adapter(["default", "b"])
    torch.testing.assert_close(_logits(model), both, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="merged adapters"):
        model(_tokens(), adapter_names=["b", "default"])


def test_peft_decode_benchmark_runs(tmp_path):
    """benchmarks/peft_decode.py with tiny arguments: a table row per variant, and the
    cached and uncached variants decode the same tokens."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "peft_decode.py"
    spec = importlib.util.spec_from_file_location("peft_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "decode"
    assert bench.main(["--hidden", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--prompt-len", "3",
                       "--decode-tokens", "3", "--repeats", "1", "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert set(rows) == set(bench.VARIANTS) and all(r["ms_per_token"] > 0 for r in rows.values())
    assert rows["genft"]["tokens"] == rows["genft_uncached"]["tokens"]
    assert "| lora_r16 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_base_model_state_dict_leaves_out_the_shared_tensors(method):
    """PEFT's get/set_base_model_state_dict: the base model's own keys and tensors, as for LoRA."""
    from peft import get_base_model_state_dict, set_base_model_state_dict

    model = get_peft_model(_base(), CONFIGS[method]())
    _scramble(model, 3)
    plain = _base().state_dict()
    state = get_base_model_state_dict(model)
    assert state.keys() == plain.keys()
    assert all(torch.equal(state[k], plain[k]) for k in plain)
    other = _base(seed=1).state_dict()
    set_base_model_state_dict(model, other)  # strict: every base key, nothing else
    assert torch.equal(model.base_model.model.model.layers[0].self_attn.q_proj.get_base_layer().weight,
                       other["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_transformers_set_adapter_moves_trainability_like_lora(tmp_path, method):
    """transformers' set_adapter reaches only tuner layers; the shared tensors follow them."""
    _saved(tmp_path / "a", CONFIGS[method], seed=3)
    _saved(tmp_path / "b", CONFIGS[method], seed=5)
    lora_dir = tmp_path / "lora"
    get_peft_model(_base(), LoraConfig(target_modules=["q_proj", "v_proj"])).save_pretrained(lora_dir)
    ours, lora = _base(), _base()
    for model, dirs in ((ours, (tmp_path / "a", tmp_path / "b")), (lora, (lora_dir, lora_dir))):
        model.load_adapter(str(dirs[0]), adapter_name="x", is_trainable=True)
        model.load_adapter(str(dirs[1]), adapter_name="y", is_trainable=True)
        model.set_adapter("y")
    for model in (ours, lora):
        assert all(_grad_by_adapter(model, "y").values()) and not any(_grad_by_adapter(model, "x").values())
    shared = _shared_params(ours)
    assert shared and all(p.requires_grad == (".y." in n) for n, p in shared.items())


@pytest.mark.parametrize("method", ["genft", "wegeft"])
def test_adapter_trained_through_transformers_loads_in_peft(tmp_path, method):
    """transformers' add_adapter + save_pretrained (its Trainer's path) writes every key under
    base_model.model., the shared ones too: PeftModel and transformers both load it back."""
    plain = _base()
    plain.add_adapter(CONFIGS[method]())
    _scramble(plain, 3)
    want = _logits(plain)
    plain.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(PeftModel.from_pretrained(_base(), tmp_path)), want, rtol=0, atol=0)
    again = _base()
    again.load_adapter(str(tmp_path))
    torch.testing.assert_close(_logits(again), want, rtol=0, atol=0)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_model_status_lists_every_adapter_like_lora(method):
    """PEFT's get_model_status/get_layer_status: available and active adapters, as LoRA's."""
    lora = get_peft_model(_base(), LoraConfig(target_modules=["q_proj", "v_proj"]))
    lora.add_adapter("b", LoraConfig(target_modules=["q_proj", "v_proj"]))
    model = get_peft_model(_base(), CONFIGS[method]())
    model.add_adapter("b", CONFIGS[method]())
    for m in (lora, model):
        status = m.get_model_status()
        assert status.available_adapters == ["b", "default"] and status.active_adapters == ["default"]
        assert all(layer.available_adapters == ["b", "default"] for layer in m.get_layer_status())
