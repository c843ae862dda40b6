"""GenFT and WeGeFT as Hugging Face PEFT methods: ``import genft_tune.peft`` registers both.

::

    import genft_tune.peft  # registers GenFT and WeGeFT with PEFT
    from peft import PeftModel, get_peft_model
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           genft_tune.peft.GenFTPeftConfig(target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)                       # adapter_config.json + adapter_model.safetensors
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    merged = model.merge_and_unload()                # a plain transformers model

Each method's PEFT tuner lives in its own package (:mod:`genft_tune.modules.genft.peft`,
:mod:`genft_tune.modules.wegeft.peft`) and registers itself with PEFT when imported; what
the tuners share is :mod:`genft_tune.modules._peft_tuner` (PEFT's ``PeftType`` has no
GENFT or WEGEFT member, so it adds them; each method's shared tensors live once per
adapter, on the adapted model, so that transformers' ``load_adapter`` and PEFT's
``inject_adapter_in_model`` find them too). This module imports them and keeps their
public names in one place. Needs the ``peft`` extra: ``pip install genft-tune[peft]``.
"""

from genft_tune.modules.genft.peft import GenFTPeftConfig, GenFTPeftLinear, GenFTPeftModel
from genft_tune.modules.wegeft.peft import WeGeFTPeftConfig, WeGeFTPeftLinear, WeGeFTPeftModel

__all__ = [
    "GenFTPeftConfig",
    "GenFTPeftLinear",
    "GenFTPeftModel",
    "WeGeFTPeftConfig",
    "WeGeFTPeftLinear",
    "WeGeFTPeftModel",
]
