"""The operations layer over a real worker pool, in process: order, admission, deadlines, crash replacement,
and the checks every transport shares (REST, gRPC, streams and `LocalClient` call only this layer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from prometheus_client import generate_latest

from benchmarks.common import metric_value
from benchmarks.faults import CRASH, OUT_OF_MEMORY, SLOW, with_command
from featureserve.local import LocalClient
from featureserve.models import DescriptorInfo, Features, KeypointOptions, load_model
from featureserve.models.registry import MODELS
from featureserve.service.contract import ExtractOptions, MatchOptions
from featureserve.service.errors import (
    DeadlineExceeded,
    InvalidInput,
    InvalidOption,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
)
from featureserve.service.metrics import ServiceMetrics
from featureserve.service.operations import MAX_DESCRIPTOR_WIDTH, Operations
from featureserve.service.settings import Settings
from featureserve.service.workers import WorkerPool

T = TypeVar("T")
FAULTY = {"plugins": ["benchmarks.faults:register"], "models": ["faulty"], "default_model": "faulty"}


@pytest.fixture(autouse=True)
def _forget_the_faulty_model() -> Iterator[None]:
    """The faulty model's plugin registers it for the whole process; other tests must not see it."""
    yield
    MODELS.pop("faulty", None)


def with_operations(check: Callable[[Operations], Awaitable[T]], **settings: Any) -> T:
    """Run ``check`` on the operations of a started pool (ORB unless ``settings`` say otherwise), then stop it."""

    async def main() -> T:
        chosen = {"models": ["orb"], "default_model": "orb", "warmup": False, **settings}
        pool = WorkerPool(Settings(**chosen), ServiceMetrics())
        await pool.start()
        try:
            return await check(Operations(pool))
        finally:
            await pool.stop()

    return asyncio.run(main())


def crops(photo: np.ndarray) -> list[np.ndarray]:
    """Four different images (sizes and content) cut from ``photo``."""
    return [
        np.ascontiguousarray(photo[y : y + h, x : x + w])
        for y, x, h, w in ((0, 0, 256, 320), (40, 80, 300, 200), (100, 0, 180, 260), (0, 200, 312, 312))
    ]


def test_batch_answers_each_image_in_request_order(photo: np.ndarray) -> None:
    images = crops(photo)

    async def check(ops: Operations) -> list[Features]:
        plan = ops.plan_extract(ExtractOptions(max_keypoints=300))
        return await ops.extract_batch(plan, images, ops.deadline(None))

    served = with_operations(check, max_batch=4, max_delay_ms=50)
    direct = load_model("orb").extract(images, [KeypointOptions(max_keypoints=300)] * len(images))
    for got, expected in zip(served, direct, strict=True):
        np.testing.assert_array_equal(got.keypoints, expected.keypoints)
        np.testing.assert_array_equal(got.descriptors, expected.descriptors)


def test_shared_checks_refuse_with_the_field_named(photo: np.ndarray) -> None:
    async def check(ops: Operations) -> None:
        with pytest.raises(InvalidOption, match="max_keypoints"):
            ops.plan_extract(ExtractOptions(max_keypoints=ops.settings.max_keypoints_limit + 1))
        with pytest.raises(ModelNotFound, match="nope"):
            ops.plan_extract(ExtractOptions(model="nope"))
        with pytest.raises(InvalidOption, match="essential"):
            ops.plan_match(MatchOptions(geometry="essential"))
        plan = ops.plan_extract(ExtractOptions())
        with pytest.raises(InvalidInput, match="at least 16"):
            await ops.extract(plan, np.zeros((8, 40), np.uint8), ops.deadline(None))
        with pytest.raises(PayloadTooLarge, match="images in one request"):
            await ops.extract_batch(plan, [photo] * (ops.settings.max_request_images + 1), ops.deadline(None))
        with pytest.raises(InvalidInput) as error:
            await ops.extract_batch(plan, [photo, b"not an image"], ops.deadline(None))
        assert error.value.message.startswith("images[1]: ")
        with pytest.raises(InvalidInput, match="non-finite"):
            await ops.describe(plan, photo, np.array([[1.0, np.nan]], np.float32), ops.deadline(None))
        wide = Features(
            np.zeros((2, 2), np.float32),
            np.ones(2, np.float32),
            np.zeros((2, MAX_DESCRIPTOR_WIDTH + 1), np.float32),
            (64, 64),
            DescriptorInfo("float", MAX_DESCRIPTOR_WIDTH + 1, "l2"),
        )
        pair = ops.plan_match(MatchOptions(), extract=False)
        with pytest.raises(PayloadTooLarge, match=r"features0\.descriptors"):
            await ops.match(pair, wide, wide, ops.deadline(None))

    with_operations(check, max_request_images=2)


def test_a_full_queue_is_refused_and_admitted_images_are_answered(photo: np.ndarray) -> None:
    slow = with_command(photo, SLOW, 30)  # 0.3 s on the worker thread

    async def check(ops: Operations) -> list[Any]:
        plan = ops.plan_extract(ExtractOptions())
        work = [ops.extract(plan, slow, ops.deadline(10_000)) for _ in range(6)]
        return await asyncio.gather(*work, return_exceptions=True)

    results = with_operations(check, **FAULTY, queue_size=2, max_batch=1, reject_unmeetable_deadlines=False)
    refused = [r for r in results if isinstance(r, Overloaded)]
    answered = [r for r in results if isinstance(r, Features)]
    assert refused and answered and len(refused) + len(answered) == len(results), results


def test_a_deadline_that_passes_in_the_queue_fails_only_that_image(photo: np.ndarray) -> None:
    slow = with_command(photo, SLOW, 40)

    async def check(ops: Operations) -> list[Any]:
        plan = ops.plan_extract(ExtractOptions())
        first = asyncio.ensure_future(ops.extract(plan, slow, ops.deadline(10_000)))
        await asyncio.sleep(0.05)  # the slow image is on the worker thread
        late = ops.extract(plan, photo, ops.deadline(100))
        patient = ops.extract(plan, photo, ops.deadline(10_000))
        return await asyncio.gather(first, late, patient, return_exceptions=True)

    first, late, patient = with_operations(check, **FAULTY, max_batch=1, reject_unmeetable_deadlines=False)
    assert isinstance(first, Features) and isinstance(patient, Features)
    assert isinstance(late, DeadlineExceeded), late


def test_a_crashed_worker_fails_its_image_and_is_replaced(photo: np.ndarray) -> None:
    async def check(ops: Operations) -> tuple[Any, Features, float]:
        plan = ops.plan_extract(ExtractOptions())
        crashed = await asyncio.gather(
            ops.extract(plan, with_command(photo, CRASH), ops.deadline(None)), return_exceptions=True
        )
        started = time.monotonic()
        after = await ops.extract(plan, photo, ops.deadline(None))
        return crashed[0], after, time.monotonic() - started

    crashed, after, seconds = with_operations(check, **FAULTY)
    assert isinstance(crashed, Unavailable), crashed
    assert len(after) > 0 and seconds < 30


def test_local_client_refuses_what_the_server_refuses() -> None:
    with LocalClient(Settings(models=["orb"], default_model="orb", warmup=False, max_request_images=2)) as client:
        with pytest.raises(InvalidInput, match="at least 16"):
            client.extract(np.zeros((8, 40), np.uint8))
        with pytest.raises(PayloadTooLarge):
            client.extract_batch([np.zeros((64, 64), np.uint8)] * 3)
        with pytest.raises(InvalidOption, match="max_keypoints"):
            client.extract(np.zeros((64, 64), np.uint8), max_keypoints=client.settings.max_keypoints_limit + 1)


def _finishing_order(ops: Operations, work: list[tuple[str, Any]], gap_s: float) -> Awaitable[list[str]]:
    """Start each ``(label, awaitable factory)`` ``gap_s`` apart; the labels in the order their work finished."""

    async def run() -> list[str]:
        finished: list[str] = []
        tasks = []
        for label, start in work:
            task = asyncio.ensure_future(start())
            task.add_done_callback(lambda _, label=label: finished.append(label))
            tasks.append(task)
            await asyncio.sleep(gap_s)
        await asyncio.gather(*tasks)
        return finished

    return run()


def test_a_realtime_image_passes_a_bulk_backlog(photo: np.ndarray) -> None:
    """A frame waits for the batch that is running, not for the bulk images queued before it."""
    slow = with_command(photo, SLOW, 10)  # 0.1 s a batch

    async def check(ops: Operations) -> list[str]:
        bulk = ops.plan_extract(ExtractOptions())
        realtime = ops.plan_extract(ExtractOptions(priority="realtime"))
        work: list[tuple[str, Any]] = [
            (f"bulk{i}", lambda: ops.extract(bulk, slow, ops.deadline(30_000))) for i in range(8)
        ]
        work.append(("frame", lambda: ops.extract(realtime, slow, ops.deadline(30_000))))
        return await _finishing_order(ops, work, gap_s=0.005)

    order = with_operations(check, **FAULTY, max_batch=1, queue_size=16, reject_unmeetable_deadlines=False)
    assert order.index("frame") <= 1, order  # after at most the bulk image that was already running
    assert order.count("frame") == 1 and len(order) == 9


def test_bulk_work_is_not_starved_by_realtime_work(photo: np.ndarray) -> None:
    """After two batches that passed it over, the oldest bulk image gets the next batch."""
    slow = with_command(photo, SLOW, 10)

    async def check(ops: Operations) -> list[str]:
        bulk = ops.plan_extract(ExtractOptions())
        realtime = ops.plan_extract(ExtractOptions(priority="realtime"))
        work: list[tuple[str, Any]] = [("frame0", lambda: ops.extract(realtime, slow, ops.deadline(30_000)))]
        work.append(("bulk", lambda: ops.extract(bulk, slow, ops.deadline(30_000))))
        work += [(f"frame{i}", lambda: ops.extract(realtime, slow, ops.deadline(30_000))) for i in range(1, 9)]
        return await _finishing_order(ops, work, gap_s=0.005)

    order = with_operations(check, **FAULTY, max_batch=1, queue_size=16, reject_unmeetable_deadlines=False)
    # frame0 was running; frame1 and frame2 passed the bulk image over; then it was bulk work's turn.
    assert order.index("bulk") <= 3 and order[:4].count("bulk") == 1, order


def _per_instance(ops: Operations, metric: str, model: str) -> list[float]:
    """``metric``'s count for each instance of ``model``, from the pool's own registry."""
    text = generate_latest(ops.metrics.registry).decode()
    return [metric_value(text, metric, model=model, instance=str(w.instance)) for w in ops.pool.workers[model].workers]


def test_two_instances_share_the_load_and_never_mix_results(photo: np.ndarray) -> None:
    images = crops(photo) * 3

    async def check(ops: Operations) -> tuple[list[Features], list[float], list[tuple[str, str]]]:
        plan = ops.plan_extract(ExtractOptions(max_keypoints=300))
        results = await asyncio.gather(*(ops.extract(plan, image, ops.deadline(None)) for image in images))
        labels = [(worker.device, str(worker.instance)) for worker in ops.pool.workers["orb"].workers]
        return list(results), _per_instance(ops, "featureserve_batch_size_count", "orb"), labels

    served, batches, labels = with_operations(check, instances_per_device=2, max_batch=2, max_delay_ms=20)
    assert labels == [("cpu", "0"), ("cpu", "1")]
    assert all(count > 0 for count in batches), batches  # both instances ran batches
    direct = load_model("orb").extract(images, [KeypointOptions(max_keypoints=300)] * len(images))
    for got, expected in zip(served, direct, strict=True):
        np.testing.assert_array_equal(got.keypoints, expected.keypoints)
        np.testing.assert_array_equal(got.descriptors, expected.descriptors)


def test_a_crashed_instance_is_replaced_while_the_other_answers(photo: np.ndarray) -> None:
    slow = with_command(photo, SLOW, 30)  # 0.3 s: keeps the crashing instance's neighbour busy

    async def check(ops: Operations) -> tuple[Any, list[Any], list[Features], float]:
        plan = ops.plan_extract(ExtractOptions())
        first = asyncio.ensure_future(ops.extract(plan, slow, ops.deadline(None)))
        await asyncio.sleep(0.05)  # instance 0 runs the slow image: the crash goes to instance 1
        crash = asyncio.ensure_future(ops.extract(plan, with_command(photo, CRASH), ops.deadline(None)))
        await asyncio.sleep(0.05)
        during = await asyncio.gather(
            *(ops.extract(plan, photo, ops.deadline(None)) for _ in range(4)), return_exceptions=True
        )
        crashed = (await asyncio.gather(crash, return_exceptions=True))[0]
        await first
        after = [await ops.extract(plan, photo, ops.deadline(None)) for _ in range(4)]
        text = generate_latest(ops.metrics.registry).decode()
        return (
            crashed,
            list(during),
            after,
            metric_value(text, "featureserve_worker_replacements_total", model="faulty"),
        )

    crashed, during, after, replaced = with_operations(check, **FAULTY, instances_per_device=2, max_batch=1)
    assert isinstance(crashed, Unavailable), crashed
    assert all(isinstance(result, Features) for result in during), during  # the other instance kept answering
    assert all(len(features) > 0 for features in after) and replaced == 1


def test_out_of_memory_fails_that_batch_only_then_batches_shrink(photo: np.ndarray) -> None:
    slow = with_command(photo, SLOW, 20)

    async def check(ops: Operations) -> tuple[list[Any], list[Any], int]:
        plan = ops.plan_extract(ExtractOptions())
        busy = asyncio.ensure_future(ops.extract(plan, slow, ops.deadline(None)))
        await asyncio.sleep(0.05)  # the next four queue behind the slow image and form one batch
        batch = [with_command(photo, OUT_OF_MEMORY), photo, photo, photo]
        failed = await asyncio.gather(
            *(ops.extract(plan, i, ops.deadline(None)) for i in batch), return_exceptions=True
        )
        await busy
        after = await asyncio.gather(*(ops.extract(plan, photo, ops.deadline(None)) for _ in range(4)))
        return list(failed), list(after), ops.pool.workers["faulty"].workers[0].batch_limit

    failed, after, limit = with_operations(check, **FAULTY, max_batch=4, max_delay_ms=50)
    assert all(isinstance(error, Unavailable) and "out of device memory" in str(error) for error in failed), failed
    assert limit == 2 and all(len(features) > 0 for features in after)  # smaller batches, answered
