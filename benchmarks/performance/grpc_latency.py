"""gRPC figures: unary ``Extract`` overhead vs in-process extraction, and ``StreamFrames`` per-frame latency.

Usage (from the repository root):
    python -m benchmarks.performance.grpc_latency                 # orb and sift, 100 rounds, 100 stream frames
    python -m benchmarks.performance.grpc_latency --quick
    python -m benchmarks.performance.grpc_latency --models orb sift caps

Unary: one 640x480 JPEG (``skimage.data.astronaut()`` resized, quality 95), 1000 keypoints, float32
descriptors. Probes run interleaved in shuffled rounds: in-process ``decode_image`` and ``model.extract``,
and gRPC ``Extract`` through a started server with one persistent channel, concurrency 1, with the image sent
encoded or as raw pixels (requests prebuilt; the call includes protobuf parsing of the answer).
"Overhead" = gRPC p50 - in-process extract p50 - decode p50 (decode is skipped for raw pixels).

Streams: one StreamFrames session per model, lock-step (a frame is sent when the previous answer arrived,
as a tracking front end does), over the TUM freiburg2_desk frames (640x480 JPEG, ~10 Hz) from
``../shared/data`` when present, else crops of the benchmark photo panning. Each answer carries the frame's
features (descriptors included) and its fundamental-matrix-verified matches to the previous frame and to
the keyframe (the first frame). Reported: client round trip and the server's own ``latency_ms``, p50/p95,
and the same work in-process (decode + extract + two matches + MAGSAC++ F) for comparison, run in blocks of 10
frames between blocks of the stream (the stream waits meanwhile), so both meet the same machine load.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    REPO_ROOT,
    RESULTS_DIR,
    ForeignLoad,
    Probe,
    add_shared_arguments,
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
from featureserve.arrays import to_array
from featureserve.client import Frame, GrpcClient
from featureserve.models import KeypointOptions, PairOptions, load_model_with_knobs, match_pair
from featureserve.service.workers.decoding import DecodeLimits, decode_image
from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service
from training.evaluation.records import format_table, now_iso, write_results

DEFAULT_OUT = RESULTS_DIR / "grpc_latency.json"
TUM_FRAMES = REPO_ROOT.parent / "shared" / "data" / "tum_rgbd_unlabeled" / "freiburg2_desk"
TARGET_MS = 2.0
STREAM_BLOCK = 10  # stream frames between two blocks of the same frames in-process


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["orb", "sift"])
    parser.add_argument("--iterations", type=int, default=100, help="measured unary rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--stream-frames", type=int, default=100, help="frames per stream session")
    parser.add_argument("--frames", type=Path, default=TUM_FRAMES, help="folder of stream frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 rounds and 20 stream frames")
    add_shared_arguments(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup, args.stream_frames = 10, 2, 20
    return args


def stream_images(folder: Path, width: int, height: int) -> tuple[list[bytes], str]:
    """Encoded frames from ``folder`` (sorted), else a pan across the benchmark photo; and their origin."""
    if folder.is_dir():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if paths:
            return [p.read_bytes() for p in paths], str(folder)
    photo = benchmark_image(width + 80, height + 60)
    crops = [photo[3 * i : 3 * i + height, 4 * i : 4 * i + width] for i in range(20)]
    return [encode_image(np.ascontiguousarray(c), "jpeg", 95) for c in crops], "benchmark photo panning"


class InProcessFrames:
    """The stream's per-frame work in-process: decode, extract, match + verify to the previous frame and keyframe."""

    def __init__(self, model: Any, max_keypoints: int) -> None:
        self.model = model
        self.limits = DecodeLimits(32 * 1024 * 1024, 40_000_000)
        self.options = KeypointOptions(max_keypoints=max_keypoints)
        self.pair = PairOptions(geometry="fundamental")
        self.keyframe: Any = None
        self.previous: Any = None
        self.times: list[float] = []

    def frame(self, image: bytes) -> None:
        """Process one frame and record its time."""
        start = time.perf_counter()
        decoded = decode_image(image, self.limits, self.model.grey_input)  # as the service decodes for this model
        features = self.model.extract([decoded], [self.options])[0]
        if self.previous is not None:
            match_pair(features, self.previous, self.pair)
            if self.keyframe is not self.previous:
                match_pair(features, self.keyframe, self.pair)
        self.keyframe = self.keyframe or features
        self.previous = features
        self.times.append(time.perf_counter() - start)


def lockstep_session(
    client: GrpcClient, frames: list[bytes], count: int, model: Any, name: str, max_keypoints: int, block: int
) -> dict:
    """Stream ``count`` frames one at a time, and after every ``block`` of them process the same ``block`` frames
    in-process while the stream waits, so that both see the same machine; client round trips, server latencies
    and in-process times, in milliseconds."""
    answered: queue.Queue[None] = queue.Queue()
    sent_at: dict[int, float] = {}
    local = InProcessFrames(model, max_keypoints)
    images = list(itertools.islice(itertools.cycle(frames), count))

    def requests() -> Iterator[Frame]:
        for sequence, image in enumerate(images):
            sent_at[sequence] = time.perf_counter()
            yield Frame(image, sequence, timestamp=sequence / 10)
            answered.get()
            sent = sequence + 1
            if sent % block == 0 or sent == count:  # the block just streamed, the last one possibly short
                for done in images[(sent - 1) // block * block : sent]:
                    local.frame(done)

    round_trips, server, statuses = [], [], []
    for result in client.stream_frames(requests(), model=name, max_keypoints=max_keypoints):
        round_trips.append(time.perf_counter() - sent_at[result.sequence])
        server.append(result.latency_ms / 1000)
        statuses.append(result.status)
        answered.put(None)
    warm = slice(2, None)  # the first frames have nothing (or only one frame) to match against
    return {
        "round_trip": summarize_ms(round_trips[warm]),
        "server": summarize_ms(server[warm]),
        "in_process": summarize_ms(local.times[warm]),
        "frames": len(statuses),
        "ok": statuses.count("ok"),
    }


def main(argv: list[str] | None = None) -> None:
    """Measure, print the tables, write the JSON and Markdown results."""
    args = parse_args(argv)
    torch.set_num_threads(args.cpu_threads)
    busy_before = busy_processes()
    if busy_before:
        print(f"warning: other busy processes, figures will be noisy: {busy_before}")
    in_process_setup = [] if args.no_server_setup else server_process_setup()
    image = benchmark_image(args.width, args.height)
    jpeg = encode_image(image, "jpeg", args.jpeg_quality)
    limits = DecodeLimits(32 * 1024 * 1024, 40_000_000)
    decoded = decode_image(jpeg, limits)
    options = KeypointOptions(max_keypoints=args.max_keypoints)
    models = {name: load_model_with_knobs(name, num_threads=args.cpu_threads) for name in args.models}
    frames, frames_origin = stream_images(args.frames, args.width, args.height)
    report: dict[str, Any] = {
        "benchmark": "grpc_latency",
        "date": now_iso(),
        "machine": machine_info(),
        "busy_processes_before": busy_before,
        "settings": {
            "image": f"skimage.data.astronaut() resized to {args.width}x{args.height}, JPEG q{args.jpeg_quality}",
            "models": args.models,
            "max_keypoints": args.max_keypoints,
            "iterations": args.iterations,
            "stream_frames": args.stream_frames,
            "stream_source": frames_origin,
            "cpu_threads": args.cpu_threads,
            "in_process_setup": in_process_setup,
            "quick": args.quick,
        },
    }
    probes: dict[tuple[str, ...], Probe] = {}
    for name, model in models.items():
        # Decoded as the service decodes for this model (a grey JPEG for grey models).
        served = decode_image(jpeg, limits, model.grey_input)
        probes[("decode", name)] = Probe(
            ("decode", name), timed(lambda m=model: decode_image(jpeg, limits, m.grey_input))
        )
        probes[("extract", name)] = Probe(("extract", name), timed(lambda m=model, a=served: m.extract([a], [options])))

    streams: dict[str, dict] = {}
    with (
        ForeignLoad() as foreign,
        serving(args.models, args.models[0], {"cpu_threads": args.cpu_threads}) as server,
        GrpcClient(server.grpc_target) as client,
    ):
        report["settings"]["server_settings"] = server.settings
        for name in args.models:
            extract_options = pb.ExtractOptions(model=name, max_keypoints=args.max_keypoints)
            for source, message in (
                ("encoded", pb.Image(encoded=jpeg)),
                ("pixels", pb.Image(pixels=to_array(decoded, "uint8"))),
            ):
                request = service.ExtractRequest(image=message, options=extract_options)
                probes[("grpc", source, name)] = Probe(
                    ("grpc", source, name), timed(lambda r=request: client.stub.Extract(r, timeout=60))
                )
        print(f"{len(probes)} unary probes, {args.warmup} warm-up + {args.iterations} measured rounds", flush=True)
        run_rounds(list(probes.values()), args.iterations, args.warmup, args.seed)
        for name in args.models:
            print(f"stream {name}: {args.stream_frames} frames", flush=True)
            streams[name] = lockstep_session(
                client, frames, args.stream_frames, models[name], name, args.max_keypoints, STREAM_BLOCK
            )
    report["foreign_load"] = foreign.summary()
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    stats = {key: summarize_ms(probe.samples) for key, probe in probes.items()}
    report["probes"] = {"/".join(key): value for key, value in stats.items()}
    report["streams"] = streams

    unary_rows, overhead = [], {}
    for name in args.models:
        extract, decode = stats[("extract", name)]["p50"], stats[("decode", name)]["p50"]
        for source in ("encoded", "pixels"):
            grpc = stats[("grpc", source, name)]
            decode_part = decode if source == "encoded" else None
            added = grpc["p50"] - extract - (decode_part or 0.0)
            overhead[f"{name}/{source}"] = added
            met = "yes" if added < TARGET_MS else "no"
            unary_rows.append([name, source, grpc["p50"], grpc["p95"], extract, decode_part, added, met])
    report["overhead_ms"] = overhead
    stream_rows = [
        [name, f"{s['ok']}/{s['frames']}"]
        + [s[part][q] for part in ("round_trip", "server", "in_process") for q in ("p50", "p95")]
        for name, s in streams.items()
    ]
    machine = report["machine"]
    unary_headers = ["model", "image as", "gRPC p50", "gRPC p95", "extract p50", "decode p50", "overhead p50", "met"]
    stream_headers = ["model", "ok/frames", "client p50", "client p95", "server p50", "server p95"]
    stream_headers += ["in-process p50", "in-process p95"]
    markdown = "\n\n".join(
        [
            f"# gRPC latency ({report['date']})",
            f"Machine: {machine['processor']}, {machine['cpu_count']} cores. "
            + describe_foreign_load(report["foreign_load"]),
            f"## Unary Extract, concurrency 1, {args.width}x{args.height} JPEG, {args.max_keypoints} keypoints, "
            f"float32 descriptors (ms; target: overhead < {TARGET_MS:g} ms)",
            format_table(unary_headers, unary_rows),
            f"## StreamFrames, lock-step, {args.stream_frames} frames of {frames_origin} (ms per frame)",
            format_table(stream_headers, stream_rows),
        ]
    )
    print(markdown)
    write_results(args.out, report, markdown)


if __name__ == "__main__":
    main()
