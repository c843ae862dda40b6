# Copyright (c) genft-tune authors.
# All rights reserved.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""How many times one training step reads or writes an ``(out, in)``-sized tensor.

On a GPU the dense GenFT generator is memory-bound: its matmuls have inner dimension
``a + b`` (36 by default), so each of its steps costs about one pass over an
``out x in`` matrix. This script counts those passes per adapted layer for one
forward + backward, op by op (a ``TorchDispatchMode`` sums the sizes of every
``(out, in)``-sized input and output of each aten op), for each GenFT path and for
torchtune's ``LoRALinear`` (which reads ``W0`` in forward and again for the input's
gradient: 2 passes). Multiply by ``out * in * bytes`` and divide by the memory
bandwidth for a lower bound on the generator's time. Runs on CPU in seconds; the counts
do not depend on the device.

``genft_dense_fused`` (the Triton kernels of ``genft_tune/modules/genft/_fused.py``) runs
here in Triton's interpreter: its torch ops are counted as above, and each kernel launch
adds the passes it makes by construction (``KERNEL_PASSES``: the interpreter's own
host copies are not counted), so its row is measured launches times analytic passes.

Example::

    python benchmarks/generator_passes.py --dim 256 --tokens 64
"""

import argparse
import collections
import contextlib
import os
import sys
from typing import Dict, Optional, Sequence

import torch
from torch.utils._python_dispatch import _disable_current_modes, TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torchtune.modules.peft import LoRALinear

from genft_tune.modules import GenFTConfig, GenFTGenerators, genft_linear
from genft_tune.modules.genft import _fused

# metadata-only ops and allocations: no data moves
_VIEWS = {torch.ops.aten.t.default, torch.ops.aten.view.default, torch.ops.aten.detach.default,
          torch.ops.aten._unsafe_view.default, torch.ops.aten.transpose.int, torch.ops.aten.alias.default,
          torch.ops.aten.empty_like.default, torch.ops.aten.empty.memory_format}

# (out, in)-sized passes of one launch of each fused kernel, by construction
KERNEL_PASSES = {
    "merged_weight": 2,  # reads W0, writes W
    "merged_weight_dd1": 2,  # the same, and dD1 = dpre1.T @ W0 from that read
    "row_to_h2": 0,  # F_row lives in registers only
    "stage_backward": 1,  # reads G = dLoss/dF once
    "row_backward": 0,  # dF_row = D2.T @ dpre2 and F_row rebuilt in registers
}


class WeightPasses(TorchDispatchMode):
    """Counts, per aten op, the ``numel / (out * in)`` of every 2-D tensor of at least
    ``out * in`` elements among its inputs and outputs."""

    def __init__(self, weight_numel: int):
        super().__init__()
        self.weight_numel = weight_numel
        self.by_op: Dict[str, float] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func not in _VIEWS:
            tensors, _ = tree_flatten((args, kwargs or {}, out))
            n = sum(t.numel() for t in tensors
                    if isinstance(t, torch.Tensor) and t.dim() == 2 and t.numel() >= self.weight_numel)
            if n:
                self.by_op[func.__name__] += n / self.weight_numel
        return out

    @property
    def total(self) -> float:
        return sum(self.by_op.values())


@contextlib.contextmanager
def _fused_kernels_counted(mode: WeightPasses):
    """Run the fused kernels in Triton's interpreter, unseen by ``mode``, and add each
    launch's :data:`KERNEL_PASSES` to it."""
    launch, old_env = _fused._launch, os.environ.get("TRITON_INTERPRET")

    def counted(name, *args, **kwargs):
        mode.by_op[f"kernel {name}"] += KERNEL_PASSES[name]
        with _disable_current_modes():
            return launch(name, *args, **kwargs)

    _fused._launch, os.environ["TRITON_INTERPRET"] = counted, "1"
    try:
        yield
    finally:
        _fused._launch = launch
        if old_env is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old_env


def count(layer: torch.nn.Module, dim: int, tokens: int) -> WeightPasses:
    x = torch.randn(tokens, dim, requires_grad=True)
    with WeightPasses(dim * dim) as mode, _fused_kernels_counted(mode):
        layer(x).square().sum().backward()
    return mode


def variants(dim: int, a: int, b: int) -> Dict[str, torch.nn.Module]:
    def genft(**kw):
        config = GenFTConfig(shared_dim=a, specific_dim=b, zero_init=False, **kw)
        return genft_linear(dim, dim, generators=GenFTGenerators(config))

    lora = LoRALinear(dim, dim, rank=16, alpha=32.0)
    lora.weight.requires_grad_(False)
    return {
        "lora_r16": lora,
        "genft_dense": genft(recompute=False, fused="never"),
        "genft_dense_recompute": genft(recompute=True, fused="never"),
        "genft_dense_fused": genft(fused="always"),
        "genft_lowrank": genft(act_out="identity"),
    }


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=256, help="square weight side (counts do not depend on it)")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--shared-dim", type=int, default=32)
    p.add_argument("--specific-dim", type=int, default=4)
    args = p.parse_args(argv)
    if args.tokens * args.dim >= args.dim * args.dim:
        p.error("--tokens must be smaller than --dim, so activations are not counted as weight-sized")
    torch.manual_seed(0)
    rows = {name: count(layer, args.dim, args.tokens) for name, layer in variants(args.dim, args.shared_dim, args.specific_dim).items()}
    print(f"(out, in)-sized passes per adapted layer, forward + backward (a={args.shared_dim}, b={args.specific_dim}, gelu/gelu)")
    print("| variant | passes | by op |")
    print("|---|---|---|")
    for name, mode in rows.items():
        ops = ", ".join(f"{op} {n:g}" for op, n in sorted(mode.by_op.items(), key=lambda kv: -kv[1]))
        print(f"| {name} | {mode.total:g} | {ops} |")
    return {name: {"passes": mode.total, "by_op": dict(mode.by_op)} for name, mode in rows.items()}


if __name__ == "__main__":
    main(sys.argv[1:])
