"""`ModelWorker`: one model's bounded queue, its dynamic batcher and the thread that runs its batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ...models import FeatureModel, Features, KeypointOptions
from ..errors import DeadlineExceeded, FeatureServeError, InvalidInput, Overloaded, Unavailable
from ..metrics import ServiceMetrics
from .thread import WorkerLost, WorkerThread

logger = logging.getLogger(__name__)
JobKind = Literal["extract", "detect", "describe"]
# realtime work (stream frames, and requests that ask) goes ahead of bulk work in a model's queue.
Priority = Literal["bulk", "realtime"]
# Weight of the newest batch in the moving average of batch durations.
EWMA_WEIGHT = 0.2
# After this many batches in a row that left bulk work waiting, the next batch starts with the oldest bulk image.
BULK_TURN_AFTER = 2
# After running out of device memory a worker halves its batch limit; this many good batches in a row double it.
MEMORY_RECOVERY_BATCHES = 32


@dataclass(frozen=True)
class BatchPolicy:
    """How a worker forms batches and admits work."""

    max_batch: int
    max_delay_s: float
    queue_size: int
    reject_unmeetable_deadlines: bool
    # Longest one call of the model may run before its thread counts as hung (None: no limit).
    batch_timeout_s: float | None = None
    # Longest expected wait before a new image's batch starts; more is refused (None: no limit).
    max_queue_delay_s: float | None = None


@dataclass
class Job:
    """One image's work item: what to do, its deadline, and the future its requester awaits."""

    kind: JobKind
    image: np.ndarray
    deadline: float
    future: asyncio.Future[Features]
    options: KeypointOptions | None = None
    keypoints: np.ndarray | None = None
    priority: Priority = "bulk"
    enqueued: float = field(default_factory=time.monotonic)


class ModelWorker:
    """Queue + batcher + execution thread for one model.

    A batch starts with the oldest queued image and takes up to ``max_batch`` images. It waits up to
    ``max_delay_s`` for more only while other requests for this model are still being decoded, so a
    lone client pays no batching delay. ``realtime`` images (stream frames, and requests that ask) queue
    apart and go first, so a frame waits at most for the batch that is running; bulk work is never starved:
    after `BULK_TURN_AFTER` batches in a row that left bulk images waiting, the next batch starts with the
    oldest of them. Images in one batch are split by job kind and size bucket
    (`FeatureModel.bucket_key`), and each group is one call of the model on the worker's thread.

    Watchdog: when the model's thread dies, or one call runs past ``policy.batch_timeout_s``, the jobs of
    that call fail at once with `Unavailable` (503 / UNAVAILABLE), the thread is replaced by a new one with
    a freshly loaded model (``reload``; the old instance when there is none or it fails), and the queue goes
    on to the replacement. A hung thread cannot be killed: it is abandoned and counted in
    ``featureserve_abandoned_worker_threads`` until it returns.

    Out of device memory: the batch's requests fail with `Unavailable` (503 / UNAVAILABLE, retry), and the
    worker's batch limit halves (at least 1); `MEMORY_RECOVERY_BATCHES` good batches in a row double it again, up
    to ``max_batch``.
    """

    def __init__(
        self,
        model: FeatureModel,
        policy: BatchPolicy,
        metrics: ServiceMetrics,
        reload: Callable[[], FeatureModel] | None = None,
        device: str = "cpu",
        instance: int = 0,
    ) -> None:
        self.model = model
        self.policy = policy
        self.metrics = metrics
        self.device = device
        self.instance = instance
        # The label values of this worker's metric series.
        self.labels = (model.name, device, str(instance))
        # True while a lost thread is being replaced: new work goes to the model's other instances.
        self.replacing = False
        self._reload = reload
        self._queues: dict[Priority, deque[Job]] = {"realtime": deque(), "bulk": deque()}
        self._bulk_passed_over = 0
        self.batch_limit = policy.max_batch
        self._good_batches = 0
        self._wakeup = asyncio.Event()
        self._incoming = 0
        self._busy = False
        self._batch_started = 0.0
        self._batch_seconds = 0.0
        self._thread: WorkerThread | None = None
        self._generation = 0
        self._abandoned: list[WorkerThread] = []
        self._task: asyncio.Task[None] | None = None
        metrics.abandoned_threads.labels(*self.labels).set_function(
            lambda: sum(thread.is_alive() for thread in self._abandoned)
        )

    @property
    def queued(self) -> int:
        """Images waiting for a batch."""
        return sum(len(queue) for queue in self._queues.values())

    def _ahead(self, priority: Priority) -> int:
        """Images a new ``priority`` image would queue behind: realtime ones pass bulk ones."""
        return len(self._queues["realtime"]) if priority == "realtime" else self.queued

    def _worker_thread(self) -> WorkerThread:
        if self._thread is None:
            self._generation += 1
            self._thread = WorkerThread(f"worker-{self.model.name}-{self.device}-{self.instance}-{self._generation}")
        return self._thread

    async def warmup(self) -> None:
        """Run the model once on its own thread and seed the batch-time estimate."""
        start = time.monotonic()
        # No time limit: a first call may compile kernels; a thread that dies still fails the start-up.
        await self._worker_thread().call(self.model.warmup, timeout=None)
        self._batch_seconds = time.monotonic() - start

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._worker_thread()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model.name}")

    async def stop(self) -> None:
        """Finish queued work, then stop the loop and the thread."""
        while self.queued or self._busy:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._thread is not None:
            self._thread.stop()

    async def _replace_thread(self, lost: WorkerLost) -> None:
        """Abandon the current thread and start a new one, with a freshly loaded model when possible."""
        name = self.model.name
        old = self._thread
        self._thread = None
        if old is not None:
            old.stop()
            if old.is_alive():
                self._abandoned.append(old)
        self._abandoned = [thread for thread in self._abandoned if thread.is_alive()]
        self.metrics.worker_replacements.labels(name, lost.reason).inc()
        logger.error(
            "model %s: worker thread %s %s: %s; replacing it", name, old.name if old else "?", lost.reason, lost
        )
        thread = self._worker_thread()
        if self._reload is None:
            return
        try:
            # The new model loads on the new thread; a hung thread keeps the old instance to itself.
            self.model = await thread.call(self._reload, timeout=self.policy.batch_timeout_s)
        except WorkerLost as error:
            logger.error("model %s: reloading failed (%s); keeping the previous instance", name, error)
            thread.stop()
            if thread.is_alive():
                self._abandoned.append(thread)
            self._thread = None
            self._worker_thread()
        except Exception:
            logger.exception("model %s: reloading failed; keeping the previous instance", name)

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request for this model as on its way (being decoded), so batches wait for it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            # A batch waiting for this request must not wait out max_delay if its decode failed.
            self._wakeup.set()

    def estimated_wait(self, priority: Priority = "bulk") -> float:
        """Seconds until a newly queued image would finish, from the moving average of batch time."""
        batches_ahead = math.ceil((self._ahead(priority) + 1) / self.batch_limit) + (1 if self._busy else 0)
        return batches_ahead * self._batch_seconds

    def expected_start_delay(self, priority: Priority = "bulk") -> float:
        """Seconds before a newly queued image's batch would start: what is left of the running batch and
        the full batches queued ahead, from the moving average of batch time."""
        left = max(0.0, self._batch_seconds - (time.monotonic() - self._batch_started)) if self._busy else 0.0
        return left + (self._ahead(priority) // self.batch_limit) * self._batch_seconds

    def admit(self, deadline: float, priority: Priority = "bulk") -> float:
        """Seconds left until ``deadline`` if a new image may queue now; raises `Overloaded` / `DeadlineExceeded`.

        `submit` calls it; the pool also calls it before decoding, so a full queue costs no decode.
        """
        name = self.model.name
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.metrics.rejected.labels(name, "deadline").inc()
            raise DeadlineExceeded("the deadline passed before the image was queued")
        # The queue bound counts the images ahead: a realtime image is not refused for bulk work it passes.
        if (ahead := self._ahead(priority)) >= self.policy.queue_size:
            self.metrics.rejected.labels(name, "queue_full").inc()
            raise Overloaded(
                f"model {name} has {ahead} images queued (the limit is {self.policy.queue_size})",
                retry_after_s=max(1.0, self.estimated_wait(priority)),
            )
        limit = self.policy.max_queue_delay_s
        if limit is not None and (delay := self.expected_start_delay(priority)) > limit:
            # Bounds the latency of accepted requests under overload: at most a batch time plus this.
            self.metrics.rejected.labels(name, "queue_delay").inc()
            raise Overloaded(
                f"model {name} would start this image in about {delay * 1000:.0f} ms; the limit is "
                f"{limit * 1000:.0f} ms",
                retry_after_s=max(1.0, delay),
            )
        wait = self.estimated_wait(priority)
        if self.policy.reject_unmeetable_deadlines and wait > remaining:
            self.metrics.rejected.labels(name, "unmeetable_deadline").inc()
            raise Overloaded(
                f"model {name} cannot finish before the deadline: about {wait * 1000:.0f} ms of work is "
                f"ahead and {remaining * 1000:.0f} ms remain",
                retry_after_s=max(1.0, wait),
            )
        return remaining

    async def submit(self, job: Job) -> Features:
        """Queue ``job`` and wait for its features, or raise `Overloaded` / `DeadlineExceeded` / `Unavailable`."""
        name = self.model.name
        remaining = self.admit(job.deadline, job.priority)
        self._queues[job.priority].append(job)
        self.metrics.queue_depth.labels(*self.labels).set(self.queued)
        self._wakeup.set()
        try:
            # shield: a timed-out waiter must not cancel a future the batcher will still resolve.
            return await asyncio.wait_for(asyncio.shield(job.future), remaining)
        except TimeoutError:
            self.metrics.rejected.labels(name, "deadline").inc()
            raise DeadlineExceeded(
                f"the deadline of {remaining * 1000:.0f} ms passed while the image was queued or processed"
            ) from None

    def _take(self, bulk_first: bool) -> Job:
        """The next queued image: realtime before bulk, unless it is bulk work's turn."""
        realtime, bulk = self._queues["realtime"], self._queues["bulk"]
        if bulk and (bulk_first or not realtime):
            return bulk.popleft()
        return realtime.popleft()

    async def _next_batch(self) -> list[Job]:
        while not self.queued:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = [self._take(bulk_first=self._bulk_passed_over >= BULK_TURN_AFTER)]
        close_at = time.monotonic() + self.policy.max_delay_s
        while len(batch) < self.batch_limit:
            if self.queued:
                batch.append(self._take(bulk_first=False))
                continue
            remaining = close_at - time.monotonic()
            if self._incoming == 0 or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        passed_over = bool(self._queues["bulk"]) and all(job.priority == "realtime" for job in batch)
        self._bulk_passed_over = self._bulk_passed_over + 1 if passed_over else 0
        self.metrics.queue_depth.labels(*self.labels).set(self.queued)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            self._busy = True
            self._batch_started = time.monotonic()
            try:
                live = self._drop_expired(batch)
                if live:
                    start = time.monotonic()
                    for jobs in self._groups(live).values():
                        await self._run_group(jobs)
                    elapsed = time.monotonic() - start
                    self._batch_seconds += EWMA_WEIGHT * (elapsed - self._batch_seconds)
                    self.metrics.batch_size.labels(*self.labels).observe(len(live))
                    self._recover_batch_limit()
                    self.metrics.inference.labels(*self.labels).observe(elapsed)
            except Exception:
                # A bug in the batcher must not stop the queue: fail this batch, keep serving the next.
                logger.exception("model %s: batcher failed", self.model.name)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(FeatureServeError("internal error in the batcher"))
            finally:
                self._busy = False

    def _recover_batch_limit(self) -> None:
        if self.batch_limit >= self.policy.max_batch:
            return
        self._good_batches += 1
        if self._good_batches >= MEMORY_RECOVERY_BATCHES:
            self.batch_limit = min(self.policy.max_batch, 2 * self.batch_limit)
            self._good_batches = 0

    def _drop_expired(self, batch: list[Job]) -> list[Job]:
        now = time.monotonic()
        live = []
        for job in batch:
            if job.future.done():
                continue  # its requester already gave up (deadline)
            if now >= job.deadline:
                self.metrics.rejected.labels(self.model.name, "deadline").inc()
                job.future.set_exception(DeadlineExceeded("the deadline passed while the image was queued"))
                continue
            self.metrics.queue_wait.labels(*self.labels).observe(now - job.enqueued)
            live.append(job)
        return live

    def _groups(self, jobs: list[Job]) -> dict[tuple[JobKind, Hashable], list[Job]]:
        groups: dict[tuple[JobKind, Hashable], list[Job]] = {}
        for job in jobs:
            groups.setdefault((self._batch_kind(job.kind), self.model.bucket_key(job.image)), []).append(job)
        return groups

    def _batch_kind(self, kind: JobKind) -> JobKind:
        # A model without its own detect detects by extracting, so detect jobs join the extract batch.
        if kind == "detect" and type(self.model).detect is FeatureModel.detect:
            return "extract"
        return kind

    async def _run_group(self, jobs: list[Job]) -> None:
        results: list[Features | Exception]
        try:
            thread = self._worker_thread()
            results = list(await thread.call(self._call_model, jobs, timeout=self.policy.batch_timeout_s))
        except WorkerLost as lost:
            # The requests of this call fail now instead of waiting out their deadlines; queued ones go to
            # the replacement.
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(
                        Unavailable(
                            f"model {self.model.name}'s worker failed while running this request: {lost}; "
                            "it was replaced, retry the request",
                            {"reason": lost.reason},
                        )
                    )
            self.replacing = True
            try:
                await self._replace_thread(lost)
            finally:
                self.replacing = False
            return
        except torch.OutOfMemoryError as error:
            self._out_of_memory(jobs, error)
            return
        except Exception as error:
            if len(jobs) > 1:
                # Run one by one so that one bad image fails only its own request.
                for job in jobs:
                    await self._run_group([job])
                return
            results = [self._as_service_error(error)]
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                self.metrics.keypoints.labels(self.model.name).observe(len(result))
                job.future.set_result(result)

    def _out_of_memory(self, jobs: list[Job], error: Exception) -> None:
        """Fail this batch's requests (retry: 503 / UNAVAILABLE) and halve the batch limit."""
        self.batch_limit = max(1, len(jobs) // 2)
        self._good_batches = 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.warning("model %s ran out of memory on %d images: %s", self.model.name, len(jobs), error)
        for job in jobs:
            if not job.future.done():
                self.metrics.rejected.labels(self.model.name, "out_of_memory").inc()
                job.future.set_exception(
                    Unavailable(
                        f"model {self.model.name} ran out of device memory on a batch of {len(jobs)} images; "
                        f"its batches now hold at most {self.batch_limit}: retry the request",
                        {"reason": "out_of_memory", "batch_limit": self.batch_limit},
                    )
                )

    def _as_service_error(self, error: Exception) -> FeatureServeError:
        if isinstance(error, FeatureServeError):
            return error
        if isinstance(error, ValueError):
            # Models validate their inputs with ValueError and a message that says what was expected.
            return InvalidInput(str(error))
        logger.exception("model %s failed", self.model.name, exc_info=error)
        return FeatureServeError(f"model {self.model.name} failed: {type(error).__name__}")

    def _call_model(self, jobs: list[Job]) -> list[Features]:
        images = [job.image for job in jobs]
        kind = self._batch_kind(jobs[0].kind)
        if kind == "describe":
            return self.model.describe(images, [job.keypoints for job in jobs])
        options = [job.options for job in jobs]
        if kind == "detect":
            return self.model.detect(images, options)
        results = self.model.extract(images, options)
        for job, features in zip(jobs, results, strict=True):
            if job.kind == "detect":
                features.descriptors = None
        return results
