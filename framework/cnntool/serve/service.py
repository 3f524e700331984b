"""One model behind the endpoints: load its bundle, compile its kernels, predict in batches.

Start-up runs off the event loop, in the model's one kernel thread, while the server already
answers: `/healthz` is 200 at once, `/readyz` turns 200 once every bundle is loaded and one
prediction has compiled (or loaded from numba's cache) every kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from cnntool import __version__
from cnntool.bundle import load_bundle
from cnntool.inference.predict import prediction_record
from cnntool.inference.warmup import warm_requests
from cnntool.serve.batching import MicroBatcher
from cnntool.serve.metrics import ServerMetrics
from cnntool.system.threads import set_threads

SETTINGS_ENV = "CNNTOOL_SERVE_SETTINGS"
log = logging.getLogger("cnntool.serve")


class ServeSettings(BaseModel):
    """What `cnntool serve` was asked for (its options hold the defaults); passed to worker
    processes as JSON."""

    bundles: list[str] = Field(min_length=1, description="bundle files, one model each")
    host: str
    port: int = Field(ge=0, le=65535)
    workers: int = Field(ge=1)
    threads: int = Field(ge=1, description="numba and BLAS threads per process")
    max_body_bytes: int = Field(ge=1024)
    max_batch: int = Field(ge=1)
    max_wait_ms: float = Field(ge=0)
    access_log: bool
    ready_wait_s: float = Field(
        default=60.0, ge=0, description="How long a request waits for a model still loading before a 503."
    )
    api_key: str | None = Field(default=None, description="the bearer key every non-health route needs")
    watch_interval_s: float = Field(
        default=1.0, gt=0, description="How often the bundle files are checked for a replacement."
    )

    def to_environment(self) -> None:
        os.environ[SETTINGS_ENV] = self.model_dump_json()

    @classmethod
    def from_environment(cls) -> ServeSettings:
        return cls.model_validate_json(os.environ[SETTINGS_ENV])


class ModelService:
    """One bundle, one kernel thread and the micro-batcher that feeds it."""

    def __init__(
        self, name: str, path: str, settings: ServeSettings, metrics: ServerMetrics, bundle: Any = None
    ) -> None:

        self.name = name
        self.path = path
        self.settings = settings
        self.metrics = metrics
        self.bundle = bundle
        self.ready = False
        self.failure: str | None = None
        self.started = asyncio.Event()  # set once start() has finished, ready or failed
        self.in_flight = 0  # requests holding this service (see ModelSet.use)
        # numba's thread count is per calling thread, so the kernel thread sets its own.
        self.executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="cnntool-kernels",
            initializer=set_threads,
            initargs=(settings.threads,),
        )
        self.batcher = MicroBatcher(
            self.run_network,
            self.executor,
            max_batch=settings.max_batch,
            max_wait=settings.max_wait_ms / 1000,
            on_batch=metrics.observe_batch,
        )

    async def start(self) -> None:
        """Load the bundle (unless given) and warm up, in the kernel thread."""
        loop = asyncio.get_running_loop()
        try:
            if self.bundle is None:
                self.bundle = await loop.run_in_executor(self.executor, load_bundle, self.path)
            sizes = [1, self.settings.max_batch]
            await loop.run_in_executor(self.executor, warm_requests, self.bundle, sizes)
        except Exception as exc:
            self.failure = f"cannot serve {self.path}: {exc}"
            self.started.set()
            return
        self.ready = True
        self.started.set()

    def info_labels(self) -> tuple[str, ...]:
        """The labels of this model's `cnntool_model_info` sample."""
        info = self.info()
        shape = "x".join(map(str, info["input_shape"]))
        return (info["name"], info["digest"], info["cnntool_version"], str(info["parameters"]), shape)

    async def wait_ready(self) -> bool:
        """Whether the model is ready, waiting up to `ready_wait_s` while it is still loading:
        a request that arrives during start-up (on a worker still warming up, say) is
        answered once it can be rather than refused."""
        if not self.ready and self.failure is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.started.wait(), self.settings.ready_wait_s)
        return self.ready

    async def stop(self) -> None:
        await self.batcher.close()
        self.executor.shutdown(wait=True)

    async def retire(self, grace_s: float = 60.0) -> None:
        """Stop once no request holds this service any more (it was swapped out), so the
        requests it has taken are all answered by it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.stop()

    def run_network(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities for model-ready inputs; runs in the kernel thread only. Batches of
        any size share one workspace, sized at warm-up for the largest batch."""
        return self.bundle.network.predict_proba(inputs)

    async def predict(self, inputs: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        """One `cnntool infer` record per input (without `input`), in order."""

        classes = self.bundle.network.classes
        probabilities = await self.probabilities(inputs)
        return [prediction_record(row, classes, min(top_k, len(classes))) for row in probabilities]

    async def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """The class probabilities (N, classes) of model-ready inputs, computed in a batch."""
        return await self.batcher.predict(inputs)

    def info(self) -> dict[str, Any]:
        """What `/v1/model` answers."""

        bundle, meta = self.bundle, self.bundle.meta
        history = meta.get("history") or []
        last = history[-1] if history and isinstance(history[-1], dict) else {}
        dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
        providers = meta.get("providers") if isinstance(meta.get("providers"), dict) else {}
        test = meta.get("test")
        return {
            "name": bundle.network.name,
            "input_shape": list(bundle.network.input_shape),
            "classes": bundle.network.classes,
            "parameters": bundle.network.num_params,
            "digest": bundle.digest,
            "cnntool_version": __version__,
            "created_with": meta.get("cnntool_version"),
            "created_at": meta.get("created_at"),
            "providers": {str(key): str(value) for key, value in providers.items()},
            "preprocessing": bundle.preprocessing,
            "training": {
                "epochs": last.get("epoch", len(history)) or None,
                "final_loss": last.get("loss"),
                "final_accuracy": last.get("accuracy"),
                "final_val_loss": last.get("val_loss"),
                "final_val_accuracy": last.get("val_accuracy"),
                "test": test if isinstance(test, dict) else None,
                "dataset": dataset.get("name"),
            },
        }
