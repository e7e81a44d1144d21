"""Request batching: concurrent requests for the same task become one call of a `DMLM` method.

Design decisions:
- One queue per key (task + language + decoding options: only requests that would be decoded
  alike share a call) and one asyncio worker per queue. A worker takes the first request, waits
  at most `max_wait` for others to join, then calls the model with up to `max_batch` items.
  While a call runs, new requests queue up, so under load the next batch is full at once and the
  wait costs nothing; a lone request pays at most `max_wait`.
- Every model call runs on one thread (`executor`, one worker): the model, its lazily loaded
  codebooks and vocoder are not built for concurrent use, and torch already spreads one call
  over the cores. The event loop stays free to read uploads and answer /health meanwhile.
- A batch that fails with a `UserError` (one bad item among good ones, e.g. a text the model
  makes no speech units for) is run again one item at a time, so each request gets its own
  answer; any other exception is a bug and reaches every request of the batch.
- A request whose client went away (its future cancelled) is dropped before the call.
- `max_pending` bounds the queued requests: past it, `submit` raises `Busy` (503) rather than
  letting latency and memory grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from dmlm.util.errors import UserError


class Busy(Exception):
    """More requests are queued than `max_pending` (the server answers 503)."""


@dataclass
class Done:
    """One request's result and how it was computed."""

    value: Any
    batch_size: int
    """Requests in the model call that computed it."""
    model_seconds: float
    """Wall time of that call (shared by the batch)."""
    queued_seconds: float
    """From submission to the start of the call."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Queue:
    fn: Callable[[list], list]
    jobs: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task | None = None


class Batcher:
    """`await batcher.submit(key, fn, item)`: `fn(items) -> results` (same length, same order) is
    called with the items of concurrent submissions under the same key."""

    def __init__(self, executor: Executor, max_batch: int = 8, max_wait: float = 0.01, max_pending: int = 256):
        self.executor, self.max_batch, self.max_wait, self.max_pending = executor, max_batch, max_wait, max_pending
        self._queues: dict[Hashable, _Queue] = {}
        self._closing = False
        self.calls = 0
        """Model calls made (a test of batching counts them)."""
        self.largest = 0
        """The largest batch so far."""

    @property
    def pending(self) -> int:
        return sum(len(q.jobs) for q in self._queues.values())

    async def submit(self, key: Hashable, fn: Callable[[list], list], item: Any) -> Done:
        if self._closing:
            raise Busy("the server is shutting down")
        if self.pending >= self.max_pending:
            raise Busy(f"{self.pending} requests are waiting for the model (--max-pending {self.max_pending})")
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(fn)
        if q.worker is None or q.worker.done():
            q.worker = asyncio.get_running_loop().create_task(self._work(q))
        job = _Job(item, asyncio.get_running_loop().create_future())
        q.jobs.append(job)
        q.wake.set()
        return await job.future

    async def close(self) -> None:
        """Finish what is queued, then stop the workers."""
        self._closing = True
        for q in self._queues.values():
            q.wake.set()
        await asyncio.gather(*(q.worker for q in self._queues.values() if q.worker), return_exceptions=True)

    async def _work(self, q: _Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not q.jobs:
                if self._closing:
                    return
                q.wake.clear()
                await q.wake.wait()
            deadline = loop.time() + self.max_wait
            while len(q.jobs) < self.max_batch and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                q.wake.clear()
                try:
                    await asyncio.wait_for(q.wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = [q.jobs.popleft() for _ in range(min(self.max_batch, len(q.jobs)))]
            batch = [j for j in batch if not j.future.done()]  # clients that went away
            if batch:
                await self._run(q.fn, batch)

    async def _run(self, fn: Callable[[list], list], jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            values = await loop.run_in_executor(self.executor, fn, [j.item for j in jobs])
            if len(values) != len(jobs):
                raise RuntimeError(f"a batched call returned {len(values)} results for {len(jobs)} items")
        except UserError as e:
            if len(jobs) == 1:
                _settle(jobs[0], exc=e)
                return
            for j in jobs:  # find the bad item(s): each request gets its own answer
                await self._run(fn, [j])
            return
        except Exception as e:  # a bug: every request of the batch learns of it
            for j in jobs:
                _settle(j, exc=e)
            return
        self.calls += 1
        self.largest = max(self.largest, len(jobs))
        seconds = time.perf_counter() - start
        for j, v in zip(jobs, values):
            _settle(j, Done(v, len(jobs), seconds, start - j.submitted))


def _settle(job: _Job, done: Done | None = None, exc: BaseException | None = None) -> None:
    if job.future.done():  # cancelled while the model ran
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(done)
