"""`WorkerPool`: the models, their workers, the decode and CPU thread pools, readiness and drain."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from ...models import FeatureModel, Features, KeypointOptions, ModelCard, load_model_with_knobs
from ..errors import InvalidInput, ModelNotFound, Unavailable
from ..metrics import ServiceMetrics
from ..settings import Settings
from .batcher import BatchPolicy, Job, JobKind, ModelWorker, Priority
from .decoding import DecodeLimits, decode_image

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Smallest image side served: stricter than what a model can compute on (`models.base.MIN_IMAGE_SIDE`).
# Fuzzing found OpenCV 4.14 corrupting the heap (the process aborts) on AKAZE images one row high, and ORB
# failing on images one pixel wide; no detector finds features in fewer pixels.
MIN_SERVED_SIDE = 16


def resolve_devices(devices: list[str]) -> list[str]:
    """``devices``, or when empty every GPU torch sees (``cuda:0``, ``cuda:1``, ...), else ``["cpu"]``."""
    if devices:
        return list(devices)
    if torch.cuda.is_available():
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return ["cpu"]


class ModelInstances:
    """Every instance of one model (a `ModelWorker` per device and slot); work goes to the one that will answer
    it first."""

    def __init__(self, workers: list[ModelWorker]) -> None:
        self.workers = workers

    @property
    def model(self) -> FeatureModel:
        """The model (every instance serves the same one)."""
        return self.workers[0].model

    @property
    def queued(self) -> int:
        """Images waiting in every instance's queue."""
        return sum(worker.queued for worker in self.workers)

    def choose(self, priority: Priority) -> ModelWorker:
        """The instance expected to finish a new image first, by queue and running batch; an instance whose
        lost thread is being replaced only when every one is."""
        working = [worker for worker in self.workers if not worker.replacing] or self.workers
        return min(working, key=lambda worker: (worker.estimated_wait(priority), worker.queued))

    async def stop(self) -> None:
        """Finish every instance's queued work and stop them."""
        await asyncio.gather(*(worker.stop() for worker in self.workers))


class WorkerPool:
    """Everything between the APIs and the models; REST and gRPC share one pool, hence its batches.

    Example:
        >>> pool = WorkerPool(Settings(models=["orb"], default_model="orb"), ServiceMetrics())
        >>> # inside an event loop: await pool.start(); f = await pool.extract("orb", png_bytes, opts, deadline)
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = DecodeLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.devices = resolve_devices(settings.devices)
        self.workers: dict[str, ModelInstances] = {}
        self.ready = False
        self.draining = False
        self._state_listeners: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decode_threads = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._cpu_threads = ThreadPoolExecutor(settings.cpu_threads, thread_name_prefix="cpu")
        self.policy = BatchPolicy(
            max_batch=settings.max_batch,
            max_delay_s=settings.max_delay_ms / 1000.0,
            queue_size=settings.queue_size,
            reject_unmeetable_deadlines=settings.reject_unmeetable_deadlines,
            batch_timeout_s=settings.batch_timeout_s,
            max_queue_delay_s=None if settings.max_queue_delay_ms is None else settings.max_queue_delay_ms / 1000,
        )

    def _load(self, name: str, device: str) -> FeatureModel:
        # Torch models take a device, OpenCV models a thread count; each gets the knob it knows.
        return load_model_with_knobs(
            name, self.settings.model_conf.get(name), device=device, num_threads=self.settings.cpu_threads
        )

    async def start(self) -> None:
        """Load the configured models, warm them up, start their batchers, then report ready."""
        self._loop = asyncio.get_running_loop()
        torch.set_num_threads(self.settings.cpu_threads)
        for name in self.settings.models:
            await self.add_model(name)
        self.ready = not self.draining
        self._notify_state()

    async def add_model(self, name: str) -> None:
        """Load model ``name`` on every device, ``instances_per_device`` times (each warmed up when
        ``settings.warmup``), and start their workers."""
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(self._cpu_threads, self._load, name, self.devices[0])
        # Classical (OpenCV) models take no device: their instances all run on the CPU.
        devices = self.devices if "device" in first.default_conf else ["cpu"]
        workers: list[ModelWorker] = []
        for device in devices:
            for _ in range(self.settings.instances_per_device):
                model = (
                    first if not workers else await loop.run_in_executor(self._cpu_threads, self._load, name, device)
                )
                # A worker whose thread dies or hangs gets a freshly loaded model on its replacement thread.
                reload = functools.partial(self._load, name, device)
                worker = ModelWorker(model, self.policy, self.metrics, reload, device, len(workers))
                if self.settings.warmup:
                    await worker.warmup()
                worker.start()
                workers.append(worker)
        self.workers[name] = ModelInstances(workers)
        logger.info("model %s ready: %d instance(s) on %s", name, len(workers), ", ".join(devices))

    def on_state_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the event loop when the pool becomes ready and when its drain begins."""
        self._state_listeners.append(listener)

    def _notify_state(self) -> None:
        for listener in self._state_listeners:
            # begin_drain may run in a signal handler; the loop runs the listeners at a safe point.
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(listener)
            else:
                listener()

    def begin_drain(self) -> None:
        """Stop reporting ready; in-flight and queued work still completes."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        self._notify_state()

    async def stop(self) -> None:
        """Finish queued work and release the threads."""
        self.begin_drain()
        await asyncio.gather(*(instances.stop() for instances in self.workers.values()))
        self._decode_threads.shutdown(wait=True)
        self._cpu_threads.shutdown(wait=True)

    def require_started(self) -> None:
        """Raise `Unavailable` until every model is loaded and warmed up (work goes on while draining)."""
        if not (self.ready or self.draining):
            raise Unavailable("the service is still loading its models")

    def worker(self, model: str | None) -> ModelInstances:
        """The instances of ``model`` (the default model when ``None``); raises `ModelNotFound`."""
        name = model or self.settings.default_model
        try:
            return self.workers[name]
        except KeyError:
            raise ModelNotFound(
                f"model {name!r} is not loaded; loaded models: {', '.join(sorted(self.workers))}",
                {"model": name, "loaded": sorted(self.workers)},
            ) from None

    def cards(self) -> list[ModelCard]:
        """Model cards of the loaded models."""
        return [instances.model.card for instances in self.workers.values()]

    async def decode(self, data: bytes, grey: bool = False) -> np.ndarray:
        """Decode image bytes on the decode threads (never on the event loop); see `decode_image` for ``grey``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_threads, decode_image, data, self.limits, grey)

    async def run_cpu(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on the CPU threads (matching, verification, drawing)."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu_threads, function, *args)

    async def _submit(
        self,
        kind: JobKind,
        model: str | None,
        image: bytes | np.ndarray,
        deadline: float,
        options: KeypointOptions | None = None,
        keypoints: np.ndarray | None = None,
        priority: Priority = "bulk",
    ) -> Features:
        worker = self.worker(model).choose(priority)
        worker.admit(deadline, priority)  # a full queue or an unmeetable deadline is refused before decoding
        with worker.incoming():
            array = await self.decode(image, worker.model.grey_input) if isinstance(image, bytes) else image
        height, width = array.shape[:2]
        if min(height, width) < MIN_SERVED_SIDE:
            raise InvalidInput(
                f"image is {width}x{height} pixels; each side must be at least {MIN_SERVED_SIDE}",
                {"width": width, "height": height, "min_side": MIN_SERVED_SIDE},
            )
        future = asyncio.get_running_loop().create_future()
        return await worker.submit(Job(kind, array, deadline, future, options, keypoints, priority))

    async def extract(
        self,
        model: str | None,
        image: bytes | np.ndarray,
        options: KeypointOptions,
        deadline: float,
        priority: Priority = "bulk",
    ) -> Features:
        """Detect and describe keypoints in one image (encoded bytes or a decoded array)."""
        return await self._submit("extract", model, image, deadline, options=options, priority=priority)

    async def detect(
        self,
        model: str | None,
        image: bytes | np.ndarray,
        options: KeypointOptions,
        deadline: float,
        priority: Priority = "bulk",
    ) -> Features:
        """Keypoints and scores of one image, without descriptors."""
        return await self._submit("detect", model, image, deadline, options=options, priority=priority)

    async def describe(
        self,
        model: str | None,
        image: bytes | np.ndarray,
        keypoints: np.ndarray,
        deadline: float,
        priority: Priority = "bulk",
    ) -> Features:
        """Descriptors of one image at given ``(N, 2)`` pixel keypoints."""
        return await self._submit("describe", model, image, deadline, keypoints=keypoints, priority=priority)

    def deadline_from(self, timeout_ms: float | None) -> float:
        """Monotonic deadline ``timeout_ms`` from now (the configured default when ``None``)."""
        budget = self.settings.default_deadline_ms if timeout_ms is None else timeout_ms
        return time.monotonic() + budget / 1000.0
