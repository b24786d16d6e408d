"""REST throughput and latency under concurrency, and tiny-cnn's REST throughput vs in-process batches.

Usage (from the repository root):
    python -m benchmarks.performance.throughput            # full run
    python -m benchmarks.performance.throughput --quick    # short run

The script restarts itself once under the glibc malloc settings that ``featureserve serve`` gives
itself (``featureserve.service.serve.MALLOC_ENVIRONMENT``), so in-process and REST figures share them;
``--no-server-setup`` keeps the in-process side on the glibc defaults. The report records them.

1. In-process reference: each model's ``extract`` on lists of 1 and 8 copies of the decoded test image,
   repeated (the server's thread settings: ``torch.set_num_threads(cpu_threads)``, OpenCV models with
   ``num_threads=cpu_threads``), before any server runs; called from the main thread (the reference of
   the target) and from a worker thread, as the server calls it.
2. Main run: one server with orb, sift and tiny-cnn; for each client, model and concurrency level
   (1, 4, 16, 64) ``max(64, 8 * concurrency)`` requests from asyncio (``concurrency`` keep-alive
   connections; one warm-up request per connection first), capped at ``--level-timeout-s``. Clients:
   ``httpx`` (one ``httpx.AsyncClient``) and ``raw`` (a minimal HTTP/1.1 client on asyncio streams that
   takes almost no CPU; on a small machine httpx's own CPU use at high concurrency is a large share of
   it). Throughput = successful responses / wall time of the level. The batch-size histogram
   (``featureserve_batch_size``) and the server's and the client's CPU seconds are read before and after
   every level.
3. Sweep: tiny-cnn alone at concurrency 16 under several ``max_batch`` x ``max_delay_ms`` settings (httpx
   client), each with its REST / in-process-batched ratio (target: >= 0.9).

Every request is the same JPEG (quality 95) 640x480 photo as a prebuilt multipart body with
``max_keypoints`` 1000 and descriptors as base64 by default (``--descriptors none`` drops them).
Client and server share this machine's CPUs; the CPU columns show how much each took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from benchmarks.common import (
    LOOPBACK,
    RESULTS_DIR,
    ForeignLoad,
    add_shared_arguments,
    benchmark_image,
    bucket_counts,
    busy_processes,
    describe_foreign_load,
    describe_git,
    describe_performance_env,
    encode_image,
    histogram,
    histogram_delta,
    machine_info,
    multipart_body,
    process_cpu_seconds,
    server_process_setup,
    summarize_ms,
)
from benchmarks.servers import ServerProcess, serving
from featureserve.models import KeypointOptions, load_model_with_knobs
from featureserve.service.workers.decoding import DecodeLimits, decode_image
from training.evaluation.records import format_table, now_iso, write_results

DEFAULT_OUT = RESULTS_DIR / "throughput.json"
DESCRIPTOR_FIELDS = {
    "base64": {"include_descriptors": "true", "descriptor_encoding": "base64"},
    "none": {"include_descriptors": "false"},
}
TARGET_RATIO = 0.9
BATCHED_MODEL = "tiny-cnn"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["orb", "sift", BATCHED_MODEL])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--min-requests", type=int, default=64, help="requests per level: max(this, 8 * c)")
    parser.add_argument("--requests-per-connection", type=int, default=8, help="the 8 in max(64, 8 * c)")
    parser.add_argument("--level-timeout-s", type=float, default=120.0, help="hard time cap per level")
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--descriptors", choices=list(DESCRIPTOR_FIELDS), default="base64")
    parser.add_argument("--max-batch", type=int, default=8, help="FEATURESERVE_MAX_BATCH of the main run")
    parser.add_argument("--max-delay-ms", type=float, default=10.0, help="FEATURESERVE_MAX_DELAY_MS of the main run")
    parser.add_argument(
        "--sweep",
        nargs="*",
        default=["1x0", "4x10", "8x5", "8x10", "8x20", "16x10"],
        help="tiny-cnn settings MAX_BATCHxMAX_DELAY_MS run at --sweep-concurrency (none: skip the sweep)",
    )
    parser.add_argument("--sweep-concurrency", type=int, default=16)
    parser.add_argument("--clients", nargs="+", choices=["httpx", "raw"], default=["httpx", "raw"])
    parser.add_argument("--sweep-client", choices=["httpx", "raw"], default="httpx")
    parser.add_argument("--inprocess-batches", nargs="+", type=int, default=[1, 8], help="list sizes in-process")
    parser.add_argument("--inprocess-images", type=int, default=64, help="images per in-process measurement")
    parser.add_argument("--quick", action="store_true", help="short run: c 1 and 16, fewer requests, a 2-row sweep")
    add_shared_arguments(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency = [1, 16]
        args.min_requests, args.requests_per_connection = 16, 2
        args.sweep = ["8x5", "8x20"]
        args.inprocess_images = 16
        args.level_timeout_s = min(args.level_timeout_s, 60.0)
    if 8 not in args.inprocess_batches:
        args.inprocess_batches.append(8)
    return args


def parse_sweep(items: Sequence[str]) -> list[tuple[int, float]]:
    """``["8x10", ...]`` -> ``[(8, 10.0), ...]``."""
    settings = []
    for item in items:
        batch, _, delay = item.lower().partition("x")
        settings.append((int(batch), float(delay or 0)))
    return settings


# ---------------------------------------------------------------------------------------------------
# In-process reference


def in_process(
    models: Sequence[str], image: Any, batches: Sequence[int], images: int, cpu_threads: int, max_keypoints: int
) -> dict[str, dict[str, Any]]:
    """Images/s of ``model.extract`` on lists of ``b`` copies of ``image`` for each ``b`` in ``batches``.

    Measured twice: called from the main thread (``batch_8``: the reference of the target), and from a
    one-thread executor as the server's model worker calls it (``thread_batch_8``). The two differ where
    the allocator treats threads differently (glibc gives other threads their own malloc arenas).
    """
    torch.set_num_threads(cpu_threads)
    options = KeypointOptions(max_keypoints=max_keypoints)
    results: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="inprocess-worker") as worker:
        for name in models:
            model = load_model_with_knobs(name, num_threads=cpu_threads)
            model.warmup()
            results[name] = {"conf": dict(model.conf)}
            for where in ("main", "thread"):
                for batch in batches:
                    batch_images, batch_options = [image] * batch, [options] * batch
                    if where == "main":
                        call = functools.partial(model.extract, batch_images, batch_options)
                    else:
                        call = functools.partial(_in_worker, worker, model.extract, batch_images, batch_options)
                    repeats = max(2, -(-images // batch))
                    call()  # warm-up for this batch shape
                    seconds = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        call()
                        seconds.append(time.perf_counter() - start)
                    rate = batch * repeats / sum(seconds)
                    key = f"batch_{batch}" if where == "main" else f"thread_batch_{batch}"
                    results[name][key] = {
                        "batch": batch,
                        "called_from": "main thread" if where == "main" else "worker thread",
                        "repeats": repeats,
                        "images_per_s": rate,
                        "ms_per_batch": summarize_ms(seconds),
                    }
                    print(f"  in-process {name} list of {batch} ({where}): {rate:.1f} images/s", flush=True)
    return results


def _in_worker(worker: ThreadPoolExecutor, function: Any, *args: Any) -> Any:
    return worker.submit(function, *args).result()


# ---------------------------------------------------------------------------------------------------
# REST load: two clients with one interface, ``send(slot) -> status code`` (slot = connection number)


class HttpxSender:
    """One ``httpx.AsyncClient`` with ``concurrency`` keep-alive connections."""

    def __init__(self, url: str, body: bytes, content_type: str, concurrency: int, timeout_s: float) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s), trust_env=False)
        self.url, self.body, self.headers = url, body, {"content-type": content_type}

    async def send(self, slot: int) -> int:
        """POST the body once; the status code."""
        response = await self.client.post(self.url, content=self.body, headers=self.headers)
        return response.status_code

    async def aclose(self) -> None:
        """Close the connections."""
        await self.client.aclose()


class RawSender:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, one connection per slot.

    It does almost no work per request, so on a small machine it shows what the server can do when the
    client takes (nearly) no CPU from it. Responses must carry Content-Length (the service's do).
    """

    def __init__(self, url: str, body: bytes, content_type: str, concurrency: int, timeout_s: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or LOOPBACK, parsed.port or 80
        head = (
            f"POST {parsed.path} HTTP/1.1\r\nhost: {parsed.netloc}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode("latin-1") + body
        self.timeout_s = timeout_s
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [None] * concurrency

    async def send(self, slot: int) -> int:
        """POST the body once on connection ``slot`` (opened on first use); the status code."""
        try:
            return await asyncio.wait_for(self._send(slot), self.timeout_s)
        except BaseException:
            self._drop(slot)
            raise

    async def _send(self, slot: int) -> int:
        reused = self.connections[slot] is not None
        if not reused:
            self.connections[slot] = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.connections[slot]  # type: ignore[misc]
        try:
            writer.write(self.request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            # The server closes keep-alive connections idle longer than its timeout (uvicorn: 5 s), e.g.
            # while the other connections finish their warm-up; like httpx, retry once on a fresh one.
            if not reused or (isinstance(error, asyncio.IncompleteReadError) and error.partial):
                raise
            self._drop(slot)
            return await self._send(slot)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
        if "content-length" not in fields:
            raise ValueError("response without content-length")
        await reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").strip() == "close":
            self._drop(slot)
        return status

    def _drop(self, slot: int) -> None:
        connection = self.connections[slot]
        self.connections[slot] = None
        if connection is not None:
            connection[1].close()

    async def aclose(self) -> None:
        """Close the connections."""
        for slot in range(len(self.connections)):
            self._drop(slot)


CLIENTS = {"httpx": HttpxSender, "raw": RawSender}


async def _metrics_text(base_url: str) -> str:
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        response = await client.get(f"{base_url}/metrics")
        response.raise_for_status()
        return response.text


def _server_view(before: str, after: str, model: str) -> dict[str, Any]:
    """Batch sizes, model time per batch and queue wait during a level, from two /metrics readings."""
    labels = {"model": model}
    batch = histogram_delta(
        histogram(before, "featureserve_batch_size", labels), histogram(after, "featureserve_batch_size", labels)
    )
    inference = histogram_delta(
        histogram(before, "featureserve_inference_seconds", labels),
        histogram(after, "featureserve_inference_seconds", labels),
    )
    wait = histogram_delta(
        histogram(before, "featureserve_queue_wait_seconds", labels),
        histogram(after, "featureserve_queue_wait_seconds", labels),
    )
    batches = batch["count"]
    return {
        "batches": round(batches),
        "images_in_batches": round(batch["sum"]),
        "mean_batch_size": batch["sum"] / batches if batches else None,
        "batch_size_histogram": bucket_counts(batch),
        "mean_inference_ms_per_batch": 1000 * inference["sum"] / inference["count"] if inference["count"] else None,
        "mean_queue_wait_ms": 1000 * wait["sum"] / wait["count"] if wait["count"] else None,
    }


@dataclass
class ClosedLoop:
    """What a `closed_loop` level measured."""

    latencies: list[float]  # seconds, of the answers 200
    statuses: Counter[str]  # answers by status code, and failed sends by exception type
    issued: int
    wall_s: float
    cancelled: bool  # connections still busy at the time cap were cancelled


async def closed_loop(sender: HttpxSender | RawSender, concurrency: int, requests: int, cap_s: float) -> ClosedLoop:
    """``requests`` sends with ``concurrency`` connections each sending its next as its last is answered, stopping
    early at ``cap_s`` seconds (connections still busy 5 s later are cancelled)."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    issued = 0
    start = time.perf_counter()
    stop_at = start + cap_s

    async def connection(slot: int) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < stop_at:
            issued += 1
            sent = time.perf_counter()
            try:
                status = await sender.send(slot)
            except (httpx.HTTPError, OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
                statuses[type(error).__name__] += 1
                continue
            statuses[str(status)] += 1
            if status == 200:
                latencies.append(time.perf_counter() - sent)

    tasks = [asyncio.create_task(connection(slot)) for slot in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=cap_s + 5.0)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return ClosedLoop(latencies, statuses, issued, time.perf_counter() - start, bool(pending))


async def run_level(
    server: ServerProcess,
    model: str,
    body: bytes,
    content_type: str,
    concurrency: int,
    requests: int,
    cap_s: float,
    client: str = "httpx",
    foreign: ForeignLoad | None = None,
) -> dict[str, Any]:
    """``requests`` POSTs with ``concurrency`` in flight, stopping early at ``cap_s`` seconds.

    First every connection sends one warm-up request (this opens the connections and lets the batcher see
    this level's load once); then /metrics and the CPU counters are read, the level runs, and they are
    read again.
    """
    sender = CLIENTS[client](f"{server.url}/v1/extract", body, content_type, concurrency, cap_s)
    try:
        warmup = await asyncio.gather(*(sender.send(slot) for slot in range(concurrency)), return_exceptions=True)
        failed = [r for r in warmup if r != 200]
        if failed:
            print(f"  warning: {len(failed)} warm-up requests failed: {failed[0]!r}")
        metrics_before = await _metrics_text(server.url)
        server_cpu_before, client_cpu_before = process_cpu_seconds(server.pid), time.process_time()
        foreign_before = foreign.total_s() if foreign else None
        level = await closed_loop(sender, concurrency, requests, cap_s)
        server_cpu_after, client_cpu_after = process_cpu_seconds(server.pid), time.process_time()
        foreign_after = foreign.total_s() if foreign else None
        metrics_after = await _metrics_text(server.url)
    finally:
        await sender.aclose()
    latencies, wall = level.latencies, level.wall_s
    ok = len(latencies)
    server_cpu = (
        server_cpu_after - server_cpu_before if server_cpu_after is not None and server_cpu_before is not None else None
    )
    return {
        "model": model,
        "client": client,
        "concurrency": concurrency,
        "requests_planned": requests,
        "requests_issued": level.issued,
        "ok": ok,
        "statuses": dict(level.statuses),
        "hit_time_cap": level.issued < requests or level.cancelled,
        "wall_s": wall,
        "images_per_s": ok / wall if wall > 0 else 0.0,
        "latency_ms": summarize_ms(latencies),
        "server_cpu_s_per_s": server_cpu / wall if server_cpu is not None else None,
        "client_cpu_s_per_s": (client_cpu_after - client_cpu_before) / wall,
        "others_cpu_s_per_s": (foreign_after - foreign_before) / wall
        if foreign_after is not None and foreign_before is not None
        else None,
        "server": _server_view(metrics_before, metrics_after, model),
    }


def print_level(row: dict[str, Any]) -> None:
    """One progress line per level."""
    latency = row["latency_ms"]
    print(
        f"  {row['client']:>5} {row['model']:>8} c={row['concurrency']:<3} {row['images_per_s']:7.1f} img/s  "
        f"p50 {latency['p50']:8.1f} ms  p95 {latency['p95']:8.1f} ms  ok {row['ok']}/{row['requests_planned']}  "
        f"mean batch {row['server']['mean_batch_size'] or 0:.2f}",
        flush=True,
    )


async def run_main(
    args: argparse.Namespace,
    bodies: dict[str, bytes],
    content_types: dict[str, str],
    server: ServerProcess,
    foreign: ForeignLoad,
) -> list[dict]:
    """Every model at every concurrency level against one server."""
    rows = []
    # Clients alternate level by level, so both meet the server in the same state (allocator history).
    for model in args.models:
        for concurrency in args.concurrency:
            for client in args.clients:
                requests = max(args.min_requests, args.requests_per_connection * concurrency)
                body, content_type = bodies[model], content_types[model]
                row = await run_level(
                    server, model, body, content_type, concurrency, requests, args.level_timeout_s, client, foreign
                )
                print_level(row)
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------
# Report


def render_markdown(report: dict[str, Any]) -> str:
    """Settings, the in-process reference, the main table, the tiny-cnn comparison and the sweep."""
    machine, settings = report["machine"], report["settings"]
    versions = machine["versions"]
    main = settings["main_server_settings"]
    lines = [
        "# REST throughput under concurrency",
        "",
        f"Date: {report['date']}. Machine: {machine['platform']}, {machine['processor']}, "
        f"{machine['cpu_count']} CPUs (client and server share them). Python {machine['python']}, torch "
        f"{versions['torch']}, OpenCV {machine['opencv_build']}, uvicorn {versions['uvicorn']} (h11 {versions['h11']}, "
        f"httptools {versions['httptools']}, uvloop {versions['uvloop']}), httpx {versions['httpx']}.",
        f"Request: {settings['image']}, {settings['format'].upper()} ({settings['upload_image_bytes']} bytes; "
        f"multipart body {settings['upload_body_bytes']} bytes), max_keypoints {settings['max_keypoints']}, "
        f"descriptors: {settings['descriptors']}. Requests per level: max({settings['min_requests']}, "
        f"{settings['requests_per_connection']} x concurrency) after `concurrency` warm-up requests; time cap "
        f"{settings['level_timeout_s']:g} s per level.",
        f"Main server: models {main['models']}, max_batch {main['max_batch']}, max_delay_ms {main['max_delay_ms']}, "
        f"queue_size {main['queue_size']}, cpu_threads {main['cpu_threads']}, decode_threads {main['decode_threads']}.",
        f"Performance-relevant environment (client and server): "
        f"{describe_performance_env(machine['performance_env'])}. Code: {_code_line(report)}.",
        f"Other busy processes before/after: {report['busy_processes_before'] or 'none'} / "
        f"{report['busy_processes_after'] or 'none'}. {describe_foreign_load(report['foreign_load'])}; "
        f"during the in-process part {report['in_process_others_cpu_s_per_s']:.2f} cores.",
        "",
        "## In-process `model.extract` (images/s)",
        "",
    ]
    batches = settings["inprocess_batches"]
    lines.append(
        format_table(
            [
                "model",
                *(f"list of {b}, main thread" for b in batches),
                *(f"list of {b}, worker thread" for b in batches),
            ],
            [
                [
                    name,
                    *(values[f"batch_{b}"]["images_per_s"] for b in batches),
                    *(values[f"thread_batch_{b}"]["images_per_s"] for b in batches),
                ]
                for name, values in report["in_process"].items()
            ],
        )
    )
    lines += [
        "",
        "worker thread: `model.extract` submitted to a one-thread executor, as the server's model worker runs it. "
        f"In-process setup as the server's: {', '.join(settings['in_process_setup']) or 'none'}.",
    ]
    lines += ["", "## REST, main server", ""]
    headers = [
        "client",
        "model",
        "concurrency",
        "images/s",
        "p50 ms",
        "p95 ms",
        "ok/planned",
        "mean batch",
        "batch sizes",
        "model ms/batch",
        "queue wait ms",
        "server CPU",
        "client CPU",
        "others' CPU",
    ]
    ordered = sorted(report["main"], key=lambda row: settings["clients"].index(row["client"]))  # stable sort
    lines.append(format_table(headers, [_level_cells(row) for row in ordered]))
    lines += [
        "",
        "batch sizes: `images per batch: number of batches` during the level (from the `featureserve_batch_size` "
        "histogram, whose buckets are 1, 2, 4, 8, 16, ...; warm-up requests excluded). "
        "model ms/batch and queue wait: means from `featureserve_inference_seconds` and "
        "`featureserve_queue_wait_seconds`. CPU columns: CPU-seconds per second of wall time (2.0 = both cores); "
        "others' = processes outside this benchmark (noise from other jobs on the machine).",
        "",
        f"## {BATCHED_MODEL}: REST at concurrency {settings['sweep_concurrency']} vs in-process list of 8",
        "",
    ]
    rows = []
    for row in report["comparison"]:
        rows.append(
            [
                row["label"],
                row["client"],
                row["max_batch"],
                row["max_delay_ms"],
                row["images_per_s"],
                row["inprocess_batch8_images_per_s"],
                row["ratio"],
                "yes" if row["ratio"] >= TARGET_RATIO else "no",
                row["inprocess_thread_batch8_images_per_s"],
                row["ratio_vs_worker_thread"],
                row["p50_ms"],
                row["p95_ms"],
                row["mean_batch_size"],
                _histogram_cell(row["batch_size_histogram"]),
                row["others_cpu_s_per_s"],
            ]
        )
    lines.append(
        format_table(
            [
                "run",
                "client",
                "max_batch",
                "max_delay_ms",
                "REST images/s",
                "in-process images/s (main thread)",
                "ratio",
                f">= {TARGET_RATIO:g}",
                "in-process images/s (worker thread)",
                "ratio vs worker thread",
                "p50 ms",
                "p95 ms",
                "mean batch",
                "batch sizes",
                "others' CPU",
            ],
            rows,
        )
    )
    lines += [
        "",
        "ratio = REST images/s / in-process images/s of `model.extract` on a list of 8 images called from the "
        "main thread (the target's reference). The worker-thread figure is the same call made from another "
        "thread, as the service makes it.",
        "",
    ]
    return "\n".join(lines)


def _code_line(report: dict[str, Any]) -> str:
    """The code every server loaded; more than one state means the checkout changed during the run."""
    states = [report["settings"]["main_server_git"], *(run["server_git"] for run in report.get("sweep", []))]
    unique: dict[str, dict[str, Any]] = {}
    for state in states:
        unique.setdefault(state["featureserve_sources_sha1"], state)
    if len(unique) == 1:
        return describe_git(states[0])
    return "CHANGED DURING THE RUN: " + "; then ".join(describe_git(state) for state in unique.values())


def _histogram_cell(counts: dict[str, int]) -> str:
    """``{"1": 2, "2": 0, "5-8": 7}`` -> ``"1: 2, 5-8: 7"`` (sizes with no batches left out)."""
    return ", ".join(f"{label}: {count}" for label, count in counts.items() if count) or "-"


def _level_cells(row: dict[str, Any]) -> list[Any]:
    server = row["server"]
    flag = " (time cap)" if row["hit_time_cap"] else ""
    return [
        row["client"],
        row["model"],
        row["concurrency"],
        row["images_per_s"],
        row["latency_ms"]["p50"],
        row["latency_ms"]["p95"],
        f"{row['ok']}/{row['requests_planned']}{flag}",
        server["mean_batch_size"],
        _histogram_cell(server["batch_size_histogram"]),
        server["mean_inference_ms_per_batch"],
        server["mean_queue_wait_ms"],
        row["server_cpu_s_per_s"],
        row["client_cpu_s_per_s"],
        row["others_cpu_s_per_s"],
    ]


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """In-process reference, main run, sweep; print and write the results."""
    args = parse_args(argv)
    busy_before = busy_processes()
    if busy_before:
        print(f"warning: other busy processes, figures will be noisy: {busy_before}")
    machine = machine_info()
    in_process_setup = [] if args.no_server_setup else server_process_setup()
    image = benchmark_image(args.width, args.height)
    data = encode_image(image, args.format, args.jpeg_quality)
    # In colour, as the server decodes for colour models; grey models get the JPEG's luma there (docs/api.md), which
    # differs from the grey conversion of this array by a few levels at some pixels.
    decoded = decode_image(data, DecodeLimits(32 * 1024 * 1024, 40_000_000))
    bodies, content_types = {}, {}
    for model in args.models:
        fields = {"model": model, "max_keypoints": str(args.max_keypoints), **DESCRIPTOR_FIELDS[args.descriptors]}
        bodies[model], content_types[model] = multipart_body(data, args.format, fields)

    # Daemon thread: stopped at the end, and it cannot outlive the script if something fails before.
    foreign = ForeignLoad().__enter__()
    print("in-process reference", flush=True)
    started, foreign_before = time.monotonic(), foreign.total_s()
    reference = in_process(
        args.models, decoded, args.inprocess_batches, args.inprocess_images, args.cpu_threads, args.max_keypoints
    )
    in_process_others = (foreign.total_s() - foreign_before) / (time.monotonic() - started)
    common_settings = {"cpu_threads": args.cpu_threads}
    main_settings = {**common_settings, "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms}
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "date": now_iso(),
        "machine": machine,
        "busy_processes_before": busy_before,
        "settings": {
            "image": f"skimage.data.astronaut() resized to {args.width}x{args.height} RGB",
            "format": args.format,
            "jpeg_quality": args.jpeg_quality,
            "upload_image_bytes": len(data),
            "upload_body_bytes": len(next(iter(bodies.values()))),
            "max_keypoints": args.max_keypoints,
            "descriptors": args.descriptors,
            "request_fields": DESCRIPTOR_FIELDS[args.descriptors],
            "models": args.models,
            "concurrency": args.concurrency,
            "min_requests": args.min_requests,
            "requests_per_connection": args.requests_per_connection,
            "level_timeout_s": args.level_timeout_s,
            "cpu_threads": args.cpu_threads,
            "inprocess_batches": args.inprocess_batches,
            "inprocess_images": args.inprocess_images,
            "in_process_setup": in_process_setup,
            "sweep": args.sweep,
            "sweep_concurrency": args.sweep_concurrency,
            "clients": args.clients,
            "sweep_client": args.sweep_client,
            "client_notes": {
                "httpx": "asyncio + one httpx.AsyncClient per level, max_connections = concurrency, prebuilt body",
                "raw": "asyncio streams, one HTTP/1.1 keep-alive connection per slot, prebuilt request bytes",
            },
            "quick": args.quick,
        },
        "in_process": reference,
        "in_process_others_cpu_s_per_s": in_process_others,
    }

    print(f"main run: {main_settings}", flush=True)
    with serving(args.models, args.models[0], main_settings) as server:
        report["settings"]["main_server_env"] = server.env
        report["settings"]["main_server_settings"] = server.settings
        report["settings"]["main_server_git"] = server.extra["git"]
        report["main"] = asyncio.run(run_main(args, bodies, content_types, server, foreign))
    report["settings"]["main_server_exit_code"] = server.extra.get("exit_code")

    comparison = []
    batched_reference = reference.get(BATCHED_MODEL, {})
    if BATCHED_MODEL in args.models and "batch_8" in batched_reference:
        for row in report["main"]:
            if row["model"] == BATCHED_MODEL and row["concurrency"] == args.sweep_concurrency:
                comparison.append(_comparison_row("main", args.max_batch, args.max_delay_ms, row, batched_reference))
        sweep_runs = []
        for max_batch, max_delay_ms in parse_sweep(args.sweep):
            settings = {**common_settings, "max_batch": max_batch, "max_delay_ms": max_delay_ms}
            print(f"sweep: {settings}", flush=True)
            requests = max(args.min_requests, args.requests_per_connection * args.sweep_concurrency)
            with serving([BATCHED_MODEL], BATCHED_MODEL, settings) as server:
                row = asyncio.run(
                    run_level(
                        server,
                        BATCHED_MODEL,
                        bodies[BATCHED_MODEL],
                        content_types[BATCHED_MODEL],
                        args.sweep_concurrency,
                        requests,
                        args.level_timeout_s,
                        args.sweep_client,
                        foreign,
                    )
                )
            print_level(row)
            sweep_runs.append(
                {
                    "server_env": server.env,
                    "server_git": server.extra["git"],
                    "exit_code": server.extra.get("exit_code"),
                    **row,
                }
            )
            comparison.append(_comparison_row("sweep", max_batch, max_delay_ms, row, batched_reference))
        report["sweep"] = sweep_runs
    report["comparison"] = comparison
    report["target"] = {
        "statement": f"{BATCHED_MODEL} REST images/s at concurrency {args.sweep_concurrency} >= "
        f"{TARGET_RATIO:g} x in-process images/s of model.extract on lists of 8 images",
    }
    foreign.__exit__()
    report["foreign_load"] = foreign.summary()
    report["busy_processes_after"] = busy_processes()
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    markdown = render_markdown(report)
    print(markdown)
    write_results(args.out, report, markdown)


def _comparison_row(
    label: str, max_batch: int, max_delay_ms: float, row: dict[str, Any], reference: dict[str, Any]
) -> dict:
    main_thread = reference["batch_8"]["images_per_s"]
    worker_thread = reference["thread_batch_8"]["images_per_s"]
    return {
        "label": label,
        "client": row["client"],
        "max_batch": max_batch,
        "max_delay_ms": max_delay_ms,
        "concurrency": row["concurrency"],
        "images_per_s": row["images_per_s"],
        "inprocess_batch8_images_per_s": main_thread,
        "ratio": row["images_per_s"] / main_thread,
        "inprocess_thread_batch8_images_per_s": worker_thread,
        "ratio_vs_worker_thread": row["images_per_s"] / worker_thread,
        "p50_ms": row["latency_ms"]["p50"],
        "p95_ms": row["latency_ms"]["p95"],
        "mean_batch_size": row["server"]["mean_batch_size"],
        "batch_size_histogram": row["server"]["batch_size_histogram"],
        "server_cpu_s_per_s": row["server_cpu_s_per_s"],
        "client_cpu_s_per_s": row["client_cpu_s_per_s"],
        "others_cpu_s_per_s": row["others_cpu_s_per_s"],
    }


if __name__ == "__main__":
    main()
