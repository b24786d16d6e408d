"""Overload on loopback: ten times capacity over REST and gRPC, then SIGTERM under that load.

    .venv/bin/python -m benchmarks.reliability.overload [--seconds 30] [--factor 10] [--model sift]

For each API, against a real ``featureserve serve`` on 127.0.0.1:
1. unloaded latency: requests one at a time (``--unloaded`` of them), before and after the rest;
2. capacity: ``--concurrency`` clients back to back for ``--capacity-seconds``: answers per second;
3. overload: an open loop at ``--factor`` x capacity for ``--seconds``, whatever the answers.
Then a fresh server (no queue-delay limit, so work is queued and running) takes both APIs at that rate and
gets SIGTERM half way. Every request is classified (``benchmarks/load.py``: ok, wrong, shed, refused,
failed, lost) and checked against an unloaded reference answer. Bounded: it stops by itself after about
``4 x --seconds + 2 x --capacity-seconds`` plus the unloaded rounds. Writes ``benchmarks/results/overload.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    ForeignLoad,
    benchmark_image,
    describe_foreign_load,
    encode_image,
    machine_info,
)
from benchmarks.load import (
    GrpcTarget,
    RestTarget,
    closed_loop,
    final_counts,
    open_loop,
    reconcile,
    sequential,
    summarize,
)
from benchmarks.servers import ServerProcess, serving
from training.evaluation.records import format_table, now_iso, write_results

OVERLOAD_SETTINGS = {"max_batch": 1, "queue_size": 4, "max_queue_delay_ms": 30, "cpu_threads": 2}
DRAIN_SETTINGS = {"max_batch": 2, "queue_size": 8, "cpu_threads": 2, "log_level": "info"}


def make_target(api: str, server: ServerProcess, image: bytes, keepalive: bool = True) -> RestTarget | GrpcTarget:
    """The extract request of one API, 1000 keypoints, compared with its first answer."""
    if api == "rest":
        fields = {"max_keypoints": "1000", "descriptor_encoding": "base64"}
        return RestTarget(server.url, image, fields, keepalive)
    return GrpcTarget(server.grpc_target, image, {"max_keypoints": 1000})


async def measure_api(api: str, server: ServerProcess, image: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Unloaded, capacity, overload and unloaded again, for one API."""
    target = make_target(api, server, image)
    try:
        await sequential(target, 5)
        print(f"[{api}] unloaded", flush=True)
        unloaded = summarize(await sequential(target, args.unloaded))
        print(f"[{api}] capacity", flush=True)
        capacity_run = summarize(await closed_loop(target, args.concurrency, args.capacity_seconds))
        capacity = capacity_run.counts["ok"] / capacity_run.duration_s
        rate = args.factor * capacity
        print(f"[{api}] overload at {rate:.1f}/s (capacity {capacity:.1f}/s)", flush=True)
        overload = summarize(await open_loop(target, rate, args.seconds))
        after = summarize(await sequential(target, args.unloaded))
    finally:
        await target.close()
    return {
        "unloaded": unloaded.as_dict(),
        "capacity": {**capacity_run.as_dict(), "ok_per_s": capacity},
        "offered_per_s": rate,
        "overload": overload.as_dict(),
        "unloaded_after": after.as_dict(),
        "p95_ratio": overload.ok_p95_ms / unloaded.ok_p95_ms,
        "p95_ratio_to_after": overload.ok_p95_ms / after.ok_p95_ms,
    }


async def measure_drain(server: ServerProcess, image: bytes, rates: dict[str, float], seconds: float) -> dict[str, Any]:
    """Both APIs at their overload rates; SIGTERM half way; every request accounted for."""
    terminated: list[float] = []

    def terminate() -> None:
        terminated.append(time.monotonic())
        os.kill(server.pid, signal.SIGTERM)

    # A new connection per REST request: either refused at connect, or accepted.
    targets = {api: make_target(api, server, image, keepalive=False) for api in ("rest", "grpc")}
    try:
        first = {api: await sequential(t, 2) for api, t in targets.items()}
        runs = await asyncio.gather(
            open_loop(targets["rest"], rates["rest"], seconds, at=[(seconds / 2, terminate)]),
            open_loop(targets["grpc"], rates["grpc"], seconds),
        )
    finally:
        for target in targets.values():
            await target.close()
    server.process.wait(120)
    rest_answered, grpc_answered, in_flight = final_counts(server.log_path.read_text())
    outcomes = {"rest": first["rest"] + runs[0], "grpc": first["grpc"] + runs[1]}
    report: dict[str, Any] = {"exit_code": server.process.returncode, "server_in_flight_at_exit": in_flight}
    for api, answered in (("rest", rest_answered), ("grpc", grpc_answered)):
        raw = summarize(outcomes[api])
        reconciled = summarize(reconcile(outcomes[api], answered, in_flight))
        report[api] = {
            "offered_per_s": rates[api],
            "server_answered": answered,
            "raw": raw.as_dict(),
            "reconciled": reconciled.as_dict(),
            "never_reached_service": reconciled.counts["refused"] - raw.counts["refused"],
        }
    return report


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown."""
    lines = [
        "# Overload: ten times capacity, and SIGTERM under it",
        "",
        f"{report['date']}, `python -m benchmarks.reliability.overload {' '.join(report['argv'])}`; "
        f"model `{report['model']}`, "
        f"640x480 JPEG, 1000 keypoints. {report['foreign_load']}.",
        "",
        f"Server settings: {', '.join(f'{k}={v}' for k, v in report['settings'].items())}.",
        "",
    ]
    rows = []
    for api in ("rest", "grpc"):
        r = report[api]
        o = r["overload"]
        rows.append(
            [
                api, r["unloaded"]["ok_p50_ms"], r["unloaded"]["ok_p95_ms"], r["capacity"]["ok_per_s"],
                r["offered_per_s"], o["tried"], o["shed"], o["ok"], o["wrong"] + o["failed"], o["lost"],
                o["ok_p95_ms"], r["p95_ratio"], r["unloaded_after"]["ok_p95_ms"],
            ]
        )  # fmt: skip
    lines.append(
        format_table(
            [
                "API",
                "unloaded p50 ms",
                "unloaded p95 ms",
                "capacity /s",
                "offered /s",
                "tried",
                "shed",
                "ok",
                "failed",
                "lost",
                "accepted p95 ms",
                "p95 ratio",
                "unloaded p95 after ms",
            ],
            rows,
        )
    )
    drain = report["drain"]
    lines += [
        "",
        f"SIGTERM half way through {report['seconds']:g} s of both APIs at those rates (settings "
        f"{', '.join(f'{k}={v}' for k, v in report['drain_settings'].items())}); exit code {drain['exit_code']}, "
        f"{drain['server_in_flight_at_exit']} requests in flight at exit.",
        "",
    ]
    rows = []
    for api in ("rest", "grpc"):
        d = drain[api]
        r = d["reconciled"]
        rows.append(
            [api, r["tried"], r["ok"], r["shed"], r["refused"], d["never_reached_service"], r["failed"] + r["wrong"],
             r["lost"], d["server_answered"]]
        )  # fmt: skip
    lines.append(
        format_table(
            [
                "API",
                "tried",
                "ok",
                "shed",
                "refused",
                "of which never reached the service",
                "failed",
                "lost",
                "answered (server's count)",
            ],
            rows,
        )
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sift")
    parser.add_argument("--seconds", type=float, default=30.0, help="overload (and drain) duration per run")
    parser.add_argument("--factor", type=float, default=10.0, help="offered load / capacity")
    parser.add_argument("--unloaded", type=int, default=60, help="sequential requests for the unloaded latency")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "overload.json")
    args = parser.parse_args()
    image = encode_image(benchmark_image(640, 480), "jpeg")
    report: dict[str, Any] = {
        "date": now_iso(),
        "argv": sys.argv[1:],
        "model": args.model,
        "seconds": args.seconds,
        "settings": OVERLOAD_SETTINGS,
        "drain_settings": DRAIN_SETTINGS,
        "machine": machine_info(),
    }
    with ForeignLoad() as foreign:
        with serving([args.model], settings=OVERLOAD_SETTINGS) as server:
            for api in ("rest", "grpc"):
                report[api] = asyncio.run(measure_api(api, server, image, args))
        rates = {api: report[api]["offered_per_s"] for api in ("rest", "grpc")}
        print("drain", flush=True)
        with serving([args.model], settings=DRAIN_SETTINGS) as server:
            report["drain"] = asyncio.run(measure_drain(server, image, rates, args.seconds))
        report["foreign_load_summary"] = foreign.summary()
    report["foreign_load"] = describe_foreign_load(report["foreign_load_summary"])
    write_results(args.out, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
