"""genft-tune: GenFT (generative parameter-efficient fine-tuning) for torchtune.

``genft_tune.apply_adapter(model, config, targets)`` puts a GenFT (or WeGeFT) adapter into
any model and ``genft_tune.adapter_layers(model)`` finds its layers again; both are
imported on first use, so that ``import genft_tune`` (and ``genft-tune ls``) stays fast.
"""

from genft_tune import _torchao_compat

__version__ = "0.1.0"

# torchtune 0.6.1 imports torchao names that the torchao PEFT needs renamed: serve them
# before torchtune's first import (a no-op with torchao 0.15; see _torchao_compat).
_torchao_compat.install()

_LAZY = {"apply_adapter", "adapter_layers"}


def __getattr__(name: str):
    if name in _LAZY:
        from genft_tune import modules

        return getattr(modules, name)
    raise AttributeError(f"module 'genft_tune' has no attribute {name!r}")
