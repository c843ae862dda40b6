"""The names of the adapter files this package reads and writes, in one place: ours,
Hugging Face PEFT's (and the folder a recipe puts them in), and the GenFT authors'.

Bottom layer (imports nothing of ours), so that model cards, checkpointing, publishing,
the commands and the recipes all name the same files. What the files hold is described
where they are written: :mod:`genft_tune.checkpointing._adapter` (ours),
:mod:`genft_tune.checkpointing._peft_format` (PEFT's) and
:mod:`genft_tune.checkpointing._authors` (the authors').
"""

# ours: the tensors (torchtune naming) and the json that describes them
ADAPTER_WEIGHTS_FILE = "genft_adapter.safetensors"
ADAPTER_CONFIG_FILE = "genft_config.json"

# Hugging Face PEFT's pair (``save_pretrained``), Hugging Face naming
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
# The recipes put PEFT's pair in this subfolder of a checkpoint: transformers takes a
# folder with adapter_config.json for an adapter, so beside merged weights it would not
# load them as the plain model they are.
PEFT_SUBDIR = "peft"

# the GenFT authors' patched PEFT writes PEFT's names (its weights also as torch's .bin)
AUTHORS_CONFIG_FILE = PEFT_CONFIG_FILE
AUTHORS_WEIGHT_FILES = (PEFT_WEIGHTS_FILE, "adapter_model.bin")

# the image recipe's runs without a GenFT/WeGeFT adapter (linear probing, full fine-tuning):
# the trained tensors in torchtune naming, no adapter of any library
TRAINED_MODULES_WEIGHTS_FILE = "trained_modules.safetensors"
TRAINED_MODULES_CONFIG_FILE = "trained_modules.json"

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "AUTHORS_CONFIG_FILE",
    "AUTHORS_WEIGHT_FILES",
    "PEFT_CONFIG_FILE",
    "PEFT_SUBDIR",
    "PEFT_WEIGHTS_FILE",
    "TRAINED_MODULES_CONFIG_FILE",
    "TRAINED_MODULES_WEIGHTS_FILE",
]
