"""Soak: minutes of overload, bad input and injected faults on one server, watching its memory.

    .venv/bin/python -m benchmarks.reliability.soak [--minutes 10] [--factor 5]

One ``featureserve serve`` on 127.0.0.1 with ``sift`` and the test-only ``faulty`` model (``benchmarks/faults.py``,
registered through ``FEATURESERVE_PLUGINS``) takes, for ``--minutes``:
- REST and gRPC extract requests for ``sift`` in an open loop at ``--factor`` x its measured capacity (half
  each), every answer checked against an unloaded reference;
- bad input, one request a second, alternating REST and gRPC: random bytes, a truncated PNG, an image under
  16 px, an option out of range (each must get its 4xx / INVALID_ARGUMENT);
- faults: an image that kills ``faulty``'s worker thread every ``--crash-every`` seconds and one that hangs it
  every ``--hang-every`` seconds (batch timeout 5 s), each followed by a normal request that must succeed.
Every 5 s it samples the server's resident memory, threads and open files. It stops by itself and writes
``benchmarks/results/soak.json`` and ``.md``: requests tried, shed, failed and lost, faults injected and
survived, and memory at the first and last minute with its trend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from PIL import Image

from benchmarks.common import (
    RESULTS_DIR,
    ForeignLoad,
    benchmark_image,
    describe_foreign_load,
    encode_image,
    machine_info,
)
from benchmarks.faults import CRASH, HANG, with_command
from benchmarks.load import GrpcTarget, RestTarget, closed_loop, open_loop, sequential, summarize
from benchmarks.servers import ServerProcess, serving
from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service
from featureserve.v1.service_pb2_grpc import FeatureServiceStub
from training.evaluation.records import format_table, now_iso, write_results

SETTINGS = {
    "plugins": ["benchmarks.faults:register"],
    "max_batch": 2,
    "queue_size": 8,
    "max_queue_delay_ms": 50,
    "cpu_threads": 2,
    "batch_timeout_s": 5,
}
SAMPLE_EVERY_S = 5.0


def process_sample(pid: int) -> dict[str, float]:
    """Resident memory (MiB), threads and open files of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "open_files": len(list(Path(f"/proc/{pid}/fd").iterdir())),
    }


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


async def bad_inputs(server: ServerProcess, until: float, counts: Counter[str]) -> None:
    """One hostile request a second, REST and gRPC in turn; each must be refused with its 4xx. They go to
    ``faulty``, whose queue is not full (``sift``'s is, and would shed them before looking at them)."""
    png = _png(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    cases = [
        ({"image": ("x", np.random.default_rng(1).bytes(3000))}, {}, 400),
        ({"image": ("x.png", png[: len(png) // 2])}, {}, 400),
        ({"image": ("x.png", _png(np.zeros((8, 8), np.uint8)))}, {}, 400),
        ({"image": ("x.png", png)}, {"max_keypoints": "-5"}, 422),
    ]
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=60, trust_env=False) as client,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        stub = FeatureServiceStub(channel)
        index = 0
        while time.monotonic() < until:
            files, data, status = cases[index % len(cases)]
            if index % 2 == 0:
                response = await client.post("/v1/extract", files=files, data={**data, "model": "faulty"})
                counts["refused as expected" if response.status_code == status else f"REST {response.status_code}"] += 1
            else:
                request = service.ExtractRequest(
                    image=pb.Image(encoded=files["image"][1]),
                    options=pb.ExtractOptions(model="faulty", max_keypoints=int(data.get("max_keypoints", 100))),
                )
                try:
                    await stub.Extract(request, timeout=60)
                    counts["gRPC OK"] += 1
                except grpc.aio.AioRpcError as error:
                    expected = error.code() == grpc.StatusCode.INVALID_ARGUMENT
                    counts["refused as expected" if expected else f"gRPC {error.code().name}"] += 1
            index += 1
            await asyncio.sleep(1.0)


async def faults(server: ServerProcess, until: float, crash_every: float, hang_every: float) -> dict[str, Any]:
    """Crash and hang ``faulty``'s worker on schedule; after each fault a normal request must succeed."""
    image = benchmark_image(320, 240)
    bodies = {
        "crashed": _png(with_command(image, CRASH)),
        "hung": _png(with_command(image, HANG)),
        "normal": _png(image),
    }
    record: dict[str, Any] = {"injected": Counter(), "answered_503": Counter(), "survived": Counter(), "other": []}
    start = time.monotonic()
    next_crash, next_hang = start + crash_every / 2, start + hang_every / 2
    async with httpx.AsyncClient(base_url=server.url, timeout=120, trust_env=False) as client:

        async def extract(body: bytes) -> httpx.Response:
            return await client.post("/v1/extract", files={"image": ("x.png", body)}, data={"model": "faulty"})

        while time.monotonic() < until:
            now = time.monotonic()
            kind = "hung" if now >= next_hang else "crashed" if now >= next_crash else None
            if kind is None:
                await asyncio.sleep(0.5)
                continue
            if kind == "hung":
                next_hang += hang_every
            else:
                next_crash += crash_every
            record["injected"][kind] += 1
            response = await extract(bodies[kind])
            error = response.json().get("error", {}) if response.status_code != 200 else {}
            if response.status_code == 503 and error.get("details", {}).get("reason") == kind:
                record["answered_503"][kind] += 1
            else:
                record["other"].append(f"{kind}: {response.status_code} {response.text[:100]}")
            after = await extract(bodies["normal"])
            for _ in range(10):  # shed (the queue-delay limit applies to faulty too): retry as a client would
                if after.status_code != 429:
                    break
                await asyncio.sleep(float(after.headers["retry-after"]))
                after = await extract(bodies["normal"])
            if after.status_code == 200:
                record["survived"][kind] += 1
            else:
                record["other"].append(f"after {kind}: {after.status_code} {after.text[:100]}")
    return {key: dict(value) if isinstance(value, Counter) else value for key, value in record.items()}


async def soak(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    """The whole run."""
    image = encode_image(benchmark_image(640, 480), "jpeg")
    rest = RestTarget(server.url, image, {"max_keypoints": "1000", "descriptor_encoding": "base64"})
    grpc_target = GrpcTarget(server.grpc_target, image, {"max_keypoints": 1000})
    samples: list[dict[str, float]] = []
    try:
        await sequential(rest, 3)
        await sequential(grpc_target, 3)
        capacity_run = summarize(await closed_loop(rest, 4, 10.0))
        capacity = capacity_run.counts["ok"] / capacity_run.duration_s
        rate = args.factor * capacity / 2
        print(f"capacity {capacity:.1f}/s; offering {rate:.1f}/s over REST and over gRPC", flush=True)
        start = time.monotonic()
        until = start + args.minutes * 60

        async def sample() -> None:
            while time.monotonic() < until + 1:
                samples.append({"t_s": time.monotonic() - start, **process_sample(server.pid)})
                if len(samples) % 12 == 1:
                    print(f"  {samples[-1]}", flush=True)
                await asyncio.sleep(SAMPLE_EVERY_S)

        bad: Counter[str] = Counter()
        seconds = args.minutes * 60
        results = await asyncio.gather(
            open_loop(rest, rate, seconds),
            open_loop(grpc_target, rate, seconds),
            bad_inputs(server, until, bad),
            faults(server, until, args.crash_every, args.hang_every),
            sample(),
        )
    finally:
        await rest.close()
        await grpc_target.close()
    return {
        "capacity_per_s": capacity,
        "offered_per_s_each": rate,
        "rest": summarize(results[0]).as_dict(),
        "grpc": summarize(results[1]).as_dict(),
        "bad_input": dict(bad),
        "faults": results[3],
        "samples": samples,
    }


def memory_trend(samples: list[dict[str, float]]) -> dict[str, float]:
    """Median RSS over the first and the last minute, least-squares slopes after the first minute and over the
    second half (glibc keeps freed memory here, so RSS climbs to a high-water mark first), the peak."""
    first = [s["rss_mib"] for s in samples if s["t_s"] <= 60]
    end = samples[-1]["t_s"]
    last = [s["rss_mib"] for s in samples if s["t_s"] >= end - 60]

    def slope(after_s: float) -> float:
        later = [s for s in samples if s["t_s"] >= after_s]
        if len(later) < 3:
            return float("nan")
        t = np.array([s["t_s"] / 60 for s in later])
        return float(np.polyfit(t, np.array([s["rss_mib"] for s in later]), 1)[0])

    return {
        "first_minute_median_mib": float(np.median(first)),
        "last_minute_median_mib": float(np.median(last)),
        "peak_mib": max(s["rss_mib"] for s in samples),
        "slope_after_first_minute_mib_per_min": slope(60),
        "slope_second_half_mib_per_min": slope(end / 2),
        "threads_first": samples[0]["threads"],
        "threads_last": samples[-1]["threads"],
        "open_files_first": samples[0]["open_files"],
        "open_files_last": samples[-1]["open_files"],
    }


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown."""
    memory = report["memory"]
    f = report["faults"]
    rows = [
        [api, r["tried"], r["ok"], r["shed"], r["failed"] + r["wrong"], r["lost"], r["ok_p95_ms"]]
        for api, r in (("REST", report["rest"]), ("gRPC", report["grpc"]))
    ]
    return (
        "\n".join(
            [
                "# Soak: overload, bad input and faults",
                "",
                f"{report['date']}, `python -m benchmarks.reliability.soak {' '.join(report['argv'])}`: "
                f"{report['minutes']:g} minutes, "
                f"`sift` at {report['offered_per_s_each']:.1f} requests/s over REST and over gRPC each "
                f"({report['factor']:g} x the measured capacity of {report['capacity_per_s']:.1f}/s), 640x480 JPEG. "
                f"{report['foreign_load']}.",
                "",
                format_table(["API", "tried", "ok", "shed", "failed", "lost", "accepted p95 ms"], rows),
                "",
                f"Bad input: {', '.join(f'{k}: {v}' for k, v in report['bad_input'].items())}.",
                "",
                f"Faults injected: {f['injected']}; answered 503 with the right reason: {f['answered_503']}; "
                f"followed by a successful request: {f['survived']}; anything else: {f['other'] or 'nothing'}.",
                "",
                f"Server memory (RSS): {memory['first_minute_median_mib']:.1f} MiB over the first minute, "
                f"{memory['last_minute_median_mib']:.1f} MiB over the last, peak {memory['peak_mib']:.1f} MiB; "
                f"trend after the first minute {memory['slope_after_first_minute_mib_per_min']:+.2f} MiB/min, over "
                f"the second half {memory['slope_second_half_mib_per_min']:+.2f} MiB/min. "
                f"Threads {memory['threads_first']} -> {memory['threads_last']} (each hang leaves its thread "
                f"running, abandoned, for 10 minutes), open files {memory['open_files_first']} -> "
                f"{memory['open_files_last']}.",
                "",
                minute_table(report["samples"]),
            ]
        )
        + "\n"
    )


def minute_table(samples: list[dict[str, float]]) -> str:
    """RSS (median and peak) and threads, minute by minute."""
    rows = []
    for minute in range(int(samples[-1]["t_s"] // 60) + 1):
        inside = [s for s in samples if minute * 60 <= s["t_s"] < (minute + 1) * 60]
        if inside:
            rss = [s["rss_mib"] for s in inside]
            rows.append([minute, float(np.median(rss)), max(rss), inside[-1]["threads"], inside[-1]["open_files"]])
    return format_table(["minute", "RSS median MiB", "RSS peak MiB", "threads", "open files"], rows)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=5.0, help="offered load / capacity (both APIs together)")
    parser.add_argument("--crash-every", type=float, default=20.0, help="seconds between injected crashes")
    parser.add_argument("--hang-every", type=float, default=150.0, help="seconds between injected hangs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": now_iso(),
        "argv": sys.argv[1:],
        "minutes": args.minutes,
        "factor": args.factor,
        "settings": SETTINGS,
        "machine": machine_info(),
    }
    with ForeignLoad() as foreign, serving(["sift", "faulty"], settings=SETTINGS) as server:
        report.update(asyncio.run(soak(server, args)))
        report["foreign_load_summary"] = foreign.summary()
        with contextlib.suppress(OSError):
            report["server_log_tail"] = server.log_tail(20)
    report["foreign_load"] = describe_foreign_load(report["foreign_load_summary"])
    report["memory"] = memory_trend(report["samples"])
    write_results(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
