"""Replay camera frames through StreamFrames as a SLAM front end would; print per-frame latency and tracks.

Usage (a running ``featureserve serve``; from the repository root):
    python examples/slam_frontend.py                                  # TUM freiburg2_desk frames, orb
    python examples/slam_frontend.py --model sift --frames DIR --loops 3

Frames go one at a time: the next frame is sent when the previous answer arrived, so the client can decide
whether the next frame becomes a keyframe (here: when fewer than ``--keyframe-ratio`` of the keyframe's
keypoints are still matched as inliers). Tracks chain the inlier matches to the previous frame; a track's
length is the number of consecutive frames it was seen in.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from featureserve.client import Frame, FrameResult, GrpcClient

DEFAULT_FRAMES = Path(__file__).resolve().parents[1].parent / "shared/data/tum_rgbd_unlabeled/freiburg2_desk"
# TUM freiburg2 colour camera, as quoted in the dataset's README (fx, fy, cx, cy).
TUM_FREIBURG2 = (520.9, 521.0, 325.1, 249.7)


class Tracks:
    """Track ids per keypoint of the last frame, extended through inlier matches to the previous frame."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.lengths: dict[int, int] = {}
        self.next_id = 0

    def update(self, result: FrameResult) -> None:
        """Give the frame's keypoints track ids: matched inliers continue a track, the rest start one."""
        count = len(result.features.keypoints)
        ids = np.arange(self.next_id, self.next_id + count)
        self.next_id += count
        link = result.to_previous
        if link is not None and len(link.matches):
            keep = link.inliers if link.inliers is not None else np.ones(len(link.matches), bool)
            current, previous = link.matches[keep, 0], link.matches[keep, 1]
            ids[current] = self.ids[previous]
        for track in ids:
            self.lengths[int(track)] = self.lengths.get(int(track), 0) + 1
        self.ids = ids

    def active_lengths(self) -> np.ndarray:
        """Lengths of the tracks seen in the last frame."""
        return np.array([self.lengths[int(t)] for t in self.ids])


def main() -> None:
    """Stream the frames and print one line per frame and a summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051", help="gRPC address of featureserve")
    parser.add_argument("--frames", type=Path, default=DEFAULT_FRAMES, help="folder of frames, sorted by name")
    parser.add_argument("--model", default="orb")
    parser.add_argument("--max-keypoints", type=int, default=1000)
    parser.add_argument("--loops", type=int, default=1, help="replay the folder this many times")
    parser.add_argument("--keyframe-ratio", type=float, default=0.3)
    args = parser.parse_args()

    paths = sorted(p for p in args.frames.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise SystemExit(f"no frames in {args.frames}")
    answers: queue.Queue[FrameResult] = queue.Queue()
    make_keyframe = threading.Event()
    sent_at: dict[int, float] = {}

    def frames() -> Iterator[Frame]:
        for sequence in range(len(paths) * args.loops):
            path = paths[sequence % len(paths)]
            keyframe = make_keyframe.is_set()
            make_keyframe.clear()
            sent_at[sequence] = time.perf_counter()
            yield Frame(path.read_bytes(), sequence, float(path.stem), TUM_FREIBURG2, keyframe)
            answers.get()  # lock-step: wait for this frame's answer before sending the next

    tracks = Tracks()
    latencies = []
    print("seq  status  ms(client/server)  keypoints  prev matches/inliers  key matches/inliers  mean track")
    with GrpcClient(args.target) as client:
        for result in client.stream_frames(frames(), model=args.model, max_keypoints=args.max_keypoints):
            elapsed = (time.perf_counter() - sent_at[result.sequence]) * 1000
            if result.status != "ok":
                print(f"{result.sequence:3d}  {result.status}  {result.error}")
                answers.put(result)
                continue
            latencies.append(elapsed)
            tracks.update(result)
            prev, key = result.to_previous, result.to_keyframe
            prev_text = f"{len(prev.matches)}/{int(prev.inliers.sum())}" if prev is not None else "-"
            key_text = f"{len(key.matches)}/{int(key.inliers.sum())}" if key is not None else "-"
            tracked = 0 if key is None else key.inliers.sum()
            if not result.keyframe and tracked < args.keyframe_ratio * len(result.features.keypoints):
                make_keyframe.set()
            mark = "*" if result.keyframe else " "
            print(
                f"{result.sequence:3d}  ok{mark}    {elapsed:6.1f} / {result.latency_ms:6.1f}"
                f"     {len(result.features.keypoints):5d}      {prev_text:>12}         {key_text:>12}"
                f"       {tracks.active_lengths().mean():5.2f}"
            )
            answers.put(result)
    lengths = np.array(list(tracks.lengths.values()))
    print(
        f"\n{len(latencies)} frames; client latency p50 {np.percentile(latencies, 50):.1f} ms, "
        f"p95 {np.percentile(latencies, 95):.1f} ms; tracks seen in >= 3 frames: {(lengths >= 3).sum()}, "
        f"longest {lengths.max()} frames (* = keyframe)"
    )


if __name__ == "__main__":
    main()
