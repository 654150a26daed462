"""The handful of array operations the search needs, for torch tensors and for numpy arrays.

decoding.py is written once against this interface, so the PyTorch backend decodes on its own
device (no per-step copy of the vocabulary distribution to the host) and the ONNX Runtime backend
decodes in numpy without torch installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class NumpyOps:
    """Array ops on numpy arrays (the torch-free backends)."""

    sync_every = 1  # the search's stopping checks cost nothing on the host: read them every step

    def __init__(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def asarray(self, x: Any, dtype: str = "int64") -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def full(self, shape: tuple[int, ...], value: float | int | bool, dtype: str) -> np.ndarray:
        return np.full(shape, value, dtype=dtype)

    def arange(self, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def log_softmax(self, x: np.ndarray) -> np.ndarray:
        m = x.max(axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        z = x - m
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    def softmax(self, x: np.ndarray) -> np.ndarray:
        return np.exp(self.log_softmax(x))

    def topk(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # stable descending order: equal values keep index order (torch.topk agrees wherever values differ)
        n = x.shape[-1]
        if 4 * k >= n:
            idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
            return np.take_along_axis(x, idx, axis=-1), idx
        # Beam search asks for 2 x beams of beams x vocab scores every step: a full sort of each row
        # costs tens of ms there, selecting by the k-th largest value ~2 ms
        # (benchmarks/bench_kernels.py). The selection is exactly the stable sort's first k: every
        # value above the k-th largest, then the lowest-indexed values equal to it.
        rows = x.reshape(-1, n)
        kth = np.partition(rows, n - k, axis=-1)[:, n - k, None]
        chosen = rows >= kth
        if (chosen.sum(axis=-1) != k).any():  # ties at the k-th value: keep the lowest indices
            above = rows > kth
            equal = chosen & ~above
            room = k - above.sum(axis=-1, keepdims=True)
            chosen = above | (equal & (np.cumsum(equal, axis=-1) <= room))
        idx = np.nonzero(chosen)[1].reshape(-1, k)  # exactly k per row, in index order
        vals = np.take_along_axis(rows, idx, axis=-1)
        order = np.argsort(-vals, axis=-1, kind="stable")  # index order breaks ties
        idx = np.take_along_axis(idx, order, axis=-1)
        vals = np.take_along_axis(vals, order, axis=-1)
        return vals.reshape(x.shape[:-1] + (k,)), idx.reshape(x.shape[:-1] + (k,))

    def argmax(self, x: np.ndarray) -> np.ndarray:
        return x.argmax(axis=-1)

    def gather(self, x: np.ndarray, index: np.ndarray) -> np.ndarray:
        """x[i, index[i, j], ...] along dim 1."""
        index = index.reshape(index.shape + (1,) * (x.ndim - index.ndim))
        return np.take_along_axis(x, index, axis=1)

    def scatter(self, x: np.ndarray, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = x.copy()
        np.put_along_axis(out, index, values, axis=1)
        return out

    def where(self, cond: np.ndarray, a: Any, b: Any) -> np.ndarray:
        return np.where(cond, a, b)

    def cat(self, xs: list[np.ndarray], dim: int) -> np.ndarray:
        return np.concatenate(xs, axis=dim)

    def sort_desc(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.argsort(-x, axis=-1, kind="stable")
        return np.take_along_axis(x, idx, axis=-1), idx

    def cumsum(self, x: np.ndarray) -> np.ndarray:
        return np.cumsum(x, axis=-1)

    def multinomial(self, probs: np.ndarray) -> np.ndarray:
        probs = probs / probs.sum(axis=-1, keepdims=True)
        u = self.rng.random((probs.shape[0], 1))
        return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)

    def all_last(self, x: np.ndarray) -> np.ndarray:
        return x.all(axis=-1, keepdims=True)

    def any_last(self, x: np.ndarray) -> np.ndarray:
        return x.any(axis=-1, keepdims=True)

    def min_last(self, x: np.ndarray) -> np.ndarray:
        return x.min(axis=-1, keepdims=True)

    def any(self, x: np.ndarray) -> bool:
        return bool(x.any())

    def all(self, x: np.ndarray) -> bool:
        return bool(x.all())


class TorchOps:
    """Array ops on torch tensors, kept on their device."""

    def __init__(self, device: Any, seed: int | None = None, sync_every: int | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        # The search reads its stopping checks back every `sync_every` steps (decoding.py). On CUDA
        # each read stalls the host until the device catches up, which costs more than the up to
        # k - 1 extra steps; on the CPU a read is free and an extra step is not.
        self.sync_every = sync_every or (4 if self.device.type == "cuda" else 1)
        self.generator = torch.Generator(device=self.device)
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def asarray(self, x: Any, dtype: str = "int64"):
        return self.torch.as_tensor(np.asarray(x), dtype=getattr(self.torch, dtype), device=self.device)

    def full(self, shape, value, dtype: str):
        return self.torch.full(shape, value, dtype=getattr(self.torch, dtype), device=self.device)

    def arange(self, n: int):
        return self.torch.arange(n, device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        return x.cpu().numpy()

    def log_softmax(self, x):
        return self.torch.log_softmax(x, dim=-1)

    def softmax(self, x):
        return self.torch.softmax(x, dim=-1)

    def topk(self, x, k: int):
        values, index = self.torch.topk(x, k, dim=-1)
        return values, index

    def argmax(self, x):
        return x.argmax(dim=-1)

    def gather(self, x, index):
        if x.ndim > index.ndim:
            index = index.reshape(index.shape + (1,) * (x.ndim - index.ndim)).expand(*index.shape, *x.shape[2:])
        return self.torch.gather(x, 1, index)

    def scatter(self, x, index, values):
        return x.scatter(1, index, values)

    def where(self, cond, a, b):
        return self.torch.where(cond, a, b)

    def cat(self, xs, dim: int):
        return self.torch.cat(xs, dim=dim)

    def sort_desc(self, x):
        return self.torch.sort(x, dim=-1, descending=True, stable=True)

    def cumsum(self, x):
        return self.torch.cumsum(x, dim=-1)

    def multinomial(self, probs):
        return self.torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    def all_last(self, x):
        return x.all(dim=-1, keepdim=True)

    def any_last(self, x):
        return x.any(dim=-1, keepdim=True)

    def min_last(self, x):
        return x.amin(dim=-1, keepdim=True)

    def any(self, x) -> bool:
        return bool(x.any())

    def all(self, x) -> bool:
        return bool(x.all())
