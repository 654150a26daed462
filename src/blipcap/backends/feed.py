"""Pixels from the host to the device for the torch backend on CUDA: through pinned memory, on a
copy stream of their own.

A plain ``torch.from_numpy(x).to("cuda")`` copies from pageable memory: the driver stages the bytes
through a pinned buffer of its own and the host waits until the copy is done, while the GPU does
nothing else for this process. Here the pixels are copied once on the host into a page-locked
staging slot of ours, then queued to the device with ``non_blocking=True`` on a separate stream;
the stream that runs the model waits for that copy on the device (an event), not on the host. So
a batch staged while the previous one is still in the model (``put`` from any thread, ``get`` on
the model's thread) is copied during that batch's kernels, not after them.

Pinning is slow (it locks pages in the kernel), so a slot is pinned once, sized to the largest batch
seen, and reused. Two slots: the host fills one while the other's copy may still be in flight,
and waits for a slot's previous copy (its event) only before overwriting it.

The same class runs without CUDA (no pinning, no streams, no events) so that its bookkeeping is
tested on the CPU; the torch backend uses it on CUDA only and keeps its plain copy on the CPU.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class InFlight:
    """A batch of pixels on its way to the device: ``get()`` it on the thread that runs the model."""

    tensor: torch.Tensor  # float32 (B, 3, H, W) on the device (being written by the copy stream on CUDA)
    copied: Any  # torch.cuda.Event recorded after the copy; None without CUDA
    dtype: torch.dtype  # what the model takes

    def get(self) -> torch.Tensor:
        """The pixels in the model's dtype, ordered after the copy on the current stream."""
        x = self.tensor
        if self.copied is not None:
            stream = torch.cuda.current_stream(x.device)
            stream.wait_event(self.copied)
            # x was allocated on the copy stream: without this the caching allocator could hand its
            # memory to the next copy while the model's kernels still read it
            x.record_stream(stream)
        return x.to(self.dtype)


class PinnedFeed:
    """Reused staging slots and a copy stream for one device. ``feed(pixels)`` = ``feed.put(pixels).get()``."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype, slots: int = 2):
        self.device, self.dtype = torch.device(device), dtype
        self.cuda = self.device.type == "cuda"
        self._slots: list[torch.Tensor | None] = [None] * max(1, slots)  # flat float32, pinned on CUDA
        self._copied: list[Any] = [None] * len(self._slots)  # the event after each slot's last copy
        self._next = 0
        self._largest = 0  # elements in the largest batch staged so far
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._lock = threading.RLock()  # put() may run on a helper thread while the model's thread runs
        self.allocations = 0  # staging buffers allocated so far (tests: they are reused, not made per batch)

    @property
    def stream(self) -> Any:
        """The copy stream (None without CUDA)."""
        return self._stream

    @property
    def pinned_memory(self) -> bool:
        """Whether the staging slots allocated so far are page-locked (they are on CUDA)."""
        return all(s.is_pinned() for s in self._slots if s is not None)

    def capacity(self) -> list[int]:
        """Elements each staging slot holds now (0: not allocated yet)."""
        return [0 if s is None else s.numel() for s in self._slots]

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        return self.put(pixels).get()

    def host(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of ``shape`` in the staging slot the next ``put`` uses: pixels written
        straight into it are not copied again on the host."""
        n = int(np.prod(shape))
        with self._lock, torch.inference_mode():
            return self._slot(self._next, n)[:n].view(shape).numpy()

    def fill(self, shape: tuple[int, ...], write: Callable[[np.ndarray], Any]) -> InFlight:
        """``write(buffer)`` into the next staging slot (float32 ``shape``), then ``put`` it: one host
        copy fewer than making the pixels elsewhere first; the slot is held by this thread throughout."""
        with self._lock:
            buffer = self.host(shape)
            write(buffer)
            return self.put(buffer)

    @torch.inference_mode()  # thread-local: the slots are inference tensors on every thread alike
    def put(self, pixels: np.ndarray) -> InFlight:
        """Copy ``pixels`` (float32 (B, 3, H, W)) into a staging slot and start the device copy."""
        src = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        with self._lock:
            i = self._next
            self._next = (i + 1) % len(self._slots)
            host = self._slot(i, src.numel())[: src.numel()].view(src.shape)
            if host.data_ptr() != src.data_ptr():  # not written in place through host()
                host.copy_(src)
            if not self.cuda:
                return InFlight(host.to(self.device, copy=True), None, self.dtype)
            with torch.cuda.stream(self._stream):
                x = host.to(self.device, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(self._stream)
            self._copied[i] = copied
            return InFlight(x, copied, self.dtype)

    def _slot(self, i: int, n: int) -> torch.Tensor:
        """Slot ``i`` with room for ``n`` elements, once its previous copy has finished reading it."""
        if self._copied[i] is not None:
            self._copied[i].synchronize()  # normally long done: two batches ago
            self._copied[i] = None
        self._largest = max(self._largest, n)
        slot = self._slots[i]
        if slot is None or slot.numel() < n:
            self._slots[i] = None  # drop the small one before pinning the larger
            # to the largest batch seen by any slot: a slot is re-pinned only when a batch beats that
            try:
                slot = torch.empty(self._largest, dtype=torch.float32, pin_memory=self.cuda)
            except RuntimeError as e:  # no page-locked memory to be had: pageable still copies right
                warnings.warn(f"blipcap: cannot pin {4 * self._largest} bytes for pixels ({e}); copying "
                              "from pageable memory", RuntimeWarning, stacklevel=2)
                slot = torch.empty(self._largest, dtype=torch.float32)
            self._slots[i] = slot
            self.allocations += 1
        return slot
