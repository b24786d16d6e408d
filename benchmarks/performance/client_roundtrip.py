"""Client round trips: `RestClient` vs `GrpcClient` (same calls, same answers) for extract and match.

Usage (from the repository root):
    python -m benchmarks.performance.client_roundtrip            # orb and sift, 60 rounds
    python -m benchmarks.performance.client_roundtrip --quick    # 10 rounds

Each probe is one blocking client call as a user writes it, from encoded JPEG bytes to numpy arrays: the
request is built, sent over a persistent connection (concurrency 1), answered by one started server
(``featureserve serve``, both transports) and turned into `FeatureSet` / `MatchResult`. Image: a 640x480
JPEG (``skimage.data.astronaut()`` resized, quality 95) and, for match, the same photo warped by a mild
homography; 1000 keypoints, float32 descriptors, ``geometry=homography``. The in-process `LocalClient`
doing the same work gives the floor. Probes run interleaved in shuffled rounds (``common.run_rounds``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.common import (
    RESULTS_DIR,
    ForeignLoad,
    Probe,
    benchmark_image,
    busy_processes,
    describe_foreign_load,
    encode_image,
    machine_info,
    run_rounds,
    server_process_setup,
    summarize_ms,
    timed,
)
from benchmarks.servers import serving
from featureserve.client import GrpcClient, RestClient
from featureserve.local import LocalClient
from featureserve.service.settings import Settings
from training.evaluation.records import format_table, now_iso, write_results

HOMOGRAPHY = np.array([[0.92, 0.12, 18.0], [-0.08, 0.95, 12.0], [1.2e-4, -6e-5, 1.0]])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["orb", "sift"])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-keypoints", type=int, default=1000)
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 rounds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "client_roundtrip.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations = 10
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table, write the JSON and Markdown results."""
    args = parse_args(argv)
    torch.set_num_threads(args.cpu_threads)
    busy_before = busy_processes()
    if busy_before:
        print(f"warning: other busy processes, figures will be noisy: {busy_before}")
    in_process_setup = server_process_setup()
    image = benchmark_image()
    warped = cv2.warpPerspective(image, HOMOGRAPHY, (image.shape[1], image.shape[0]))
    jpeg, warped_jpeg = encode_image(image, "jpeg"), encode_image(warped, "jpeg")
    report: dict[str, Any] = {
        "benchmark": "client_roundtrip",
        "date": now_iso(),
        "machine": machine_info(),
        "busy_processes_before": busy_before,
        "settings": {
            "image": "skimage.data.astronaut() resized to 640x480, JPEG q95; match: + a homography warp",
            "models": args.models,
            "max_keypoints": args.max_keypoints,
            "iterations": args.iterations,
            "cpu_threads": args.cpu_threads,
            "in_process_setup": in_process_setup,
        },
    }
    local = LocalClient(Settings(cpu_threads=args.cpu_threads))
    probes: list[Probe] = []
    with (
        ForeignLoad() as foreign,
        serving(args.models, args.models[0], {"cpu_threads": args.cpu_threads}) as server,
        RestClient(server.url) as rest,
        GrpcClient(server.grpc_target) as grpc_client,
    ):
        report["settings"]["server_settings"] = server.settings
        for name in args.models:
            extract = {"model": name, "max_keypoints": args.max_keypoints}
            match = {**extract, "geometry": "homography"}
            for transport, client in (("rest", rest), ("grpc", grpc_client), ("in-process", local)):
                probes.append(
                    Probe(("extract", name, transport), timed(lambda c=client, o=extract: c.extract(jpeg, **o)))
                )
                probes.append(
                    Probe(("match", name, transport), timed(lambda c=client, o=match: c.match(jpeg, warped_jpeg, **o)))
                )
            # The same answers either way (what tests/client checks, here on the benchmark's images).
            over_rest, over_grpc = rest.match(jpeg, warped_jpeg, **match), grpc_client.match(jpeg, warped_jpeg, **match)
            assert np.array_equal(over_rest.matches, over_grpc.matches), name
        print(f"{len(probes)} probes, {args.warmup} warm-up + {args.iterations} measured rounds", flush=True)
        run_rounds(probes, args.iterations, args.warmup, args.seed)
    report["foreign_load"] = foreign.summary()
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    stats = {probe.key: summarize_ms(probe.samples) for probe in probes}
    report["probes"] = {"/".join(key): value for key, value in stats.items()}

    rows = []
    for call in ("extract", "match"):
        for name in args.models:
            rest_ms, grpc_ms = stats[(call, name, "rest")], stats[(call, name, "grpc")]
            floor = stats[(call, name, "in-process")]
            rows.append(
                [call, name, rest_ms["p50"], rest_ms["p95"], grpc_ms["p50"], grpc_ms["p95"], floor["p50"],
                 rest_ms["p50"] - grpc_ms["p50"]]
            )  # fmt: skip
    headers = ["call", "model", "REST p50", "REST p95", "gRPC p50", "gRPC p95", "in-process p50", "REST - gRPC p50"]
    machine = report["machine"]
    markdown = "\n\n".join(
        [
            f"# Client round trips ({report['date']})",
            f"Machine: {machine['processor']}, {machine['cpu_count']} cores. "
            + describe_foreign_load(report["foreign_load"]),
            f"## RestClient vs GrpcClient, concurrency 1, 640x480 JPEG, {args.max_keypoints} keypoints, "
            f"{args.iterations} rounds (ms, JPEG bytes in -> numpy arrays out)",
            format_table(headers, rows),
        ]
    )
    print(markdown)
    write_results(args.out, report, markdown)


if __name__ == "__main__":
    main()
