"""The served models by name, and the swap of a bundle file replaced on disk.

A model's name is its bundle's file name without `.cnnb`. Every second (`watch_interval_s`)
the set looks at each bundle file's inode, size and modification time; when they change (a
new file renamed over the old one, as `cnntool train` writes) it loads and warms up the new
bundle in a new ModelService beside the old one, and only then points the name at it. The
requests the old service already holds finish on it (it stops once none is left), so a swap
drops and fails nothing. A replacement that does not load (damaged, half-written, missing)
is refused with a log line and the old model keeps serving; it is tried again when the file
changes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnntool.errors import InputError
from cnntool.serve.metrics import ServerMetrics
from cnntool.serve.service import ModelService, ServeSettings

log = logging.getLogger("cnntool.serve")
FileSignature = tuple[int, int, int] | None


class UnknownModel(InputError):
    """No model of that name is served (HTTP 404)."""

    status = 404


def model_name(path: str | os.PathLike) -> str:
    return Path(path).name.removesuffix(".cnnb")


def file_signature(path: str) -> FileSignature:
    """What changes when the file is replaced or rewritten; None when it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class ModelSet:
    """Every served model, by name, each with its own kernel thread and micro-batcher."""

    def __init__(
        self, settings: ServeSettings, metrics: ServerMetrics, loaded: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        loaded = loaded or {}
        self.services: dict[str, ModelService] = {}
        self.signatures: dict[str, FileSignature] = {}
        for path in settings.bundles:
            name = model_name(path)
            self.signatures[name] = file_signature(path)
            self.services[name] = ModelService(name, path, settings, metrics, loaded.get(name))
        self.watcher: asyncio.Task | None = None
        self.retiring: set[asyncio.Task] = set()  # swapped-out services finishing their requests

    @property
    def names(self) -> list[str]:
        return list(self.services)

    @property
    def ready(self) -> bool:
        return all(service.ready for service in self.services.values())

    @property
    def failure(self) -> str | None:
        failures = [service.failure for service in self.services.values() if service.failure]
        return "; ".join(failures) or None

    def get(self, name: str) -> ModelService:
        try:
            return self.services[name]
        except KeyError:
            raise UnknownModel(f"unknown model {name!r}; this server has {', '.join(self.names)}") from None

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[ModelService]:
        """The model called `name`, held for one request: a swap lets it finish first."""
        service = self.get(name)
        service.in_flight += 1
        try:
            yield service
        finally:
            service.in_flight -= 1

    async def wait_ready(self, name: str) -> bool:
        return await self.get(name).wait_ready()

    async def start(self) -> None:
        """Load and warm up every model (each in its kernel thread), then watch the files."""
        await asyncio.gather(*(service.start() for service in self.services.values()))
        for service in self.services.values():
            if service.failure:
                log.error(service.failure)
            else:
                self.metrics.model.set(*service.info_labels(), value=1)
                log.info("model %r ready (digest %s)", service.name, service.bundle.digest)
        self.metrics.ready.set(value=1 if self.ready else 0)
        self.watcher = asyncio.create_task(self.watch(), name="cnntool-bundle-watcher")

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        await asyncio.gather(*self.retiring, return_exceptions=True)
        await asyncio.gather(*(service.stop() for service in self.services.values()))

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            for name in self.names:
                signature = file_signature(self.services[name].path)
                if signature != self.signatures[name]:
                    self.signatures[name] = signature
                    await self.swap(name)

    async def swap(self, name: str) -> None:
        """Serve the bundle now at the model's path, if it loads; otherwise keep the old one."""
        old = self.services[name]
        new = ModelService(name, old.path, self.settings, self.metrics)
        await new.start()
        if new.failure:
            await new.stop()
            kept = f"still serving digest {old.bundle.digest}" if old.ready else "the model stays unready"
            log.error("refused the replaced bundle of model %r: %s; %s", name, new.failure, kept)
            return
        self.services[name] = new
        if old.ready:
            self.metrics.model.values.pop(old.info_labels(), None)
        self.metrics.model.set(*new.info_labels(), value=1)
        self.metrics.ready.set(value=1 if self.ready else 0)
        log.info("model %r swapped in from %s (digest %s)", name, new.path, new.bundle.digest)
        retiring = asyncio.create_task(old.retire(), name=f"cnntool-retire-{name}")
        self.retiring.add(retiring)
        retiring.add_done_callback(self.retiring.discard)
