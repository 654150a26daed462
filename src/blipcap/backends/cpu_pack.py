"""CPU fast path: the model's linear layers as oneDNN matrix multiplications on pre-packed weights.

On the CPU, `torch.nn.functional.linear` goes through a BLAS sgemm that re-lays-out the weight on
every call; oneDNN's linear on a weight reordered once into its blocked layout runs the same
product 2-3.7x faster at fp32 and 1.2-1.4x at bf16 on this project's AVX-512 machine
(benchmarks/bench_kernels.py, BENCHMARKS.md). This is the primitive PyTorch's own inductor uses for frozen CPU models
(`torch.ops.mkldnn._linear_pointwise`), called here directly so eager mode gets it without a
compile step. The packed weight replaces the module's dense weight (no second copy is kept), so
a packed model is for inference only; export to ONNX loads an unpacked one.

If the running PyTorch lacks the oneDNN ops (a build without mkldnn), nothing is packed and the
model runs as built.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def packing_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(
        torch.backends.mkldnn.is_available()
        and ops is not None
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.dtype = weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())
        self.bias = None if linear.bias is None else linear.bias.detach().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, dtype={self.dtype}"


def pack_linears(model: nn.Module, release: Callable[[torch.Tensor], object] | None = None) -> int:
    """Replace every nn.Linear under `model` with a PackedLinear in place; returns how many.

    oneDNN's reorder runs on one core, so layers are packed on as many threads as torch uses for
    compute (2.3x faster on two threads than on one, benchmarks/bench_kernels.py), a few at a
    time: each dense weight is dropped as soon as its packed copy exists (`release(weight)` is
    called first, for a loader that can free the weight's memory-mapped pages), so packing never
    holds two copies of more than a few layers.
    """
    from concurrent.futures import ThreadPoolExecutor

    sites = [
        (parent, name)
        for parent in model.modules()
        if not isinstance(parent, nn.Linear)
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    workers = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(workers) as pool:
        for i in range(0, len(sites), workers):
            window = sites[i : i + workers]
            packed = list(pool.map(lambda site: PackedLinear(getattr(*site)), window))
            for (parent, name), new in zip(window, packed):
                old = getattr(parent, name)
                setattr(parent, name, new)
                if release is not None:
                    release(old.weight)
            del old, packed
    return len(sites)
