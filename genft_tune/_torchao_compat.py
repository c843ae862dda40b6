"""Lets torchtune 0.6.1 (its last release) import with the torchao that PEFT needs.

torchtune 0.6.1 imports three names that torchao 0.16-0.18 renamed or moved, and PEFT
0.21.2 refuses torchao < 0.16 whenever it builds a LoRA or VeRA layer, so with no help
one environment cannot hold both. What torchtune asks for, and what serves it here:

- ``torchao.dtypes.nf4tensor`` (QLoRA/QGenFT's NF4 base; moved in 0.18 to
  ``torchao.quantization.quantize_.workflows.nf4.nf4_tensor``): the new module, under
  the old name.
- ``torchao.quantization.int4_weight_only`` (0.16 renamed it ``Int4WeightOnlyConfig``):
  a function that makes that config.
- ``torchao.quantization.int8_dynamic_activation_int4_weight`` (removed in 0.17) and
  ``torchao.dtypes.TensorCoreTiledLayout`` (removed in 0.18): only torchtune's
  post-training quantizers use them, never its training; they stay importable and say
  what is missing when called.

Nothing is changed where torchao still has a name, so this is a no-op on torchao 0.15.
It must run before torchtune's first import in every process, ``tune run`` included
(torchtune's own CLI imports torchtune before any recipe runs), so :func:`install`
only registers an import hook and costs nothing until torchtune or the NF4 module is
imported. ``import genft_tune`` calls it, and the ``genft_tune-torchao-compat.pth``
file that ``pip install`` puts in site-packages (see ``setup.py``) imports
``genft_tune`` at interpreter start-up. Set ``GENFT_TUNE_NO_TORCHAO_COMPAT=1`` to turn
it off.
"""

import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import types

_NF4 = "torchao.dtypes.nf4tensor"
_NF4_MOVED_TO = "torchao.quantization.quantize_.workflows.nf4.nf4_tensor"
_TRIGGERS = ("torchtune", _NF4)


def _removed(name: str, version: str):
    def removed(*args, **kwargs):
        raise NotImplementedError(
            f"torchao {version} has no {name}; torchtune's post-training quantizer that uses it "
            "is not available with this torchao (genft-tune's training does not need it)"
        )

    removed.__name__ = name
    return removed


class _RemovedLayout:
    """Stands in for ``TensorCoreTiledLayout``, which only torchtune's int4 quantizer uses."""

    def __init__(self, *args, **kwargs):
        _removed("TensorCoreTiledLayout", _torchao_version())()


def _torchao_version() -> str:
    import torchao

    return getattr(torchao, "__version__", "?")


def _int4_weight_only(group_size: int = 128, layout=None, *args, **kwargs):
    """torchao < 0.16's ``int4_weight_only(group_size, layout)``, as its config class."""
    from torchao.quantization import Int4WeightOnlyConfig

    return Int4WeightOnlyConfig(group_size=group_size)


class _DropKnownNoise(logging.Filter):
    """torchao 0.17+ logs "Failed to load ..._C_cutlass_90a.abi3.so" for its CUDA-only
    kernels on a CPU build of torch (where they can never load), and torch logs a
    deprecation of the ``register_constant`` call torchao makes on import: neither is
    news to a user, so both are dropped (on a CUDA build of torch, a failed load is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("%s is an Enum subclass"):
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            return not any(str(getattr(a, "__module__", "")).startswith("torchao") for a in args)
        if message.startswith("Failed to load") and ".so" in message:
            torch = sys.modules.get("torch")
            return torch is not None and torch.version.cuda is not None
        return True


def patch_torchao() -> list:
    """Adds the names torchtune 0.6.1 imports to the installed torchao, where missing.

    Returns:
        list: the names added (empty on a torchao that has them all).
    """
    import torchao.dtypes
    import torchao.quantization as quantization

    added = []
    if _NF4 not in sys.modules and importlib.util.find_spec(_NF4) is None:
        moved = importlib.import_module(_NF4_MOVED_TO)
        # A module of its own that hands out the moved module's objects (the same
        # NF4Tensor class), so the moved module itself is never touched.
        shim = types.ModuleType(_NF4, f"torchao < 0.18's NF4 module: the names of {_NF4_MOVED_TO}.")
        shim.__dict__.update({k: v for k, v in vars(moved).items() if not k.startswith("__")})
        shim.__spec__ = importlib.util.spec_from_loader(_NF4, _Alias(shim))  # find_spec() reads it
        sys.modules[_NF4] = shim
        torchao.dtypes.nf4tensor = shim
        added.append(_NF4)
    if not hasattr(torchao.dtypes, "TensorCoreTiledLayout"):
        torchao.dtypes.TensorCoreTiledLayout = _RemovedLayout
        added.append("torchao.dtypes.TensorCoreTiledLayout")
    if not hasattr(quantization, "int4_weight_only"):
        quantization.int4_weight_only = _int4_weight_only
        added.append("torchao.quantization.int4_weight_only")
    if not hasattr(quantization, "int8_dynamic_activation_int4_weight"):
        quantization.int8_dynamic_activation_int4_weight = _removed(
            "int8_dynamic_activation_int4_weight", _torchao_version()
        )
        added.append("torchao.quantization.int8_dynamic_activation_int4_weight")
    return added


class _Alias(importlib.abc.Loader):
    """Loads an already-imported module under a second name."""

    def __init__(self, module: types.ModuleType):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        pass


class _PatchBeforeTorchtune(importlib.abc.MetaPathFinder):
    """Runs :func:`patch_torchao` when torchtune or the NF4 module is first imported,
    then lets the usual finders import it."""

    def __init__(self):
        self._busy = False

    def find_spec(self, fullname, path, target=None):
        if fullname not in _TRIGGERS or self._busy:
            return None
        self._busy = True
        try:
            patch_torchao()
        finally:
            self._busy = False
        if fullname == _NF4 and _NF4 in sys.modules:  # moved: import the new module under the old name
            return importlib.util.spec_from_loader(_NF4, _Alias(sys.modules[_NF4]))
        return None


def install() -> None:
    """Registers the import hook once (first in ``sys.meta_path``); patches at once when
    torchtune is already imported."""
    if os.environ.get("GENFT_TUNE_NO_TORCHAO_COMPAT"):
        return
    if any(isinstance(finder, _PatchBeforeTorchtune) for finder in sys.meta_path):
        return
    for logger in ("torchao", "torch.utils._pytree"):
        logging.getLogger(logger).addFilter(_DropKnownNoise())
    if "torchtune" in sys.modules:  # too late to help torchtune's import; still serve ours
        patch_torchao()
    sys.meta_path.insert(0, _PatchBeforeTorchtune())
