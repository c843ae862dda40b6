"""genft-tune: GenFT (generative parameter-efficient fine-tuning) for torchtune.

``genft_tune.apply_adapter(model, config, targets)`` puts a GenFT (or WeGeFT) adapter into
any model and ``genft_tune.adapter_layers(model)`` finds its layers again; both are
imported on first use, so that ``import genft_tune`` (and ``genft-tune ls``) stays fast.
"""

__version__ = "0.1.0"

_LAZY = {"apply_adapter", "adapter_layers"}


def __getattr__(name: str):
    if name in _LAZY:
        from genft_tune import modules

        return getattr(modules, name)
    raise AttributeError(f"module 'genft_tune' has no attribute {name!r}")
