"""StreamFrames on a real server: order, back-pressure, per-session state, bad frames, deadlines, drain."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import metric_value
from featureserve.client import Frame, FrameResult, GrpcClient
from featureserve.models import homography_corner_error
from featureserve.v1 import features_pb2 as pb
from featureserve.v1 import service_pb2 as service
from featureserve.v1.service_pb2_grpc import FeatureServiceStub
from tests.conftest import TEST_HOMOGRAPHY, Server, encode, fastest_seconds, start_server


def camera_frames(photo: np.ndarray, count: int, size: int = 320, start: int = 0) -> list[np.ndarray]:
    """A camera panning across ``photo``: crops shifted a few pixels per frame."""
    return [photo[8 * i : 8 * i + size, 4 * i : 4 * i + size].copy() for i in range(start, start + count)]


def test_answers_come_in_order_with_matches_to_the_previous_frame(photo: np.ndarray, server: Server) -> None:
    results: dict[int, list[FrameResult]] = {}

    def session(first: int) -> None:
        frames = [Frame(image, first + i, timestamp=i / 30) for i, image in enumerate(camera_frames(photo, 6, 200))]
        with GrpcClient(server.grpc_target) as client:
            results[first] = list(client.stream_frames(frames, model="orb", max_keypoints=300))

    threads = [threading.Thread(target=session, args=(1000 * s,)) for s in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [1000 * s for s in range(8)]
    for first, answers in results.items():
        assert [r.sequence for r in answers] == [first + i for i in range(6)]
        assert all(r.status == "ok" for r in answers)
        assert answers[0].to_previous is None and answers[0].keyframe
        for previous, answer in itertools.pairwise(answers):
            assert answer.to_previous.sequence == previous.sequence
            assert answer.to_keyframe.sequence == first  # the first frame stays the keyframe
            assert answer.to_previous.geometry.geometry == "fundamental"
            assert answer.to_previous.geometry.num_inliers > 30


def test_keyframes_and_essential_geometry_with_intrinsics(photo: np.ndarray, server: Server) -> None:
    images = camera_frames(photo, 5, 256)
    frames = [
        Frame(image, i, intrinsics=(300.0, 300.0, 128.0, 128.0), keyframe=i == 2) for i, image in enumerate(images)
    ]
    with GrpcClient(server.grpc_target) as client:
        answers = list(client.stream_frames(frames, model="sift", max_keypoints=500))
    assert [a.keyframe for a in answers] == [True, False, True, False, False]
    assert [a.to_keyframe.sequence for a in answers[1:]] == [0, 0, 2, 2]
    assert answers[3].to_previous.geometry.geometry == "essential"
    assert answers[3].to_previous.geometry.rotation.shape == (3, 3)


def test_latest_frame_wins_drops_stale_frames_and_says_so(photo: np.ndarray, server: Server) -> None:
    big = cv2.resize(photo, (1024, 1024))
    frames = [Frame(big, i) for i in range(24)]
    with GrpcClient(server.grpc_target) as client:
        answers = list(client.stream_frames(frames, model="sift", backpressure="latest"))
    assert [a.sequence for a in answers] == list(range(24))
    statuses = [a.status for a in answers]
    assert set(statuses) == {"ok", "dropped"} and statuses.count("dropped") >= 5, statuses
    assert statuses[0] == "ok" and statuses[-1] == "ok"  # the newest waiting frame is always processed
    processed = [a for a in answers if a.status == "ok"]
    for previous, answer in itertools.pairwise(processed):
        assert answer.to_previous.sequence == previous.sequence  # dropped frames leave no state
    assert all(a.features is None for a in answers if a.status == "dropped")


def test_malformed_frames_fail_alone_and_the_stream_goes_on(photo: np.ndarray, server: Server) -> None:
    good = pb.Image(encoded=encode(photo[:240, :320]))
    bad_images = {
        1: pb.Image(pixels=pb.Array(dtype="uint8", shape=[10, 10], data=b"\0" * 7)),
        2: pb.Image(pixels=pb.Array(dtype="float32", shape=[10, 10], data=b"\0" * 400)),
        3: pb.Image(encoded=b"\x89PNG but not really"),
        4: pb.Image(),
    }

    def requests() -> Iterator[service.StreamFramesRequest]:
        yield service.StreamFramesRequest(session=service.SessionOptions(options=pb.ExtractOptions(model="orb")))
        yield service.StreamFramesRequest(frame=service.Frame(sequence=0, image=good))
        for sequence, image in bad_images.items():
            yield service.StreamFramesRequest(frame=service.Frame(sequence=sequence, image=image))
        bad_k = pb.Intrinsics(fx=0, fy=1, cx=1, cy=1)
        yield service.StreamFramesRequest(frame=service.Frame(sequence=5, image=good, intrinsics=bad_k))
        yield service.StreamFramesRequest(session=service.SessionOptions())
        yield service.StreamFramesRequest(frame=service.Frame(sequence=6, image=good))

    with grpc.insecure_channel(server.grpc_target) as channel:
        answers = list(FeatureServiceStub(channel).StreamFrames(requests(), timeout=60))
    statuses = [service.FrameStatus.Name(a.status) for a in answers]
    assert statuses == ["FRAME_STATUS_OK"] + ["FRAME_STATUS_FAILED"] * 6 + ["FRAME_STATUS_OK"]
    failed = answers[1:7]
    assert all(a.error.status == "INVALID_ARGUMENT" and a.error.message for a in failed)
    assert "needs 100" in failed[0].error.message and "dtype" in failed[1].error.message
    assert "first message" in failed[5].error.message
    assert answers[-1].to_previous.sequence == 0


def test_bad_session_options_end_the_stream_with_invalid_argument(server: Server) -> None:
    with GrpcClient(server.grpc_target) as client, pytest.raises(grpc.RpcError) as caught:
        list(client.stream_frames([], model="orb", backpressure="sometimes"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "backpressure" in caught.value.details()


def server_rss_bytes(server: Server) -> int:
    with open(f"/proc/{server.process.pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) * 1024


def open_sessions(server: Server) -> float:
    return metric_value(httpx.get(f"{server.url}/metrics").text, "featureserve_stream_sessions")


def test_sessions_are_isolated_and_freed(photo: np.ndarray, server: Server) -> None:
    a_frames = [Frame(image, i) for i, image in enumerate(camera_frames(photo, 3, 160))]
    b_frames = [Frame(image, 100 + i) for i, image in enumerate(camera_frames(np.rot90(photo).copy(), 3, 160))]

    def short_sessions(count: int) -> None:
        with GrpcClient(server.grpc_target) as client:
            for s in range(count):
                frames = a_frames if s % 2 else b_frames
                answers = list(client.stream_frames(frames, model="orb", max_keypoints=500))
                first = frames[0].sequence
                assert [a.to_keyframe.sequence for a in answers[1:]] == [first, first]

    def run(total: int) -> None:
        threads = [threading.Thread(target=short_sessions, args=(total // 4,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)

    run(200)  # warm up allocator pools
    before = server_rss_bytes(server)
    run(1000)
    growth = server_rss_bytes(server) - before
    assert open_sessions(server) == 0
    # 1000 leaked sessions would hold 1000 x 2 frames x ~20 KB of features.
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB over 1000 sessions"


def test_frame_deadline_fails_the_frame_not_the_stream(photo: np.ndarray) -> None:
    server = start_server(models='["sift"]', default_model="sift", max_batch="1", queue_size="8", cpu_threads="1")
    try:
        big = encode(cv2.resize(photo, (1024, 1024)))
        with GrpcClient(server.grpc_target) as client:
            # Sized from this machine's extraction time (also teaching the worker): a frame goes ahead of the four
            # bulk requests, so only a deadline shorter than its own extraction fails it every time.
            one = fastest_seconds(lambda: client.extract(big))
            busy = [threading.Thread(target=client.extract, args=(big,)) for _ in range(4)]
            for thread in busy:
                thread.start()
            time.sleep(0.25 * one)
            frames = [Frame(big, 0), Frame(photo[:64, :64].copy(), 1)]
            answers = list(client.stream_frames(frames, frame_deadline_ms=round(500 * one)))
            for thread in busy:
                thread.join(120)
        assert answers[0].status == "failed"
        assert answers[0].error.split(":")[0] in {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
        assert [a.sequence for a in answers] == [0, 1]
    finally:
        server.stop()


def test_drain_answers_sent_frames_then_ends_streams_with_unavailable(photo: np.ndarray) -> None:
    server = start_server(models='["orb"]', default_model="orb")
    received: list[FrameResult] = []
    error: list[grpc.RpcError] = []
    sent = threading.Event()

    def frames() -> Iterator[Frame]:
        for i, image in enumerate(camera_frames(photo, 4, 200)):
            yield Frame(image, i)
        sent.set()
        time.sleep(30)  # keep the stream open, as a camera would

    def stream() -> None:
        with GrpcClient(server.grpc_target) as client:
            try:
                for answer in client.stream_frames(frames()):
                    received.append(answer)
            except grpc.RpcError as e:
                error.append(e)

    with grpc.insecure_channel(server.grpc_target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        thread = threading.Thread(target=stream)
        thread.start()
        assert sent.wait(30)
        while len(received) < 4:
            time.sleep(0.05)
        os.kill(server.process.pid, signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        thread.join(30)
    assert [a.sequence for a in received] == [0, 1, 2, 3]
    assert error and error[0].code() == grpc.StatusCode.UNAVAILABLE and "draining" in error[0].details()
    assert server.stop() == 0


def test_raw_pixel_frames_and_homography_sessions(photo: np.ndarray, warped_photo: np.ndarray, server: Server) -> None:
    frames = [Frame(photo, 0), Frame(warped_photo, 1)]
    with GrpcClient(server.grpc_target) as client:
        answers = list(client.stream_frames(frames, model="sift", geometry="homography", include_descriptors=False))
    assert answers[1].status == "ok" and answers[1].features.descriptors is None
    h = answers[1].to_previous.geometry.matrix  # maps frame 1 (index 0 of the pair) to frame 0
    assert homography_corner_error(h, np.linalg.inv(TEST_HOMOGRAPHY), (512, 512)) < 2.0


def test_slam_example_replays_a_folder(photo: np.ndarray, server: Server, tmp_path) -> None:
    for i, image in enumerate(camera_frames(photo, 5, 240)):
        cv2.imwrite(str(tmp_path / f"{1000 + i / 10:.1f}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    example = Path(__file__).resolve().parents[2] / "examples" / "slam_frontend.py"
    command = [sys.executable, str(example), "--target", server.grpc_target, "--frames", str(tmp_path)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "5 frames; client latency p50" in output
    assert re.search(r"longest 5 frames", output), output
