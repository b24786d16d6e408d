"""featureserve's REST service against what a user could run instead: OpenCV behind plain FastAPI or LitServe.

Usage (from the repository root; LitServe comes with ``scripts/install.sh bench``, and is left out, with a
note, where it is not installed):
    python -m benchmarks.performance.peers            # 2 rounds, orb and sift, concurrency 1 4 16 64
    python -m benchmarks.performance.peers --quick    # 1 round, fewer requests

One JPEG (``skimage.data.astronaut()`` at 640x480, quality 95), ``max_keypoints`` 2048 and base64 descriptors,
sent by the throughput benchmark's raw HTTP/1.1 keep-alive client (it takes almost no CPU from the servers on
this 2-core machine). In each round the servers run one at a time, in shuffled order, each through every
model and concurrency level: one warm-up request per connection, then ``max(64, 8 x concurrency)``
requests or ``--cap-s`` seconds. featureserve runs with its defaults and ``--settings``; the peers are in
``peer_servers.py``. Figures: images/s (answers 200 per second of the level), p50 and p95 of the 200
answers, and how many requests got 429 or failed otherwise. Writes ``benchmarks/results/peers.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import benchmark_image, encode_image, machine_info, multipart_body, percentile
from benchmarks.performance.throughput import RawSender, closed_loop
from benchmarks.servers import REPO_ROOT, free_port, launch, wait_until_ok

RESULTS = Path(__file__).resolve().parents[1] / "results" / "peers.json"
SERVERS = ("featureserve", "fastapi", "litserve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["orb", "sift"], choices=["orb", "sift"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cap-s", type=float, default=60.0, help="longest one level runs")
    parser.add_argument("--settings", default="{}", help="featureserve settings (JSON)")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--quick", action="store_true", help="1 round, 32 + 4 x concurrency requests per level")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output; Markdown goes beside it")
    return parser.parse_args(argv)


@contextlib.contextmanager
def running(server: str, models: list[str], settings: dict[str, Any]) -> Iterator[str]:
    """Start ``server`` on a free loopback port, yield its base URL once it answers, stop it."""
    if server == "featureserve":
        process = launch({"models": json.dumps(models), "default_model": models[0], "log_level": "warning", **settings})
        try:
            yield process.url
        finally:
            process.stop()
        return
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.performance.peer_servers", server, str(port)]
    peer = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_ok(peer, f"{url}/openapi.json", 120):
            if peer.poll() is not None:
                raise RuntimeError(f"{server} exited: {peer.stderr.read().decode()[-2000:]}")
            raise RuntimeError(f"{server} did not answer within 120 s")
        yield url
    finally:
        # LitServe runs its workers in child processes of its own: end the whole process group.
        os.killpg(peer.pid, signal.SIGTERM)
        try:
            peer.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(peer.pid, signal.SIGKILL)
            peer.wait()


async def run_level(url: str, body: bytes, content_type: str, concurrency: int, requests: int, cap_s: float) -> dict:
    """``requests`` POSTs with ``concurrency`` in flight (after one warm-up request per connection)."""
    sender = RawSender(f"{url}/v1/extract", body, content_type, concurrency, cap_s)
    try:
        await asyncio.gather(*(sender.send(slot) for slot in range(concurrency)), return_exceptions=True)
        level = await closed_loop(sender, concurrency, requests, cap_s)
    finally:
        await sender.aclose()
    refused = level.statuses.get("429", 0)
    return {
        "concurrency": concurrency,
        "issued": level.issued,
        "statuses": dict(level.statuses),
        "images_per_s": len(level.latencies) / level.wall_s,
        "p50_ms": percentile(level.latencies, 50) * 1000,
        "p95_ms": percentile(level.latencies, 95) * 1000,
        "refused_429": refused,
        "failed": level.issued - len(level.latencies) - refused,
    }


def median(values: list[float]) -> float:
    return percentile(values, 50)


def render_markdown(report: dict[str, Any]) -> str:
    """Tables of the medians over rounds, one per model, and the comparison the issue asks for."""
    lines = [
        "# featureserve against a plain FastAPI app and LitServe around OpenCV",
        "",
        f"Date: {report['date']}. Machine: {report['machine']['platform']}, {report['machine'].get('cpu_count')} CPUs "
        f"(client and servers share them). {report['rounds']} round(s); servers one at a time in shuffled order.",
        f"Request: 640x480 JPEG ({report['image_bytes']} bytes), max_keypoints 2048, base64 descriptors; raw "
        f"keep-alive client. featureserve settings: defaults + {json.dumps(report['settings'])}.",
        *([f"Not measured: {report['missing']}."] if report["missing"] else []),
        "",
        "Medians over rounds: images/s, p50 / p95 ms, 429 answers (of all rounds), other failures.",
        "",
    ]
    servers = report["servers"]
    for model in report["models"]:
        lines += [f"## {model}", "", "| concurrency | " + " | ".join(servers) + " | featureserve / best peer |"]
        lines.append("|---" * (len(servers) + 2) + "|")
        for concurrency in report["concurrency"]:
            cells, rates = [], {}
            for server in servers:
                key = (server, model, concurrency)
                rows = [r for r in report["levels"] if (r["server"], r["model"], r["concurrency"]) == key]
                if not rows:
                    cells.append("-")
                    continue
                rate = median([r["images_per_s"] for r in rows])
                rates[server] = rate
                p50, p95 = median([r["p50_ms"] for r in rows]), median([r["p95_ms"] for r in rows])
                refused, failed = sum(r["refused_429"] for r in rows), sum(r["failed"] for r in rows)
                cells.append(f"{rate:.1f} img/s, {p50:.0f} / {p95:.0f} ms, 429: {refused}, failed: {failed}")
            peers = [rate for server, rate in rates.items() if server != "featureserve"]
            ratio = f"{rates['featureserve'] / max(peers):.2f}" if peers and "featureserve" in rates else "-"
            lines.append(f"| {concurrency} | " + " | ".join(cells) + f" | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    missing = ""
    servers = list(args.servers)
    if "litserve" in servers and importlib.util.find_spec("litserve") is None:
        servers.remove("litserve")
        missing = "LitServe (not installed: scripts/install.sh bench)"
    rounds = 1 if args.quick else args.rounds
    image = encode_image(benchmark_image(), "jpeg")
    settings = json.loads(args.settings)
    levels: list[dict[str, Any]] = []
    order = random.Random(0)
    for round_index in range(rounds):
        for server in order.sample(servers, len(servers)):
            with running(server, args.models, settings) as url:
                for model in args.models:
                    fields = {"model": model, "max_keypoints": "2048", "descriptor_encoding": "base64"}
                    body, content_type = multipart_body(image, "jpeg", fields)
                    for concurrency in args.concurrency:
                        requests = 32 + 4 * concurrency if args.quick else max(64, 8 * concurrency)
                        row = asyncio.run(run_level(url, body, content_type, concurrency, requests, args.cap_s))
                        row |= {"server": server, "model": model, "round": round_index}
                        levels.append(row)
                        print(
                            f"round {round_index} {server:12s} {model:4s} c={concurrency:<3d} "
                            f"{row['images_per_s']:7.1f} img/s  p50 {row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f} ms  "
                            f"{row['statuses']}",
                            flush=True,
                        )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "rounds": rounds,
        "models": args.models,
        "concurrency": args.concurrency,
        "servers": servers,
        "missing": missing,
        "settings": settings,
        "image_bytes": len(image),
        "levels": levels,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    markdown = render_markdown(report)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
