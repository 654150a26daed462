"""The dynamic micro-batcher: images from concurrent requests become one model call.

Requests hand in decoded images with their options; a dispatcher task on the event loop waits
until the oldest waiting image has `max_batch_size` compatible companions or has waited
`max_wait_s`, then runs them as one batch on the single model thread. While the model works,
new images queue up, so the busier the service, the larger its batches. Images are batched only
with images whose options share a key (the app makes the key from the options), oldest first.

Memory is bounded: at most `max_queue` images are admitted (reserved while they decode, then
queued); `reserve` raises `QueueFull` beyond that, before any decoding is done.

Given `stage` (the app passes `Captioner.stage` where the model overlaps its input: torch on CUDA),
the next batch is taken while the model runs the current one, if it is already full (or the
service is draining), and its pixels are made and copied to the device meanwhile: under load the
model never waits for them. A batch that is not full is not taken early, so batches are as large
as without staging.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

from .metrics import Metrics

RunBatch = Callable[[Any, list, Any], list]  # (images or what `stage` made of them, prompts, options) -> results
Stage = Callable[[list], Any]  # images -> a batch whose model input is being prepared (Captioner.stage)


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"queue full ({waiting} images admitted); retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)  # identity equality: deque.remove must find this very item
class _Queued:
    image: Any
    prompt: str | None
    options: Any
    key: Hashable  # batched only with items of the same key
    future: asyncio.Future
    enqueued: float


class Reservation:
    """Queue slots held for one request's images while they decode."""

    def __init__(self, batcher: "Batcher", n: int):
        self._batcher, self.n = batcher, n

    def release(self) -> None:
        self._batcher._held -= self.n
        self.n = 0


class Batcher:
    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, max_wait_s: float, max_queue: int,
                 metrics: Metrics | None = None, stage: Stage | None = None):
        self._run_batch, self._stage = run_batch, stage
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self.metrics = metrics or Metrics()
        self._queue: collections.deque[_Queued] = collections.deque()
        self._held = 0  # reserved + queued images
        self._wake = asyncio.Event()
        self._draining = False
        self._busy = False
        self._ahead: tuple[list[_Queued], Any] | None = None  # taken and being staged while the model runs
        self._batch_s = 0.0  # moving average of model time per batch, for Retry-After
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Images queued for the model (not counting the batch it is running)."""
        return len(self._queue)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="blipcap-model")
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def run_in_model_thread(self, fn: Callable, *args: Any) -> Any:
        """Run fn on the model thread (warm-up), never concurrently with a batch."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def drain(self) -> None:
        """Stop waiting for batches to fill: run what is queued as soon as the model is free."""
        self._draining = True
        self._wake.set()

    async def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued images (up to `timeout` s), then stop the dispatcher and the thread."""
        self.drain()
        deadline = time.monotonic() + timeout
        while (self._queue or self._busy or self._ahead) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in [*self._queue, *(self._ahead[0] if self._ahead else [])]:
            item.future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    # --- admission -----------------------------------------------------------------------------------

    def reserve(self, n: int) -> Reservation:
        if self._held + n > self.max_queue:
            raise QueueFull(self._held, self.retry_after())
        self._held += n
        return Reservation(self, n)

    def retry_after(self) -> int:
        """Seconds until the current backlog has likely cleared (at least 1)."""
        batches = math.ceil((self._held + 1) / self.max_batch_size)
        return max(1, math.ceil(batches * self._batch_s))

    def submit(self, reservation: Reservation, images: Sequence[Any], prompts: Sequence[str | None],
               options: Any, key: Hashable) -> list[asyncio.Future]:
        """Queue images on slots of `reservation`; one future per image, resolved with its result."""
        if len(images) > reservation.n:
            raise ValueError("more images than reserved slots")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for image, prompt in zip(images, prompts):
            item = _Queued(image, prompt, options, key, loop.create_future(), now)
            item.future.add_done_callback(lambda f, item=item: self._forget(item) if f.cancelled() else None)
            self._queue.append(item)
            futures.append(item.future)
        reservation.n -= len(futures)  # those slots now belong to queued items
        self._wake.set()
        return futures

    def _forget(self, item: _Queued) -> None:
        """A cancelled (timed-out) item leaves the queue at once, freeing its slot."""
        try:
            self._queue.remove(item)
        except ValueError:
            return  # already taken into a batch
        self._held -= 1

    # --- dispatch ------------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            if self._ahead is not None:  # taken full while the model ran the last batch: no waiting
                (batch, staged), self._ahead = self._ahead, None
                await self._execute(batch, staged)
                continue
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            head = self._queue[0]
            deadline = head.enqueued + self.max_wait_s
            while not self._draining and self._count(head.key) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            if not self._queue or self._queue[0] is not head:
                continue  # the head was cancelled while we waited
            await self._execute(self._take(head.key))

    def _count(self, key: Hashable) -> int:
        return sum(1 for item in self._queue if item.key == key)

    def _take(self, key: Hashable) -> list[_Queued]:
        batch, rest = [], collections.deque()
        for item in self._queue:
            (batch if item.key == key and len(batch) < self.max_batch_size else rest).append(item)
        self._queue = rest
        self._held -= len(batch)
        return batch

    async def _execute(self, batch: list[_Queued], staged: Any = None) -> None:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        for item in batch:
            self.metrics.queue_seconds.observe(start - item.enqueued)
        images, prompts = [item.image for item in batch], [item.prompt for item in batch]
        self._busy = True
        try:
            call = loop.run_in_executor(self._executor, self._run_batch, images if staged is None else staged,
                                        prompts, batch[0].options)
            if self._stage is not None:
                await self._take_ahead(call)
            results: list = await call
        except Exception:
            # Something in this batch broke the model call: run each image alone so that only the
            # culprit's request fails, never its batchmates'.
            results = await loop.run_in_executor(self._executor, self._one_by_one, batch)
        finally:
            self._busy = False
        elapsed = time.monotonic() - start
        self._batch_s = elapsed if not self._batch_s else 0.8 * self._batch_s + 0.2 * elapsed
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_seconds.observe(elapsed)
        for item, result in zip(batch, results):
            if item.future.done():  # cancelled: its request timed out
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    async def _take_ahead(self, call: asyncio.Future) -> None:
        """While the model runs `call`: once a full batch is queued (any batch, when draining), take
        it and start staging it, for _dispatch to run next."""
        while not call.done() and self._ahead is None:
            self._wake.clear()  # before looking: a submit from now on wakes us
            head = self._queue[0] if self._queue else None
            if head is not None and (self._draining or self._count(head.key) >= self.max_batch_size):
                batch = self._take(head.key)
                try:
                    staged = self._stage([item.image for item in batch])
                except Exception:  # the batch then runs as it came, where its errors are handled as always
                    staged = None
                self._ahead = (batch, staged)
                return
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({call, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def _one_by_one(self, batch: list[_Queued]) -> list:
        out: list = []
        for item in batch:
            try:
                out.extend(self._run_batch([item.image], [item.prompt], item.options))
            except Exception as exc:  # handed to that item's request
                out.append(exc)
        return out
