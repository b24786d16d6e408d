"""The fuzzing harnesses of ``benchmarks/fuzzing.py``, run for longer than CI does.

    .venv/bin/python -m benchmarks.reliability.fuzz [--decode 20000] [--grpc 5000] [--schema 400]

1. hypothesis on `decode_image` (in process): ``--decode`` inputs;
2. hypothesis on gRPC messages to a live server with every model: ``--grpc`` calls;
3. schemathesis on the live server's OpenAPI schema: ``--schema`` cases per operation and mode.
The first failure stops a harness (hypothesis then shrinks it and prints the smallest input) and the run
exits 1. Bounded by the counts; writes ``benchmarks/results/fuzz.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings

from benchmarks.common import RESULTS_DIR, machine_info
from benchmarks.fuzzing import Call, check_decode, check_grpc_call, decode_inputs, grpc_calls, schema_fuzz
from benchmarks.servers import serving
from training.evaluation.records import format_table, now_iso, write_results

MODELS = ["sift", "orb", "akaze", "caps", "tiny-cnn"]


def run_harness(name: str, harness: Callable[[], Counter[str]]) -> dict[str, Any]:
    """Run one harness; its outcome counts, time, and the failure if there was one."""
    print(f"[{name}]", flush=True)
    start = time.monotonic()
    failure = None
    seen: Counter[str] = Counter()
    try:
        seen = harness()
    except Exception as error:  # a found bug: report it, go on with the other harnesses
        failure = "".join(traceback.format_exception(error))[-4000:]
        print(failure, file=sys.stderr)
    return {"inputs": sum(seen.values()), "outcomes": dict(seen.most_common()), "seconds": time.monotonic() - start,
            "failure": failure}  # fmt: skip


def decode_harness(examples: int) -> Counter[str]:
    """hypothesis on decode_image."""
    seen: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(decode_inputs())
    def decode(data: bytes) -> None:
        seen[check_decode(data)] += 1

    decode()
    return seen


def grpc_harness(target: str, examples: int) -> Counter[str]:
    """hypothesis on gRPC messages."""
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(target) as channel:

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(grpc_calls())
        def call(request: Call) -> None:
            seen[f"{request.method} {check_grpc_call(channel, request)}"] += 1

        call()
    return seen


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decode", type=int, default=20000)
    parser.add_argument("--grpc", type=int, default=5000)
    parser.add_argument("--schema", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fuzz.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Pillow warns on truncated files; each is an expected 400
    report: dict[str, Any] = {"date": now_iso(), "argv": sys.argv[1:], "models": MODELS, "machine": machine_info()}
    report["decode"] = run_harness("decode", lambda: decode_harness(args.decode))
    with serving(MODELS, default_model="sift", settings={"queue_size": 256}) as server:
        report["grpc"] = run_harness("grpc", lambda: grpc_harness(server.grpc_target, args.grpc))
        report["schema"] = run_harness("schema", lambda: schema_fuzz(server.url, args.schema))
        report["server_tracebacks"] = server.log_tail(100000).count("Traceback")
    rows = []
    for name in ("decode", "grpc", "schema"):
        result = report[name]
        outcomes = ", ".join(f"{k}: {v}" for k, v in list(result["outcomes"].items())[:8])
        found = "FOUND" if result["failure"] else "none"
        rows.append([name, result["inputs"], f"{result['seconds']:.0f}", found, outcomes])
    markdown = "\n".join(
        [
            "# Fuzzing",
            "",
            f"{report['date']}, `python -m benchmarks.reliability.fuzz {' '.join(report['argv'])}`; "
            f"server models: {', '.join(MODELS)}. "
            f"Tracebacks in the server log: {report['server_tracebacks']}.",
            "",
            format_table(["target", "inputs", "seconds", "failure", "outcomes (most common)"], rows),
        ]
    )
    write_results(args.out, report, markdown)
    print(markdown)
    sys.exit(1 if any(report[name]["failure"] for name in ("decode", "grpc", "schema")) else 0)


if __name__ == "__main__":
    main()
