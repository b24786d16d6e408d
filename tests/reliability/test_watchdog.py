"""The worker watchdog on a real server: a model thread that dies or hangs (the test-only `benchmarks.faults` model)
fails its own requests at once with 503 / UNAVAILABLE, is replaced, and the queue behind it is served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest

from benchmarks.common import metric_value
from benchmarks.faults import CRASH, HANG, SLOW, with_command
from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service
from featureserve.v1.service_pb2_grpc import FeatureServiceStub
from tests.conftest import Server, encode, start_server

BATCH_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def fault_server() -> Iterator[Server]:
    """``faulty`` (batches of one, so each request is its own call) next to ``orb``, a 2 s batch timeout."""
    s = start_server(
        models='["faulty","orb"]',
        default_model="orb",
        plugins='["benchmarks.faults:register"]',
        batch_timeout_s=str(BATCH_TIMEOUT_S),
        max_batch="1",
    )
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def image(photo: np.ndarray) -> np.ndarray:
    return photo[:256, :256].copy()


def _metric(server: Server, name: str, **labels: str) -> float:
    return metric_value(httpx.get(f"{server.url}/metrics").text, name, **labels)


def _post(session: httpx.AsyncClient, png: bytes) -> asyncio.Future:
    return session.post("/v1/extract", files={"image": ("x.png", png)}, data={"model": "faulty"})


def test_crash_fails_its_request_at_once_and_the_queue_goes_to_the_replacement(
    fault_server: Server, image: np.ndarray
) -> None:
    before = _metric(fault_server, "featureserve_worker_replacements_total", model="faulty", reason="crashed")
    crash = encode(with_command(image, CRASH))
    # The first request holds the thread for 0.3 s, so the crash and the requests after it queue behind it.
    slow = encode(with_command(image, SLOW, 30))
    normal = encode(image)

    async def scenario() -> tuple[httpx.Response, httpx.Response, list[httpx.Response], float]:
        async with httpx.AsyncClient(base_url=fault_server.url, timeout=60) as session:
            first = asyncio.ensure_future(_post(session, slow))
            await asyncio.sleep(0.1)
            crashed = asyncio.ensure_future(_post(session, crash))
            await asyncio.sleep(0.05)
            queued = [asyncio.ensure_future(_post(session, normal)) for _ in range(3)]
            start = time.monotonic()
            crashed_response = await crashed
            return await first, crashed_response, await asyncio.gather(*queued), time.monotonic() - start

    first, crashed, queued, waited = asyncio.run(scenario())
    assert first.status_code == 200
    assert crashed.status_code == 503, crashed.text
    error = crashed.json()["error"]
    assert error["code"] == "unavailable" and error["details"]["reason"] == "crashed"
    assert "thread died" in error["message"] and "SystemExit" in error["message"]
    assert waited < 1.5  # answered when the thread died, not at its deadline (30 s)
    assert [r.status_code for r in queued] == [200, 200, 200]  # served by the replacement
    assert all(r.json()["num_keypoints"] > 0 for r in queued)
    after = _metric(fault_server, "featureserve_worker_replacements_total", model="faulty", reason="crashed")
    assert after == before + 1


def test_hang_fails_its_request_after_the_batch_timeout_over_grpc(fault_server: Server, image: np.ndarray) -> None:
    before = _metric(fault_server, "featureserve_worker_replacements_total", model="faulty", reason="hung")
    with grpc.insecure_channel(fault_server.grpc_target) as channel:
        stub = FeatureServiceStub(channel)
        options = pb.ExtractOptions(model="faulty")
        hang = service.ExtractRequest(image=pb.Image(encoded=encode(with_command(image, HANG))), options=options)
        normal = service.ExtractRequest(image=pb.Image(encoded=encode(image)), options=options)
        hung = stub.Extract.future(hang, timeout=30)
        time.sleep(0.2)
        queued = [stub.Extract.future(normal, timeout=30) for _ in range(2)]
        # Another model is not held up by the hung one.
        other = stub.Extract(service.ExtractRequest(image=normal.image, options=pb.ExtractOptions(model="orb")))
        assert other.num_keypoints > 0
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            hung.result()
        waited = time.monotonic() - start
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"ran for more than {BATCH_TIMEOUT_S:g} s" in failure.value.details()
        assert waited < BATCH_TIMEOUT_S + 1.5
        assert all(call.result().num_keypoints > 0 for call in queued)
    assert _metric(fault_server, "featureserve_worker_replacements_total", model="faulty", reason="hung") == before + 1
    # Python cannot kill the hung thread: it is abandoned, and counted.
    assert _metric(fault_server, "featureserve_abandoned_worker_threads", model="faulty") >= 1


def test_repeated_faults_are_all_survived(fault_server: Server, image: np.ndarray) -> None:
    crash, normal = encode(with_command(image, CRASH)), encode(image)
    with httpx.Client(base_url=fault_server.url, timeout=60) as client:
        for _ in range(5):
            response = client.post("/v1/extract", files={"image": ("x.png", crash)}, data={"model": "faulty"})
            assert response.status_code == 503
            response = client.post("/v1/extract", files={"image": ("x.png", normal)}, data={"model": "faulty"})
            assert response.status_code == 200
        assert client.get("/readyz").status_code == 200
