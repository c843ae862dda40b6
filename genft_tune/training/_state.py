"""Recipe state (what a resumed run needs besides the adapter): atomic save and load,
and the random number generators' state."""

import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from genft_tune._fs import write_atomically

RECIPE_STATE_DIRNAME = "recipe_state"
RECIPE_STATE_FNAME = "recipe_state.pt"

# Keys of the recipe state dict, on top of torchtune's training.*_KEY constants.
ADAPTER_DIR_KEY = "adapter_dir"
STEPS_IN_EPOCH_KEY = "steps_in_epoch"
WORLD_SIZE_KEY = "world_size"
ADAPTER_CONFIG_KEY = "genft_config"  # the stored name stays: old recipe states resume


def recipe_state_path(output_dir: Union[str, Path]) -> Path:
    """``<output_dir>/recipe_state/recipe_state.pt`` (torchtune's location)."""
    return Path(output_dir) / RECIPE_STATE_DIRNAME / RECIPE_STATE_FNAME


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsynced, then renamed over
    ``path``, so a crash never leaves a truncated file behind."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp), fsync=True)


def save_recipe_state(output_dir: Union[str, Path], state: Dict[str, Any]) -> Path:
    """Write the recipe state atomically; returns its path."""
    path = recipe_state_path(output_dir)
    atomic_torch_save(state, path)
    return path


def load_recipe_state(output_dir: Union[str, Path]) -> Dict[str, Any]:
    """Read the recipe state written by :func:`save_recipe_state`.

    Raises:
        FileNotFoundError: naming the expected path, when there is none.
    """
    path = recipe_state_path(output_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"resume_from_checkpoint is True, but there is no recipe state at {path}; "
            "resume reads the checkpoint that an earlier run wrote to the same output_dir"
        )
    # weights_only=False: the state holds the dataloader's and the RNGs' Python state.
    return torch.load(path, map_location="cpu", weights_only=False)


def get_rng_state() -> Dict[str, Any]:
    """The state of every random number generator a training step may use."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
