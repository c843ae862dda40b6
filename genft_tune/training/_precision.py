"""torchao low-precision switches for the recipes: low-bit / bf16 stochastic-rounding
optimizers and float8 training of the frozen base matmuls, each with a clear error
where the device cannot do it."""

import functools
from typing import Callable, List, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn
from torchao.dtypes.nf4tensor import NF4Tensor
from torchao.float8 import convert_to_float8_training, Float8LinearConfig
from torchtune.utils import get_logger

log = get_logger("INFO")

# torchao.optim optimizers, by what they need.
_TORCHAO_OPTIMIZERS = {
    "torchao.optim.AdamW8bit",
    "torchao.optim.AdamW4bit",
    "torchao.optim.AdamWFp8",
    "torchao.optim.Adam8bit",
    "torchao.optim.Adam4bit",
    "torchao.optim.AdamFp8",
    "torchao.optim._AdamW",
}
_FP8_OPTIMIZERS = {"torchao.optim.AdamWFp8", "torchao.optim.AdamFp8"}
FP8_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")


def supports_float8(device: torch.device) -> bool:
    """Whether ``device`` has float8 tensor cores (CUDA, compute capability >= 8.9)."""
    return (
        device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device) >= (8, 9)
    )


def _describe(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    return f"device {device.type!r}"


def validate_optimizer_config(
    cfg_optimizer: DictConfig, *, dtype: torch.dtype, device: torch.device
) -> None:
    """Check a torchao optimizer config against the run's dtype and device.

    ``torchao.optim.AdamW8bit`` / ``AdamW4bit`` run anywhere ``torch.compile`` does
    (they keep 8-/4-bit optimizer state); ``AdamWFp8`` needs float8 hardware;
    ``bf16_stochastic_round=True`` (``torchao.optim._AdamW`` or any of the above)
    only makes sense for bf16 parameters.

    Raises:
        ValueError: if ``bf16_stochastic_round`` is set with a non-bf16 ``dtype``.
        RuntimeError: if an fp8 optimizer is asked for on a device without float8.
    """
    component = cfg_optimizer.get("_component_", "")
    sr = bool(cfg_optimizer.get("bf16_stochastic_round", False))
    if sr and component not in _TORCHAO_OPTIMIZERS:
        raise ValueError(
            f"optimizer.bf16_stochastic_round is a torchao.optim option, but optimizer._component_ "
            f"is {component!r}; use one of {sorted(_TORCHAO_OPTIMIZERS)}"
        )
    if sr and dtype != torch.bfloat16:
        raise ValueError(
            "optimizer.bf16_stochastic_round=True rounds bf16 parameters stochastically; "
            f"it needs dtype: bf16, got {dtype}"
        )
    if component in _FP8_OPTIMIZERS and not supports_float8(device):
        raise RuntimeError(
            f"optimizer {component} keeps float8 state and needs a CUDA GPU with compute "
            f"capability 8.9+ (Ada, Hopper or newer); this run uses {_describe(device)}"
        )


@functools.lru_cache(maxsize=None)
def cpu_emulates_float8() -> bool:
    """Whether this torch build runs float8 matmuls (``torch._scaled_mm``) on the CPU.

    Recent CPU builds do, in software: as correct as on a GPU, slower than bf16. The
    recipes allow float8 training there so that the whole float8 setup can be tested
    without a GPU.
    """
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    one = torch.tensor(1.0)
    try:
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def validate_fp8_training(device: torch.device, recipe_name: Optional[str]) -> None:
    """Raise a clear error if float8 training cannot run on ``device``.

    It runs on CUDA GPUs with float8 tensor cores, and emulated on a CPU whose torch
    build has float8 matmuls (a warning says it is for testing: no speed-up).

    Raises:
        RuntimeError: if ``device`` can run no float8 matmul.
        ValueError: if ``recipe_name`` is not a torchao float8 recipe.
    """
    if recipe_name is not None and recipe_name not in FP8_RECIPES:
        raise ValueError(f"fp8_recipe_name must be one of {list(FP8_RECIPES)} or null, got {recipe_name!r}")
    if supports_float8(device):
        return
    if device.type == "cpu" and cpu_emulates_float8():
        log.warning(
            "enable_fp8_training=True on CPU: torch emulates the float8 matmuls in software, "
            "so this tests the setup but runs slower than bf16, not faster."
        )
        return
    raise RuntimeError(
        "enable_fp8_training=True needs a CUDA GPU with compute capability 8.9+ "
        f"(Ada, Hopper or newer), or a CPU whose torch build has float8 matmuls; this run "
        f"uses {_describe(device)}. Set enable_fp8_training: False."
    )


def _fp8_filter(exclude: Sequence[str]) -> Callable[[nn.Module, str], bool]:
    def keep(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear) or isinstance(module.weight, NF4Tensor):
            return False
        if any(fqn == e or fqn.endswith("." + e) for e in exclude):
            return False
        # float8 matmuls need both dimensions divisible by 16
        return module.in_features % 16 == 0 and module.out_features % 16 == 0

    return keep


def convert_frozen_linears_to_float8(
    model: nn.Module,
    *,
    recipe_name: Optional[str] = None,
    exclude: Sequence[str] = ("output",),
) -> List[str]:
    """Run the model's plain ``nn.Linear`` layers (the frozen base projections that
    GenFT does not adapt) in float8 with torchao's ``convert_to_float8_training``.

    GenFT layers are not ``nn.Linear`` and stay in the model dtype: their weight
    ``W0 + dW`` changes every step. Layers whose dimensions are not multiples of 16
    and those named in ``exclude`` (the vocabulary projection by default) are left alone.

    Args:
        model (nn.Module): the model, before sharding and compilation.
        recipe_name (Optional[str]): torchao float8 recipe, one of ``FP8_RECIPES``;
            None uses torchao's default (tensorwise scaling).
        exclude (Sequence[str]): module names (or name suffixes) to leave in high precision.

    Returns:
        List[str]: names of the converted layers.
    """
    config = (
        Float8LinearConfig.from_recipe_name(recipe_name) if recipe_name else Float8LinearConfig()
    )
    keep = _fp8_filter(exclude)
    converted = [name for name, m in model.named_modules() if keep(m, name)]
    if not converted:
        raise ValueError(
            "enable_fp8_training=True, but the model has no plain nn.Linear layer whose "
            "dimensions are multiples of 16 to run in float8"
        )
    convert_to_float8_training(model, module_filter_fn=keep, config=config)
    return converted


# float8 matmuls need every dimension, the number of tokens included, divisible by 16.
FP8_TOKEN_MULTIPLE = 16


class PadToMultiple:
    """Wrap a collate function so that ``tokens`` and ``labels`` (``[b, s]``) are
    right-padded along the sequence to a multiple of ``multiple`` (float8 training
    needs the number of tokens divisible by 16). Padded labels are ``ignore_idx``, so
    the loss and the token count are unchanged.

    Args:
        collate_fn (Callable): the batch collate function (e.g. ``padded_collate_sft``
            with its padding arguments bound).
        multiple (int): the sequence length is rounded up to a multiple of this.
        padding_idx (int): token id used to pad ``tokens``.
        ignore_idx (int): label used to pad ``labels``.
    """

    def __init__(self, collate_fn: Callable, multiple: int, *, padding_idx: int, ignore_idx: int):
        self.collate_fn = collate_fn
        self.multiple = multiple
        self.padding_idx = padding_idx
        self.ignore_idx = ignore_idx

    def __call__(self, batch):
        out = self.collate_fn(batch)
        seq_len = out["tokens"].shape[-1]
        extra = -seq_len % self.multiple
        if extra:
            out["tokens"] = torch.nn.functional.pad(out["tokens"], (0, extra), value=self.padding_idx)
            out["labels"] = torch.nn.functional.pad(out["labels"], (0, extra), value=self.ignore_idx)
        return out
