"""Adds GenFT and WeGeFT rows to an unpacked PEFT sdist's ``tests/`` (a measurement, run by
``run.sh``; nothing of PEFT's test code is kept in this repository).

What it changes, and only this (each edit asserts that PEFT's text is where it expects it,
so a PEFT version with another layout fails loudly instead of measuring nothing):

* ``import genft_tune.peft`` at the top of ``testing_common.py``, ``test_custom_models.py``
  and ``test_decoder_models.py`` (registers GENFT/WEGEFT with PEFT).
* ``test_custom_models.py``: rows in ``TEST_CASES`` written like PEFT's VeRA rows (the MLP
  and the Embedding + transformers ``Conv1D`` model), rows in
  ``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES`` (``Same`` and ``Different``, ``init_weights=False``
  as PEFT's rows) and ``MIXED_ADAPTER_TEST_CASES`` (``adapter_names=``, like PEFT's
  GLoRA/RoAd rows). ``ALL_PEFT_CONFIG_CLASSES`` is computed from ``TEST_CASES``, so the
  per-class tests pick ours up too.
* ``test_decoder_models.py``: rows in ``ALL_CONFIGS``, one with PEFT's per-architecture
  default targets (``target_modules=None``, as every PEFT row there) and one naming
  ``q_proj``/``v_proj``.
* ``--shared-skips`` (the default; ``--strict`` turns it off): WeGeFT joins the one skip
  list PEFT keeps for methods with shared weights, ``_test_training_layer_indexing``'s
  ``(VBLoRAConfig, VeraConfig, UniLoraConfig)`` ("use shared weights, so this generic
  layer-indexing count check is skipped"): with shared pairs (its default) all of WeGeFT's
  trainable tensors are shared, so ``layers_to_transform=[0]`` cannot lower their count,
  as for UniLoRA. GenFT has per-layer factors and passes that check, so it is not
  added. PEFT's other skips that the issue names (bias
  tests, mixed adapter batches) select the methods that run by ``config_cls in (LoRA,
  ...)`` / ``config_cls == LoraConfig``, so they skip ours without an edit.
* ``tests/__init__.py`` (the tests import each other relatively) and a ``conftest.py`` that
  maps the Hub model ids the decoder tests load to tiny models built locally
  (``tiny_models.py``; no Hub access here) and deselects the ``q_v`` rows on GPT-2 (its
  attention is ``c_attn``; the ``default_targets`` rows run there).

Usage: ``python add_rows.py TESTS_DIR [--strict]``.
"""

import argparse
import sys
from pathlib import Path

MARK = "# genft-tune harness"
IMPORT = f"import genft_tune.peft  {MARK}: registers GENFT/WEGEFT\nfrom genft_tune.peft import GenFTPeftConfig, WeGeFTPeftConfig  {MARK}\n"

# like PEFT's VeRA rows (``Vanilla MLP 1..5``, ``Embedding + transformers Conv1D 1``)
CUSTOM_ROWS = '''
{mark}: GenFT and WeGeFT rows, written like PEFT's VeRA rows
TEST_CASES.extend([
    ("Vanilla MLP 1 GenFT", "MLP", GenFTPeftConfig, {{"target_modules": "lin0"}}),
    ("Vanilla MLP 2 GenFT", "MLP", GenFTPeftConfig, {{"target_modules": ["lin0"]}}),
    ("Vanilla MLP 3 GenFT", "MLP", GenFTPeftConfig, {{"target_modules": ["lin1"]}}),
    ("Vanilla MLP 4 GenFT", "MLP", GenFTPeftConfig, {{"target_modules": ["lin0", "lin1"]}}),
    ("Vanilla MLP 5 GenFT", "MLP", GenFTPeftConfig, {{"target_modules": ["lin0"], "modules_to_save": ["lin1"]}}),
    ("Vanilla MLP 6 GenFT low-rank", "MLP", GenFTPeftConfig, {{"target_modules": ["lin0", "lin1"], "act_out": "identity"}}),
    ("Embedding + transformers Conv1D 1 GenFT", "EmbConv1D", GenFTPeftConfig, {{"target_modules": ["conv1d"]}}),
    ("Vanilla MLP 1 WeGeFT", "MLP", WeGeFTPeftConfig, {{"target_modules": "lin0"}}),
    ("Vanilla MLP 2 WeGeFT", "MLP", WeGeFTPeftConfig, {{"target_modules": ["lin0"]}}),
    ("Vanilla MLP 3 WeGeFT", "MLP", WeGeFTPeftConfig, {{"target_modules": ["lin1"]}}),
    ("Vanilla MLP 4 WeGeFT", "MLP", WeGeFTPeftConfig, {{"target_modules": ["lin0", "lin1"]}}),
    ("Vanilla MLP 5 WeGeFT", "MLP", WeGeFTPeftConfig, {{"target_modules": ["lin0"], "modules_to_save": ["lin1"]}}),
    ("Vanilla MLP 6 WeGeFT per-layer", "MLP", WeGeFTPeftConfig, {{"target_modules": ["lin0", "lin1"], "shared": False}}),
    ("Embedding + transformers Conv1D 1 WeGeFT", "EmbConv1D", WeGeFTPeftConfig, {{"target_modules": ["conv1d"]}}),
])
'''.format(mark=MARK)

MULTI_ROWS = '''
{mark}: like PEFT's "VeRA Same" (and "Different", which PEFT leaves out for VeRA only
# because VeRA's shared matrices are sized by the first adapter; ours are keyed by shape)
MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES.extend([
    ("GenFT Same", "genft", GenFTPeftConfig,
     {{"target_modules": ["lin0"], "init_weights": False}}, {{"target_modules": ["lin0"], "init_weights": False}}),
    ("GenFT Different", "genft", GenFTPeftConfig,
     {{"target_modules": ["lin0"], "init_weights": False}}, {{"target_modules": ["lin1"], "init_weights": False}}),
    ("WeGeFT Same", "wegeft", WeGeFTPeftConfig,
     {{"target_modules": ["lin0"], "init_weights": False}}, {{"target_modules": ["lin0"], "init_weights": False}}),
    ("WeGeFT Different", "wegeft", WeGeFTPeftConfig,
     {{"target_modules": ["lin0"], "init_weights": False}}, {{"target_modules": ["lin1"], "init_weights": False}}),
])

'''.format(mark=MARK)

MIXED_ROWS = '''
{mark}: mixed adapter batches (adapter_names=), rows like PEFT's "GLoRA mixed adapter"
# (PEFT adds a row here for each method that supports them). Configs are built here, at
# import: one that cannot be built (a keyword a checkout does not know) fails its tests
# with the reason instead of breaking the whole file's collection.
class _UnbuildableConfig:
    def __init__(self, error):
        self.__dict__["error"] = error

    def __getattr__(self, name):
        raise RuntimeError(f"config could not be built: {{self.__dict__['error']!r}}")


def _mixed_row(name, cls, kwargs0, kwargs1):
    try:
        return (name, cls(**kwargs0), cls(**kwargs1))
    except Exception as error:
        return pytest.param(name, _UnbuildableConfig(error), _UnbuildableConfig(error), id=name)


MIXED_ADAPTER_TEST_CASES.extend([
    _mixed_row("GenFT mixed adapter", GenFTPeftConfig,
               {{"target_modules": ["lin0"], "init_weights": False}},
               {{"target_modules": ["lin0"], "specific_dim": 2, "init_weights": False}}),
    _mixed_row("WeGeFT mixed adapter", WeGeFTPeftConfig,
               {{"target_modules": ["lin0"], "init_weights": False}},
               {{"target_modules": ["lin0"], "rank": 2, "init_weights": False}}),
])

'''.format(mark=MARK)

DECODER_ROWS = '''
{mark}: PEFT's rows use the per-architecture default targets (target_modules=None);
# the q_v rows name them, so that the other tests still measure something where None is refused
ALL_CONFIGS.extend([
    pytest.param(GenFTPeftConfig, {{"task_type": "CAUSAL_LM", "target_modules": None}}, id="GenFTPeftConfig-default_targets"),
    pytest.param(GenFTPeftConfig, {{"task_type": "CAUSAL_LM", "target_modules": ["q_proj", "v_proj"]}}, id="GenFTPeftConfig-q_v"),
    pytest.param(WeGeFTPeftConfig, {{"task_type": "CAUSAL_LM", "target_modules": None}}, id="WeGeFTPeftConfig-default_targets"),
    pytest.param(WeGeFTPeftConfig, {{"task_type": "CAUSAL_LM", "target_modules": ["q_proj", "v_proj"]}}, id="WeGeFTPeftConfig-q_v"),
])

'''.format(mark=MARK)

CONFTEST = '''"""{mark}: the decoder tests' Hub model ids -> tiny models built locally (tiny_models.py)."""
import json
import os

import transformers
from transformers.models.auto.auto_factory import _BaseAutoModelClass

_MAP = json.loads(open(os.environ["GENFT_PEFT_SUITE_MODELS"] + "/map.json").read())
_orig = _BaseAutoModelClass.from_pretrained.__func__


def _from_pretrained(cls, name, *args, **kwargs):
    local = _MAP.get(str(name))
    if local is None:
        return _orig(cls, name, *args, **kwargs)
    model = _orig(cls, local, *args, **kwargs)
    # as if loaded from the Hub: PEFT records and checks this name (adapter_config, model card)
    model.config.name_or_path = str(name)
    model.name_or_path = str(name)
    return model


_BaseAutoModelClass.from_pretrained = classmethod(_from_pretrained)


def pytest_collection_modifyitems(config, items):
    # the rows that name q_proj/v_proj do not apply to GPT-2 (c_attn): deselected, not failed
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {{}})
        kwargs = params.get("config_kwargs") or {{}}
        is_gpt2 = "GPT2" in str(params.get("model_id", ""))
        (drop if is_gpt2 and isinstance(kwargs, dict) and kwargs.get("target_modules") == ["q_proj", "v_proj"] else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
'''.format(mark=MARK)


def insert_before(text: str, anchor: str, block: str, *, what: str) -> str:
    if text.count(anchor) != 1:
        sys.exit(f"add_rows: {what}: expected one {anchor!r} in PEFT's file, found {text.count(anchor)}")
    return text.replace(anchor, block + anchor, 1)


def add_import(text: str, *, what: str) -> str:
    # before the file's first import statement: after PEFT's license header
    at = text.find("\nimport ")
    if at < 0:
        sys.exit(f"add_rows: {what}: no import statement found")
    return text[: at + 1] + IMPORT + text[at + 1 :]


def patch(tests: Path, *, shared_skips: bool) -> None:
    if (tests / "conftest.py").exists() and MARK in (tests / "conftest.py").read_text():
        sys.exit(f"add_rows: {tests} is already patched; unpack a fresh copy")
    (tests / "__init__.py").write_text("")
    (tests / "conftest.py").write_text(CONFTEST)

    path = tests / "testing_common.py"
    text = add_import(path.read_text(), what="testing_common imports")
    if shared_skips:
        old = "if config_cls in (VBLoRAConfig, VeraConfig, UniLoraConfig):"
        text = insert_before(text, old, "", what="layer-indexing skip")
        text = text.replace(
            old, "if config_cls in (VBLoRAConfig, VeraConfig, UniLoraConfig, WeGeFTPeftConfig):", 1
        )
    path.write_text(text)

    path = tests / "test_custom_models.py"
    text = add_import(path.read_text(), what="test_custom_models imports")
    text = insert_before(text, "ALL_PEFT_CONFIG_CLASSES = sorted(", CUSTOM_ROWS, what="TEST_CASES")
    text = insert_before(
        text, "def _skip_tests_with_multiple_adapters_with_target_parameters(", MULTI_ROWS,
        what="MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES",
    )
    text = insert_before(text, "class TestMixedAdapterBatches:", MIXED_ROWS, what="MIXED_ADAPTER_TEST_CASES")
    path.write_text(text)

    path = tests / "test_decoder_models.py"
    text = add_import(path.read_text(), what="test_decoder_models imports")
    text = insert_before(text, "def _skip_if_not_conv1d_supported(", DECODER_ROWS, what="ALL_CONFIGS")
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", type=Path, help="the tests/ folder of an unpacked peft sdist")
    parser.add_argument("--strict", action="store_true", help="no PEFT shared-method skip for ours")
    args = parser.parse_args()
    patch(args.tests, shared_skips=not args.strict)


if __name__ == "__main__":
    main()
