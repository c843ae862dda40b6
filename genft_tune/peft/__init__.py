"""GenFT and WeGeFT as Hugging Face PEFT methods: ``import genft_tune.peft`` registers both.

::

    import genft_tune.peft  # registers GenFT and WeGeFT with PEFT
    from peft import PeftModel, get_peft_model
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           genft_tune.peft.GenFTPeftConfig(target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)                       # adapter_config.json + adapter_model.safetensors
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    merged = model.merge_and_unload()                # a plain transformers model

PEFT's ``PeftType`` enum has no GENFT or WEGEFT member, so importing this package adds
them (PEFT's ``register_peft_method`` needs them). Each method's shared tensors live
once per adapter, on the adapted model (so that transformers' ``load_adapter`` and PEFT's
``inject_adapter_in_model`` find them too; :mod:`genft_tune.peft._tuner`); nothing of the
equations is written again here (see
:mod:`genft_tune.peft.genft`, :mod:`genft_tune.peft.wegeft`). Needs the ``peft`` extra:
``pip install genft-tune[peft]``.
"""

from genft_tune.peft.genft import GenFTPeftConfig, GenFTPeftLinear, GenFTPeftModel, tune_rows_in_hf_order
from genft_tune.peft.wegeft import WeGeFTPeftConfig, WeGeFTPeftLinear, WeGeFTPeftModel

__all__ = [
    "GenFTPeftConfig",
    "GenFTPeftLinear",
    "GenFTPeftModel",
    "tune_rows_in_hf_order",
    "WeGeFTPeftConfig",
    "WeGeFTPeftLinear",
    "WeGeFTPeftModel",
]
