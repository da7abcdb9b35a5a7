"""Micro-batching: concurrent requests share one model pass, on a thread off the event loop.

Requests put their images on a bounded queue and await futures. One worker task takes what is
waiting (up to ``max_batch``); while requests are still being decoded it waits up to
``max_wait_s`` for them to join, so a lone client pays no wait and a crowd shares a batch.
The batch runs in a single worker thread (the model is not thread-safe; PyTorch threads itself
inside). A full queue is refused at once (:class:`QueueFullError`), it never grows.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class QueueFullError(Exception):
    """More images waiting than the queue holds; the client should retry later (HTTP 503)."""


class TooManyImagesError(ValueError):
    """One request with more images than the queue can ever hold (HTTP 413: retrying cannot help)."""


@dataclass
class Job:
    """One image to score; ``want_map`` asks for its anomaly map as well."""

    pixels: Any
    want_map: bool = False
    future: asyncio.Future = field(default=None, repr=False)


class MicroBatcher:
    """Collects :class:`Job` s into batches for ``score_batch(jobs) -> outcomes`` (same order)."""

    def __init__(self, score_batch: Callable[[Sequence[Job]], list], max_batch: int = 16,
                 max_wait_s: float = 0.01, capacity: int = 64):
        if max_batch < 1 or capacity < 1:
            raise ValueError(f"max_batch and the queue capacity must be at least 1, got {max_batch} and {capacity}")
        self.score_batch = score_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.capacity = int(capacity)
        self._queue: asyncio.Queue[Job] | None = None
        self._arriving = 0  # requests admitted and still decoding: worth a short wait
        self._arrived = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="padim-model")
        self.batches = 0  # batches scored (for tests and logs)
        self.images = 0

    @property
    def queued(self) -> int:
        """Images waiting for a model pass."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.capacity)
        self._arrived = asyncio.Event()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def run_blocking(self, function, *args):
        """Run ``function`` on the model thread (used for warm-up), returning an awaitable."""
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def arriving(self) -> "_Arrival":
        """Context manager around decoding a request, so the worker waits for it to join."""
        return _Arrival(self)

    async def submit(self, jobs: Sequence[Job]) -> list:
        """Queue ``jobs`` together (all or none) and return their outcomes in order."""
        if len(jobs) > self.capacity:
            raise TooManyImagesError(f"{len(jobs)} images in one request; the scoring queue holds {self.capacity}")
        if self.capacity - self._queue.qsize() < len(jobs):
            raise QueueFullError(f"the scoring queue is full ({self.capacity} images waiting); retry shortly")
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.future = loop.create_future()
            self._queue.put_nowait(job)
        self._arrived.set()
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def _collect(self) -> list[Job]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if self._arriving <= 0 or left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [job for job in batch if not job.future.done()]  # a cancelled request's job
            if not batch:
                continue
            try:
                outcomes = await loop.run_in_executor(self._executor, self.score_batch, batch)
            except Exception as exc:  # noqa: BLE001 - every waiting request learns of it
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            for job, outcome in zip(batch, outcomes):
                if not job.future.done():
                    job.future.set_result(outcome)


class _Arrival:
    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    def __enter__(self):
        self.batcher._arriving += 1
        return self

    def __exit__(self, *exc):
        self.batcher._arriving -= 1
        if self.batcher._arrived is not None:
            self.batcher._arrived.set()
        return False
