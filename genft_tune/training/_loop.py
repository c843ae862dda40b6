"""Pieces of the two LLM recipes' loops that torchtune's own LoRA pair does not share
but ours do alike: the batch collate (with float8's token padding), the validation
loss, and the recipe-state dict a resumed run reads."""

from functools import partial
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from torchtune import training, utils
from torchtune.data import padded_collate_packed

from genft_tune.training._precision import FP8_TOKEN_MULTIPLE, PadToMultiple
from genft_tune.training._state import ADAPTER_DIR_KEY, ADAPTER_CONFIG_KEY, STEPS_IN_EPOCH_KEY, WORLD_SIZE_KEY


def sft_collate(collate_fn: Callable, *, packed: bool, tokenizer, ignore_index: int, fp8: bool) -> Callable:
    """The collate of a (packed or padded) SFT data set; with ``fp8``, every batch's
    token count is a multiple of 16 (float8 matmuls need it).

    Raises:
        ValueError: for ``fp8`` with a packed data set whose ``max_seq_len`` is not a
            multiple of 16.
    """
    if packed:
        if fp8:
            max_seq_len = getattr(tokenizer, "max_seq_len", None)
            if max_seq_len is None or max_seq_len % FP8_TOKEN_MULTIPLE:
                raise ValueError(
                    "enable_fp8_training with a packed dataset needs tokenizer.max_seq_len "
                    f"to be a multiple of {FP8_TOKEN_MULTIPLE}, got {max_seq_len}"
                )
        return padded_collate_packed
    collate = partial(collate_fn, padding_idx=tokenizer.pad_id, ignore_idx=ignore_index)
    if fp8:
        collate = PadToMultiple(collate, FP8_TOKEN_MULTIPLE, padding_idx=tokenizer.pad_id, ignore_idx=ignore_index)
    return collate


@torch.no_grad()
def validation_loss(
    *,
    model: torch.nn.Module,
    adapter,
    batches: Iterable[Dict[str, torch.Tensor]],
    loss_step: Callable[[Dict[str, torch.Tensor]], torch.Tensor],
    ignore_index: int,
    device: torch.device,
    max_steps: Optional[int] = None,
    all_reduce: bool = False,
) -> float:
    """Token-normalised loss over ``batches`` (at most ``max_steps``), in eval mode with
    the adapter's caches cleared before and after; summed over ranks with ``all_reduce``."""
    model.eval()
    adapter.clear_caches(model)
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    total_tokens = torch.zeros((), device=device, dtype=torch.int64)
    for idx, batch in enumerate(batches):
        if max_steps is not None and idx >= max_steps:
            break
        utils.batch_to_device(batch, device)
        num_tokens = (batch["labels"] != ignore_index).sum()
        total_loss += loss_step(batch).double() * num_tokens
        total_tokens += num_tokens
    if all_reduce:
        torch.distributed.all_reduce(total_loss)
        torch.distributed.all_reduce(total_tokens)
    model.train()
    adapter.clear_caches(model)
    return (total_loss / total_tokens.clamp(min=1)).item()


def recipe_state_dict(
    recipe: Any,
    *,
    optimizer_state: Dict[str, Any],
    rng_state: Any,
    adapter_dir_name: str,
    world_size: int,
    dataloader_state: Optional[Any] = None,
) -> Dict[str, Any]:
    """What ``save_recipe_state`` writes: the progress counters of ``recipe`` (``seed``,
    ``epochs_run``, ``total_epochs``, ``max_steps_per_epoch``, ``global_step``,
    ``_steps_in_epoch``), the optimizer and RNG states, the adapter's folder and config,
    the world size and (mid-epoch) the data loader's position."""
    state = {
        training.SEED_KEY: recipe.seed,
        training.EPOCHS_KEY: recipe.epochs_run,
        training.TOTAL_EPOCHS_KEY: recipe.total_epochs,
        training.MAX_STEPS_KEY: recipe.max_steps_per_epoch,
        training.STEPS_KEY: recipe.global_step,
        STEPS_IN_EPOCH_KEY: recipe._steps_in_epoch,
        training.OPT_KEY: optimizer_state,
        training.RNG_KEY: rng_state,
        ADAPTER_DIR_KEY: adapter_dir_name,
        ADAPTER_CONFIG_KEY: recipe._adapter.config.to_dict(),
        WORLD_SIZE_KEY: world_size,
    }
    if dataloader_state is not None:
        state[training.DATALOADER_KEY] = dataloader_state
    return state


__all__ = ["recipe_state_dict", "sft_collate", "validation_loss"]
