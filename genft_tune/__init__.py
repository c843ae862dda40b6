"""genft-tune: GenFT (generative parameter-efficient fine-tuning) for torchtune."""

__version__ = "0.1.0"
