"""Helpers shared by the benchmarks.

Starting a ``featureserve serve`` subprocess on a free loopback port (and always stopping it), a "null"
HTTP server that only reads the upload (the transport baseline), percentiles, the test image, machine
information, Prometheus histogram parsing, the repository's paths (results, the Oxford data) and writing
the JSON + Markdown results.

"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# Homography sequences; the data live beside the repository, never inside it.
OXFORD_AFFINE = REPO_ROOT.parent / "shared" / "data" / "oxford_affine"
LOOPBACK = "127.0.0.1"
# Distributions whose versions go into every report (missing ones are reported as absent).
VERSIONED = (
    "featureserve",
    "torch",
    "opencv-python-headless",
    "numpy",
    "pillow",
    "scikit-image",
    "httpx",
    "httpcore",
    "fastapi",
    "starlette",
    "uvicorn",
    "h11",
    "httptools",
    "uvloop",
    "python-multipart",
    "orjson",
    "pydantic",
    "pydantic-settings",
    "prometheus-client",
)


# ---------------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def quartiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """``median_ms``, ``q1_ms`` and ``q3_ms`` of durations given in seconds."""
    ms = [s * 1000.0 for s in seconds]
    return {"median_ms": percentile(ms, 50), "q1_ms": percentile(ms, 25), "q3_ms": percentile(ms, 75)}


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """``n``, mean, p50, p95, min and max of durations given in seconds, reported in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        return {"n": 0, "mean": math.nan, "p50": math.nan, "p95": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(ms),
        "mean": sum(ms) / len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "min": min(ms),
        "max": max(ms),
    }


# ---------------------------------------------------------------------------------------------------
# Test image


def benchmark_image(width: int = 640, height: int = 480) -> np.ndarray:
    """``skimage.data.astronaut()`` (512x512 RGB photo) resized to ``width`` x ``height``, uint8 RGB."""
    import cv2
    import skimage.data

    photo = skimage.data.astronaut()
    interpolation = cv2.INTER_AREA if width <= photo.shape[1] and height <= photo.shape[0] else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(photo, (width, height), interpolation=interpolation))


def encode_image(image: np.ndarray, fmt: str, jpeg_quality: int = 95) -> bytes:
    """``image`` encoded once with Pillow as ``"png"`` or ``"jpeg"`` (quality ``jpeg_quality``)."""
    from PIL import Image

    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buffer, "PNG")
    elif fmt == "jpeg":
        Image.fromarray(image).save(buffer, "JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown format {fmt!r}; use png or jpeg")
    return buffer.getvalue()


MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}


def multipart_body(image: bytes, fmt: str, fields: Mapping[str, str]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body (file part ``image`` + ``fields``) and its content type, built once.

    Sending prebuilt bytes keeps the client's multipart encoding out of the measured time and makes the
    upload size exact.
    """
    import httpx

    request = httpx.Request(
        "POST",
        f"http://{LOOPBACK}/",
        files={"image": (f"image.{fmt}", image, MEDIA_TYPES[fmt])},
        data=dict(fields),
    )
    return request.read(), request.headers["content-type"]


# ---------------------------------------------------------------------------------------------------
# Machine information


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: platform, CPUs, load, thread settings and library versions."""
    import cv2
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector ISA torch's kernels run on
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "opencv_build": cv2.__version__,
        "versions": {name: _version(name) for name in VERSIONED},
        "performance_env": performance_env(),
        "git": git_state(),
    }
    return info


PERFORMANCE_ENV_PREFIXES = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "OMP_", "MKL_", "OPENBLAS_", "OPENCV_")


def performance_env() -> dict[str, str]:
    """Environment variables that change the figures (allocator, thread pools); the server inherits them."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(PERFORMANCE_ENV_PREFIXES)}


def describe_git(state: Mapping[str, Any]) -> str:
    """``"commit abc1234 + uncommitted featureserve/service/serve.py (diff 0123abcd)"``."""
    text = f"commit {str(state.get('commit'))[:7]}"
    changed = [line.split()[-1] for line in state.get("featureserve_uncommitted") or []]
    if changed:
        text += f" + uncommitted {', '.join(changed)}"
    return f"{text} (featureserve/ sources {state.get('featureserve_sources_sha1')})"


def describe_foreign_load(summary: Mapping[str, Any]) -> str:
    """One sentence on the CPU other processes took during the run."""
    top = ", ".join(f"{name} {seconds:g} s" for name, seconds in summary["top_cpu_s"].items()) or "-"
    return (
        f"CPU used by other processes during the measurements: mean {summary['mean_cores']:.2f} cores, "
        f"peak {summary['peak_cores']:.2f} (busiest: {top})"
    )


def describe_performance_env(env: Mapping[str, str]) -> str:
    """``"MALLOC_X=1, ..."`` or ``"none (glibc malloc defaults)"``."""
    return ", ".join(f"{k}={v}" for k, v in env.items()) or "none (glibc malloc defaults)"


def git_state() -> dict[str, Any]:
    """The checkout measured: commit, and uncommitted changes under ``featureserve/`` (they are measured too)."""

    def git(*args: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
            if done.returncode == 0:
                return done.stdout.strip()
        return None

    status = git("status", "--porcelain", "--", "featureserve")
    diff = git("diff", "HEAD", "--", "featureserve")
    return {
        "commit": git("rev-parse", "HEAD"),
        "featureserve_uncommitted": status.splitlines() if status else [],
        # Tells apart two states with the same list of modified files.
        "featureserve_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
        # The code itself, whatever is committed: equal fingerprints mean the same featureserve/ sources.
        "featureserve_sources_sha1": sources_fingerprint(),
    }


def sources_fingerprint() -> str:
    """SHA-1 (12 hex digits) over the paths and contents of ``featureserve/**/*.py`` in the working tree."""
    digest = hashlib.sha1()
    root = REPO_ROOT / "featureserve"
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def process_table() -> dict[int, tuple[int, int, str]]:
    """``pid -> (parent pid, CPU ticks used so far, name)`` for every process in /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), name)
    return out


def busy_processes(threshold_percent: float = 20.0, interval_s: float = 0.5) -> list[str]:
    """Other processes using more than ``threshold_percent`` of one CPU (a noisy machine skews figures)."""
    if not Path("/proc").is_dir():
        return []

    before = process_table()
    time.sleep(interval_s)
    after = process_table()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (_, total, name) in after.items():
        if pid == os.getpid() or pid not in before:
            continue
        percent = 100.0 * (total - before[pid][1]) / hz / interval_s
        if percent >= threshold_percent:
            busy.append(f"{pid} {name} {percent:.0f}%")
    return busy


class ForeignLoad:
    """CPU taken by processes outside this one's process tree (other people's jobs), sampled in a thread.

    ``total_s()`` is the cumulative foreign CPU-seconds since the start; differences of two readings over a
    span of wall time give the cores others used meanwhile (resolution: the sampling interval).
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self._total = 0.0
        self._peak = 0.0
        self._by_name: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-load", daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> ForeignLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def total_s(self) -> float:
        """Foreign CPU-seconds so far."""
        with self._lock:
            return self._total

    def summary(self) -> dict[str, Any]:
        """Mean and peak foreign cores over the whole span, and the busiest foreign process names."""
        with self._lock:
            wall = max(time.monotonic() - self.started, 1e-9)
            top = sorted(self._by_name.items(), key=lambda item: -item[1])[:5]
            return {
                "mean_cores": self._total / wall,
                "peak_cores": self._peak,
                "interval_s": self.interval_s,
                "top_cpu_s": {name: round(seconds, 1) for name, seconds in top if seconds >= 0.5},
            }

    def _run(self) -> None:
        if not Path("/proc").is_dir():
            return
        hz = os.sysconf("SC_CLK_TCK")
        previous = process_table()
        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            current = process_table()
            now = time.monotonic()
            mine = {os.getpid()}
            grew = True
            while grew:  # descendants of this process (servers, the null server)
                grew = False
                for pid, (ppid, _, _) in current.items():
                    if ppid in mine and pid not in mine:
                        mine.add(pid)
                        grew = True
            foreign = 0.0
            by_name: dict[str, float] = {}
            for pid, (_, ticks, name) in current.items():
                if pid in mine or pid not in previous:
                    continue
                seconds = (ticks - previous[pid][1]) / hz
                if seconds > 0:
                    foreign += seconds
                    by_name[name] = by_name.get(name, 0.0) + seconds
            with self._lock:
                for name, seconds in by_name.items():
                    self._by_name[name] = self._by_name.get(name, 0.0) + seconds
                self._total += foreign
                self._peak = max(self._peak, foreign / max(now - last, 1e-9))
            previous, last = current, now


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (its threads included), from ``/proc``; ``None`` elsewhere."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


# ---------------------------------------------------------------------------------------------------
# Servers


def add_shared_arguments(parser: argparse.ArgumentParser, default_out: Path) -> None:
    """The options both serving benchmarks take: test image, keypoints, threads, allocator setup, output."""
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--max-keypoints", type=int, default=1000)
    parser.add_argument("--cpu-threads", type=int, default=2, help="FEATURESERVE_CPU_THREADS, also used in-process")
    parser.add_argument(
        "--no-server-setup",
        action="store_true",
        help="do not apply the server's process setup (allocator settings) to the in-process measurements",
    )
    parser.add_argument("--out", type=Path, default=default_out, help="JSON output; Markdown goes beside it")


def server_process_setup() -> list[str]:
    """Run this process under the glibc allocator settings that ``featureserve serve`` gives itself.

    glibc reads them only at start-up, so the script restarts itself once (exec) when any is unset; the
    in-process reference figures are then measured under the server's settings. Returns them.
    """
    try:
        from featureserve.service.serve import MALLOC_ENVIRONMENT, restart_with_malloc_environment
    except ImportError:  # a checkout whose server sets nothing
        return []
    # Run as ``python -m benchmarks.performance.NAME``: exec the module again, since its file alone cannot import
    # the ``benchmarks`` package.
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    restart_with_malloc_environment(["-m", spec.name, *sys.argv[1:]] if spec is not None else sys.argv)
    return [f"{k}={os.environ.get(k, 'unset')}" for k in MALLOC_ENVIRONMENT]


# ---------------------------------------------------------------------------------------------------
# Prometheus


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` in Prometheus ``text`` whose labels include ``labels``.

    0 when no sample has those labels yet (a labelled counter exports none before its first count); `LookupError`
    when no metric family could own ``name``, so a renamed metric fails the test or check that reads it.
    """
    families = list(text_string_to_metric_families(text))
    if not any(name == f.name or name.startswith(f"{f.name}_") for f in families):
        raise LookupError(f"no metric {name} exported")
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def histogram(metrics_text: str, metric: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A Prometheus histogram's cumulative buckets (``le`` -> count), ``sum`` and ``count`` for ``labels``."""
    buckets: dict[str, float] = {}
    total = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if not sample.name.startswith(metric) or any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            suffix = sample.name[len(metric) :]
            if suffix == "_bucket":
                buckets[sample.labels["le"]] = sample.value
            elif suffix in ("_sum", "_count"):
                total[suffix[1:]] = sample.value
    return {"buckets": buckets, **total}


def histogram_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """``after - before`` of two `histogram` readings."""
    buckets = {le: count - before["buckets"].get(le, 0.0) for le, count in after["buckets"].items()}
    return {"buckets": buckets, "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


def bucket_counts(reading: Mapping[str, Any]) -> dict[str, int]:
    """Cumulative ``le`` buckets of integer values as counts per range: ``{"1": 3, "2": 0, "3-4": 5, ...}``."""
    counts: dict[str, int] = {}
    previous_le, previous_count = 0.0, 0.0
    for le, count in sorted(reading["buckets"].items(), key=lambda item: float(item[0])):
        upper = float(le)
        low = math.floor(previous_le) + 1
        if math.isinf(upper):
            label = f">{math.floor(previous_le)}"
        else:
            label = str(int(upper)) if low >= upper else f"{low}-{int(upper)}"
        counts[label] = round(count - previous_count)
        previous_le, previous_count = upper, count
    return counts


# ---------------------------------------------------------------------------------------------------
# Output


# Timing


@dataclass
class Probe:
    """One timed operation; ``run`` returns the seconds it took."""

    key: tuple[str, ...]
    run: Callable[[], float]
    samples: list[float] = field(default_factory=list)


def timed(function: Callable[[], Any]) -> Callable[[], float]:
    """A probe body that times ``function()`` with ``perf_counter``."""

    def run() -> float:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    return run


def run_rounds(probes: list[Probe], rounds: int, warmup: int, seed: int) -> None:
    """Run every probe once per round, in a fresh shuffled order each round; record after ``warmup`` rounds."""
    rng = random.Random(seed)
    order = list(probes)
    for round_index in range(warmup + rounds):
        rng.shuffle(order)
        for probe in order:
            elapsed = probe.run()
            if round_index >= warmup:
                probe.samples.append(elapsed)
        if (round_index + 1) % 10 == 0:
            print(f"  round {round_index + 1}/{warmup + rounds}", flush=True)
