"""What the REST service adds to one extraction at concurrency 1: REST latency vs in-process ``model.extract``.

Usage (from the repository root):
    python -m benchmarks.performance.overhead            # full run (100 measured rounds)
    python -m benchmarks.performance.overhead --quick    # short run

The script restarts itself once under the glibc malloc settings that ``featureserve serve`` gives
itself (``featureserve.service.serve.MALLOC_ENVIRONMENT``), so in-process and REST figures share them;
``--no-server-setup`` keeps the in-process side on the glibc defaults. The report records them.

One 640x480 RGB photo (``skimage.data.astronaut()``, resized) is encoded once as PNG and once as JPEG
quality 95. For each format, model (orb, sift) and response mode (no descriptors, base64, json) the
script measures, interleaved in shuffled rounds so that drift hits every figure alike:

- in-process ``model.extract`` (and ``model.detect``) on the array the server's decoder produces from
  the same bytes;
- in-process decode of the bytes (the service's own ``decode_image``, Pillow; ``cv2.imdecode`` too);
- in-process response encoding (the service's ``extract_response`` + orjson);
- REST ``POST /v1/extract`` through a started server, one persistent ``httpx.Client``, concurrency 1,
  with the multipart body built once (client-side encoding is not timed; the response body is read
  but not parsed inside the timed span);
- transport baselines: the same request bytes to a null HTTP server that only reads them (reply 2 bytes,
  or as many bytes as the real response), and the request to the service with an unknown model (404
  after the whole multipart body was parsed), and ``GET /healthz``.

"Service-added" = REST p50 - in-process model p50 - decode p50 (the issue's definition), where the model
call is the one the endpoint makes: ``extract``, or ``detect`` for include_descriptors=false when the
endpoint calls ``pool.detect`` for it (read from its source; the figure against ``extract`` is kept too).
The report also subtracts the transport baseline and decomposes the rest. Differences of medians are
approximate.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

import cv2
import httpx
import numpy as np
import orjson
import torch

from benchmarks.common import (
    RESULTS_DIR,
    ForeignLoad,
    Probe,
    add_shared_arguments,
    benchmark_image,
    busy_processes,
    describe_foreign_load,
    describe_git,
    describe_performance_env,
    encode_image,
    machine_info,
    multipart_body,
    run_rounds,
    server_process_setup,
    summarize_ms,
    timed,
)
from benchmarks.servers import serving, start_null_server
from featureserve.models import Features, KeypointOptions, load_model_with_knobs
from featureserve.service.api.rest.extract import extract_response
from featureserve.service.contract import ExtractOptions
from featureserve.service.workers.decoding import DecodeLimits, decode_image
from training.evaluation.records import format_table, now_iso, write_results

DEFAULT_OUT = RESULTS_DIR / "overhead.json"
MODES = {
    # mode name -> form fields that select it
    "none": {"include_descriptors": "false"},
    "base64": {"include_descriptors": "true", "descriptor_encoding": "base64"},
    "json": {"include_descriptors": "true", "descriptor_encoding": "json"},
}
TARGET_MS = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["orb", "sift"], help="models to measure")
    parser.add_argument("--formats", nargs="+", default=["png", "jpeg"], choices=["png", "jpeg"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="response modes")
    parser.add_argument("--iterations", type=int, default=100, help="measured rounds (every probe once a round)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured rounds first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round probe order")
    parser.add_argument("--quick", action="store_true", help="short run: 10 rounds, 2 warm-up rounds")
    add_shared_arguments(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup = 10, 2
    return args


def http_probe(
    client: httpx.Client, url: str, body: bytes, headers: dict[str, str], status: int
) -> Callable[[], float]:
    """A probe body that POSTs ``body`` and times until the whole response body has arrived."""

    def run() -> float:
        start = time.perf_counter()
        response = client.post(url, content=body, headers=headers)
        elapsed = time.perf_counter() - start
        if response.status_code != status:
            raise RuntimeError(f"{url}: expected {status}, got {response.status_code}: {response.text[:300]}")
        return elapsed

    return run


def server_operation(include_descriptors: bool) -> str:
    """The model call ``POST /v1/extract`` makes: ``"detect"`` without descriptors if the operations layer says so.

    Read from the operations layer's source, so the in-process reference follows the code being measured.
    """
    from featureserve.service.operations import Operations

    if not include_descriptors and "detect" in inspect.getsource(Operations.plan_extract):
        return "detect"
    return "extract"


def main(argv: list[str] | None = None) -> None:
    """Measure, print the tables, write the JSON and Markdown results."""
    args = parse_args(argv)
    torch.set_num_threads(args.cpu_threads)  # what the server does for its torch models (not used by orb/sift)
    busy_before = busy_processes()
    if busy_before:
        print(f"warning: other busy processes, figures will be noisy: {busy_before}")
    machine = machine_info()
    in_process_setup = [] if args.no_server_setup else server_process_setup()

    image = benchmark_image(args.width, args.height)
    encoded = {fmt: encode_image(image, fmt, args.jpeg_quality) for fmt in args.formats}
    limits = DecodeLimits(32 * 1024 * 1024, 40_000_000)
    decoded = {fmt: decode_image(data, limits) for fmt, data in encoded.items()}
    decoded_grey = {fmt: decode_image(data, limits, grey=True) for fmt, data in encoded.items()}
    models = {name: load_model_with_knobs(name, num_threads=args.cpu_threads) for name in args.models}
    options = KeypointOptions(max_keypoints=args.max_keypoints)

    def served(fmt: str, name: str) -> tuple[str, np.ndarray]:
        """The decode probe and the array the service gives ``name`` (grey JPEG decoding for grey models)."""
        return ("decode_grey", decoded_grey[fmt]) if models[name].grey_input else ("decode", decoded[fmt])

    features: dict[tuple[str, str], Features] = {
        (fmt, name): model.extract([served(fmt, name)[1]], [options])[0]
        for fmt in args.formats
        for name, model in models.items()
    }

    probes: dict[tuple[str, ...], Probe] = {}

    def add(key: tuple[str, ...], run: Callable[[], float]) -> None:
        probes[key] = Probe(key, run)

    # In-process: extract, decode, response encoding.
    for fmt in args.formats:
        data = encoded[fmt]
        add(("decode", fmt), timed(lambda data=data: decode_image(data, limits)))
        add(("decode_grey", fmt), timed(lambda data=data: decode_image(data, limits, grey=True)))
        add(
            ("decode_cv2", fmt),
            timed(
                lambda data=data: cv2.cvtColor(
                    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
                )
            ),
        )
        for name, model in models.items():
            array = served(fmt, name)[1]
            add(("extract", fmt, name), timed(lambda m=model, a=array: m.extract([a], [options])))
            if "none" in args.modes:
                add(("detect", fmt, name), timed(lambda m=model, a=array: m.detect([a], [options])))
            for mode, fields in MODES.items():
                if mode not in args.modes:
                    continue
                extract_options = ExtractOptions.model_validate({"model": name, "max_keypoints": args.max_keypoints})
                extract_options = extract_options.model_copy(
                    update={
                        "include_descriptors": fields["include_descriptors"] == "true",
                        "descriptor_encoding": fields.get("descriptor_encoding", "json"),
                    }
                )
                f = features[(fmt, name)]
                add(
                    ("encode", fmt, name, mode),
                    timed(
                        lambda f=f, n=name, o=extract_options: orjson.dumps(
                            extract_response(n, f, o), option=orjson.OPT_SERIALIZE_NUMPY
                        )
                    ),
                )

    server_settings = {"cpu_threads": args.cpu_threads}
    report: dict[str, Any] = {
        "benchmark": "overhead",
        "date": now_iso(),
        "machine": machine,
        "busy_processes_before": busy_before,
        "settings": {
            "image": f"skimage.data.astronaut() resized to {args.width}x{args.height} RGB (cv2.INTER_AREA)",
            "formats": args.formats,
            "jpeg_quality": args.jpeg_quality,
            "models": args.models,
            "modes": {mode: MODES[mode] for mode in args.modes},
            "max_keypoints": args.max_keypoints,
            "iterations": args.iterations,
            "warmup_rounds": args.warmup,
            "cpu_threads": args.cpu_threads,
            "in_process_model_conf": {name: dict(model.conf) for name, model in models.items()},
            "in_process_setup": in_process_setup,
            "concurrency": 1,
            "client": "one persistent httpx.Client (HTTP/1.1 keep-alive, trust_env=False), prebuilt multipart body",
            "quick": args.quick,
        },
    }

    with (
        ForeignLoad() as foreign,
        serving(args.models, args.models[0], server_settings) as server,
        start_null_server() as null_url,
        httpx.Client(timeout=60.0, trust_env=False) as client,
    ):
        report["settings"]["server_env"] = server.env
        report["settings"]["server_settings"] = server.settings
        report["server_startup_s"] = server.startup_s
        report["settings"]["server_git"] = server.extra["git"]
        extract_url = f"{server.url}/v1/extract"
        responses: dict[tuple[str, str, str], dict[str, Any]] = {}
        uploads: dict[str, dict[str, int]] = {}
        for fmt in args.formats:
            data = encoded[fmt]
            body, content_type = multipart_body(
                data, fmt, {"model": "no-such-model", "max_keypoints": str(args.max_keypoints)}
            )
            headers = {"content-type": content_type}
            add(("rest_404", fmt), http_probe(client, extract_url, body, headers, 404))
            add(("null", fmt), http_probe(client, null_url, body, headers, 200))
            uploads[fmt] = {"image_bytes": len(data), "request_body_bytes": len(body)}
            for name in args.models:
                for mode in args.modes:
                    fields = {"model": name, "max_keypoints": str(args.max_keypoints), **MODES[mode]}
                    body, content_type = multipart_body(data, fmt, fields)
                    headers = {"content-type": content_type}
                    # Calibrate: one request to learn the response size and check it against in-process.
                    response = client.post(extract_url, content=body, headers=headers)
                    response.raise_for_status()
                    payload = response.json()
                    expected = len(features[(fmt, name)])
                    if payload["num_keypoints"] != expected:
                        print(f"note: {fmt}/{name}: REST {payload['num_keypoints']} vs in-process {expected} keypoints")
                    responses[(fmt, name, mode)] = {
                        "request_body_bytes": len(body),
                        "response_bytes": len(response.content),
                        "num_keypoints": payload["num_keypoints"],
                        "in_process_num_keypoints": expected,
                    }
                    add(("rest", fmt, name, mode), http_probe(client, extract_url, body, headers, 200))
                    sized = {**headers, "x-reply-bytes": str(len(response.content))}
                    add(("null_sized", fmt, name, mode), http_probe(client, null_url, body, sized, 200))
        health_url = f"{server.url}/healthz"

        def health() -> float:
            start = time.perf_counter()
            client.get(health_url).raise_for_status()
            return time.perf_counter() - start

        add(("healthz",), health)
        print(f"{len(probes)} probes, {args.warmup} warm-up + {args.iterations} measured rounds", flush=True)
        started = time.monotonic()
        run_rounds(list(probes.values()), args.iterations, args.warmup, args.seed)
        report["measure_wall_s"] = time.monotonic() - started
    report["settings"]["server_exit_code"] = server.extra.get("exit_code")
    report["foreign_load"] = foreign.summary()
    report["busy_processes_after"] = busy_processes()
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())

    stats = {key: summarize_ms(probe.samples) for key, probe in probes.items()}
    report["uploads"] = uploads
    report["probes"] = {"/".join(key): value for key, value in stats.items()}

    rows: list[dict[str, Any]] = []
    for fmt in args.formats:
        for name in args.models:
            for mode in args.modes:
                rest = stats[("rest", fmt, name, mode)]
                extract = stats[("extract", fmt, name)]
                operation = server_operation(mode != "none")
                model_time = stats[(operation, fmt, name)]
                detect = stats.get(("detect", fmt, name))
                decode = stats[(served(fmt, name)[0], fmt)]
                encode = stats[("encode", fmt, name, mode)]
                null = stats[("null", fmt)]
                null_sized = stats[("null_sized", fmt, name, mode)]
                parse = stats[("rest_404", fmt)]
                service_added = rest["p50"] - model_time["p50"] - decode["p50"]
                beyond_transfer = service_added - null_sized["p50"]
                rows.append(
                    {
                        "format": fmt,
                        "model": name,
                        "mode": mode,
                        **responses[(fmt, name, mode)],
                        "server_operation": operation,
                        "model_ms": {"p50": model_time["p50"], "p95": model_time["p95"]},
                        "extract_ms": {"p50": extract["p50"], "p95": extract["p95"]},
                        "detect_ms": {"p50": detect["p50"], "p95": detect["p95"]} if detect else None,
                        "rest_ms": {"p50": rest["p50"], "p95": rest["p95"]},
                        "decode_p50_ms": decode["p50"],
                        "raw_difference_p50_ms": rest["p50"] - model_time["p50"],
                        "raw_difference_p95_ms": rest["p95"] - model_time["p95"],
                        "service_added_p50_ms": service_added,
                        "service_added_vs_extract_p50_ms": rest["p50"] - extract["p50"] - decode["p50"],
                        "transfer_p50_ms": null_sized["p50"],
                        "service_added_beyond_transfer_p50_ms": beyond_transfer,
                        "service_added_beyond_upload_p50_ms": service_added - null["p50"],
                        "meets_target_beyond_transfer": beyond_transfer < TARGET_MS,
                        "decomposition_p50_ms": {
                            "upload (null server, 2-byte reply)": null["p50"],
                            "HTTP + multipart parse (404 probe - upload)": parse["p50"] - null["p50"],
                            "decode": decode["p50"],
                            "model (in-process)": model_time["p50"],
                            "encode response": encode["p50"],
                            "download (null sized - null)": null_sized["p50"] - null["p50"],
                            "unexplained (hand-offs, queue, write)": rest["p50"]
                            - null_sized["p50"]
                            - (parse["p50"] - null["p50"])
                            - decode["p50"]
                            - model_time["p50"]
                            - encode["p50"],
                        },
                    }
                )
    report["results"] = rows
    report["target"] = {
        "statement": f"service adds under {TARGET_MS:g} ms at p50 beyond the upload itself",
        "service_added_definition": "REST p50 - in-process model p50 - in-process decode p50, where the model "
        "call is the one the endpoint runs: extract, or detect for include_descriptors=false when the endpoint "
        "calls pool.detect (service_added_vs_extract_p50_ms always subtracts extract)",
        "beyond_transfer_definition": "service-added minus null-server p50 for the same request and response sizes",
    }
    markdown = render_markdown(report, stats)
    print(markdown)
    write_results(args.out, report, markdown)


def render_markdown(report: dict[str, Any], stats: dict[tuple[str, ...], dict[str, float]]) -> str:
    """The Markdown report: settings, inputs, the latency table and the decomposition."""
    settings = report["settings"]
    machine = report["machine"]
    versions = machine["versions"]
    server = settings["server_settings"]
    lines = [
        "# REST overhead at concurrency 1",
        "",
        f"Date: {report['date']}. Machine: {machine['platform']}, {machine['processor']}, "
        f"{machine['cpu_count']} CPUs. Python {machine['python']}, torch {versions['torch']}, "
        f"OpenCV {machine['opencv_build']}, uvicorn {versions['uvicorn']} (h11 {versions['h11']}, "
        f"httptools {versions['httptools']}, uvloop {versions['uvloop']}), httpx {versions['httpx']}.",
        f"Image: {settings['image']}; JPEG quality {settings['jpeg_quality']}. max_keypoints "
        f"{settings['max_keypoints']}. {settings['iterations']} measured rounds after {settings['warmup_rounds']} "
        "warm-up rounds; every probe runs once per round, in shuffled order.",
        f"Server: models {server['models']}, cpu_threads {server['cpu_threads']}, decode_threads "
        f"{server['decode_threads']}, max_batch {server['max_batch']}, max_delay_ms {server['max_delay_ms']}. "
        f"Client: {settings['client']}. In-process models use num_threads={settings['cpu_threads']}; "
        f"in-process setup as the server's: {', '.join(settings['in_process_setup']) or 'none'}.",
        f"Performance-relevant environment (client and server): "
        f"{describe_performance_env(machine['performance_env'])}. Code, as the server loaded it: "
        f"{describe_git(settings['server_git'])}.",
        f"Other busy processes before/after: {report['busy_processes_before'] or 'none'} / "
        f"{report['busy_processes_after'] or 'none'}. {describe_foreign_load(report['foreign_load'])}.",
        "",
        "## Inputs and fixed costs (ms)",
        "",
    ]
    input_rows = []
    for fmt, upload in report["uploads"].items():
        input_rows.append(
            [
                fmt,
                upload["image_bytes"],
                upload["request_body_bytes"],
                stats[("decode", fmt)]["p50"],
                stats[("decode", fmt)]["p95"],
                stats[("decode_grey", fmt)]["p50"],
                stats[("decode_cv2", fmt)]["p50"],
                stats[("null", fmt)]["p50"],
                stats[("rest_404", fmt)]["p50"],
            ]
        )
    lines.append(
        format_table(
            [
                "format",
                "image bytes",
                "request bytes",
                "decode p50 (service, PIL)",
                "decode p95",
                "grey decode p50 (grey models)",
                "cv2.imdecode p50",
                "upload p50 (null server)",
                "404 probe p50 (upload + HTTP + multipart)",
            ],
            input_rows,
        )
    )
    lines += ["", f"`GET /healthz` round trip p50: {stats[('healthz',)]['p50']:.2f} ms.", ""]
    lines += ["## Latency (ms, p50 / p95)", ""]
    table = []
    for row in report["results"]:
        table.append(
            [
                row["format"],
                row["model"],
                row["mode"],
                f"{row['response_bytes'] / 1024:.0f}",
                f"{row['server_operation']} {row['model_ms']['p50']:.2f} / {row['model_ms']['p95']:.2f}",
                f"{row['rest_ms']['p50']:.2f} / {row['rest_ms']['p95']:.2f}",
                row["raw_difference_p50_ms"],
                row["decode_p50_ms"],
                row["service_added_p50_ms"],
                row["transfer_p50_ms"],
                row["service_added_beyond_transfer_p50_ms"],
                "yes" if row["meets_target_beyond_transfer"] else "no",
            ]
        )
    lines.append(
        format_table(
            [
                "format",
                "model",
                "descriptors",
                "response KiB",
                "in-process model call",
                "REST",
                "raw diff p50",
                "decode p50",
                "service-added p50",
                "transfer p50",
                "service-added beyond transfer p50",
                f"< {TARGET_MS:g} ms",
            ],
            table,
        )
    )
    lines += [
        "",
        "in-process model call = what the endpoint runs for the request (`extract`; `detect` when descriptors "
        "are off and the endpoint calls `pool.detect`). raw diff = REST p50 - model p50. service-added = raw "
        "diff - decode p50 (the issue's definition). "
        "transfer = the same request bytes to a null HTTP server that replies with as many bytes as the "
        "real response (client + loopback + a minimal Python server). Differences of medians are approximate.",
        "",
        "## Where the time goes (p50, ms)",
        "",
    ]
    parts = list(report["results"][0]["decomposition_p50_ms"]) if report["results"] else []
    lines.append(
        format_table(
            ["format", "model", "descriptors", *parts, "REST p50"],
            [
                [row["format"], row["model"], row["mode"], *row["decomposition_p50_ms"].values(), row["rest_ms"]["p50"]]
                for row in report["results"]
            ],
        )
    )
    lines += [
        "",
        "encode response = the service's `extract_response` + orjson, in-process. unexplained = REST p50 minus "
        "every other column: thread hand-offs (decode pool, batcher, model thread, OpenCV pool), event-loop "
        "scheduling, writing the response through uvicorn/h11, and the noise of subtracting medians.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
