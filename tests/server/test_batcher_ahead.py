"""The micro-batcher taking the next batch ahead (issue 17): while the model runs a batch, the next
one is taken once it is full and its input staged, so a busy GPU never waits for pixels; a batch
that is not full waits as before. The model and the staging are stand-ins that record what they get."""

from __future__ import annotations

import asyncio
import threading
import time

from blipcap.server.batcher import Batcher


class Staged:
    def __init__(self, images):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)


class Model:
    """run_batch and stage for the batcher; the model waits on a gate the test opens."""

    def __init__(self, stage_fails: bool = False):
        self.gate, self.events, self.stage_fails = threading.Event(), [], stage_fails

    def stage(self, images):
        self.events.append(("stage", list(images)))
        if self.stage_fails:
            raise RuntimeError("staging broke")
        return Staged(images)

    def run(self, images, prompts, options):
        if not self.gate.wait(20):
            raise RuntimeError("the test never opened the gate")
        staged = isinstance(images, Staged)
        got = images.images if staged else list(images)
        self.events.append(("run", "staged" if staged else "plain", got))
        return [f"caption of {x}" for x in got]


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the batcher never got there")
        await asyncio.sleep(0.005)


async def started(model: Model, **kwargs) -> Batcher:
    settings = dict(max_batch_size=2, max_wait_s=5.0, max_queue=16, stage=model.stage) | kwargs
    batcher = Batcher(model.run, **settings)
    await batcher.start()
    return batcher


def submit(batcher: Batcher, images: list, key="k") -> list[asyncio.Future]:
    return batcher.submit(batcher.reserve(len(images)), images, [None] * len(images), None, key)


async def running_first(model: Model, **kwargs) -> tuple[Batcher, list[asyncio.Future]]:
    """A batcher whose model is busy with the full batch of a and b, waiting at the closed gate."""
    batcher = await started(model, **kwargs)
    first = submit(batcher, ["a", "b"])
    await until(lambda: batcher._busy)
    return batcher, first


def test_a_full_batch_is_staged_while_the_model_runs_the_one_before():
    async def scenario():
        model = Model()
        b, first = await running_first(model)
        second = submit(b, ["c", "d"])
        await until(lambda: model.events)
        assert model.events == [("stage", ["c", "d"])]  # while a and b are still in the model
        model.gate.set()
        assert await asyncio.gather(*first, *second) == [f"caption of {x}" for x in "abcd"]
        assert model.events[1:] == [("run", "plain", ["a", "b"]), ("run", "staged", ["c", "d"])]
        assert b._held == 0 and b.depth == 0
        await b.stop()
    asyncio.run(scenario())


def test_a_batch_that_is_not_full_is_not_taken_early_and_grows_as_before():
    async def scenario():
        model = Model()
        b, first = await running_first(model)
        c = submit(b, ["c"])
        await asyncio.sleep(0.2)  # time enough to take it, were it taken when not full
        assert model.events == [] and b.depth == 1
        d = submit(b, ["d"])  # now full
        await until(lambda: model.events)
        assert model.events == [("stage", ["c", "d"])]
        model.gate.set()
        assert await asyncio.gather(*first, *c, *d) == [f"caption of {x}" for x in "abcd"]
        await b.stop()
    asyncio.run(scenario())


def test_a_lone_image_after_the_model_is_free_runs_unstaged_after_its_wait():
    async def scenario():
        model = Model()
        b, first = await running_first(model, max_wait_s=0.05)
        lone = submit(b, ["c"])
        await asyncio.sleep(0.1)
        model.gate.set()
        assert await asyncio.gather(*first, *lone) == [f"caption of {x}" for x in "abc"]
        assert model.events == [("run", "plain", ["a", "b"]), ("run", "plain", ["c"])]
        await b.stop()
    asyncio.run(scenario())


def test_staging_that_breaks_leaves_the_batch_to_run_as_it_came():
    async def scenario():
        model = Model(stage_fails=True)
        b, first = await running_first(model)
        second = submit(b, ["c", "d"])
        await until(lambda: model.events)
        model.gate.set()
        assert await asyncio.gather(*first, *second) == [f"caption of {x}" for x in "abcd"]
        assert model.events[1:] == [("run", "plain", ["a", "b"]), ("run", "plain", ["c", "d"])]
        await b.stop()
    asyncio.run(scenario())


def test_a_request_gone_from_a_staged_batch_leaves_its_batchmates_their_results():
    async def scenario():
        model = Model()
        b, first = await running_first(model)
        c, d = submit(b, ["c", "d"])
        await until(lambda: model.events)
        c.cancel()  # its request timed out after the batch was taken
        model.gate.set()
        assert await asyncio.gather(*first, d) == ["caption of a", "caption of b", "caption of d"]
        assert b._held == 0
        await b.stop()
    asyncio.run(scenario())


def test_stop_finishes_a_batch_taken_ahead_and_draining_takes_partial_ones():
    async def scenario():
        model = Model()
        b, first = await running_first(model)
        lone = submit(b, ["c"])
        stopping = asyncio.ensure_future(b.stop(timeout=10))
        await until(lambda: model.events)  # draining: the partial batch is taken ahead too
        assert model.events == [("stage", ["c"])]
        model.gate.set()
        await stopping
        assert [f.result() for f in first + lone] == [f"caption of {x}" for x in "abc"]
        assert model.events[1:] == [("run", "plain", ["a", "b"]), ("run", "staged", ["c"])]
    asyncio.run(scenario())


def test_without_stage_batches_are_taken_only_when_the_model_is_free():
    async def scenario():
        model = Model()
        b, first = await running_first(model, stage=None)
        second = submit(b, ["c", "d"])
        await asyncio.sleep(0.1)
        assert b.depth == 2  # still queued while the model runs
        model.gate.set()
        assert await asyncio.gather(*first, *second) == [f"caption of {x}" for x in "abcd"]
        assert model.events == [("run", "plain", ["a", "b"]), ("run", "plain", ["c", "d"])]
        await b.stop()
    asyncio.run(scenario())
