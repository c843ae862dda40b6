"""Learning-rate schedules that torchtune 0.6.1 does not ship."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def get_linear_schedule_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup from 0 to ``lr`` over ``num_warmup_steps``, then linear decay to 0 at
    ``num_training_steps``: the Hugging Face ``Trainer``'s default schedule (which the
    GenFT authors' LLaMA runs used), with the signature of torchtune's
    ``get_cosine_schedule_with_warmup``.

    Args:
        optimizer (Optimizer): the optimizer.
        num_warmup_steps (int): steps of the warmup.
        num_training_steps (int): total steps.
        last_epoch (int): index of the last step when resuming. Default: -1

    Returns:
        LambdaLR: the schedule.
    """

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return LambdaLR(optimizer, lr_lambda, last_epoch)
