"""Process-group set-up and state gathering for the distributed recipe."""

from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from genft_tune.modules._method import is_adapter_key


def distributed_backend(device: torch.device) -> str:
    """The ``init_process_group`` backend for ``device``: NCCL for CUDA tensors (with
    gloo beside it for CPU-side collectives), gloo alone on CPU, so a run without a
    GPU works (e.g. ``tune run --nproc_per_node 2`` on a laptop or in CI)."""
    if device.type == "cuda":
        return "cuda:nccl,cpu:gloo"
    if device.type == "cpu":
        return "gloo"
    return f"{device.type}:{dist.Backend.default_device_backend_map.get(device.type, 'gloo')},cpu:gloo"


def init_distributed(device: torch.device) -> str:
    """Initialise the default process group for ``device`` (see :func:`distributed_backend`).

    Returns:
        str: the backend used.
    """
    backend = distributed_backend(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return backend


def gather_adapter_state_dict(
    model: nn.Module,
    is_rank_zero: bool,
    device: Optional[torch.device] = None,
    is_key: Callable[[str], bool] = is_adapter_key,
) -> Dict[str, torch.Tensor]:
    """Full (unsharded) adapter tensors on CPU, on rank 0 only; empty elsewhere.

    Only the adapter is all-gathered (each shared generator once plus every layer's
    specific factors), so frequent adapter checkpoints do not gather the frozen base.
    Every rank must call this (it is a collective).

    Args:
        model (nn.Module): the FSDP-sharded model.
        is_rank_zero (bool): whether this is rank 0 (the only one that keeps the result).
        device (Optional[torch.device]): the process group's device; CPU-offloaded
            shards are moved there for the all-gather.
        is_key (Callable[[str], bool]): which state-dict keys are the adapter's
            (default: every method's, :func:`is_adapter_key`; ``ModelAdapter.is_key`` for one).

    Returns:
        Dict[str, torch.Tensor]: adapter key to full CPU tensor (empty off rank 0).
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not is_key(key):
            continue
        if device is not None and value.is_cpu and device.type != "cpu":
            value = value.to(device)
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        if is_rank_zero:
            out[key] = value.detach().cpu()
    return out


def all_gather_objects(obj: Any) -> List[Any]:
    """``obj`` from every rank, in rank order (a collective)."""
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
