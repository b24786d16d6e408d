"""Admission control on a real server: a full queue answers 429 at once; deadlines answer 504 or 429."""

import asyncio

import httpx

from tests.conftest import Server, fastest_seconds, start_server


def _post(session: httpx.AsyncClient, png: bytes, deadline_ms: int | None = None) -> "asyncio.Future":
    headers = {"X-Deadline-Ms": str(deadline_ms)} if deadline_ms else {}
    return session.post(
        "/v1/extract", files={"image": ("x.png", png)}, data={"descriptor_encoding": "base64"}, headers=headers
    )


def _extraction_seconds(server: Server, png: bytes) -> float:
    """One extraction's time on this machine, end to end (deadlines are sized from it; it also teaches the worker)."""
    with httpx.Client(base_url=server.url, timeout=120) as session:
        return fastest_seconds(lambda: session.post("/v1/extract", files={"image": ("x.png", png)}).raise_for_status())


def test_full_queue_answers_429_and_admitted_requests_succeed(small_queue_server: Server, big_png: bytes) -> None:
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small_queue_server.url, timeout=120) as session:
            return await asyncio.gather(*(_post(session, big_png) for _ in range(16)))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 4  # one running plus a full queue of three were admitted
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["Retry-After"]) >= 1
    assert rejected.json()["error"]["code"] == "overloaded" and "queued" in rejected.json()["error"]["message"]


def test_deadline_passing_in_the_queue_answers_504(small_queue_server: Server, big_png: bytes) -> None:
    # Three requests ahead keep the late one queued about three extraction times, twice its deadline.
    one = _extraction_seconds(small_queue_server, big_png)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=small_queue_server.url, timeout=120) as session:
            busy = [asyncio.ensure_future(_post(session, big_png)) for _ in range(3)]
            await asyncio.sleep(0.25 * one)
            late = await _post(session, big_png, deadline_ms=round(1500 * one))
            return await asyncio.gather(*busy), late

    busy, late = asyncio.run(scenario())
    assert [r.status_code for r in busy] == [200, 200, 200]
    assert late.status_code == 504, late.text[:300]
    assert late.json()["error"]["code"] == "deadline_exceeded"


def test_unmeetable_deadline_is_refused_at_once(big_png: bytes) -> None:
    server = start_server(models='["sift"]', max_batch="1", queue_size="32", cpu_threads="1")
    try:
        one = _extraction_seconds(server, big_png)

        async def scenario() -> tuple[list[httpx.Response], httpx.Response, float]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as session:
                busy = [asyncio.ensure_future(_post(session, big_png)) for _ in range(6)]
                await asyncio.sleep(0.25 * one)
                start = asyncio.get_running_loop().time()
                refused = await _post(session, big_png, deadline_ms=round(1500 * one))
                elapsed = asyncio.get_running_loop().time() - start
                return await asyncio.gather(*busy), refused, elapsed

        busy, refused, elapsed = asyncio.run(scenario())
        assert all(r.status_code == 200 for r in busy)
        assert refused.status_code == 429, refused.text[:300]
        assert "deadline" in refused.json()["error"]["message"]
        assert elapsed < 1.5 * one  # answered before its deadline, without waiting in the queue
    finally:
        server.stop()
