"""Micro-batching: requests that arrive together share one call into the network.

Each request puts its inputs on a queue and awaits a future. One consumer task takes the
oldest request, then keeps taking waiting requests until the batch holds `max_batch` inputs
or the oldest request has waited `max_wait` seconds, runs the whole batch in the executor
(one thread: a Network reuses its layer buffers, so it must never run two forwards at once),
and hands each request its own rows of the result. While a batch runs, new requests queue up
and form the next one, so under load batches grow by themselves and an idle server adds at
most `max_wait` to a lone request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np


@dataclass
class Pending:
    """One request's inputs waiting for a batch."""

    inputs: np.ndarray
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """Groups concurrent `predict` calls into batches for `run` (inputs -> rows of outputs)."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        *,
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.run = run
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The outputs for `inputs` (N, ...), computed in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        if self.task is None:
            self.task = loop.create_task(self.serve(), name="cnntool-micro-batcher")
        pending = Pending(inputs, loop.create_future(), loop.time())
        self.queue.put_nowait(pending)
        return await pending.future

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    async def serve(self) -> None:
        """Form batches and run them, one at a time, for as long as the server lives."""
        carried: Pending | None = None
        while True:
            first = carried or await self.queue.get()
            batch, carried = await self.collect(first)
            batch = [pending for pending in batch if not pending.future.done()]  # clients gone
            if batch:
                await self.run_batch(batch)

    async def collect(self, first: Pending) -> tuple[list[Pending], Pending | None]:
        """`first` and the requests after it, up to `max_batch` inputs or until `first` has
        waited `max_wait`; a request that would overflow the batch is carried to the next."""
        loop = asyncio.get_running_loop()
        batch, size = [first], len(first.inputs)
        while size < self.max_batch:
            if self.queue.empty():
                remaining = first.arrived + self.max_wait - loop.time()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                pending = self.queue.get_nowait()
            if size + len(pending.inputs) > self.max_batch:
                return batch, pending
            batch.append(pending)
            size += len(pending.inputs)
        return batch, None

    async def run_batch(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([p.inputs for p in batch])
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self.executor, self.run, inputs)
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(inputs), time.perf_counter() - started)
        start = 0
        for pending in batch:
            stop = start + len(pending.inputs)
            if not pending.future.done():
                pending.future.set_result(outputs[start:stop])
            start = stop
