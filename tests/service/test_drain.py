"""SIGTERM drains: every request the server has accepted is answered, then the process exits 0."""

import asyncio

import cv2
import httpx
import numpy as np

from benchmarks.common import metric_value
from tests.conftest import encode, start_server


def test_sigterm_during_load_loses_no_accepted_request(photo: np.ndarray) -> None:
    server = start_server(models='["sift"]', max_batch="2", cpu_threads="1")
    png = encode(cv2.resize(photo, (1024, 1024)))
    count = 12

    async def scenario() -> list[httpx.Response | BaseException]:
        # One connection per request, so no request can be caught on an idle keep-alive connection.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as session:
            requests = [
                asyncio.ensure_future(session.post("/v1/extract", files={"image": ("x.png", png)}))
                for _ in range(count)
            ]
            for _ in range(200):  # wait until the server holds every request
                text = (await session.get("/metrics")).text
                if metric_value(text, "featureserve_in_flight_requests", endpoint="/v1/extract") >= count:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server never held all requests at once")
            server.process.terminate()
            return await asyncio.gather(*requests, return_exceptions=True)

    try:
        results = asyncio.run(scenario())
        assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), results
        assert server.process.wait(60) == 0
    finally:
        server.stop()
