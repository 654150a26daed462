"""The torch decoder step with every shape fixed, so that CUDA can capture it once as a graph and
replay it: one host launch per step instead of ~230 kernel launches from Python.

A bucket (`StaticBuffers`) holds the state of one (rows, image memory shape, cache length) shape:
the self-attention cache and its spare for the beam reorder, a copy of the image keys/values, the
rows' next token, position, cache slot and attention mask, all as tensors that the step updates in
place. Batches of the same shape reuse the bucket and its graphs (one per cache buffer, since the
reorder swaps the two). On the CPU the same step runs eagerly; the tests use that to show it gives
the dynamic path's tokens (TorchSession stays the CPU default: it attends over the filled slots
only, which is cheaper there).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch


class StaticBuffers:
    """Fixed-shape decoding state for one bucket, and the steps captured over it."""

    def __init__(self, model, rows: int, memory: torch.Tensor, length: int, dtype: torch.dtype, graphs: bool):
        t = model.dims.text
        dev = memory.device
        self.model, self.graphs_on = model, graphs and dev.type == "cuda"
        self.cache = torch.zeros((t.layers, 2, rows, t.heads, length, t.hidden // t.heads), dtype=dtype, device=dev)
        self.spare: torch.Tensor | None = None  # the beam reorder's second buffer
        self.cross = torch.empty_like(memory)
        self.tokens = torch.zeros((rows, 1), dtype=torch.int64, device=dev)
        self.positions = torch.zeros((rows, 1), dtype=torch.int64, device=dev)
        self.slot = torch.zeros(1, dtype=torch.int64, device=dev)
        self.attend = torch.zeros((rows, length), dtype=torch.bool, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # cache buffer -> graph, output
        self.owner: weakref.ref | None = None
        self.uses = 0  # batches decoded over this bucket, the current one included

    @torch.inference_mode()
    def eager_step(self) -> torch.Tensor:
        self.attend.index_fill_(1, self.slot, True)
        logits = self.model.text.step_static(self.tokens, self.positions, self.cache, self.slot,
                                             self.attend[:, None, None], self.cross)
        self.slot.add_(1)
        self.positions.add_(1)
        return logits.float()

    def step(self) -> torch.Tensor:
        """Logits of the next step. Under a graph they land in the same tensor every step: valid until
        the next call (the search reads them before it steps again)."""
        # A shape's first batch runs eagerly: capturing costs a device synchronisation, a garbage
        # collection and tens of milliseconds, which a one-off shape (a server's odd batch) never
        # earns back; from its second batch on, the shape is captured and replayed.
        if not self.graphs_on or self.uses < 2:
            return self.eager_step()
        found = self.graphs.get(self.cache.data_ptr())
        if found is not None:
            found[0].replay()
            return found[1]
        # First step on this buffer: run it eagerly on a side stream (the warm-up capture wants),
        # then capture the same step; capturing records kernels without running them, so the
        # in-place updates of slot and positions happen once.
        main = torch.cuda.current_stream(self.cache.device)
        side = torch.cuda.Stream(self.cache.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.eager_step()
        main.wait_stream(side)
        out.record_stream(main)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA work (none today) must not break the capture
        with torch.inference_mode(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            captured = self.eager_step()
        self.graphs[self.cache.data_ptr()] = (graph, captured)
        return out

    def reorder(self, rows: torch.Tensor) -> None:
        # the spare is made once: each of the two buffers has its graph, found again by its address
        self.cache, self.spare = gather_rows(self.cache, self.spare, rows)


def gather_rows(cache: torch.Tensor, spare: torch.Tensor | None,
                rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The beam reorder of a (layers, 2, rows, ...) cache: whole rows gathered into the second buffer
    (made on first use), which swaps in; returns (cache, spare). Beams of one image share positions
    and padding, so only the cache moves. Whole rows are contiguous blocks: on the CPU ~2.4x faster
    than moving the strided filled part in place (benchmarks/bench_kernels.py), and reusing the
    buffer avoids page-faulting a fresh allocation every step."""
    if spare is None:
        spare = torch.empty_like(cache)
    torch.index_select(cache, 2, rows, out=spare)
    return spare, cache


class BucketPool:
    """The backend's buckets by shape, the most recently used kept (each holds a cache and a copy of
    the image memory); a bucket in use by a live session is never handed to a second one."""

    def __init__(self, keep: int = 8):
        self.keep, self._buckets, self._lock = keep, OrderedDict(), threading.Lock()

    def __iter__(self):
        return iter(list(self._buckets.values()))

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, session, model, rows: int, memory: torch.Tensor, length: int, dtype, graphs: bool) -> StaticBuffers:
        key = (rows, tuple(memory.shape), length, dtype)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None or (bucket.owner is not None and bucket.owner() is not None):
                bucket = StaticBuffers(model, rows, memory, length, dtype, graphs)
                self._buckets[key] = bucket  # a busy one is dropped from the pool, not from its session
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.keep:
                self._buckets.popitem(last=False)
            bucket.owner = weakref.ref(session)
            bucket.uses += 1
            return bucket


class StaticSession:
    """One batch decoded over a bucket: the prompts prefilled as TorchSession does, then fixed-shape
    steps (replayed CUDA graphs where the bucket captures them)."""

    def __init__(self, backend, memory: torch.Tensor, group: int, prompts: np.ndarray, valid: np.ndarray,
                 max_new: int):
        self.ops = backend.ops
        model, dev = backend.model, backend.device
        rows, p = prompts.shape
        length = model.dims.text.check_length(p, max_new)
        self.buffers = b = backend.buckets.take(self, model, rows, memory, length, backend.dtype,
                                                backend.cuda_graphs)
        with torch.inference_mode():
            b.cross.copy_(memory)
            b.cache.zero_()  # slots not yet filled are masked, but must hold finite numbers
            ok = torch.from_numpy(valid).to(dev)
            n_pad = (~ok).sum(dim=1)
            positions = torch.arange(p, device=dev)[None, :] - n_pad[:, None]
            causal = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
            mask = (causal[None] & ok[:, None, :]) | torch.eye(p, dtype=torch.bool, device=dev)[None]
            tokens = torch.from_numpy(prompts).to(dev)
            self.first_logits = model.text(tokens, positions.clamp(min=0), b.cache, 0, mask[:, None], b.cross).float()
            b.attend.zero_()
            b.attend[:, :p] = ok
            b.slot.fill_(p)
            b.positions.copy_(positions[:, -1:] + 1)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.buffers.tokens.copy_(tokens.reshape(-1, 1))
        return self.buffers.step()

    def reorder(self, rows: torch.Tensor) -> None:
        self.buffers.reorder(rows)
