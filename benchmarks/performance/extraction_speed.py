"""Extraction time of every served model against `sift` and `orb`, in-process, measured in the same run.

Usage (from the repository root):
    python -m benchmarks.performance.extraction_speed --out benchmarks/results/extraction_speed.json

For each image size and thread count, every model (and every variant: scfeat on one level and the earlier
scfeat-lite network) extracts the same photo (``skimage.data.astronaut`` resized) in interleaved, shuffled rounds,
so that a change in the machine's load touches all models alike; the table gives the median time and its ratio to
`sift` and `orb` of the same rounds. ``--runtimes`` also times the scfeat network alone under each CPU runtime
(eager, channels-last, ``torch.compile``, and ONNX Runtime when it is installed) with the largest output
difference from eager. Writes JSON and Markdown beside it.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.common import (
    RESULTS_DIR,
    Probe,
    benchmark_image,
    machine_info,
    quartiles_ms,
    run_rounds,
    timed,
)
from featureserve.models import KeypointOptions, load_model
from featureserve.models.cards import CHECKPOINT_DIR
from featureserve.models.registry import available_models
from training.evaluation.records import format_table, now_iso, write_results

DEFAULT_OUT = RESULTS_DIR / "extraction_speed.json"
# name -> (model, conf): variants measured beside the served models.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "scfeat one level": ("scfeat", {"scale_levels": 1, "coarser_descriptor": False}),
    "scfeat without the fine head": ("scfeat", {"card": str(CHECKPOINT_DIR / "scfeat-fast.json")}),
    "scfeat, levels in turn": ("scfeat", {"parallel_levels": False}),
    "scfeat, levels in turn, 64 px padding": ("scfeat", {"parallel_levels": False, "pad_multiple": 64}),
    "scfeat-lite (before)": (
        "scfeat",
        {
            "card": str(CHECKPOINT_DIR / "scfeat-lite.json"),
            "scale_levels": 3,
            "coarser_descriptor": True,
            "pad_multiple": 64,
        },
    ),
}


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in torch and OpenCV."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def time_models(
    extractors: dict[str, Any], image: np.ndarray, max_keypoints: int, rounds: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Median and quartiles (ms) of ``extract`` per model over interleaved rounds, and keypoints found."""
    options = [KeypointOptions(max_keypoints=max_keypoints)]
    probes = [Probe((name,), timed(lambda e=e: e.extract([image], options))) for name, e in extractors.items()]
    run_rounds(probes, rounds, warmup, seed=0)
    results = {}
    for probe in probes:
        [features] = extractors[probe.key[0]].extract([image], options)
        results[probe.key[0]] = quartiles_ms(probe.samples) | {"keypoints": len(features)}
    return results


def time_runtimes(network: torch.nn.Module, size: tuple[int, int], rounds: int) -> dict[str, dict[str, float]]:
    """The scfeat network alone at ``size`` (padded W, H) under each CPU runtime, in interleaved rounds: median ms
    and largest difference from eager."""
    width, height = size
    batch = torch.rand(1, 1, height, width)
    with torch.inference_mode():
        reference = network(batch)
    runners: dict[str, Any] = {"eager": network}
    channels_last = copy.deepcopy(network).to(memory_format=torch.channels_last)
    runners["channels-last"] = lambda x: channels_last(x.contiguous(memory_format=torch.channels_last))
    runners["torch.compile"] = torch.compile(network, dynamic=False)
    try:
        import onnxruntime

        buffer = io.BytesIO()
        outputs = ["raw", "scores"]
        wrapped = _Outputs(network, outputs)
        torch.onnx.export(wrapped, (batch,), buffer, input_names=["image"], output_names=outputs, dynamo=True)
        session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        runners["onnxruntime"] = lambda x: dict(
            zip(outputs, (torch.from_numpy(o) for o in session.run(None, {"image": x.numpy()})), strict=True)
        )
    except ImportError:
        pass
    with torch.inference_mode():
        for run in runners.values():
            run(batch)  # warm-up (and compilation)
        probes = [Probe((name,), timed(lambda run=run: run(batch))) for name, run in runners.items()]
        run_rounds(probes, rounds, warmup=0, seed=0)
        results = {}
        for probe in probes:
            out = runners[probe.key[0]](batch)
            difference = max(float((out[k] - reference[k]).abs().max()) for k in ("raw", "scores"))
            results[probe.key[0]] = {
                "median_ms": statistics.median(probe.samples) * 1000,
                "max_abs_difference": difference,
            }
    return results


class _Outputs(torch.nn.Module):
    """The network's named tensor outputs as a tuple, for ONNX export."""

    def __init__(self, network: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.network, self.names = network, names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs named in ``names``."""
        outputs = self.network(images)
        return tuple(outputs[name] for name in self.names)


def main() -> None:
    """Time every model at every size and thread count, and optionally the runtimes, and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every served model but tiny-cnn")
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1024x768"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--max-keypoints", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-variants", action="store_true", help="only the served models")
    parser.add_argument("--runtimes", action="store_true", help="also time the scfeat network per CPU runtime")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    names = args.models or [m for m in available_models() if m != "tiny-cnn"]
    models: dict[str, tuple[str, dict[str, Any]]] = {name: (name, {}) for name in names}
    models |= {} if args.no_variants else VARIANTS
    extractors = {name: load_model(model, **conf) for name, (model, conf) in models.items()}
    report: dict[str, Any] = {"date": now_iso(), "machine": machine_info(), "args": vars(args), "runs": []}
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        image = benchmark_image(width, height)
        for threads in args.threads:
            set_threads(threads)
            print(f"{size}, {threads} thread(s)", flush=True)
            timings = time_models(extractors, image, args.max_keypoints, args.rounds, args.warmup)
            report["runs"].append({"size": size, "threads": threads, "models": timings})
            sift, orb = timings.get("sift", {}).get("median_ms"), timings.get("orb", {}).get("median_ms")
            for name, t in timings.items():
                rows.append(
                    [
                        size,
                        threads,
                        name,
                        t["median_ms"],
                        f"{t['q1_ms']:.1f}-{t['q3_ms']:.1f}",
                        t["median_ms"] / sift if sift else None,
                        t["median_ms"] / orb if orb else None,
                        t["keypoints"],
                    ]
                )
    headers = ["image", "threads", "model", "median ms", "quartiles ms", "x sift", "x orb", "keypoints"]
    markdown = [
        "# Extraction time against sift and orb (in-process, same rounds)",
        "",
        f"{report['date']}; {args.max_keypoints} keypoints; {args.rounds} rounds after {args.warmup} warm-up.",
        "",
        format_table(headers, rows),
    ]
    if args.runtimes and "scfeat" in extractors:
        set_threads(max(args.threads))
        network = extractors["scfeat"].network
        report["runtimes"] = time_runtimes(network, (640, 512), args.rounds)
        runtime_rows = [[k, v["median_ms"], f"{v['max_abs_difference']:.1e}"] for k, v in report["runtimes"].items()]
        markdown += [
            "",
            f"## scfeat network alone, 640x512, {max(args.threads)} threads",
            "",
            format_table(["runtime", "median ms", "max difference"], runtime_rows),
        ]
    write_results(args.out, report, "\n".join(markdown))


if __name__ == "__main__":
    main()
