"""Load on a live server, over REST or gRPC, with every request accounted for.

Shared by ``tests/reliability/test_overload.py`` (seconds) and ``benchmarks/reliability/overload.py`` and
``benchmarks/reliability/soak.py`` (minutes). Each request ends in exactly one of:

- ``ok``: answered 200 / OK with exactly the features of an unloaded reference call;
- ``wrong``: answered 200 / OK with other features (a failure: an accepted request must complete correctly);
- ``shed``: refused at admission, 429 / RESOURCE_EXHAUSTED (with its Retry-After / ``retry-after-s``);
- ``refused``: never accepted because the server had stopped listening (a drain): REST connection refused;
  gRPC UNAVAILABLE before the call reached the server (connection refused or GOAWAY);
- ``failed``: any other answer (503, 504, 500, INTERNAL, ...);
- ``lost``: no answer at all after it was sent (connection reset or closed mid-request, client timeout).
  Classified conservatively: a gRPC UNAVAILABLE that does not say the connection was refused counts as lost,
  and so do CANCELLED and a REST connection reset, until `reconcile` shows from the server's own count that
  the request never reached the service.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service
from featureserve.v1.service_pb2_grpc import FeatureServiceStub

KINDS = ("ok", "wrong", "shed", "refused", "failed", "lost")
# Words in an UNAVAILABLE status that say the call never reached a server that was listening.
NOT_CONNECTED = ("connection refused", "failed to connect", "goaway", "connect failed", "no connection")
CALL_TIMEOUT_S = 120.0
IDLE_REUSE_S = 1.0


@dataclass
class Outcome:
    """How one request ended, when it started (monotonic) and how long it took."""

    kind: str
    started: float
    latency_s: float
    detail: str = ""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Summary:
    """Counts by outcome and the latency of the accepted requests that completed."""

    counts: dict[str, int]
    ok_p50_ms: float
    ok_p95_ms: float
    ok_max_ms: float
    duration_s: float
    details: dict[str, int] = field(default_factory=dict)

    @property
    def tried(self) -> int:
        """Requests sent."""
        return sum(self.counts.values())

    @property
    def accepted(self) -> int:
        """Requests the server took on (neither shed nor refused)."""
        return self.tried - self.counts["shed"] - self.counts["refused"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "tried": self.tried,
            "accepted": self.accepted,
            **self.counts,
            "ok_per_s": self.counts["ok"] / self.duration_s if self.duration_s else 0.0,
            "ok_p50_ms": self.ok_p50_ms,
            "ok_p95_ms": self.ok_p95_ms,
            "ok_max_ms": self.ok_max_ms,
            "duration_s": self.duration_s,
            "details": self.details,
        }


def summarize(outcomes: Sequence[Outcome], duration_s: float | None = None) -> Summary:
    """`Summary` of ``outcomes``; ``duration_s`` defaults to first start to last end."""
    counts = {kind: 0 for kind in KINDS}
    for outcome in outcomes:
        counts[outcome.kind] += 1
    latencies = [o.latency_s * 1000 for o in outcomes if o.kind == "ok"]
    if duration_s is None and outcomes:
        duration_s = max(o.started + o.latency_s for o in outcomes) - min(o.started for o in outcomes)
    details = Counter(f"{o.kind}: {o.detail}" for o in outcomes if o.kind not in ("ok", "shed"))
    return Summary(
        counts,
        percentile(latencies, 50),
        percentile(latencies, 95),
        max(latencies, default=float("nan")),
        duration_s or 0.0,
        dict(details.most_common(10)),
    )


def _digest(*parts: bytes | str) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


class RestTarget:
    """``POST /v1/extract`` of one image (multipart), base64 descriptors; compared with a reference answer.

    A minimal HTTP/1.1 client on asyncio streams (a pool of keep-alive connections, or one connection per
    request): the request bytes are built once, and only 200 answers are parsed as JSON. httpx costs too
    much CPU per request to offer ten times a model's capacity from the same two cores as the server.
    """

    def __init__(self, base_url: str, image: bytes, fields: dict[str, str], keepalive: bool = True) -> None:
        request = httpx.Request("POST", f"{base_url}/v1/extract", files={"image": ("image", image)}, data=fields)
        body = request.read()
        host_port = base_url.split("://", 1)[1]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.keepalive = keepalive
        head = (
            f"POST /v1/extract HTTP/1.1\r\nhost: {host_port}\r\ncontent-type: {request.headers['content-type']}\r\n"
            f"content-length: {len(body)}\r\nconnection: {'keep-alive' if keepalive else 'close'}\r\n\r\n"
        )
        self.request = head.encode() + body
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.reference: str | None = None

    @staticmethod
    def digest(body: dict[str, Any]) -> str:
        """Fingerprint of an extract answer: keypoints, scores, descriptors."""
        return _digest(repr(body["keypoints"]), repr(body["scores"]), body["descriptors"]["data"])

    def _idle_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        # The server closes a connection idle for 5 s (uvicorn's keep-alive timeout); a request written
        # into one it is closing is never read. So connections idle for over a second are not reused.
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < IDLE_REUSE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    async def _exchange(self) -> tuple[int, dict[str, str], bytes]:
        if (connection := self._idle_connection()) is not None:
            reader, writer = connection
        else:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as error:
                raise ConnectionRefusedError(str(error)) from error
        try:
            writer.write(self.request)
            await writer.drain()
            status_line = await reader.readuntil(b"\r\n")
            headers: dict[str, str] = {}
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if self.keepalive and headers.get("connection", "").lower() != "close":
            self.idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()
        return int(status_line.split()[1]), headers, body

    async def call(self) -> Outcome:
        """One request, classified."""
        started = time.monotonic()
        try:
            status, headers, body = await asyncio.wait_for(self._exchange(), CALL_TIMEOUT_S)
        except ConnectionRefusedError as error:
            return Outcome("refused", started, time.monotonic() - started, f"ConnectError: {error}"[:120])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as error:
            return Outcome("lost", started, time.monotonic() - started, f"{type(error).__name__}: {error}"[:120])
        latency = time.monotonic() - started
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            return Outcome("shed", started, latency)
        if status != 200:
            return Outcome("failed", started, latency, f"{status} {body[:100]!r}")
        digest = self.digest(json.loads(body))
        if self.reference is None:
            self.reference = digest
        return Outcome("ok" if digest == self.reference else "wrong", started, latency)

    async def close(self) -> None:
        """Close the connections."""
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


class GrpcTarget:
    """``Extract`` of one image over one channel; compared with a reference answer."""

    def __init__(self, target: str, image: bytes, options: dict[str, Any]) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = FeatureServiceStub(self.channel)
        self.request = service.ExtractRequest(image=pb.Image(encoded=image), options=pb.ExtractOptions(**options))
        self.reference: str | None = None

    async def call(self) -> Outcome:
        """One call, classified."""
        started = time.monotonic()
        try:
            response = await self.stub.Extract(self.request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            latency = time.monotonic() - started
            code, details = error.code(), error.details() or ""
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                # grpcio's own limit (max_in_flight_requests) is answered before the service sees the call.
                return Outcome("shed", started, latency, "grpcio" if "Concurrent RPC limit" in details else "")
            if code == grpc.StatusCode.UNAVAILABLE and any(w in details.lower() for w in NOT_CONNECTED):
                return Outcome("refused", started, latency, code.name)
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                return Outcome("lost", started, latency, f"{code.name}: {details}"[:120])
            return Outcome("failed", started, latency, f"{code.name}: {details}"[:120])
        features = response.features
        digest = _digest(features.keypoints.data, features.scores.data, features.descriptors.data)
        if self.reference is None:
            self.reference = digest
        return Outcome("ok" if digest == self.reference else "wrong", started, time.monotonic() - started)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()


Target = RestTarget | GrpcTarget
FINAL_COUNTS = re.compile(r"stopped: answered (\d+) REST /v1 requests and (\d+) gRPC calls; (\d+) still in flight")


def final_counts(server_log: str) -> tuple[int, int, int]:
    """``(REST /v1 requests answered, gRPC calls answered, still in flight)`` from the server's exit line."""
    found = FINAL_COUNTS.findall(server_log)
    assert found, "the server logged no final counts"
    rest, grpc_calls, in_flight = found[-1]
    return int(rest), int(grpc_calls), int(in_flight)


def reconcile(outcomes: list[Outcome], server_answered: int, server_in_flight: int) -> list[Outcome]:
    """Reclassify ``lost`` outcomes as ``refused`` when the server's own count proves they never reached it.

    The proof: the service answered exactly as many requests as this client received answers from it, and
    none was left in flight at exit; so every request the client saw dropped was dropped before the
    service got it: a gRPC call grpcio had received but not handed to the application when it stopped
    (CANCELLED), or a TCP connection the kernel had completed but the server had not accepted when it
    closed its listening socket (reset). Otherwise the outcomes are returned unchanged (they stay ``lost``).
    """
    received = sum(o.kind in ("ok", "wrong", "failed") or (o.kind == "shed" and o.detail != "grpcio") for o in outcomes)
    if server_answered != received or server_in_flight != 0:
        return outcomes
    return [
        Outcome("refused", o.started, o.latency_s, f"never reached the service ({o.detail.split(':')[0]})")
        if o.kind == "lost"
        else o
        for o in outcomes
    ]


async def sequential(target: Target, count: int) -> list[Outcome]:
    """``count`` requests one after another (the unloaded latency)."""
    return [await target.call() for _ in range(count)]


async def closed_loop(target: Target, concurrency: int, duration_s: float) -> list[Outcome]:
    """``concurrency`` clients each sending back to back for ``duration_s`` (the capacity)."""
    end = time.monotonic() + duration_s
    outcomes: list[Outcome] = []

    async def client() -> None:
        while time.monotonic() < end:
            outcomes.append(await target.call())

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes


async def open_loop(
    target: Target,
    rate: float,
    duration_s: float,
    at: Sequence[tuple[float, Callable[[], None]]] = (),
) -> list[Outcome]:
    """Requests sent at ``rate`` per second for ``duration_s``, whatever the answers (an open loop: the
    clients of a saturated service do not slow down); ``at``: ``(seconds, callback)`` run on the way."""
    start = time.monotonic()
    tasks: list[asyncio.Task[Outcome]] = []
    pending = sorted(at, key=lambda item: item[0])
    for index in range(int(rate * duration_s)):
        send_at = start + index / rate
        while pending and pending[0][0] <= send_at - start:
            pending.pop(0)[1]()
        delay = send_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(target.call()))
    for _, callback in pending:
        callback()
    return list(await asyncio.gather(*tasks))
